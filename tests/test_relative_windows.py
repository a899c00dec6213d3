"""Training on relative end-effector windows (dataset.pose_repr = relative; UMI / UVA real-world convention)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.config import DatasetConfig, FrameConfig
from videoaction.data import poses
from videoaction.data.dataset import SequenceDataset
from videoaction.data.formats.samples import write_umi
from videoaction.data.relative import relative_proprio
from videoaction.envs.action_conventions import chunk_converter
from videoaction.errors import ConfigError

torch.set_num_threads(1)
IDENTITY10 = np.array([0, 0, 0, 1, 0, 0, 0, 1, 0], np.float32)  # position 0 + rot6d of I (gripper appended)
LENGTHS = (12, 15)


def _cfg(**kw) -> DatasetConfig:
    base = dict(image_key="camera0_rgb", state_key="state", state_dims=None, horizon=8, pad_before=2, pad_after=3,
                frames=FrameConfig(n_history=3, n_future=0, offset=0, stride=1), image_size=32, val_ratio=0.0,
                pose_repr="relative")
    base.update(kw)
    return DatasetConfig(**base)


@pytest.fixture(scope="module")
def umi(tmp_path_factory):
    return write_umi(tmp_path_factory.mktemp("rel") / "cup.zarr.zip", lengths=LENGTHS)


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    """Constant orientation (90 deg about z), position moving by (0.01, 0.02, 0) per step."""
    n = sum(LENGTHS)
    arrays = {"robot0_eef_pos": np.arange(n)[:, None] * np.array([0.01, 0.02, 0.0]) + [0.3, -0.1, 0.2],
              "robot0_eef_rot_axis_angle": np.tile([0.0, 0.0, np.pi / 2], (n, 1))}
    return write_umi(tmp_path_factory.mktemp("trans") / "t.zarr.zip", lengths=LENGTHS, arrays=arrays)


def test_current_step_is_the_identity_pose_and_gripper_stays_absolute(umi):
    cfg = _cfg()
    ds = SequenceDataset(umi[0], cfg, augment=False)
    cur = cfg.frames.last_history
    assert cfg.action_convention == "rel_rot6d10" and ds.action_dim == 10 and ds.state_dim == 10
    width = umi[1]["robot0_gripper_width"][:, 0]
    for i in (0, 5, len(ds) - 1):
        item, buf = ds[i], ds.sampler.positions(i)[0]
        assert item["action"].shape == (8, 10) and item["state"].shape == (8, 10)
        np.testing.assert_allclose(item["state"][cur, :9], IDENTITY10, atol=1e-6)
        np.testing.assert_allclose(item["action"][cur, :9], IDENTITY10, atol=1e-6)  # no action latency
        np.testing.assert_allclose(item["action"][:, 9], width[buf], atol=1e-7)
        # other steps are not the identity (the fixture rotates and moves every step)
        assert np.abs(item["action"][cur + 1, :9].numpy() - IDENTITY10).max() > 1e-3


def test_pure_translation_gives_offsets_in_the_current_gripper_frame(translation):
    cfg = _cfg(pad_before=0, pad_after=0)
    ds = SequenceDataset(translation[0], cfg, augment=False)
    cur = cfg.frames.last_history
    item = ds[4]  # inside episode 0, no padding
    k = np.arange(8) - cur
    # world step (0.01, 0.02, 0) seen from a gripper rotated 90 deg about z: R^T d = (0.02, -0.01, 0)
    expected = k[:, None] * np.array([0.02, -0.01, 0.0])
    np.testing.assert_allclose(item["action"][:, :3], expected, atol=1e-5)
    np.testing.assert_allclose(item["state"][:, :3], expected, atol=1e-5)
    np.testing.assert_allclose(item["action"][:, 3:9], np.tile(IDENTITY10[3:], (8, 1)), atol=1e-6)
    # history actions (executed before each history frame) share the current frame: one step behind the state
    np.testing.assert_allclose(item["history_action"][:, :3], expected[:3] - [0.02, -0.01, 0.0], atol=1e-5)


def test_round_trip_dataset_normalizer_env_converter_reproduces_absolute_targets(umi):
    cfg = _cfg()
    ds = SequenceDataset(umi[0], cfg, augment=False)
    norm = ds.fit_normalizer()
    cur = cfg.frames.last_history
    absolute = ds.store.to_numpy(["action", "state"])  # (N, 7) pos + axis-angle + width
    convert = chunk_converter(cfg.action_convention, "abs_axis_angle7", ee_pose=lambda obs: obs["pose"])
    for i in (1, 9, len(ds) - 2):
        item, buf = ds[i], ds.sampler.positions(i)[0]
        # policy side: what the network regresses (normalized) and what the adapter hands back (unnormalized)
        predicted = norm.unnormalize("action", norm.normalize("action", item["action"][None]))
        pose_now = absolute["state"][buf[cur], :6][None]  # the env's EnvSpec.ee_pose at the chunk start
        out = convert(predicted.numpy()[:, cur:], {"pose": pose_now})[0]  # executed part of the chunk
        target = absolute["action"][buf[cur:]]
        np.testing.assert_allclose(out[:, :3], target[:, :3], atol=1e-4)
        np.testing.assert_allclose(poses.axis_angle_to_matrix(out[:, 3:6]), poses.axis_angle_to_matrix(target[:, 3:6]),
                                   atol=1e-4)
        np.testing.assert_allclose(out[:, 6], target[:, 6], atol=1e-5)


def test_inference_proprio_matches_training_windows(umi):
    cfg = _cfg(pad_before=0)
    ds = SequenceDataset(umi[0], cfg, augment=False)
    cur = cfg.frames.last_history
    item, buf = ds[3], ds.sampler.positions(3)[0]
    history = ds.store.to_numpy(["state"])["state"][buf[: cur + 1]]  # what a rollout observes, absolute
    np.testing.assert_allclose(relative_proprio(history), item["state"][: cur + 1], atol=1e-6)


def test_two_robots_each_relative_to_its_own_current_pose(tmp_path):
    n = sum(LENGTHS)
    rng = np.random.default_rng(3)
    extra = {"robot1_eef_pos": rng.normal(size=(n, 3)), "robot1_eef_rot_axis_angle": rng.normal(scale=0.4, size=(n, 3)),
             "robot1_gripper_width": np.full((n, 1), 0.07)}
    path, _, _ = write_umi(tmp_path / "bi.zarr.zip", lengths=LENGTHS, arrays=extra)
    cfg = _cfg()
    ds = SequenceDataset(path, cfg, augment=False)
    item = ds[6]
    assert item["action"].shape == (8, 20) and ds.action_dim == 20 and cfg.action_convention == ""
    cur = cfg.frames.last_history
    for r in range(2):
        np.testing.assert_allclose(item["state"][cur, 10 * r: 10 * r + 9], IDENTITY10, atol=1e-6)
    np.testing.assert_allclose(item["action"][:, 19], 0.07, atol=1e-7)


def test_bad_relative_settings_give_named_errors(umi):
    with pytest.raises(ConfigError, match="state_dims=2"):
        SequenceDataset(umi[0], _cfg(state_dims=2), augment=False)
    with pytest.raises(ConfigError, match="pose_repr"):
        SequenceDataset(umi[0], _cfg(pose_repr="delta"), augment=False)
    with pytest.raises(ConfigError, match="abs_axis_angle7"):
        SequenceDataset(umi[0], _cfg(action_convention="abs_axis_angle7"), augment=False)


def test_dp_tiny_trains_on_relative_windows_and_records_the_convention(umi, tmp_path):
    from videoaction.config import get_preset, parse_overrides
    from videoaction.train.metrics import read_metrics
    from videoaction.train.synthetic import TINY_DP
    from videoaction.train.trainer import TrainOptions, train

    cfg = parse_overrides(get_preset("dp-tiny"), [
        "--data", str(umi[0]), "--out", str(tmp_path / "run"), "--steps", "2", "--log-every", "1", *TINY_DP,
        "--dataset.image-key", "camera0_rgb", "--dataset.pose-repr", "relative", "--dataset.state-dims", "10",
        "--model.state-dim", "10", "--model.action-dim", "10"])
    result = train(cfg, TrainOptions(progress=False, log=lambda msg: None))
    assert result.step == 2 and all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"]["pose_repr"] == "relative" and saved["dataset"]["action_convention"] == "rel_rot6d10"


def test_pusht_and_metaworld_declare_their_conventions():
    from videoaction.envs.action_conventions import ActionConventionError, get_convention
    from videoaction.envs.spec import get_env_spec

    for env, name, dim in (("pusht", "xy2", 2), ("pusht-m", "xy2", 2), ("metaworld:reach-v3", "mw4", 4)):
        spec = get_env_spec(env)
        assert spec.action_convention == name and get_convention(name).dim == dim
        assert chunk_converter(name, spec.action_convention) is None  # its own policies run unconverted
        with pytest.raises(ActionConventionError, match=name):  # a relative-pose policy is refused before a step
            chunk_converter("rel_rot6d10", spec.action_convention, ee_pose=lambda obs: obs["pose"])
