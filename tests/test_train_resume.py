"""Exact resume: a run killed with SIGKILL and resumed logs the same losses as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from videoaction.config import get_preset, parse_overrides
from videoaction.train.checkpoint import read_pointer
from videoaction.train.metrics import read_metrics
from videoaction.train.synthetic import TINY_UVA, make_store, tiny_tokenizer
from videoaction.train.trainer import TrainOptions, train
from videoaction.utils.io import load_state_dict

torch.set_num_threads(1)  # the CPU is shared: one thread per process avoids oversubscription

STEPS = 6


def _args(store, tok, out):
    # all task modes (the mode draw comes from the per-rank generator), EMA, clipping, warm-up
    return ["--data", str(store), "--out", str(out), "--model.tokenizer.path", str(tok), *TINY_UVA,
            "--steps", str(STEPS), "--save-every", "2", "--log-every", "1", "--keep-last", "2", "--seed", "3"]


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path):
    store = make_store(tmp_path / "store.zarr", n_episodes=6, length=40, image_size=32)
    tok = tiny_tokenizer(store, tmp_path / "tok")
    ref_dir, run = tmp_path / "ref", tmp_path / "killed"
    train(parse_overrides(get_preset("uva-tiny"), _args(store, tok, ref_dir)),
          TrainOptions(progress=False, log=lambda m: None, val_batches=0))
    ref = read_metrics(ref_dir)

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # same thread count as this process
    cmd = [sys.executable, "-m", "videoaction.cli", "train", "--preset", "uva-tiny", "--no-progress",
           "--val-batches", "0",
           *_args(store, tok, run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while read_pointer(run / "checkpoints", "latest") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = int(read_pointer(run / "checkpoints", "latest").name.split("_")[1])
    assert killed_at < STEPS, "the run finished before it could be killed"

    resumed = subprocess.run([sys.executable, "-m", "videoaction.cli", "train", "--out", str(run), "--resume",
                              "--no-progress", "--val-batches", "0"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    got = read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for key in ("loss", "mode", "mask_ratio", "lr", "ema_decay"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in ref], rtol=1e-5, atol=1e-6, err_msg=key)
    final = f"checkpoints/step_{STEPS:07d}"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_state_dict(ref_dir / final / name), load_state_dict(run / final / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path):
    store = make_store(tmp_path / "store.zarr", n_episodes=4, length=40, image_size=32)
    tok = tiny_tokenizer(store, tmp_path / "tok")
    run = tmp_path / "run"
    args = _args(store, tok, run)
    args[args.index("--steps") + 1] = "200"
    args[args.index("--save-every") + 1] = "100"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "videoaction.cli", "train", "--preset", "uva-tiny",
                             "--no-progress", "--val-batches", "0", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").is_file() or not read_metrics(run):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a cluster's preemption notice
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    step = int(read_pointer(run / "checkpoints", "latest").name.split("_")[1])
    assert 1 <= step < 200 and f"stopped at step {step}" in out
    assert read_metrics(run)[-1]["step"] == step
