"""`videoaction encode`: sharded latent cache, resumable after SIGKILL, training from it never runs the encoder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from videoaction.config import get_preset, parse_overrides
from videoaction.data.store import EpisodeStore
from videoaction.data.transforms import transform_frames
from videoaction.nn.tokenizer import SmallAutoencoder, TokenizerConfig, build_tokenizer
from videoaction.train.encode import encode_store
from videoaction.train.metrics import read_metrics
from videoaction.train.setup import TrainSetupError
from videoaction.train.synthetic import TINY_UVA, make_store, tiny_tokenizer
from videoaction.train.trainer import TrainOptions, train

torch.set_num_threads(1)  # the CPU is shared: one thread per process avoids oversubscription

QUIET = TrainOptions(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    store = make_store(root / "store.zarr", n_episodes=6, length=30, image_size=32)
    tok = tiny_tokenizer(store, root / "tok")
    latents = encode_store(store, root / "lat.zarr", str(tok), shards=3, progress=False, log=lambda m: None)
    return store, tok, latents


def test_latent_store_matches_direct_encoding(data):
    store, tok, latents = data
    src, lat = EpisodeStore.open(store), EpisodeStore.open(latents)
    assert np.array_equal(lat.episode_ends, src.episode_ends)
    assert set(lat.keys) == {"latent", "action", "state"} and lat.meta_keys == src.meta_keys
    for key in ("action", "state"):
        assert np.array_equal(lat.get_slice(key, 0, lat.n_steps), src.get_slice(key, 0, src.n_steps))
    assert np.array_equal(lat.meta_column("seed"), src.meta_column("seed"))
    z = lat.get_slice("latent", 0, lat.n_steps)
    assert z.dtype == np.float16 and z.shape == (src.n_steps, 8, 4, 4)
    tokenizer = build_tokenizer(TokenizerConfig(kind="small", path=str(tok)))
    cfg = get_preset("uva-tiny").dataset
    cfg.image_size = 32
    with torch.no_grad():
        direct = tokenizer.encode(transform_frames(src.get_slice("img", 0, 30), cfg, None)).numpy()
    np.testing.assert_allclose(z[:30].astype(np.float32), direct, rtol=2e-3, atol=2e-3)
    info = lat.attrs["latent_cache"]
    assert info["tokenizer"]["kind"] == "small" and info["image_size"] == 32 and info["fingerprint"]


def test_training_from_latents_never_runs_the_encoder(data, tmp_path, monkeypatch):
    store, tok, latents = data

    def forbidden(self, *a, **k):
        raise AssertionError("the encoder ran while training from a latent store")

    monkeypatch.setattr(SmallAutoencoder, "posterior", forbidden)
    run = tmp_path / "run"
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(latents), "--out", str(run), *TINY_UVA,
                                                   "--steps", "3", "--log-every", "1", "--save-every", "3"])
    assert cfg.model.tokenizer.path is None  # taken from the latent store's attrs
    result = train(cfg, QUIET)
    assert result.step == 3 and len(read_metrics(run)) == 3
    assert result.reports["tokenizer"]["latent_cache"] == str(latents)
    assert not (run / "tokenizer").exists()  # no stage 0 either


def test_latents_from_another_tokenizer_are_rejected(data, tmp_path):
    store, tok, latents = data
    other = tiny_tokenizer(store, tmp_path / "other", seed=1)
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(latents), "--out", str(tmp_path / "r"), *TINY_UVA,
                                                   "--model.tokenizer.path", str(other), "--steps", "1"])
    with pytest.raises(TrainSetupError, match="other tokenizer weights"):
        train(cfg, QUIET)
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(latents), "--out", str(tmp_path / "r2"),
                                                   *TINY_UVA, "--dataset.image-size", "64", "--steps", "1"])
    with pytest.raises(TrainSetupError, match="image_size"):
        train(cfg, QUIET)


def test_encode_resumes_after_sigkill_keeping_finished_shards(data, tmp_path):
    store, tok, latents = data
    out = tmp_path / "lat.zarr"
    shard_dir = tmp_path / "lat.zarr.shards"
    cmd = [sys.executable, "-m", "videoaction.cli", "encode", "--data", str(store), "--out", str(out), "--tokenizer",
           str(tok), "--shards", "6", "--batch-size", "8", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = shard_dir / "shard_0000"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if (first / ".zattrs").is_file() and '"complete": true' in (first / ".zattrs").read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "encode finished before it could be killed"
    assert not out.exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = re.search(r"in (\d+) shard\(s\) .*\((\d+) already complete\)", resumed.stdout)
    assert done, resumed.stdout
    assert int(done.group(2)) >= 1 and int(done.group(1)) + int(done.group(2)) == 6  # finished shards kept
    assert not shard_dir.exists()  # merged, temporary shards removed
    a, b = EpisodeStore.open(out), EpisodeStore.open(latents)
    assert np.array_equal(a.episode_ends, b.episode_ends)
    # same latents as the one-go encode (batch size 8 vs 64 changes float rounding only)
    np.testing.assert_allclose(a.get_slice("latent", 0, a.n_steps).astype(np.float32),
                               b.get_slice("latent", 0, b.n_steps).astype(np.float32), rtol=1e-2, atol=2e-3)
