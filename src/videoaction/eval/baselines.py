"""Trivial baseline policies, so every evaluation has a floor to compare a trained model against.

Both follow the runner's callable-policy protocol: ``policy(obs) -> actions (B, n_action_steps, A)`` numpy, with
``n_obs_steps`` / ``n_action_steps`` attributes; ``bind_action_space(space)`` is called by the runner with the
environment's (single) action space before the first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from videoaction.errors import VideoActionError


def _batch_size(obs: Mapping[str, np.ndarray]) -> int:
    for k, v in obs.items():
        if k != "language":
            return int(np.shape(v)[0])
    raise VideoActionError("baseline policy: empty observation")


class RandomPolicy:
    """Uniform random actions inside the action space's bounds (deterministic given ``seed``)."""

    name = "random"

    def __init__(self, low=None, high=None, n_action_steps: int = 8, seed: int = 0):
        self.low = None if low is None else np.asarray(low, np.float32)
        self.high = None if high is None else np.asarray(high, np.float32)
        self._bounds_given = low is not None
        self.n_obs_steps = 1
        self.n_action_steps = int(n_action_steps)
        self.rng = np.random.default_rng(seed)

    def bind_action_space(self, space) -> None:
        """Take the bounds of each new environment's action space (unless bounds were given explicitly)."""
        if not self._bounds_given:
            low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise VideoActionError(f"RandomPolicy needs a bounded action space, got low={low} high={high}")
            self.low, self.high = low, high

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.low is None:
            raise VideoActionError("RandomPolicy: action bounds unknown (pass low/high or call bind_action_space)")
        b = _batch_size(obs)
        u = self.rng.random((b, self.n_action_steps, self.low.shape[0]), dtype=np.float32)
        return self.low + u * (self.high - self.low)  # (B, Ta, A)

    def describe(self) -> str:
        return "random (uniform in the action space)"


class MeanActionPolicy:
    """Always outputs one constant action: the mean action of a training store (``from_store``)."""

    name = "mean-action"

    def __init__(self, mean_action, n_action_steps: int = 8):
        self.mean_action = np.asarray(mean_action, np.float32).reshape(-1)  # (A,)
        self.n_obs_steps = 1
        self.n_action_steps = int(n_action_steps)

    @classmethod
    def from_store(cls, path, action_key: str = "action", episodes=None, n_action_steps: int = 8) -> "MeanActionPolicy":
        """Mean over every step (of the given episode indices, default all) of ``action_key`` in an episode store."""
        from videoaction.data.store import EpisodeStore

        store = EpisodeStore.open(Path(path))
        if action_key not in store.keys:
            raise VideoActionError(f"{path}: no key {action_key!r} in the store (keys: {store.keys})")
        if episodes is None:
            actions = store.to_numpy([action_key])[action_key]
        else:
            actions = np.concatenate([store.get_episode(int(i), [action_key])[action_key] for i in episodes])
        return cls(np.asarray(actions, np.float64).mean(0), n_action_steps=n_action_steps)

    def bind_action_space(self, space) -> None:
        if tuple(space.shape) != self.mean_action.shape:
            raise VideoActionError(f"MeanActionPolicy: mean action has shape {self.mean_action.shape}, the "
                                   f"environment's action space {tuple(space.shape)}")

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        b = _batch_size(obs)
        return np.broadcast_to(self.mean_action, (b, self.n_action_steps, self.mean_action.shape[0])).copy()

    def describe(self) -> str:
        return f"mean action {np.round(self.mean_action, 3).tolist()}"


def baseline_policies(data=None, seed: int = 0, n_action_steps: int = 8,
                      action_key: str = "action") -> dict[str, "RandomPolicy | MeanActionPolicy"]:
    """The trivial baselines a report compares a model with: ``random`` always, ``mean-action`` when an episode
    store ``data`` is given (its training episodes' mean action)."""
    out: dict = {"random": RandomPolicy(n_action_steps=n_action_steps, seed=seed)}
    if data is not None:
        out["mean-action"] = MeanActionPolicy.from_store(data, action_key=action_key, n_action_steps=n_action_steps)
    return out
