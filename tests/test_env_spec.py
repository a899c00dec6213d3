"""Environment specs: registry lookups, named errors, the observation protocol, and a toy environment defined and
registered in this file that runs through evaluation and demo generation with no change anywhere else."""

from __future__ import annotations

import types

import gymnasium as gym
import numpy as np
import pytest

from videoaction.envs.spec import (EnvSpec, MetricSpec, ObservationProtocol, ObservationProtocolError,
                                   UnknownEnvError, check_observation_protocol, demo_env_names, expand_env,
                                   get_env_spec, make_env, register_env, unregister_env, valid_specs)
from videoaction.errors import VideoActionError
from videoaction.models.base import ObsSpec


# ---------------------------------------------------------------------------------------------- a toy environment
class LineEnv(gym.Env):
    """1-D: the agent at x moves by the action (clipped to +-1); success when |x - target| < 0.5.
    state = [x, target, steps]: x is the standard observation, the target is privileged."""

    def __init__(self, offset: float = 0.0, image_size: int = 8):
        self.offset, self.size = offset, image_size
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "state": gym.spaces.Box(-100, 100, (3,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[0, int(np.clip(self.x, 0, self.size - 1))] = 255
        return {"image": img, "state": np.array([self.x, self.target, self.k], np.float32)}

    def _closeness(self) -> float:
        return 1.0 - abs(self.x - self.target) / 10.0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.k = 0.0, 0
        self.target = 3.0 + (seed or 0) % 3 + self.offset
        return self._obs(), {"closeness": self._closeness()}

    def step(self, action):
        self.x += float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        self.k += 1
        ok = abs(self.x - self.target) < 0.5
        return self._obs(), float(ok), False, False, {"is_success": ok, "closeness": self._closeness()}


def record_line(cfg, task, seed):
    """Demo expert of the toy env: step toward the target (it may read the privileged state)."""
    env = make_env(f"line:{task}", seed)
    obs, _ = env.reset(seed=seed)
    rec = {"img": [], "state": [], "action": []}
    for _ in range(cfg.max_steps or get_env_spec("line").max_steps):
        a = np.sign(obs["state"][1:2] - obs["state"][:1]).astype(np.float32)
        rec["img"].append(obs["image"])
        rec["state"].append(obs["state"])
        rec["action"].append(a)
        obs, _, _, _, info = env.step(a)
        if info["is_success"]:
            break
    data = {k: np.stack(v) for k, v in rec.items()}
    return data, {"success": bool(info["is_success"]), "seed": int(seed), "task": task,
                  "language": get_env_spec("line").instruction(task), "length": len(rec["action"])}


LINE = EnvSpec(
    name="line", gym_id="videoaction-test/Line-v0",
    build=lambda variant, **kw: LineEnv(offset=2.0 if variant == "far" else 0.0, **kw),
    variants=("near", "far"), expand=lambda v: [t.strip() for t in v.split(",")],
    instruction=lambda v: f"Walk to the {v or 'near'} mark.",
    observation=ObservationProtocol(image_keys=("image",), state_key="state", proprio_dims=1,
                                    proprio_doc="x", privileged_state_dims=3),
    max_steps=6, seed_start=500,
    metrics=MetricSpec(tracked_info=("closeness",),
                       summarize=lambda eps: {"mean_max_closeness": float(np.mean([e["max_closeness"] for e in eps]))},
                       headline=("mean_max_closeness",),
                       labels={"success_rate": "success rate", "mean_max_closeness": "closeness"},
                       definitions={"mean_max_closeness": "mean over episodes of 1 - min distance / 10"}),
    render_backend="numpy", packages=("pytest",), demo="tests.test_env_spec:record_line",
    demo_tasks=lambda names: list(names or ["near"]))


@pytest.fixture()
def line_env():
    register_env(LINE)
    yield LINE
    unregister_env("line")


class Forward:
    """Callable policy that declares its observations: 2 steps of the 1-d proprio; always +1."""

    n_obs_steps, n_action_steps = 2, 2

    def __init__(self, state_dims: int = 1, preset: str = ""):
        self.state_dims, self.seen = state_dims, []
        self.cfg = types.SimpleNamespace(preset=preset)

    def observation_spec(self):
        return {"state": ObsSpec((2, self.state_dims), "float32")}

    def __call__(self, obs):
        self.seen.append({k: np.array(v) for k, v in obs.items()})
        return np.ones((obs["state"].shape[0], 2, 1), np.float32)


# ---------------------------------------------------------------------------------------------- registry
def test_builtin_specs_resolve_by_name_variant_and_dash_form():
    pytest.importorskip("gym_pusht")
    assert get_env_spec("pusht").name == "pusht" and get_env_spec("PushT").name == "pusht"
    assert get_env_spec("pusht-bg-color").name == "pusht" and get_env_spec("pusht-m-goal-color").name == "pusht-m"
    assert get_env_spec("pusht-m:goal-color").env_family == get_env_spec("pusht").env_family == "pusht"
    mw = get_env_spec("metaworld:reach,drawer-open")
    assert mw.name == "metaworld" and mw.env_family == "metaworld"
    assert (get_env_spec("pusht").max_steps, mw.max_steps) == (300, 500)
    assert (get_env_spec("pusht").observation.proprio_dims, mw.observation.proprio_dims) == (2, 4)
    assert get_env_spec("pusht").metrics.headline == ("dp_score", "mean_max_coverage") and not mw.metrics.headline
    assert expand_env("pusht-bg-color") == ["pusht-bg-color"]
    assert expand_env("metaworld:reach,drawer-open-v3") == ["metaworld:reach", "metaworld:drawer-open"]
    assert {"pusht", "pusht-m", "metaworld"} <= set(demo_env_names())
    env = gym.make("videoaction/PushT-M-v0", variant="bg-color", image_size=16)  # registered with gymnasium too
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (16, 16, 3) and env.unwrapped.multi_goal
    assert env.unwrapped.visual.bg_color != (255, 255, 255)
    env.close()


def test_unknown_names_are_named_errors_listing_the_valid_ones():
    pytest.importorskip("gym_pusht")
    with pytest.raises(UnknownEnvError, match=r"unknown environment 'robosuite:lift'; valid: ") as err:
        get_env_spec("robosuite:lift")
    for name in ("pusht", "pusht-m", "metaworld:<task>"):  # every registered spec is listed, in any order
        assert name in str(err.value)
    assert issubclass(UnknownEnvError, VideoActionError)
    with pytest.raises(UnknownEnvError, match="pusht-m"):
        make_env("pushy")
    with pytest.raises(UnknownEnvError, match="needs a variant"):
        make_env("metaworld")
    assert "pusht:bg-color" in valid_specs()
    with pytest.raises(VideoActionError, match="already registered"):
        register_env(EnvSpec(name="pusht", build=lambda v: None, gym_id="x/y-v0"))


# ---------------------------------------------------------------------------------------------- protocol
def test_observation_protocol_refuses_privileged_state():
    pytest.importorskip("gym_pusht")
    pusht = get_env_spec("pusht")
    img = ObsSpec((2, 96, 96, 3), "uint8")
    rec = check_observation_protocol(pusht, {"image": img, "state": ObsSpec((2, 2), "float32")})
    assert rec == {"keys": ["image", "state"], "state_dims": 2, "privileged_state": False}
    assert check_observation_protocol(pusht, {"image": img})["state_dims"] == 0  # image-only variant
    undeclared = check_observation_protocol(pusht, None)  # a plain callable: given everything, use unknown
    assert undeclared["state_dims"] == 5 and undeclared["privileged_state"] is None
    full = {"image": img, "state": ObsSpec((2, 5), "float32")}
    with pytest.raises(ObservationProtocolError, match=r"state\[:2\].*agent_pos.*privileged_state"):
        check_observation_protocol(pusht, full)
    assert check_observation_protocol(pusht, full, privileged=True)["privileged_state"] is True
    with pytest.raises(ObservationProtocolError, match="has 5"):
        check_observation_protocol(pusht, {"state": ObsSpec((2, 6), "float32")}, privileged=True)
    with pytest.raises(ObservationProtocolError, match="agent_pos"):
        check_observation_protocol(pusht, {"agent_pos": ObsSpec((2, 2), "float32")})
    mw = get_env_spec("metaworld")
    assert check_observation_protocol(mw, {"image": img, "state": (2, 4), "history_action": (2, 4)})["keys"] == [
        "image", "state", "history_action"]
    with pytest.raises(ObservationProtocolError, match="hand x, y, z"):
        check_observation_protocol(mw, {"image": img, "state": (2, 39)})


# ---------------------------------------------------------------------------------------------- one file adds an env
def test_toy_env_runs_through_evaluate_policy(line_env, tmp_path):
    from videoaction.eval.runner import evaluate_policy

    pol = Forward()
    res = evaluate_policy(pol, "line:near,far", n_episodes=3, n_envs=2, out_dir=tmp_path, progress=False)
    assert res["seeds"] == [500, 501, 502] and res["protocol"]["max_steps"] == 6  # the spec's seeds and max steps
    assert set(res["tasks"]) == {"line:near", "line:far"} and res["env_family"] == "line"
    near, far = (res["tasks"][t]["episodes"] for t in ("line:near", "line:far"))
    assert [e["steps"] for e in near] == [5, 3, 4] and all(e["success"] for e in near)  # targets 5, 3, 4
    assert [e["steps"] for e in far] == [6, 5, 6] and [e["success"] for e in far] == [False, True, True]
    assert far[0]["max_closeness"] == pytest.approx(0.9) and far[0]["initial_closeness"] == pytest.approx(0.3)
    assert "max_coverage" not in far[0]  # only what the spec tracks
    m = res["metrics"]
    assert m["per_task_success"] == pytest.approx({"line:near": 1.0, "line:far": 2 / 3})
    assert m["mean_max_closeness"] == pytest.approx((6 * 1.0 - 0.1) / 6)  # headline over both tasks' episodes
    assert res["tasks"]["line:far"]["metrics"]["mean_max_closeness"] == pytest.approx(2.9 / 3)
    assert res["metric_labels"]["mean_max_closeness"] == "closeness"
    assert "1 - min distance" in res["metric_definitions"]["mean_max_closeness"]
    assert res["versions"]["pytest"] == pytest.__version__ and res["protocol"]["render_backend"] == "numpy"
    assert res["observation"] == {"keys": ["state"], "state_dims": 1, "privileged_state": False}
    # the policy saw its declared observation only: 1 state dim, not the privileged target
    assert all(set(s) == {"state"} and s["state"].shape[1:] == (2, 1) for s in pol.seen)
    from videoaction.eval.report import write_report

    text = write_report(tmp_path, res).read_text()
    assert "closeness" in text and "line:far" in text


def test_toy_env_privileged_state_needs_a_label(line_env):
    from videoaction.eval.runner import evaluate_policy

    with pytest.raises(ObservationProtocolError, match="privileged"):
        evaluate_policy(Forward(state_dims=2), "line", n_episodes=1, progress=False)
    for kw, pol in (({"privileged_state": True}, Forward(state_dims=2)),
                    ({}, Forward(state_dims=2, preset="line-privileged_state"))):
        res = evaluate_policy(pol, "line", n_episodes=1, progress=False, **kw)
        assert res["observation"] == {"keys": ["state"], "state_dims": 2, "privileged_state": True}
        assert pol.seen[0]["state"].shape[-1] == 2


def test_toy_env_demos_through_the_spec(line_env, tmp_path):
    from videoaction.data.store import EpisodeStore
    from videoaction.demos.generate import generate, jobs_for

    st = generate(jobs_for("line", episodes=2, seed=0, tasks=["far"]), tmp_path / "d.zarr", progress=False)
    assert st["succeeded"] == 2
    store = EpisodeStore.open(tmp_path / "d.zarr")
    assert [store.episode_meta(i)["language"] for i in range(2)] == ["Walk to the far mark."] * 2
    assert [store.episode_meta(i)["length"] for i in range(2)] == [5, 6]  # targets 5 and 6
    with pytest.raises(UnknownEnvError, match="no scripted demonstrations"):
        register_env(EnvSpec(name="nodemo", build=lambda v: LineEnv(), gym_id="videoaction-test/NoDemo-v0"))
        try:
            jobs_for("nodemo", 1)
        finally:
            unregister_env("nodemo")
