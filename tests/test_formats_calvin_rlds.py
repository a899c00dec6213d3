"""CALVIN episode npz folders and Open X-Embodiment RLDS TFRecord shards, written to their published layouts."""

from __future__ import annotations

import numpy as np
import pytest

from videoaction.data.formats import FormatError, detect_format, open_source
from videoaction.data.formats.convert import convert
from videoaction.data.formats.samples import write_calvin, write_rlds
from videoaction.data.formats.tfrecord import iter_records, masked_crc, write_records
from videoaction.data.store import EpisodeStore


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
    frame = root / "episode_0000003.npz"
    frame.write_bytes(frame.read_bytes()[:100])
    with pytest.raises(FormatError, match="truncated"):
        EpisodeStore.open(root).get_episode(0)


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
