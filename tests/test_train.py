"""Training loop: a tiny run learns, writes metrics / checkpoints / config; EMA formula; stage 0; DP family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.config import get_preset, load_run_config, parse_overrides, to_dict
from videoaction.models.base import load_policy
from videoaction.train.checkpoint import list_checkpoints, read_pointer
from videoaction.train.ema import EMA, ema_decay
from videoaction.train.metrics import read_metrics
from videoaction.train.synthetic import TINY_DP, TINY_UVA, make_store, tiny_tokenizer
from videoaction.train.trainer import TrainOptions, train
from videoaction.utils.io import load_state_dict

torch.set_num_threads(1)  # the CPU is shared: one thread per process avoids oversubscription


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    store = make_store(root / "store.zarr", n_episodes=8, length=40, image_size=32)
    return store, tiny_tokenizer(store, root / "tok")


def uva_cfg(data, out, *extra, preset="uva-tiny"):
    store, tok = data
    return parse_overrides(get_preset(preset), ["--data", str(store), "--out", str(out), "--model.tokenizer.path",
                                                str(tok), *TINY_UVA, *extra])


QUIET = TrainOptions(progress=False, log=lambda msg: None)


def test_tiny_uva_run_lowers_loss_and_writes_a_loadable_run(data, tmp_path):
    run = tmp_path / "run"
    steps = 40
    cfg = uva_cfg(data, run, "--steps", str(steps), "--save-every", "20", "--log-every", "1", "--keep-last", "1",
                  "--optim.lr", "2e-3", "--model.task-modes", "policy_model")
    result = train(cfg, QUIET)
    losses = np.array([r["loss"] for r in read_metrics(run)])
    assert len(losses) == steps and result.step == steps
    factor = losses[:8].mean() / losses[-8:].mean()
    assert factor > 1.3, f"action loss fell only by x{factor:.2f}: {np.round(losses, 3)}"
    rec = read_metrics(run)[-1]
    assert {"step", "loss", "action_loss", "lr", "samples_per_s", "grad_norm", "ema_decay"} <= set(rec)
    # checkpoint layout: latest -> final step, older pruned to keep_last=1 (+ best), pointer-resolvable
    root = run / "checkpoints"
    assert read_pointer(root, "latest").name == "step_0000040"
    names = [p.name for p in list_checkpoints(run)]
    assert names[-1] == "step_0000040" and len(names) <= 2
    assert read_pointer(root, "best") is not None
    files = {p.name for p in (root / "step_0000040").iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "train_state.json", "train_state.safetensors",
            "rng_rank0.safetensors"} <= files
    state = json.loads((root / "step_0000040" / "train_state.json").read_text())
    assert state["step"] == steps and state["ema_updates"] == steps
    # load_policy takes the run dir (latest) and returns the EMA weights
    policy = load_policy(run)
    ema = load_state_dict(root / "step_0000040" / "ema.safetensors")
    for name, tensor in policy.state_dict().items():
        assert torch.equal(tensor, ema[name]), name
    # the resolved config re-creates the run
    again = load_run_config(run / "config.json")
    assert to_dict(again) == json.loads((run / "config.json").read_text())
    assert again.model.action_dim == 2 and again.model.task_modes == ("policy_model",)


def test_ema_decay_formula_matches_diffusers():
    from diffusers.training_utils import EMAModel

    ref = EMAModel(torch.nn.Linear(2, 2).parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    for n in [1, 2, 3, 10, 100, 1000, 10_000, 10 ** 7]:
        assert ema_decay(n, 0.75, 0.9999) == pytest.approx(ref.get_decay(n), abs=1e-12)
    assert ema_decay(10 ** 7) == 0.9999
    model = torch.nn.Linear(3, 1)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: decay 0 -> copy
    assert torch.equal(ema.module.weight, model.weight)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.fill_(3.0)
    d = ema.update(model)
    assert d == pytest.approx(1 - 2 ** -0.75)
    assert torch.allclose(ema.module.weight, d * before + (1 - d) * 3.0)
    assert ema.n_updates == 2


def test_stage0_trains_the_small_tokenizer_first(data, tmp_path):
    store, _ = data
    run = tmp_path / "run"
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(store), "--out", str(run), "--steps", "1",
                                                   "--model.tokenizer.channels", "8", "8", "16", "16", *TINY_UVA])
    assert cfg.model.tokenizer.path is None
    result = train(cfg, TrainOptions(progress=False, log=lambda m: None, tokenizer_steps=3, tokenizer_batch_size=8))
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert result.reports["tokenizer"]["stage"] == 0 and "psnr_val" in result.reports["tokenizer"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["tokenizer"]["path"] == str(run / "tokenizer")
    assert saved["model"]["tokenizer"]["scale"] is not None
    assert result.step == 1


def test_dp_family_trains_through_the_same_loop(data, tmp_path):
    store, _ = data
    run = tmp_path / "dp"
    cfg = parse_overrides(get_preset("dp-tiny"), ["--data", str(store), "--out", str(run), "--steps", "3",
                                                  "--log-every", "1", *TINY_DP])
    result = train(cfg, QUIET)
    assert result.step == 3 and len(read_metrics(run)) == 3
    assert type(load_policy(run)).__name__ == "DiffusionPolicy"


def test_existing_run_needs_resume(data, tmp_path):
    from videoaction.errors import VideoActionError

    run = tmp_path / "run"
    train(uva_cfg(data, run, "--steps", "1"), QUIET)
    with pytest.raises(VideoActionError, match="--resume"):
        train(uva_cfg(data, run, "--steps", "2"), QUIET)


def test_metrics_on_resume_drop_later_and_torn_records(tmp_path):
    from videoaction.train.metrics import MetricsLogger

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
                                            '{"step": 3, "loss": 0.4}\n{"step": 4, "lo')  # killed mid-write
    log = MetricsLogger(tmp_path, True, resume_step=2)
    log.log({"step": 3, "loss": 0.3, "bad": float("nan")})
    log.close()
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[-1]["loss"] == 0.3 and recs[-1]["bad"] == "nan"
