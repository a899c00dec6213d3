"""ObservationHistory: exact window contents, and the runner feeding it (history actions only when asked for)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from videoaction.errors import VideoActionError
from videoaction.eval.history import ObservationHistory
from videoaction.eval.runner import PolicyAdapter, run_episodes
from videoaction.models.base import ObsSpec


def _obs(t: int) -> dict:
    return {"image": np.full((2, 2, 3), t, np.uint8), "state": np.array([t, -t], np.float32)}


def _act(t: int) -> np.ndarray:
    return np.array([10.0 + t, 20.0 + t], np.float32)


def _frame_ids(h: ObservationHistory) -> list[int]:
    s = h.stacked()
    assert s["image"].shape == (4, 2, 2, 3) and s["state"].shape == (4, 2)
    ids = [int(x) for x in s["image"][:, 0, 0, 0]]
    assert ids == [int(x) for x in s["state"][:, 0]]
    return ids


def test_history_contents_at_steps_0_1_5():
    h = ObservationHistory(4, action_dim=2)
    h.reset(_obs(0))
    assert _frame_ids(h) == [0, 0, 0, 0]
    assert np.isnan(h.stacked()["history_action"]).all()
    assert h.stacked()["history_action"].dtype == np.float32

    h.append(_obs(1), _act(0))  # a0 executed at step 0 gave o1
    assert _frame_ids(h) == [0, 0, 0, 1]
    ha = h.stacked()["history_action"]
    assert np.isnan(ha[:3]).all() and ha[3].tolist() == [10.0, 20.0]

    for t in range(1, 5):
        h.append(_obs(t + 1), _act(t))
    assert _frame_ids(h) == [2, 3, 4, 5]
    np.testing.assert_array_equal(h.stacked()["history_action"], np.stack([_act(t) for t in (1, 2, 3, 4)]))


def test_history_copies_and_key_selection():
    h = ObservationHistory(2, keys=["state"])
    o = _obs(3)
    h.reset(o)
    o["state"][:] = 99  # the caller reusing its buffer must not change the history
    s = h.stacked()
    assert set(s) == {"state"} and s["state"].tolist() == [[3, -3], [3, -3]]
    h.append(_obs(4))  # no action_dim: no action needed, none returned
    assert "history_action" not in h.stacked() and h.stacked()["state"][:, 0].tolist() == [3, 4]
    with pytest.raises(VideoActionError, match="lacks keys"):
        h.append({"image": o["image"]})


def test_history_errors():
    with pytest.raises(VideoActionError):
        ObservationHistory(0)
    h = ObservationHistory(2, action_dim=2)
    with pytest.raises(VideoActionError, match="before reset"):
        h.stacked()
    h.reset(_obs(0))
    with pytest.raises(VideoActionError, match="executed action"):
        h.append(_obs(1))
    with pytest.raises(VideoActionError, match="3 dims"):
        h.append(_obs(1), np.zeros(3))


class CounterEnv(gym.Env):
    """state = [step index, seed]; the episode lasts 6 steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-1e6, 1e6, (2,), np.float32)})
        self.action_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
        self.t, self.s = 0, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.s = 0, int(seed or 0)
        return {"state": np.array([0, self.s], np.float32)}, {}

    def step(self, action):
        self.t += 1
        return {"state": np.array([self.t, self.s], np.float32)}, 0.0, False, self.t >= 6, {}


class RecordingPolicy:
    """Callable policy: action at step t = [t, 100 t]; records what it was given."""

    def __init__(self, want_history_action: bool):
        self.n_obs_steps, self.n_action_steps = 3, 2
        self.want = want_history_action
        self.calls: list[dict] = []

    def observation_spec(self):
        spec = {"state": ObsSpec((3, 2), "float32")}
        if self.want:
            spec["history_action"] = ObsSpec((3, 2), "float32")
        return spec

    def __call__(self, obs):
        self.calls.append({k: np.array(v) for k, v in obs.items()})
        t = obs["state"][:, -1, 0]  # (B,) current step index
        return np.stack([np.stack([t + j, 100 * (t + j)], -1) for j in range(2)], 1).astype(np.float32)


@pytest.mark.parametrize("want", [False, True])
def test_runner_passes_history_action_only_when_asked(want):
    pol = RecordingPolicy(want)
    run_episodes(PolicyAdapter(pol), "toy", [5, 6], n_envs=2, max_steps=6, env_fn=lambda spec, seed: CounterEnv(),
                 progress=False)
    assert len(pol.calls) == 3  # 6 steps / 2-action chunks, both envs in one batch
    for call in pol.calls:
        assert ("history_action" in call) == want
    c1 = pol.calls[1]  # at step 2: states [0, 1, 2] of each env
    np.testing.assert_array_equal(c1["state"][:, :, 0], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(c1["state"][:, :, 1], [[5, 5, 5], [6, 6, 6]])
    if want:
        ha = pol.calls[0]["history_action"]
        assert ha.shape == (2, 3, 2) and np.isnan(ha).all()
        ha = c1["history_action"]  # action before o0: none; a0 = [0, 0] gave o1; a1 = [1, 100] gave o2
        assert np.isnan(ha[:, 0]).all()
        np.testing.assert_array_equal(ha[:, 1:], [[[0, 0], [1, 100]]] * 2)
