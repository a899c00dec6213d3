"""CALVIN episode npz folders and Open X-Embodiment RLDS TFRecord shards, written to their published layouts."""

from __future__ import annotations

import json

import imagecodecs
import numpy as np
import pytest

from videoaction.data.formats import FormatError, detect_format, open_source
from videoaction.data.formats.convert import convert
from videoaction.data.formats.tfrecord import build_example, iter_records, masked_crc, write_records
from videoaction.data.store import EpisodeStore


def write_calvin(root, ranges=((0, 4), (5, 11)), with_language=True):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(ranges[-1][1] + 1):
        np.savez(root / f"episode_{i:07d}.npz", actions=np.full(7, i, np.float64), rel_actions=rng.normal(size=7),
                 robot_obs=rng.normal(size=15), scene_obs=rng.normal(size=24),
                 rgb_static=np.full((16, 16, 3), i, np.uint8), rgb_gripper=np.full((8, 8, 3), 2 * i, np.uint8))
    np.save(root / "ep_start_end_ids.npy", np.array(ranges))
    if with_language:
        (root / "lang_annotations").mkdir(exist_ok=True)
        ann = {"language": {"ann": ["open the drawer", "push the button"], "task": ["open_drawer", "push"]},
               "info": {"episodes": [], "indx": [(1, 3), (6, 9)]}}
        np.save(root / "lang_annotations/auto_lang_ann.npy", ann, allow_pickle=True)
    return root


def test_calvin_episodes_from_start_end_ids(tmp_path):
    root = write_calvin(tmp_path / "training")
    assert detect_format(root) == "calvin"
    store = EpisodeStore.open(root)  # no pickle: episodes without language
    np.testing.assert_array_equal(store.episode_lengths, [5, 7])
    assert set(store.keys) == {"action", "rel_action", "robot_obs", "scene_obs", "rgb_static", "rgb_gripper"}
    np.testing.assert_array_equal(store.get_episode(1)["action"][:, 0], np.arange(5, 12))
    assert store.get_episode(0)["rgb_static"].shape == (5, 16, 16, 3)
    assert store.meta_column("language").tolist() == ["", ""]
    src = open_source(root, allow_pickle=True)
    assert src.meta["language"] == ["open the drawer", "push the button"]


def test_calvin_language_windows_need_the_explicit_pickle_flag(tmp_path):
    root = write_calvin(tmp_path / "training")
    with pytest.raises(FormatError, match="allow-pickle"):
        open_source(root, split="language")
    src = open_source(root, split="language", allow_pickle=True)
    np.testing.assert_array_equal(src.lengths, [3, 4])
    np.testing.assert_array_equal(src.read(1, "action")[:, 0], [6, 7, 8, 9])
    out = convert(root, tmp_path / "c.zarr", progress=False, split="language", allow_pickle=True)
    assert out["frames"] == 7 and EpisodeStore.open(tmp_path / "c.zarr").episode_meta(1)["language"] == \
        "push the button"


def test_calvin_missing_frame_is_a_named_error(tmp_path):
    root = write_calvin(tmp_path / "training", with_language=False)
    (root / "episode_0000007.npz").unlink()
    with pytest.raises(FormatError, match="episode_0000007.npz"):
        EpisodeStore.open(root).get_episode(1)


FEATURES = {"featuresDict": {"features": {
    "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset", "sequence": {
        "feature": {"featuresDict": {"features": {
            "observation": {"featuresDict": {"features": {
                "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                          "image": {"shape": {"dimensions": ["16", "16", "3"]}, "dtype": "uint8",
                                    "encodingFormat": "jpeg"}},
                "state": {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
                          "tensor": {"shape": {"dimensions": ["4"]}, "dtype": "float32", "encoding": "none"}}}}},
            "action": {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
                       "tensor": {"shape": {"dimensions": ["7"]}, "dtype": "float32", "encoding": "none"}},
            "is_first": {"pythonClassName": "tensorflow_datasets.core.features.scalar.Scalar",
                         "tensor": {"shape": {}, "dtype": "bool", "encoding": "none"}},
            "language_instruction": {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text",
                                     "text": {}}}}},
        "length": "-1"}},
    "episode_metadata": {"featuresDict": {"features": {"file_path": {"text": {}}}}}}}}


def write_rlds(root, lengths=(4, 6), shards=2):
    root.mkdir(parents=True, exist_ok=True)
    (root / "features.json").write_text(json.dumps(FEATURES))
    (root / "dataset_info.json").write_text(json.dumps({"name": "toy_ds", "version": "0.1.0", "fileFormat": "tfrecord",
                                                        "splits": [{"name": "train", "shardLengths": ["1"] * shards}]}))
    rng = np.random.default_rng(0)
    episodes = []
    for e, n in enumerate(lengths):
        img = np.zeros((n, 16, 16, 3), np.uint8)
        img[:, :, :, 0] = 40 * np.arange(n)[:, None, None] + 20
        ep = {"steps/observation/image": [imagecodecs.jpeg8_encode(x, level=95) for x in img],
              "steps/observation/state": rng.normal(size=(n, 4)).astype(np.float32),
              "steps/action": rng.normal(size=(n, 7)).astype(np.float32),
              "steps/is_first": (np.arange(n) == 0).astype(np.int64),
              "steps/language_instruction": [f"task {e}".encode()] * n,
              "episode_metadata/file_path": [f"/data/ep{e}.npy".encode()]}
        episodes.append((ep, img))
    per = -(-len(episodes) // shards)
    for s in range(shards):
        write_records(root / f"toy_ds-train.tfrecord-{s:05d}-of-{shards:05d}",
                      [build_example(ep) for ep, _ in episodes[s * per:(s + 1) * per]])
    return root, episodes


def test_tfrecord_framing_uses_masked_crc32c(tmp_path):
    # known value: crc32c("123456789") = 0xE3069283; masked = rotate right by 15, plus 0xa282ead8
    crc = 0xE3069283
    assert masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    write_records(tmp_path / "r.tfrecord", [b"abc", b""])
    assert [d for _, d in iter_records(tmp_path / "r.tfrecord")] == [b"abc", b""]


def test_rlds_episodes_with_language_and_decoded_images(tmp_path):
    root, episodes = write_rlds(tmp_path / "toy_ds/0.1.0")
    assert detect_format(root) == "rlds"
    store = EpisodeStore.open(root)
    np.testing.assert_array_equal(store.episode_lengths, [4, 6])
    assert store.keys == ["action", "is_first", "observation.image", "observation.state"]
    assert store.meta_column("language").tolist() == ["task 0", "task 1"]
    ep = store.get_episode(1)
    np.testing.assert_array_equal(ep["action"], episodes[1][0]["steps/action"])
    np.testing.assert_array_equal(ep["is_first"], [True] + [False] * 5)
    assert np.abs(ep["observation.image"].astype(int) - episodes[1][1]).max() <= 8  # JPEG
    out = convert(root, tmp_path / "r.zarr", progress=False)
    assert out["frames"] == 10


def test_rlds_corrupt_and_truncated_shards_give_named_errors(tmp_path):
    root, _ = write_rlds(tmp_path / "ds")
    shard = root / "toy_ds-train.tfrecord-00001-of-00002"
    raw = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(raw[:-10]))
    with pytest.raises(FormatError, match="truncated record"):
        open_source(root)
    raw[20] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="CRC mismatch"):
        open_source(root)
    (root / "features.json").unlink()
    with pytest.raises(FormatError, match="features.json"):
        open_source(root)
