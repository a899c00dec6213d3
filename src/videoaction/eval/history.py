"""What a policy sees during a rollout: the last ``n_obs_steps`` observations (and the actions that led to them).

One :class:`ObservationHistory` per (sub-)environment; :func:`videoaction.eval.runner.run_episodes` keeps one per
vector-env slot, and the train/eval alignment test builds observations through the same class, so training windows
and rollouts agree by construction.

Convention (Diffusion Policy / UVA runners): at an episode start the history is filled with copies of the first
observation. ``history_action[k]`` is the action executed right *before* observation ``k`` was seen, so it never
holds the action about to be chosen; it is NaN where no action was executed yet (the repeated first frames).

Example with ``n_obs_steps=4`` (``o0`` at reset, ``a_t`` executed at step ``t`` giving ``o_{t+1}``)::

    after reset             obs [o0, o0, o0, o0]   history_action [nan, nan, nan, nan]
    after 1 append          obs [o0, o0, o0, o1]   history_action [nan, nan, nan, a0]
    after 5 appends         obs [o2, o3, o4, o5]   history_action [a1,  a2,  a3,  a4]
"""

from __future__ import annotations

from collections import deque
from typing import Mapping, Sequence

import numpy as np

from videoaction.errors import VideoActionError

HISTORY_ACTION_KEY = "history_action"


class ObservationHistory:
    """Rolling window of the last ``n_obs_steps`` observations of one environment, oldest first.

    ``keys``: observation keys to keep (default: every key of the first observation). ``action_dim``: when given,
    :meth:`stacked` also returns ``history_action`` ``(n_obs_steps, action_dim)`` float32.
    """

    def __init__(self, n_obs_steps: int, keys: Sequence[str] | None = None, action_dim: int | None = None):
        if int(n_obs_steps) < 1:
            raise VideoActionError(f"ObservationHistory: n_obs_steps must be >= 1, got {n_obs_steps}")
        self.n_obs_steps = int(n_obs_steps)
        self.keys = list(keys) if keys is not None else None
        self.action_dim = None if action_dim is None else int(action_dim)
        self._obs: dict[str, deque] = {}
        self._actions: deque | None = None

    def _select(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = self.keys if self.keys is not None else list(obs)
        missing = [k for k in keys if k not in obs]
        if missing:
            raise VideoActionError(f"ObservationHistory: observation lacks keys {missing}; it has {sorted(obs)}")
        return {k: np.array(obs[k], copy=True) for k in keys}

    def reset(self, obs0: Mapping[str, np.ndarray]) -> None:
        """Start an episode: every history slot holds (a copy of) ``obs0``; no action executed yet."""
        first = self._select(obs0)
        self._obs = {k: deque([v] * self.n_obs_steps, maxlen=self.n_obs_steps) for k, v in first.items()}
        if self.action_dim is not None:
            nan = np.full(self.action_dim, np.nan, np.float32)
            self._actions = deque([nan] * self.n_obs_steps, maxlen=self.n_obs_steps)

    def append(self, obs: Mapping[str, np.ndarray], action_executed: np.ndarray | None = None) -> None:
        """After an env step: ``obs`` is the new observation, ``action_executed`` the action that produced it."""
        if not self._obs:
            raise VideoActionError("ObservationHistory.append before reset")
        for k, v in self._select(obs).items():
            self._obs[k].append(v)
        if self._actions is not None:
            if action_executed is None:
                raise VideoActionError("ObservationHistory: action_dim is set, so append needs the executed action")
            a = np.asarray(action_executed, dtype=np.float32).reshape(-1)
            if a.shape[0] != self.action_dim:
                raise VideoActionError(f"ObservationHistory: executed action has {a.shape[0]} dims, expected "
                                       f"{self.action_dim}")
            self._actions.append(a.copy())

    def stacked(self) -> dict[str, np.ndarray]:
        """Each key ``(n_obs_steps, ...)`` oldest first, plus ``history_action`` when ``action_dim`` was given."""
        if not self._obs:
            raise VideoActionError("ObservationHistory.stacked before reset")
        out = {k: np.stack(list(d)) for k, d in self._obs.items()}
        if self._actions is not None:
            out[HISTORY_ACTION_KEY] = np.stack(list(self._actions)).astype(np.float32)
        return out


__all__ = ["HISTORY_ACTION_KEY", "ObservationHistory"]
