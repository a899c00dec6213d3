"""HMA through the shared commands: `videoaction train --preset hma-tiny-disc --data TOKENS` (project checkpoints,
exact resume) and `videoaction eval --video` on the trained checkpoint, both dispatched through the family's
declared entries (``Policy.train_entry`` / ``Policy.video_eval_entry``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.cli import main as cli
from videoaction.data.hma_tokens import encode_store
from videoaction.models.base import load_policy
from videoaction.nn.tokenizer.lfq import LFQTokenizer, save_lfq, tiny_lfq_config
from videoaction.train.synthetic import make_store

torch.set_num_threads(1)
# hma-tiny-disc shrunk for a CPU test: the preset's grid (4 x 4) and vocabulary (2^10) are kept
SMALL = ["--model.d-model", "32", "--model.num-layers", "1", "--model.num-heads", "2", "--model.n-action-tokens", "2",
         "--optim.batch-size", "4", "--optim.warmup-steps", "2", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A PushT-like token dataset (2-d actions, 4 x 4 LFQ ids of 32 px frames) named after a preset embodiment."""
    root = tmp_path_factory.mktemp("hma_cli")
    store = make_store(root / "store.zarr", n_episodes=3, length=12, image_size=32)
    torch.manual_seed(0)
    lfq = save_lfq(LFQTokenizer(tiny_lfq_config(z_channels=10)), root / "lfq")
    data = encode_store(store, root / "tokens", str(lfq), image_size=32, name="pusht", progress=False,
                        log=lambda m: None)
    return root, data


def _train(out, data, steps, *extra):
    return cli(["train", "--preset", "hma-tiny-disc", "--data", str(data), "--out", str(out), "--steps", str(steps),
                "--save-every", "2", *SMALL, *extra])


def _weights(path):
    return {k: v.clone() for k, v in load_policy(path).state_dict().items()}


def test_train_cli_writes_project_checkpoints_and_resumes_exactly(tokens):
    root, data = tokens
    assert _train(root / "full", data, 4) == 0
    ckpt = root / "full" / "checkpoints" / "step_0000004"
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["family"] == "hma" and cfg["preset"] == "hma-tiny-disc" and (ckpt / "model.safetensors").is_file()
    records = [json.loads(line) for line in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(np.isfinite(r["loss/pusht"]) for r in records)
    full = _weights(root / "full")
    start = load_policy(ckpt)  # the checkpoint holds the dataset's action statistics for the embodiment
    assert float(start.net.stems["pusht"].std.abs().sum()) > 0 and not torch.allclose(
        start.net.stems["pusht"].std, torch.ones_like(start.net.stems["pusht"].std))

    assert _train(root / "part", data, 2) == 0
    assert _train(root / "part", data, 2) == 1  # an existing run is not overwritten without --resume
    assert _train(root / "part", data, 4, "--resume") == 0
    resumed = _weights(root / "part")
    assert (root / "part" / "checkpoints" / "step_0000004").is_dir()
    assert [json.loads(x)["step"] for x in (root / "part" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    for name, tensor in full.items():  # 2 + 2 resumed steps == 4 uninterrupted steps, bit for bit
        assert torch.equal(tensor, resumed[name]), name


def test_train_cli_names_unknown_embodiment(tokens, capsys):
    root, data = tokens
    assert _train(root / "bad", f"robot-x={data}", 1) == 1
    assert "robot-x" in capsys.readouterr().err
