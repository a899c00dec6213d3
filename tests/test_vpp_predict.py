"""``videoaction predict``: a VPP video prediction next to the ground truth, PSNR / SSIM against copy-last-frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.test_vpp_tvp import make_lang_store, tiny_video_cfg


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_predict_writes_a_video_and_metrics(tmp_path, capsys):
    from videoaction.cli import main
    from videoaction.data.store import EpisodeStore
    from videoaction.eval.metrics import psnr
    from videoaction.eval.video import read_mp4
    from videoaction.models.vpp.policy import VPPPolicy
    from videoaction.models.vpp.predict_cli import clip_frames, predict_episode

    store_path = make_lang_store(tmp_path / "s.zarr", n_episodes=2, length=10)
    cfg = tiny_video_cfg(store_path)
    torch.manual_seed(0)
    policy = VPPPolicy(cfg)
    policy.save_pretrained(tmp_path / "ckpt")

    store = EpisodeStore.open(store_path)
    clip = clip_frames(store, 1, "img", 4, 4, 2)
    assert np.array_equal(clip, np.asarray(store.get_episode(1, ["img"])["img"])[[4, 6, 8, 9]])  # clamped at the end

    res = predict_episode(policy, store, 1, start=0, steps=2)
    m = res["metrics"]
    assert m["instruction"] == "go left" and res["prediction"].shape == res["truth"].shape == (4, 32, 32, 3)
    truth = res["truth"]
    assert m["psnr_copy_last_frame"] == pytest.approx(psnr(np.repeat(truth[:1], 3, 0), truth[1:]), abs=1e-3)
    assert m["psnr_prediction"] == pytest.approx(psnr(res["prediction"][1:], truth[1:]), abs=1e-3)

    code = main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(store_path), "--episode", "0",
                 "--steps", "2", "--instruction", "go right", "--out", str(tmp_path / "pred"), "--scale", "2"])
    assert code == 0
    video = read_mp4(tmp_path / "pred" / "episode_0.mp4")
    assert video.shape[0] == 4 and video.shape[2] > 2 * 64  # [ground truth | prediction], upscaled x2
    saved = json.loads((tmp_path / "pred" / "episode_0.json").read_text())
    assert saved["instruction"] == "go right" and {"psnr_prediction", "ssim_copy_last_frame"} <= set(saved)
    assert "copy-last-frame" in capsys.readouterr().out
    with pytest.raises(Exception, match="episode 5 out of range"):
        predict_episode(policy, store, 5)
