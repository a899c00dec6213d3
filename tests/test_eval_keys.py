"""Observation key mapping at evaluation: a policy trained on a store converted from a LIBERO hdf5 (camera names
``agentview_rgb`` / ``eye_in_hand_rgb``, the reader's 8-d ``state``) is evaluated in an environment with the LIBERO
EnvSpec's key names (``image`` / ``wrist_image`` / ``state``) and 7-d actions, through the key aliases the LIBERO
spec declares. The simulator is not needed: a toy env registered here stands in for the LIBERO scene."""

from __future__ import annotations

import functools

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from videoaction.config import get_preset, parse_overrides
from videoaction.data.formats.convert import convert
from videoaction.data.formats.samples import moving_frames, write_robomimic
from videoaction.data.store import EpisodeStore
from videoaction.envs.libero import DATASET_KEYS
from videoaction.envs.spec import (EnvSpec, ObservationProtocol, ObservationProtocolError, register_env,
                                   unregister_env)
from videoaction.eval.runner import evaluate_policy
from videoaction.models.base import load_policy
from videoaction.train.synthetic import TINY_DP
from videoaction.train.trainer import TrainOptions, train

torch.set_num_threads(1)
SIZE, LENGTHS = 32, (20, 22, 21)
MAIN_VALUE, WRIST_VALUE = 40, 177  # what the toy env's cameras show


def _libero_hdf5(path):
    """A LIBERO-layout file (robomimic layout + problem_info) with LIBERO's observation keys."""
    write_robomimic(path, lengths=LENGTHS, size=SIZE, image_key="agentview_rgb", libero=True)
    rng = np.random.default_rng(0)
    with h5py.File(path, "a") as f:
        for i, n in enumerate(LENGTHS):
            obs = f[f"data/demo_{i}/obs"]
            obs.create_dataset("eye_in_hand_rgb", data=moving_frames(n, SIZE, seed=10 + i))
            obs.create_dataset("ee_states", data=rng.normal(size=(n, 6)))
            obs.create_dataset("gripper_states", data=rng.uniform(0, 0.04, (n, 2)))
            obs.create_dataset("joint_states", data=rng.normal(size=(n, 7)))
    return path


class LiberoKeysEnv(gym.Env):
    """The LIBERO env's interface: ``image``, ``wrist_image`` (uint8), ``state`` (8), 7-d delta actions."""

    def __init__(self, image_size: int = SIZE):
        box = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict({"image": box, "wrist_image": box,
                                                  "state": gym.spaces.Box(-10, 10, (8,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (7,), np.float32)
        self.size, self.actions = image_size, []
        self.action_convention = "delta_axis_angle7"

    def _obs(self):
        return {"image": np.full((self.size, self.size, 3), MAIN_VALUE, np.uint8),
                "wrist_image": np.full((self.size, self.size, 3), WRIST_VALUE, np.uint8),
                "state": np.arange(8, dtype=np.float32) / 10}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {"language": "put the bowl on the plate"}

    def step(self, action):
        self.actions.append(np.asarray(action))
        return self._obs(), 0.0, False, False, {"is_success": False}


def _spec(aliases) -> EnvSpec:
    return EnvSpec(name="liberokeys", gym_id="videoaction-test/LiberoKeys-v0",
                   build=lambda variant, **kw: LiberoKeysEnv(**kw),
                   observation=ObservationProtocol(image_keys=("image", "wrist_image"), state_key="state",
                                                   proprio_dims=8, privileged_state_dims=8, key_aliases=aliases),
                   action_convention="delta_axis_angle7", max_steps=4, seed_start=0, render_backend="numpy",
                   packages=("pytest",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("libero_keys")
    src = _libero_hdf5(root / "KITCHEN_SCENE3_put_the_bowl_demo.hdf5")
    convert(src, root / "libero.zarr", progress=False)
    cfg = parse_overrides(get_preset("dp-tiny"), [
        "--data", str(root / "libero.zarr"), "--out", str(root / "run"), "--steps", "2", *TINY_DP,
        "--dataset.image-keys", "agentview_rgb", "eye_in_hand_rgb", "--dataset.state-key", "state",
        "--dataset.state-dims", "8"])
    train(cfg, TrainOptions(progress=False, log=lambda m: None, val_batches=0))
    return root, src


def test_converted_libero_store_has_the_env_state_and_its_action_convention(trained):
    root, src = trained
    store = EpisodeStore.open(root / "libero.zarr")
    assert store.attrs["action_convention"] == "delta_axis_angle7"
    with h5py.File(src) as f:
        want = np.concatenate([f["data/demo_1/obs/ee_states"][()], f["data/demo_1/obs/gripper_states"][()]], -1)
    np.testing.assert_allclose(store.get_episode(1)["state"], want, rtol=1e-6)  # the LIBERO env's 8-d state


def test_policy_from_a_libero_store_reads_the_libero_env_keys(trained):
    root, _ = trained
    policy = load_policy(root / "run").eval()
    assert sorted(policy.observation_spec()) == ["eye_in_hand_rgb", "image", "state"]
    assert policy.cfg.dataset.action_convention == "delta_axis_angle7"  # recorded from the store at training
    seen = []
    original = policy.predict_action

    @functools.wraps(original)
    def spy(obs, **kw):
        seen.append({k: v.clone() for k, v in obs.items() if isinstance(v, torch.Tensor)})
        return original(obs, **kw)

    policy.predict_action = spy
    register_env(_spec(DATASET_KEYS))
    try:
        res = evaluate_policy(policy, "liberokeys", seeds=[0], n_envs=1, max_steps=3, progress=False)
    finally:
        unregister_env("liberokeys")
    assert res["observation"]["key_map"] == {"eye_in_hand_rgb": "wrist_image"}
    assert res["protocol"]["action_conversion"] is None  # delta data, delta env: nothing to convert
    assert seen and bool((seen[0]["eye_in_hand_rgb"] == WRIST_VALUE).all())  # the wrist camera, by its alias
    assert bool((seen[0]["image"] == MAIN_VALUE).all())
    torch.testing.assert_close(seen[0]["state"][0, -1], torch.arange(8, dtype=torch.float32) / 10)
    assert res["tasks"]["liberokeys"]["episodes"][0]["steps"] == 3

    # without the declared aliases the environment has no 'eye_in_hand_rgb': a named refusal, before any step
    register_env(_spec({}))
    try:
        with pytest.raises(ObservationProtocolError, match="eye_in_hand_rgb"):
            evaluate_policy(policy, "liberokeys", seeds=[0], n_envs=1, max_steps=3, progress=False)
    finally:
        unregister_env("liberokeys")
