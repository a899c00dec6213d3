"""Action conventions: converters checked on known poses and by round trips, named refusals, and the evaluation
runner converting a policy's chunks into a toy environment's convention (absolute rot6d and relative actions)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from videoaction.envs.action_conventions import (ActionConventionError, chunk_converter, convert_actions,
                                                 policy_action_convention)
from videoaction.envs.spec import EnvSpec, ObservationProtocol, register_env, unregister_env
from videoaction.eval.runner import evaluate_policy
from videoaction.models.base import ObsSpec

RZ90 = np.array([0.0, 0.0, np.pi / 2])  # 90 degrees about z


def test_known_pose_in_each_absolute_form():
    abs7 = np.array([[0.1, 0.2, 0.3, *RZ90, -1.0]])
    abs10 = convert_actions(abs7, "abs_axis_angle7", "abs_rot6d10")
    # Rz(90) = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]: rot6d = its first two rows
    np.testing.assert_allclose(abs10, [[0.1, 0.2, 0.3, 0, -1, 0, 1, 0, 0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(convert_actions(abs10, "abs_rot6d10", "abs_axis_angle7"), abs7, atol=1e-6)


def test_absolute_round_trips_on_random_poses():
    rng = np.random.default_rng(0)
    rot = Rotation.random(24, random_state=1).as_rotvec().reshape(2, 12, 3)  # angles in [0, pi)
    abs7 = np.concatenate([rng.normal(size=(2, 12, 3)), rot, rng.uniform(-1, 1, (2, 12, 1))], -1)
    back = convert_actions(convert_actions(abs7, "abs_axis_angle7", "abs_rot6d10"), "abs_rot6d10", "abs_axis_angle7")
    np.testing.assert_allclose(back, abs7, atol=1e-5)


def test_relative_chunk_becomes_absolute_targets_from_the_current_pose():
    current = np.array([[1.0, 2.0, 3.0, *RZ90]])  # at (1, 2, 3), turned 90 degrees about z
    identity6 = [1, 0, 0, 0, 1, 0]
    rel = np.array([[[0, 0, 0, *identity6, 0.5], [0.1, 0, 0, *identity6, 0.5]]])  # stay; 0.1 m along own x
    out = convert_actions(rel, "rel_rot6d10", "abs_axis_angle7", current)
    # own x axis is world +y after Rz(90): the second target is (1, 2.1, 3), orientation unchanged
    np.testing.assert_allclose(out[0, :, :3], [[1, 2, 3], [1, 2.1, 3]], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 3:6], [RZ90, RZ90], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 6], 0.5)
    # round trip through the relative form on random poses, batch of 3 with one current pose each
    rng = np.random.default_rng(3)
    pose = np.concatenate([rng.normal(size=(3, 3)), Rotation.random(3, random_state=4).as_rotvec()], -1)
    targets = np.concatenate([rng.normal(size=(3, 5, 3)), Rotation.random(15, random_state=5).as_rotvec()
                              .reshape(3, 5, 3), rng.uniform(0, 0.08, (3, 5, 1))], -1)
    rel10 = convert_actions(targets, "abs_axis_angle7", "rel_rot6d10", pose)
    assert not np.allclose(rel10[..., :3], targets[..., :3], atol=1e-3)  # really expressed in another frame
    np.testing.assert_allclose(convert_actions(rel10, "rel_rot6d10", "abs_axis_angle7", pose), targets, atol=1e-5)
    # the relative form of the current pose itself is the identity
    here = convert_actions(np.concatenate([pose, np.zeros((3, 1))], -1)[:, None], "abs_axis_angle7",
                           "rel_rot6d10", pose)
    np.testing.assert_allclose(here[:, 0, :9], np.tile([0, 0, 0, *identity6], (3, 1)), atol=1e-6)


def test_refusals_are_named():
    with pytest.raises(ActionConventionError, match="abs_action=true"):
        chunk_converter("abs_rot6d10", "delta_axis_angle7")
    with pytest.raises(ActionConventionError, match="unknown action convention 'quat8'"):
        chunk_converter("quat8", "abs_axis_angle7")
    with pytest.raises(ActionConventionError, match="ee_pose"):
        chunk_converter("rel_rot6d10", "abs_axis_angle7", ee_pose=None)
    with pytest.raises(ActionConventionError, match=r"\(B, Ta, 10\)"):
        convert_actions(np.zeros((1, 2, 7)), "abs_rot6d10", "abs_axis_angle7")
    with pytest.raises(ActionConventionError, match="current end-effector pose"):
        convert_actions(np.zeros((1, 2, 10)), "rel_rot6d10", "abs_axis_angle7")
    assert chunk_converter(None, "abs_axis_angle7") is None and chunk_converter("xy2", "xy2") is None


# ------------------------------------------------------------------------------------------ through the runner
class PoseEnv(gym.Env):
    """7-d absolute pose actions; state = the commanded pose (position + axis-angle) + 2 gripper dims."""

    def __init__(self, image_size: int = 8):
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "state": gym.spaces.Box(-10, 10, (8,), np.float32)})
        self.action_space = gym.spaces.Box(-10, 10, (7,), np.float32)
        self.size, self.received = image_size, []

    def _obs(self):
        return {"image": np.zeros((self.size, self.size, 3), np.uint8),
                "state": np.concatenate([self.pose, [0.0, 0.0]]).astype(np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pose = np.array([1.0, 2.0, 3.0, *RZ90])
        return self._obs(), {}

    def step(self, action):
        action = np.asarray(action, np.float64)
        self.received.append(action.copy())
        self.pose = action[:6]
        return self._obs(), 0.0, False, False, {"is_success": False}


ENVS: list[PoseEnv] = []


def _build(variant, **kw):
    ENVS.append(PoseEnv(**kw))
    return ENVS[-1]


POSE = EnvSpec(name="posetoy", gym_id="videoaction-test/PoseToy-v0", build=_build,
               observation=ObservationProtocol(image_keys=("image",), state_key="state", proprio_dims=8,
                                               privileged_state_dims=8),
               action_convention="abs_axis_angle7", ee_pose=lambda obs: obs["state"][..., :6],
               max_steps=4, seed_start=0, render_backend="numpy", packages=("pytest",))


class FixedChunk:
    """A callable policy in a declared action convention, returning the same 2-step chunk every call."""

    n_obs_steps, n_action_steps = 1, 2

    def __init__(self, convention: str, chunk: np.ndarray):
        self.action_convention, self.chunk = convention, np.asarray(chunk, np.float32)

    def observation_spec(self):
        return {"state": ObsSpec((1, 8), "float32")}

    def __call__(self, obs):
        return np.repeat(self.chunk[None], obs["state"].shape[0], 0)


@pytest.fixture()
def pose_env():
    ENVS.clear()
    register_env(POSE)
    yield
    unregister_env("posetoy")


def test_runner_converts_rot6d_and_relative_chunks_into_the_env_convention(pose_env):
    ident6 = [1, 0, 0, 0, 1, 0]
    rot6d_z90 = [0, -1, 0, 1, 0, 0]
    policy = FixedChunk("abs_rot6d10", [[0.5, 0.5, 0.5, *rot6d_z90, 1], [0.5, 0.5, 0.6, *ident6, -1]])
    res = evaluate_policy(policy, "posetoy", seeds=[0], n_envs=1, max_steps=2, progress=False)
    assert res["protocol"]["action_convention"] == "abs_rot6d10"
    assert res["protocol"]["action_conversion"] == ["abs_rot6d10 -> abs_axis_angle7"]
    got = np.array(ENVS[-1].received)
    np.testing.assert_allclose(got, [[0.5, 0.5, 0.5, *RZ90, 1], [0.5, 0.5, 0.6, 0, 0, 0, -1]], atol=1e-6)

    # relative: each chunk starts from the pose observed at its start (the env moves to every target)
    ENVS.clear()
    step = FixedChunk("rel_rot6d10", [[0.1, 0, 0, *ident6, 1], [0.2, 0, 0, *ident6, 1]])
    evaluate_policy(step, "posetoy", seeds=[0], n_envs=1, max_steps=4, progress=False)
    got = np.array(ENVS[-1].received)[:, :3]
    # start (1, 2, 3) facing +y: chunk 1 -> y 2.1, 2.2; chunk 2 starts at 2.2 -> 2.3, 2.4
    np.testing.assert_allclose(got, [[1, 2.1, 3], [1, 2.2, 3], [1, 2.3, 3], [1, 2.4, 3]], atol=1e-5)


def test_policy_convention_comes_from_the_run_config():
    from videoaction.config import DatasetConfig

    class P:
        cfg = type("Cfg", (), {"dataset": DatasetConfig(action_convention="abs_rot6d10")})()

    assert policy_action_convention(P()) == "abs_rot6d10"
    assert policy_action_convention(object()) is None


class WithHistory(FixedChunk):
    """Also asks for the actions executed before each history frame, as a UVA policy does."""

    n_obs_steps = 2

    def __init__(self, convention, chunk):
        super().__init__(convention, chunk)
        self.seen = []

    def observation_spec(self):
        return {"state": ObsSpec((2, 8), "float32"), "history_action": ObsSpec((2, self.chunk.shape[-1]), "float32")}

    def __call__(self, obs):
        self.seen.append(np.array(obs["history_action"]))
        return super().__call__(obs)


def test_history_actions_stay_in_the_policy_convention(pose_env):
    rot6d_z90 = [0, -1, 0, 1, 0, 0]
    chunk = np.array([[0.5, 0.5, 0.5, *rot6d_z90, 1], [0.5, 0.5, 0.6, *rot6d_z90, -1]], np.float32)
    policy = WithHistory("abs_rot6d10", chunk)
    evaluate_policy(policy, "posetoy", seeds=[0], n_envs=1, max_steps=4, progress=False)
    assert len(policy.seen) == 2 and policy.seen[1].shape == (1, 2, 10)
    np.testing.assert_allclose(policy.seen[1][0], chunk, atol=1e-6)  # what it predicted, not the env's 7-d form
    assert np.isnan(policy.seen[0]).all()  # episode start: no action yet
