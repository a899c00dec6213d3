"""UMI .zarr.zip replay buffers (zarr 2 ZipStore + imagecodecs JPEG-XL chunks), mixtures, training from one."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import zarr

from videoaction.data.formats import FormatError, detect_format, open_source
from videoaction.data.formats.samples import write_umi
from videoaction.data.formats.umi import mixture_weights
from videoaction.data.store import EpisodeStore

torch.set_num_threads(1)


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
    late = open_source(path, obs_latency_steps=1).read(0, "state")
    np.testing.assert_array_equal(late, pose[[*range(1, 12), 11]])


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


def test_forked_loader_workers_read_a_mixture_lazily(umi, tmp_path):
    """Workers forked after the main process opened the zip must not share its file handle (corrupt reads)."""
    from torch.utils.data import DataLoader

    from videoaction.config import DatasetConfig, FrameConfig
    from videoaction.data.dataset import SequenceDataset

    other, _, _ = write_umi(tmp_path / "towel.zarr.zip", lengths=(10, 10, 10), seed=1)
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"datasets": [str(umi[0]), str(other)]}))
    store = EpisodeStore.open(mix)
    cfg = DatasetConfig(image_key="camera0_rgb", state_key="state", state_dims=None, horizon=4, pad_before=0,
                        pad_after=0, frames=FrameConfig(n_history=2, n_future=2, offset=0, stride=1),
                        image_size=32, val_ratio=0.0)
    ds = SequenceDataset(store, cfg, split="train", augment=False)
    assert ds.frames is None  # frames stay in the zips, read per sample
    first = ds[0]["image"]
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=2, multiprocessing_context="fork")
    images = torch.cat([b["image"] for b in loader])
    assert images.shape[0] == len(ds)
    torch.testing.assert_close(images[0], first)
    torch.testing.assert_close(images[-1], ds[len(ds) - 1]["image"])
