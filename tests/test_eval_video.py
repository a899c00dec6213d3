"""``--video`` evaluation on held-out windows of a small store with a real (untrained, tiny) UVA model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.eval import metrics as M


def _tiny_uva(image_size: int = 32, obs_size: int = 32):
    from videoaction.models.uva.config import uva_tiny
    from videoaction.models.uva.policy import UVAPolicy
    from videoaction.nn.diffusion import DiffusionHeadConfig

    cfg = uva_tiny()
    cfg.dataset.image_size = image_size
    cfg.dataset.val_ratio = 0.34
    cfg.dataset.horizon = 16
    cfg.dataset.frames.offset, cfg.dataset.frames.stride = 1, 2  # frames [1, 3, 5, 7 | 9, 11, 13, 15]
    m = cfg.model
    m.width, m.encoder_depth, m.decoder_depth, m.num_heads = 32, 1, 1, 2
    m.video_head = DiffusionHeadConfig(width=32, depth=1, sample_steps=3)
    m.action_head = DiffusionHeadConfig(width=32, depth=1, sample_steps=3, clip_denoised=True)
    m.n_actions, m.n_action_steps, m.obs_image_size = 8, 4, obs_size
    m.tokenizer.channels, m.tokenizer.stride = (8, 8, 8), 8  # 4 x 4 tokens at 32 px
    torch.manual_seed(0)
    return UVAPolicy(cfg, allow_random_tokenizer=True).eval()


def _store(path, n_eps: int = 6, length: int = 24, size: int = 32):
    from videoaction.data.store import EpisodeStore

    store = EpisodeStore.create(path)
    rng = np.random.default_rng(0)
    for e in range(n_eps):
        t = np.arange(length)
        img = np.zeros((length, size, size, 3), np.uint8)
        for k in range(length):  # a square moving right by one pixel a step
            x = (e * 3 + k) % (size - 6)
            img[k, 10:16, x:x + 6] = (200, 50 + 20 * e, 90)
        action = np.stack([t + e * 3.0, np.full(length, 10.0)], 1).astype(np.float32) + rng.normal(0, 0.1, (length, 2))
        store.add_episode({"img": img, "state": action.astype(np.float32), "action": action.astype(np.float32)},
                          meta={"success": True, "seed": e})
    return path


def test_video_eval_held_out_with_baselines(tmp_path):
    from videoaction.eval.report import write_report
    from videoaction.eval.video_eval import evaluate_video, held_out_episodes

    policy = _tiny_uva()
    data = _store(tmp_path / "demo.zarr")
    held = held_out_episodes(6, policy.cfg.dataset)
    assert len(held) == 2
    res = evaluate_video(policy, data, out_dir=tmp_path / "out", n_windows=4, batch_size=4, n_grids=2, progress=False)
    m = res["metrics"]
    assert res["episodes"] == held and res["n_windows"] == 4
    assert all(e in held for e, _ in res["windows"])
    for k in ("psnr", "psnr_copy_last", "ssim", "ssim_copy_last", "delta_psnr", "inverse_dynamics_mse",
              "action_mse_mean_action", "inverse_dynamics_mse_norm", "policy_mse", "policy_mse_norm",
              "action_mse_norm_mean_action"):
        assert np.isfinite(m[k]), k
    # the copy-last-frame baseline recomputed independently from the store
    from videoaction.data.store import EpisodeStore
    from videoaction.data.transforms import preprocess_frames, to_uint8_frames

    st = EpisodeStore.open(data)
    real, copy = [], []
    for e, s in res["windows"]:
        img = st.get_episode(e, ["img"])["img"][s:s + 16]
        fr = to_uint8_frames(preprocess_frames(img[None, [7, 9, 11, 13, 15]], policy.cfg.dataset))[0]
        real.append(fr[1:])
        copy.append(np.repeat(fr[:1], 4, 0))
    assert m["psnr_copy_last"] == pytest.approx(M.psnr(np.stack(copy), np.stack(real)), rel=1e-9)
    # an untrained model is worse than copying the last frame on this easy video
    assert m["psnr"] < m["psnr_copy_last"]
    assert [r["metric"].split(" ")[0] for r in res["table"]][:3] == ["PSNR", "SSIM", "controllability"]
    assert any("FVD not computed" in n for n in res["notes"]) and any("LPIPS not computed" in n for n in res["notes"])
    assert len(res["grids"]) == 2 and all((tmp_path / "out" / g["path"]).is_file() for g in res["grids"])
    saved = json.loads((tmp_path / "out" / "video_results.json").read_text())
    assert saved["metrics"]["psnr"] == pytest.approx(m["psnr"])
    html = write_report(tmp_path / "out", None, video_results=res).read_text()
    assert "video_grids/" in html and "controllability" in html


def test_video_eval_rejects_policies_without_video(tmp_path):
    from videoaction.data.errors import VideoActionError
    from videoaction.eval.baselines import RandomPolicy
    from videoaction.eval.video_eval import evaluate_video

    with pytest.raises(VideoActionError, match="predict_video"):
        evaluate_video(RandomPolicy(), tmp_path / "none.zarr")
