"""`videoaction bench --world-models`: HMA and UVA scored on one protocol (same held-out clips, same real frames)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from videoaction.benchmarks.world_models import QUICK, run_world_models
from videoaction.data.hma_tokens import TokenDataset
from videoaction.data.sampler import split_episodes
from videoaction.data.store import EpisodeStore
from videoaction.eval import world_model_compare as W
from videoaction.models.base import load_policy

SIZES = dataclasses.replace(QUICK, minutes=0.15)
MODELS = ("copy-last-frame", "uva-tiny", "hma-tiny-disc", "hma-tiny-cont")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("wm")
    return out, run_world_models(out, SIZES, log=lambda m: None)


def test_every_model_is_scored_on_the_same_held_out_clips(bench):
    out, summary = bench
    assert json.loads((out / "world_models.json").read_text())["table"] == summary["table"]
    assert "| pusht | hma-tiny-disc |" in (out / "world_models.md").read_text()
    proto = W.ClipProtocol(image_size=SIZES.image_size)
    for name in SIZES.embodiments:
        assert set(summary["scores"][name]) == set(MODELS)
        for model in MODELS:
            m = summary["scores"][name][model]
            assert np.isfinite([m["psnr"], m["ssim"], m["delta_psnr"]]).all(), (name, model)
        store = EpisodeStore.open(out / "demos" / f"{name}.zarr")
        _, val = split_episodes(store.n_episodes, SIZES.val_ratio, 42)
        wins = [tuple(w) for w in summary["windows"][name]]
        assert wins and all(val[e] for e, _ in wins)  # no model trained on these episodes
        # copy-last-frame recomputed from the real frames of the recorded clips
        real = W.ground_truth(store, wins, proto)
        copy = np.repeat(real[:, 3:4], 4, axis=1)
        assert summary["scores"][name]["copy-last-frame"]["psnr"] == pytest.approx(
            W.psnr_capped(copy, real[:, 4:]), rel=1e-6)
    for key in ("hma-disc", "hma-cont", "uva/pusht"):
        assert summary["runs"][key]["step"] > 0
    # the playground's rate, measured with the trained HMA-disc model on a held-out PushT episode
    play = summary["playground"]
    assert play["fps"] > 0 and play["steps"] == 40 and 0 < play["psnr_vs_simulator"] <= 100
    assert "predicted frames / s" in (out / "world_models.md").read_text()


def test_uva_and_hma_inputs_are_the_clips_frames_and_actions(bench):
    out, summary = bench
    proto = W.ClipProtocol(image_size=SIZES.image_size)
    name = "pusht"
    store = EpisodeStore.open(out / "demos" / f"{name}.zarr")
    wins = [tuple(w) for w in summary["windows"][name]]
    real = W.ground_truth(store, wins, proto)
    # UVA's own observation builder gives the same history and future frames as the protocol's ground truth
    from videoaction.eval.video_eval import prepare_clips

    uva = load_policy(summary["runs"][f"uva/{name}"]["checkpoint"])
    clips = prepare_clips(uva, store, wins)
    np.testing.assert_array_equal(clips["hist"], real[:, :4])
    np.testing.assert_array_equal(clips["real"], real[:, 4:])
    # HMA's per-frame actions are the store's actions of the steps after each frame (same clip, same timing)
    tokens, actions = W.hma_clip_inputs(TokenDataset(out / "tokens" / "disc" / name, name=name), wins, proto, 8)
    for i, (e, s) in enumerate(wins):
        raw = store.get_episode(e, ["action"])["action"]
        first = s + proto.offset
        expect = np.stack([raw[first + 4 * k: first + 4 * k + 4].reshape(-1) for k in range(8)])
        np.testing.assert_allclose(actions[i].numpy(), expect, rtol=0, atol=0)
    assert tokens.shape[:2] == (len(wins), 8)
    # a clip that leaves its episode is refused by name
    e = wins[0][0]
    with pytest.raises(Exception, match="not in the dataset's episode"):
        W.hma_clip_inputs(TokenDataset(out / "tokens" / "disc" / name, name=name),
                          [(e, int(store.episode_lengths[e]) - 2)], proto, 8)


def test_a_model_ignoring_actions_has_zero_delta_psnr_and_rerun_reuses_the_runs(bench):
    out, summary = bench
    # copy-last-frame is the model that ignores actions: exactly 0
    assert all(summary["scores"][n]["copy-last-frame"]["delta_psnr"] == 0.0 for n in SIZES.embodiments)
    # scoring is deterministic and identical frames give the 100 dB cap, not inf
    x = np.random.default_rng(0).integers(0, 255, (2, 4, 8, 8, 3), dtype=np.uint8)
    assert W.score(x, x, x)["delta_psnr"] == 0.0 and W.psnr_capped(x, x) == W.MAX_PSNR
    again = run_world_models(out, SIZES, log=lambda m: None)  # resumable: nothing is trained again
    assert {k: v["step"] for k, v in again["runs"].items()} == {k: v["step"] for k, v in summary["runs"].items()}
    assert again["tokenizers"]["lfq"]["reused"] and again["tokenizers"]["ae"]["reused"]
    for a, b in zip(again["table"], summary["table"]):  # the evaluation is seeded: the same scores
        assert a["model"] == b["model"] and (a["psnr"], a["ssim"]) == pytest.approx((b["psnr"], b["ssim"]), rel=1e-6)
