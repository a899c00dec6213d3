"""``--video`` evaluation on held-out windows of a small store with a real (untrained, tiny) UVA model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from videoaction.eval import metrics as M
from videoaction.models.base import ObsSpec, Policy


def _tiny_cfg(image_size: int = 32, obs_size: int = 32):
    """uva-tiny at 32 px: history frames [1, 3, 5, 7], future [9, 11, 13, 15] of a 16-step window, 8 actions."""
    from videoaction.models.uva.config import uva_tiny
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
    return cfg


def _tiny_uva(image_size: int = 32, obs_size: int = 32):
    from videoaction.models.uva.policy import UVAPolicy

    cfg = _tiny_cfg(image_size, obs_size)
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
    from videoaction.errors import VideoActionError
    from videoaction.eval.baselines import RandomPolicy
    from videoaction.eval.video_eval import evaluate_video

    with pytest.raises(VideoActionError, match="predict_video"):
        evaluate_video(RandomPolicy(), tmp_path / "none.zarr")


# ------------------------------------------------------------------------------------------ known-answer models
H_LAST, A_START, N_ACT = 7, 7, 8  # _tiny_cfg: last history frame 7, actions [7, 15) of the window
FUTURE = [9, 11, 13, 15]


class _Oracle(Policy):
    """A video-action model that has memorised the store (windows looked up by their frames' bytes).

    ``video``: "copy_last" (the last history frame, whatever the actions: ignores actions), or "oracle" (with the
    window's true actions the real future frames with their lowest bit flipped, every pixel off by exactly 1/255:
    PSNR 20 log10(255) dB; with other actions black frames). ``predict_action`` returns the true actions +
    ``action_offset``; ``inverse_dynamics`` the true actions + ``inverse_offset``. ``shuffled`` records the real
    future frames of every window predicted with another window's actions.
    """

    family = "oracle"

    def __init__(self, data, video="copy_last", action_offset=0.0, inverse_offset=0.0):
        from videoaction.data.normalizer import Normalizer
        from videoaction.data.store import EpisodeStore

        super().__init__(_tiny_cfg())
        self.video, self.action_offset, self.inverse_offset = video, action_offset, inverse_offset
        self.shuffled = []
        self._dev = torch.nn.Parameter(torch.zeros(1))
        store = EpisodeStore.open(data)
        eps = [store.get_episode(e, ["img", "action"]) for e in range(store.n_episodes)]
        self.windows = {}  # bytes of the first 8 frames -> (frames (16, ...), actions (16, A))
        self.futures = {}  # bytes of the 4 future frames -> true actions
        for ep in eps:
            img, act = np.asarray(ep["img"]), np.asarray(ep["action"], np.float32)
            for s in range(len(img) - 15):
                self.windows[img[s:s + 8].tobytes()] = (img[s:s + 16], act[s:s + 16])
                self.futures[img[s:s + 16][FUTURE].tobytes()] = act[s + A_START: s + A_START + N_ACT]
        self.normalizer = Normalizer.fit_arrays({"action": np.concatenate([np.asarray(e["action"]) for e in eps])},
                                                {"action": "minmax"})

    action_dim, n_action_steps, horizon = 2, 4, N_ACT

    def observation_spec(self):
        return {"image": ObsSpec((8, 32, 32, 3), "uint8")}

    def _window(self, obs_image, i):
        return self.windows[np.asarray(obs_image[i]).tobytes()]

    def _model_frames(self, frames):
        from videoaction.data.transforms import preprocess_frames, to_uint8_frames

        return torch.from_numpy(to_uint8_frames(preprocess_frames(frames[None], self.cfg.dataset))[0])

    def predict_video(self, obs, actions=None, **_):
        out = []
        for i in range(len(obs["image"])):
            img, act = self._window(obs["image"], i)
            true = np.allclose(np.asarray(actions[i]), act[A_START:A_START + N_ACT])
            if self.video == "copy_last":
                out.append(self._model_frames(np.repeat(img[H_LAST:H_LAST + 1], 4, 0)))
                continue
            real = self._model_frames(img[FUTURE])
            if not true:
                self.shuffled.append(real)
            out.append(real ^ 1 if true else torch.zeros_like(real))
        return {"frames": torch.stack(out)}

    def predict_action(self, obs, **_):
        a = np.stack([self._window(obs["image"], i)[1][A_START:A_START + N_ACT] for i in range(len(obs["image"]))])
        a = torch.from_numpy(a + self.action_offset)
        return {"action": a[:, :4], "action_pred": a}

    def inverse_dynamics(self, history, future, **_):
        a = np.stack([self.futures[np.asarray(f).tobytes()] for f in future])
        return {"action_pred": torch.from_numpy(a + self.inverse_offset)}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("video") / "demo.zarr")


def test_a_model_copying_the_last_frame_scores_copy_last(store_path):
    from videoaction.eval.video_eval import evaluate_video

    res = evaluate_video(_Oracle(store_path, "copy_last", action_offset=0.5, inverse_offset=0.0), store_path,
                         n_windows=6, batch_size=4, progress=False)
    m = res["metrics"]
    assert m["psnr"] == m["psnr_copy_last"] and m["ssim"] == m["ssim_copy_last"]
    assert m["psnr_per_future_frame"] == m["psnr_copy_last_per_future_frame"]
    assert m["delta_psnr"] == 0.0  # it ignores the actions
    assert m["policy_mse"] == pytest.approx(0.25, abs=1e-6)  # every action off by 0.5
    assert m["inverse_dynamics_mse"] == 0.0 and m["inverse_dynamics_mse_norm"] == 0.0
    scale = _Oracle(store_path).normalizer.fields["action"].scale.double()
    assert m["policy_mse_norm"] == pytest.approx(float(((0.5 * scale) ** 2).mean()), rel=1e-5)
    assert m["action_mse_mean_action"] > 1.0  # the baseline is not the oracle


def test_an_action_following_oracle_has_positive_controllability(store_path):
    from videoaction.eval.video_eval import evaluate_video

    oracle = _Oracle(store_path, "oracle", inverse_offset=-0.25)
    res = evaluate_video(oracle, store_path, n_windows=6, batch_size=4, progress=False)
    m = res["metrics"]
    assert m["psnr"] == pytest.approx(20 * math.log10(255), abs=1e-6)  # true actions: 1/255 off everywhere
    assert len(oracle.shuffled) == 6  # every window was also predicted with another window's actions
    black = M.psnr(np.zeros((6, 4, 32, 32, 3), np.uint8), torch.stack(oracle.shuffled).numpy())
    assert m["psnr_shuffled_actions"] == pytest.approx(black, abs=1e-6)
    assert abs(black - m["psnr_copy_last"]) > 0.5  # so Delta-PSNR cannot be confused with PSNR - copy-last
    assert m["delta_psnr"] == pytest.approx(20 * math.log10(255) - black, abs=1e-6)
    assert m["policy_mse"] == 0.0 and m["policy_mse_norm"] == 0.0
    assert m["inverse_dynamics_mse"] == pytest.approx(0.0625, abs=1e-6)
