"""UMI .zarr.zip replay buffers (zarr 2 ZipStore + imagecodecs JPEG-XL chunks), mixtures, training from one."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import zarr
from imagecodecs.numcodecs import Jpegxl

from videoaction.data.formats import FormatError, detect_format, open_source
from videoaction.data.formats.umi import mixture_weights, register_codecs
from videoaction.data.store import EpisodeStore

torch.set_num_threads(1)


def write_umi(path, lengths=(12, 15), size=32, seed=0, drop=None):
    """A UMI replay buffer exactly as UMI's 07_generate_replay_buffer.py writes it (in memory, then a ZipStore)."""
    register_codecs()
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    mem = zarr.group(store=zarr.MemoryStore())
    data, meta = mem.require_group("data"), mem.require_group("meta")
    meta.array("episode_ends", np.cumsum(lengths).astype(np.int64), compressor=None)
    t = np.arange(n, dtype=np.float32)
    arrays = {
        "robot0_eef_pos": np.stack([np.sin(t / 5), np.cos(t / 5), t / 100], -1).astype(np.float32),
        "robot0_eef_rot_axis_angle": rng.normal(scale=0.3, size=(n, 3)).astype(np.float32),
        "robot0_gripper_width": (0.05 + 0.02 * np.sin(t / 3))[:, None].astype(np.float32),
        "robot0_demo_start_pose": np.zeros((n, 6)),
        "robot0_demo_end_pose": np.ones((n, 6)),
    }
    for k, v in arrays.items():
        if k != drop:
            data.array(k, v, chunks=v.shape)
    img = np.zeros((n, size, size, 3), np.uint8)
    img[..., 0] = (np.arange(size)[None, :, None] * 7 + t[:, None, None] * 3) % 255
    img[..., 1] = 90
    img[..., 2] = (np.arange(size)[None, None, :] * 5) % 255
    data.require_dataset("camera0_rgb", shape=img.shape, chunks=(1, size, size, 3), dtype=np.uint8,
                         compressor=Jpegxl(level=99, numthreads=1))
    data["camera0_rgb"][:] = img
    with zarr.ZipStore(str(path), mode="w") as zs:
        zarr.copy_store(mem.store, zs)
    return path, arrays, img


@pytest.fixture(scope="module")
def umi(tmp_path_factory):
    root = tmp_path_factory.mktemp("umi")
    return write_umi(root / "cup.zarr.zip")


def test_umi_zip_reads_jpegxl_frames_and_derives_state_and_action(umi):
    path, arrays, img = umi
    assert detect_format(path) == "umi"
    with zarr.ZipStore(str(path), mode="r") as zs:  # frames really are JPEG-XL chunks
        assert json.loads(zs["data/camera0_rgb/.zarray"])["compressor"]["id"] == "imagecodecs_jpegxl"
    store = EpisodeStore.open(path)
    np.testing.assert_array_equal(store.episode_ends, [12, 27])
    frames = store.to_numpy(["camera0_rgb"])["camera0_rgb"]
    assert frames.shape == img.shape and np.abs(frames.astype(int) - img).max() <= 2
    pose = np.concatenate([arrays["robot0_eef_pos"], arrays["robot0_eef_rot_axis_angle"],
                           arrays["robot0_gripper_width"]], -1)
    np.testing.assert_array_equal(store.to_numpy(["state"])["state"], pose)
    np.testing.assert_array_equal(store.to_numpy(["action"])["action"], pose)  # no latency: target = pose
    shifted = open_source(path, action_latency_steps=2)
    a = shifted.read(1, "action")
    np.testing.assert_array_equal(a[:-2], pose[14:27])
    np.testing.assert_array_equal(a[-2:], pose[[26, 26]])  # clamped inside the episode


def test_umi_reader_is_lazy_and_survives_pickling_into_workers(umi):
    path, _, img = umi
    src = open_source(path)
    clone = pickle.loads(pickle.dumps(src))  # a loader worker reopens its own ZipStore
    assert clone.files[0]._root is None
    np.testing.assert_array_equal(clone.read(1, "camera0_rgb"), src.read(1, "camera0_rgb"))
    # reading one episode decodes only that episode's chunks
    assert src.read(0, "camera0_rgb").shape[0] == 12


def test_weighted_mixture_of_two_datasets(umi, tmp_path):
    from videoaction.data.sampler import SequenceSampler

    other, _, _ = write_umi(tmp_path / "towel.zarr.zip", lengths=(10, 10, 10), seed=1)
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"datasets": [{"path": str(umi[0]), "weight": 3, "language": "arrange the cup"},
                                            {"path": "towel.zarr.zip", "weight": 1, "language": "fold the towel"}]}))
    assert detect_format(mix) == "umi"
    store = EpisodeStore.open(mix)
    assert store.n_episodes == 5 and store.n_steps == 57
    assert store.meta_column("language").tolist() == ["arrange the cup"] * 2 + ["fold the towel"] * 3
    sampler = SequenceSampler(store.episode_ends, horizon=4)
    w = mixture_weights(store, sampler)
    ds = store.meta_column("dataset")[[sampler.episode(i) for i in range(len(sampler))]]
    assert w[ds == "cup.zarr.zip"].sum() == pytest.approx(0.75)
    assert w[ds == "towel.zarr.zip"].sum() == pytest.approx(0.25)


def test_bad_umi_files_give_named_errors(tmp_path):
    path, _, _ = write_umi(tmp_path / "nogrip.zarr.zip", drop="robot0_gripper_width")
    with pytest.raises(FormatError, match="robot0_gripper_width"):
        open_source(path, "umi")
    good, _, _ = write_umi(tmp_path / "good.zarr.zip")
    trunc = tmp_path / "trunc.zarr.zip"
    trunc.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(FormatError):
        open_source(trunc, "umi")
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"datasets": [{"path": "good.zarr.zip", "weight": 0}]}))
    with pytest.raises(FormatError, match="weights must be positive"):
        open_source(mix)


def test_training_runs_directly_from_a_umi_zip(umi, tmp_path):
    from videoaction.config import get_preset, parse_overrides
    from videoaction.train.metrics import read_metrics
    from videoaction.train.synthetic import TINY_DP
    from videoaction.train.trainer import TrainOptions, train

    cfg = parse_overrides(get_preset("dp-tiny"), [
        "--data", str(umi[0]), "--out", str(tmp_path / "run"), "--steps", "2", "--log-every", "1", *TINY_DP,
        "--dataset.image-key", "camera0_rgb", "--dataset.state-dims", "7", "--model.state-dim", "7",
        "--model.action-dim", "7"])
    result = train(cfg, TrainOptions(progress=False, log=lambda msg: None))
    assert result.step == 2 and all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path / "run"))
