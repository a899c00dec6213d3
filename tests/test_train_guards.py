"""Stage-2 initialisation from stage 1, the non-finite-loss guard and dataset/model mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.config import get_preset, parse_overrides
from videoaction.errors import StoreError, VideoActionError
from videoaction.train.setup import TrainSetupError
from videoaction.train.synthetic import TINY_UVA, make_store, tiny_tokenizer
from videoaction.train.trainer import TrainError, TrainOptions, train
from videoaction.utils.io import load_state_dict

torch.set_num_threads(1)  # the CPU is shared: one thread per process avoids oversubscription

QUIET = TrainOptions(progress=False, log=lambda m: None, val_batches=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    store = make_store(root / "store.zarr", n_episodes=6, length=40, image_size=32)
    return store, tiny_tokenizer(store, root / "tok")


def cfg_for(data, out, *extra, preset="uva-tiny", store=None):
    s, tok = data
    return parse_overrides(get_preset(preset), ["--data", str(store or s), "--out", str(out),
                                                "--model.tokenizer.path", str(tok), *TINY_UVA, *extra])


def test_stage2_init_loads_stage1_weights_and_reports(data, tmp_path):
    s1 = tmp_path / "stage1"
    train(cfg_for(data, s1, "--steps", "2", preset="uva-tiny-video"), QUIET)
    s2 = tmp_path / "stage2"
    logs: list[str] = []
    # lr 0: the stage-2 weights after one step are exactly what --init loaded
    result = train(cfg_for(data, s2, "--steps", "1", "--init", str(s1), "--optim.lr", "0"),
                   TrainOptions(progress=False, log=logs.append, val_batches=0))
    report = result.reports["init"]
    src = load_state_dict(s1 / "checkpoints" / "step_0000002" / "ema.safetensors")
    assert report["source"].endswith("step_0000002/ema.safetensors")
    assert report["loaded"] == len([k for k in src if not k.startswith("normalizer.")])
    assert report["shape_mismatch"] == [] and report["unexpected"] == []
    assert report["fresh"] and all(k.startswith("model.diffactloss.") for k in report["fresh"])  # the action head
    assert any("init from" in line and "loaded" in line for line in logs)
    got = load_state_dict(s2 / "checkpoints" / "step_0000001" / "model.safetensors")
    for k, v in src.items():
        if not k.startswith("normalizer."):
            assert torch.equal(got[k], v), k
    # a model of another width: shape mismatches are an error naming them, or skipped with init_partial
    with pytest.raises(TrainSetupError, match="other shapes"):
        train(cfg_for(data, tmp_path / "wide", "--steps", "1", "--init", str(s1), "--model.width", "64"), QUIET)


def test_nan_guard_stops_names_the_step_and_saves_a_debug_checkpoint(tmp_path):
    store = make_store(tmp_path / "nan.zarr", n_episodes=2, length=40, image_size=32, float_images=True,
                       nan_episode=0)
    tok = tiny_tokenizer(store, tmp_path / "tok")
    run = tmp_path / "run"
    with pytest.raises(TrainError, match=r"non-finite loss at step \d+ \(rank 0: .*video_loss=nan") as info:
        train(cfg_for((store, tok), run, "--steps", "5", "--dataset.val-ratio", "0",
                      "--model.task-modes", "video_model"), QUIET)
    debug = list((run / "checkpoints").glob("debug_step_*"))
    assert len(debug) == 1 and str(debug[0]) in str(info.value)
    assert (debug[0] / "batch.safetensors").is_file() and (debug[0] / "model.safetensors").is_file()
    assert not (run / "checkpoints" / "latest").exists()  # a debug checkpoint never becomes "latest"


def test_dataset_model_mismatches_fail_before_training(data, tmp_path):
    with pytest.raises(StoreError, match="data/joints"):
        train(cfg_for(data, tmp_path / "a", "--steps", "1", "--dataset.action-key", "joints"), QUIET)
    with pytest.raises(VideoActionError, match="state"):
        train(cfg_for(data, tmp_path / "b", "--steps", "1", "--dataset.state-dims", "5"), QUIET)
    assert not (tmp_path / "a" / "metrics.jsonl").exists()


def test_action_free_episodes_train_with_video_only_modes(tmp_path):
    # action-free episodes carry NaN actions: any use of them (normaliser, action loss) would surface as NaN
    store = make_store(tmp_path / "mixed.zarr", n_episodes=6, length=40, image_size=32, action_free=(1, 4))
    tok = tiny_tokenizer(store, tmp_path / "tok")
    run = tmp_path / "run"
    logs: list[str] = []
    result = train(cfg_for((store, tok), run, "--steps", "6", "--log-every", "1", "--save-every", "3",
                           "--dataset.val-ratio", "0.2"),
                   TrainOptions(progress=False, log=logs.append, val_batches=1, action_free_every=3))
    from videoaction.train.metrics import read_metrics

    recs = read_metrics(run)
    assert [r["action_free"] for r in recs] == [0, 0, 1, 0, 0, 1]
    for r in recs:
        assert np.isfinite(r["loss"])
        if r["action_free"]:
            assert r["mode"] == 0.0 and r["action_loss"] == 0.0  # video_model only
    assert any("action-free episodes" in line for line in logs)
    assert result.best is not None and np.isfinite(result.best["value"])
    state = json.loads((run / "checkpoints" / "step_0000006" / "train_state.json").read_text())
    assert state["order"]["count"] == 6 and "video" in state["order"]


def test_init_mar_copies_matching_tensors(data, tmp_path):
    from safetensors.torch import save_file

    from videoaction.models.base import load_policy

    s1 = tmp_path / "s1"
    train(cfg_for(data, s1, "--steps", "1", preset="uva-tiny-video"), QUIET)
    mar = tmp_path / "mar.safetensors"  # MAR-like: the transformer's own key names, no action head
    save_file({k: v.contiguous() for k, v in load_policy(s1).model.state_dict().items()}, str(mar))
    result = train(cfg_for(data, tmp_path / "s2", "--steps", "1"), TrainOptions(
        progress=False, log=lambda m: None, val_batches=0, init_mar=str(mar)))
    rep = result.reports["init_mar"]
    assert rep["loaded"] > 0 and all(k.startswith("diffactloss.") for k in rep["fresh"])
    assert (tmp_path / "s2" / "init_report.json").is_file()


def test_stage2_reuses_the_stage1_tokenizer(data, tmp_path):
    store, tok = data
    s1 = tmp_path / "s1"
    train(cfg_for(data, s1, "--steps", "1", preset="uva-tiny-video"), QUIET)
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(store), "--out", str(tmp_path / "s2"), *TINY_UVA,
                                                   "--steps", "1", "--init", str(s1)])
    assert cfg.model.tokenizer.path is None
    result = train(cfg, QUIET)  # no stage 0: the stage-1 tokenizer is inherited
    assert result.reports["tokenizer"]["path"] == str(tok) and not (tmp_path / "s2" / "tokenizer").exists()
