"""Two processes under `accelerate launch` (gloo on CPU): per-rank seeds, masks/modes and data shards differ."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import torch
import pytest

from videoaction.models.base import load_policy
from videoaction.train.loader import BatchOrder, OrderState
from videoaction.train.metrics import read_metrics
from videoaction.train.synthetic import TINY_UVA, make_store, tiny_tokenizer

torch.set_num_threads(1)  # the CPU is shared: one thread per process avoids oversubscription


def _free_port() -> int:
    with socket.socket() as s:  # other test sessions may share this machine: never a fixed port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_order_shards_ranks_and_resumes_exactly():
    n, b, w = 23, 4, 2
    ranks = [BatchOrder(n, b, w, r, seed=5) for r in range(w)]
    seen = [[], []]
    for _ in range(6):  # 48 draws > 2 epochs
        for r in range(w):
            seen[r].append(ranks[r].next_batch())
    first = [i for batch in seen[0][:2] for _, i in batch] + [i for batch in seen[1][:2] for _, i in batch]
    assert len(set(first)) == 16  # no overlap between ranks within an epoch
    epoch0 = [i for r in range(w) for batch in seen[r] for e, i in batch if e == 0]
    assert sorted(epoch0) == list(range(n))  # every sample once per epoch
    # resume from a saved state gives the same continuation
    state = OrderState(**vars(ranks[0].state))
    again = BatchOrder(n, b, w, 0, seed=5, state=state)
    assert [again.next_batch() for _ in range(3)] == [ranks[0].next_batch() for _ in range(3)]


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")
def test_accelerate_launch_two_cpu_processes(tmp_path):
    store = make_store(tmp_path / "store.zarr", n_episodes=6, length=40, image_size=32)
    tok = tiny_tokenizer(store, tmp_path / "tok")
    run = tmp_path / "run"
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `--multi_gpu` selects accelerate's torchrun launcher; `--device cpu` makes the Accelerator use gloo on CPU
    # (`accelerate launch --cpu` alone starts a single process).
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "videoaction.cli", "train",
           "--preset", "uva-tiny", "--data", str(store), "--out", str(run), "--model.tokenizer.path", str(tok),
           *TINY_UVA, "--optim.batch-size", "4", "--steps", "4", "--log-every", "1", "--save-every", "2",
           "--device", "cpu", "--no-progress", "--val-batches", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for rec in recs:
        ranks = rec["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert [r["gen_seed"] for r in ranks] == [0.0, 1.0]  # seed + rank
        assert rec["loss"] == pytest.approx(np.mean([r["loss"] for r in ranks]))  # reduced over ranks
    # masks / modes differ across ranks (the reference draws identical ones on every GPU)
    draws = [(r["ranks"][0]["mask_ratio"], r["ranks"][1]["mask_ratio"]) for r in recs]
    assert all(a != b for a, b in draws)
    ckpt = run / "checkpoints" / "step_0000004"
    assert (ckpt / "rng_rank0.safetensors").is_file() and (ckpt / "rng_rank1.safetensors").is_file()
    assert load_policy(run).action_dim == 2
