"""HMA token datasets: streamed sharded encoding, resume after an interruption, merge, and the reference layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from videoaction.data.hma_tokens import (FrameEncoder, TokenDataError, TokenDataset, encode_store, find_shards,
                                         merge_shards)
from videoaction.nn.tokenizer.lfq import LFQTokenizer, save_lfq, tiny_lfq_config
from videoaction.train.synthetic import make_store, tiny_tokenizer

torch.set_num_threads(1)
QUIET = dict(progress=False, log=lambda m: None)
FILES = ("video.bin", "actions/actions.bin", "segment_ids.bin")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hma_tokens")
    store = make_store(root / "store.zarr", n_episodes=5, length=13, image_size=32, action_dim=3)
    torch.manual_seed(0)
    lfq = save_lfq(LFQTokenizer(tiny_lfq_config(z_channels=10)), root / "lfq")
    small = tiny_tokenizer(store, root / "small")
    return root, store, lfq, small


def _bytes(d):
    return {f: (d / f).read_bytes() for f in FILES}


def test_interrupted_sharded_encode_resumes_to_identical_bytes(setup, tmp_path, monkeypatch):
    root, store, lfq, _ = setup
    whole = encode_store(store, tmp_path / "whole", str(lfq), shards=1, batch_size=4, hz=10, **QUIET)
    ref = encode_store(store, tmp_path / "ref", str(lfq), shards=3, batch_size=4, hz=10, **QUIET)
    # kill mid-way: the 11th encoder batch raises (shards hold episodes [0, 2), [2, 3), [3, 5); 13 frames = 4
    # batches per episode, so call 11 is in the middle of shard 1's only episode)
    calls = {"n": 0}
    real = FrameEncoder.__call__

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt("simulated kill")
        return real(self, x)

    monkeypatch.setattr(FrameEncoder, "__call__", flaky)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        encode_store(store, out, str(lfq), shards=3, batch_size=4, hz=10, **QUIET)
    shards = find_shards(tmp_path / "resumed.shards", 3)
    assert (shards[0] / "metadata.json").is_file() and not (shards[1] / "metadata.json").is_file()
    assert (shards[1] / "video.bin").stat().st_size > 0  # partial bytes of the killed shard exist
    calls["n"] = 100  # no more failures; count the resumed run's encoder calls
    encode_store(store, out, str(lfq), shards=3, batch_size=4, hz=10, **QUIET)
    assert _bytes(out) == _bytes(ref) == _bytes(whole)
    assert calls["n"] - 100 == 4 + 8  # shard 0 kept; shard 1 redoes its partial episode; shard 2
    man = json.loads((out / "manifest.json").read_text())
    a = TokenDataset(out).actions.astype(np.float64)
    np.testing.assert_allclose(man["action_stats"]["mean"], a.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(man["action_stats"]["std"], a.std(0), rtol=1e-5, atol=1e-5)
    assert man["encoder"]["kind"] == "lfq" and man["frame_shape"] == [8, 8] and man["dtype"] == "uint32"
    ds = TokenDataset(out)
    assert ds.layout.quantized and len(ds) == 5 * 13 and int(np.asarray(ds.segment_ids).max()) == 4
    assert np.asarray(ds.video).max() < 2 ** 10


def test_shard_rank_jobs_and_merge_skip_missing(setup, tmp_path):
    _, store, _, small = setup
    for r in (0, 2):  # shard 1 never ran
        encode_store(store, tmp_path / "d", str(small), shards=3, shard_rank=r, batch_size=8, **QUIET)
    logs = []
    merged = merge_shards(find_shards(tmp_path / "d.shards"), tmp_path / "m", log=logs.append)
    assert any("skipping 1" in m and "shard1_of_3" in m for m in logs)
    ds = TokenDataset(merged)
    assert not ds.layout.quantized and ds.layout.frame_shape == (8, 4, 4) and ds.layout.dtype == "float16"
    seg = np.asarray(ds.segment_ids)
    assert list(np.unique(seg)) == list(range(seg.max() + 1))  # offset, contiguous episode ids
    full = encode_store(store, tmp_path / "full", str(small), shards=1, batch_size=8, **QUIET)
    fd = TokenDataset(full)
    n0 = len(TokenDataset(tmp_path / "d.shards" / "shard0_of_3"))
    assert np.array_equal(np.asarray(ds.video[:n0]), np.asarray(fd.video[:n0]))
    with pytest.raises(TokenDataError, match="none of the"):
        merge_shards([tmp_path / "nope"], tmp_path / "m2", log=lambda m: None)


def test_reads_a_dataset_written_in_the_reference_layout(tmp_path):
    """Exactly hma.md §3: video.bin uint32 (N, h, w), actions/actions.bin float32, segment_ids.bin int32."""
    d = tmp_path / "droid_magvit_max1000000_train"
    (d / "actions").mkdir(parents=True)
    n, h, w, a = 30, 16, 16, 7
    rng = np.random.default_rng(0)
    video = rng.integers(0, 2 ** 18, size=(n, h, w), dtype=np.uint32)
    actions = rng.normal(size=(n, a)).astype(np.float32)
    seg = np.repeat(np.arange(3, dtype=np.int32), 10)
    video.tofile(d / "video.bin")
    actions.tofile(d / "actions" / "actions.bin")
    seg.tofile(d / "segment_ids.bin")
    meta = {"token_dtype": "uint32", "action_dim": a, "s": 16, "h": h, "w": w, "vocab_size": 2 ** 18, "hz": 15,
            "encoder_name_or_path": "data/magvit2.ckpt", "encoder_type": "magvit", "num_images": n, "name": "droid",
            "latent_channels": None, "quantized": True}
    (d / "metadata.json").write_text(json.dumps(meta))
    ds = TokenDataset(d)
    assert ds.name == "droid" and ds.action_dim == 7 and ds.layout.vocab_size == 2 ** 18
    starts = ds.window_starts(window=3, stride=2)  # span 6 per window, inside one 10-frame episode
    assert list(starts) == [0, 10, 20]
    assert len(ds.window_starts(window=3, stride=2, overlap=True)) == 3 * 5
    tokens, acts = ds.window(10, window=3, stride=2)
    assert np.array_equal(tokens, video[10:16:2])
    assert acts.shape == (3, 2 * a) and np.array_equal(acts[1], actions[12:14].reshape(-1))
    # a second action file is concatenated on the last axis; a truncated video.bin is a clear error
    np.ones((n, 2), np.float32).tofile(d / "actions" / "zz_gripper.bin")
    assert TokenDataset(d).action_dim == 9
    with open(d / "video.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(TokenDataError, match="video.bin: expected"):
        TokenDataset(d)
    shutil.rmtree(d)
