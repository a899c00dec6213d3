"""Episode store: round trip, Diffusion Policy layout compatibility, atomic appends and bad-input errors."""

from __future__ import annotations

import os
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from videoaction.errors import StoreError
from videoaction.data.store import EpisodeStore


def make_episode(rng, length, image_size=16):
    return {
        "img": rng.integers(0, 256, (length, image_size, image_size, 3), dtype=np.uint8),
        "state": rng.normal(size=(length, 5)).astype(np.float32),
        "action": rng.uniform(0, 512, size=(length, 2)).astype(np.float32),
    }


def write_store(path, lengths, seed=0):
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, attrs={"fps": 10})
    episodes = []
    for i, length in enumerate(lengths):
        ep = make_episode(rng, length)
        store.add_episode(ep, meta={"success": i % 2 == 0, "seed": i, "task": f"task-{i % 2}",
                                    "language": "push the T onto the target"})
        episodes.append(ep)
    return store, episodes


def write_dp_store(path, lengths, seed=0):
    """A store in Diffusion Policy's exact PushT layout, written with plain zarr v2 calls (as DP does)."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    root = zarr.open_group(str(path), mode="w")
    data, meta = root.create_group("data"), root.create_group("meta")
    comp = numcodecs.Blosc(cname="lz4", clevel=5)
    arrays = {
        "img": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
        "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
        "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
    }
    for key, value in arrays.items():
        chunks = (1, 96, 96, 3) if key == "img" else (min(n, 100), *value.shape[1:])
        data.array(key, value, chunks=chunks, compressor=comp)
    meta.array("episode_ends", np.cumsum(lengths).astype(np.int64), compressor=None)
    return arrays


def dp_style_reader(path):
    """The checks Diffusion Policy's ReplayBuffer makes when it opens a store."""
    root = zarr.open_group(str(path), mode="r")
    ends = root["meta"]["episode_ends"][:]
    for key, value in root["data"].items():
        assert value.shape[0] == ends[-1], key
    return {k: v[:] for k, v in root["data"].items()}, ends


def test_round_trip(tmp_path):
    store, episodes = write_store(tmp_path / "s.zarr", [5, 7, 3])
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert reopened.n_episodes == 3 and reopened.n_steps == 15
    np.testing.assert_array_equal(reopened.episode_ends, [5, 12, 15])
    np.testing.assert_array_equal(reopened.episode_lengths, [5, 7, 3])
    for i, ep in enumerate(episodes):
        got = reopened.get_episode(i)
        for key in ep:
            np.testing.assert_array_equal(got[key], ep[key])
            assert got[key].dtype == ep[key].dtype
    assert reopened.episode_meta(1) == {"success": False, "seed": 1, "task": "task-1",
                                        "language": "push the T onto the target"}
    assert reopened.attrs["fps"] == 10
    assert reopened.array("img").chunks == (1, 16, 16, 3)  # images chunked per frame
    assert reopened.array("img").compressor is not None
    mem = reopened.load_into_memory()
    np.testing.assert_array_equal(mem.get_episode(2)["img"], episodes[2]["img"])


def test_our_store_passes_diffusion_policy_reader(tmp_path):
    _, episodes = write_store(tmp_path / "s.zarr", [4, 6])
    data, ends = dp_style_reader(tmp_path / "s.zarr")
    assert ends.dtype == np.int64
    np.testing.assert_array_equal(data["action"], np.concatenate([e["action"] for e in episodes]))


def test_reads_diffusion_policy_layout(tmp_path):
    arrays = write_dp_store(tmp_path / "pusht.zarr", [30, 45])
    store = EpisodeStore.open(tmp_path / "pusht.zarr")
    assert store.keys == ["action", "img", "keypoint", "n_contacts", "state"]
    assert store.spec("keypoint") == ((9, 2), np.dtype("float32"))
    np.testing.assert_array_equal(store.get_episode(1)["img"], arrays["img"][30:])
    assert store.meta_keys == []


def test_append_resumes_and_rejects_mismatch(tmp_path):
    store, _ = write_store(tmp_path / "s.zarr", [5])
    resumed = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    rng = np.random.default_rng(1)
    resumed.add_episode(make_episode(rng, 4), meta={"success": True, "seed": 9, "task": "t", "language": "l"})
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 2
    bad = make_episode(rng, 4)
    bad["state"] = bad["state"][:, :3]
    with pytest.raises(StoreError, match=r"data/state.*wrong per-step shape.*\(5,\).*\(3,\)"):
        resumed.add_episode(bad, meta={"success": True, "seed": 9, "task": "t", "language": "l"})
    with pytest.raises(StoreError, match="empty episode"):
        resumed.add_episode({k: v[:0] for k, v in make_episode(rng, 2).items()})
    with pytest.raises(StoreError, match="different lengths"):
        ep = make_episode(rng, 3)
        ep["action"] = ep["action"][:2]
        resumed.add_episode(ep)
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(tmp_path / "s.zarr").add_episode(make_episode(rng, 2))
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(tmp_path / "s.zarr")


def test_interrupted_writer_is_detected_and_repaired(tmp_path):
    path = tmp_path / "s.zarr"
    store, _ = write_store(path, [5, 6])
    # Simulate a writer killed after extending the data arrays but before committing episode_ends.
    for key in store.keys:
        arr = store.array(key)
        arr.resize((arr.shape[0] + 3, *arr.shape[1:]))
    with pytest.raises(StoreError, match=r"data/\w+.*interrupted writer"):
        EpisodeStore.open(path)
    repaired = EpisodeStore.open(path, mode="a")
    assert repaired.n_steps == 11 and all(repaired.array(k).shape[0] == 11 for k in repaired.keys)
    repaired.add_episode(make_episode(np.random.default_rng(3), 2),
                         meta={"success": True, "seed": 2, "task": "t", "language": "l"})
    assert EpisodeStore.open(path).episode_lengths.tolist() == [5, 6, 2]


def test_interrupted_episode_ends_commit(tmp_path):
    path = tmp_path / "s.zarr"
    store, _ = write_store(path, [5, 6])
    ends = store.root["meta"]["episode_ends"]
    ends.resize((3,))  # shape written, value not yet: reads as the fill value 0
    with pytest.raises(StoreError, match="episode_ends"):
        EpisodeStore.open(path)
    assert EpisodeStore.open(path, mode="a").n_episodes == 2


@pytest.mark.parametrize("case", ["missing_data_group", "missing_episode_ends", "float_ends", "empty_episode",
                                  "ends_beyond_data", "meta_count", "not_a_store", "missing_path"])
def test_bad_stores_give_named_errors(tmp_path, case):
    path = tmp_path / "s.zarr"
    store, _ = write_store(path, [5, 6])
    root = zarr.open_group(str(path), mode="r+")
    expected = {
        "missing_data_group": "data",
        "missing_episode_ends": "meta/episode_ends",
        "float_ends": "meta/episode_ends",
        "empty_episode": "meta/episode_ends",
        "ends_beyond_data": "data/",
        "meta_count": "meta/seed",
        "not_a_store": "not a readable zarr group",
        "missing_path": "no dataset store",
    }[case]
    if case == "missing_data_group":
        del root["data"]
    elif case == "missing_episode_ends":
        del root["meta"]["episode_ends"]
    elif case == "float_ends":
        root["meta"].array("episode_ends", np.array([5.0, 11.0]), overwrite=True)
    elif case == "empty_episode":
        root["meta"].array("episode_ends", np.array([5, 5, 11], dtype=np.int64), overwrite=True)
    elif case == "ends_beyond_data":
        root["meta"].array("episode_ends", np.array([5, 20], dtype=np.int64), overwrite=True)
    elif case == "meta_count":
        root["meta"]["seed"].resize((1,))
    elif case == "not_a_store":
        path = tmp_path / "plain"
        path.mkdir()
        (path / "file.txt").write_text("hello")
    elif case == "missing_path":
        path = tmp_path / "nowhere.zarr"
    with pytest.raises(StoreError) as err:
        EpisodeStore.open(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_truncated_and_corrupt_chunks(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path, [5, 6])
    chunk_files = sorted((path / "data" / "img").glob("[0-9]*"))
    os.remove(chunk_files[-1])  # a partly copied store
    with pytest.raises(StoreError, match=r"data/img.*chunk files are missing"):
        EpisodeStore.open(path)
    path2 = tmp_path / "c.zarr"
    write_store(path2, [5, 6])
    first = sorted((path2 / "data" / "img").glob("[0-9]*"))[0]
    Path(first).write_bytes(b"\x00garbage" * 3)
    store = EpisodeStore.open(path2)
    with pytest.raises(StoreError, match=r"data/img.*could not read"):
        store.get_episode(0)
