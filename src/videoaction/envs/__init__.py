"""Simulation environments with one observation convention: ``{"image": uint8 (H, W, 3), "state": float32 (D,)}``.

``make_env(spec, seed, **kw)``:

* ``pusht``, ``pusht-m`` and the PushT visual-robustness variants (``pusht-bg-color``, ``pusht-bg-objects``,
  ``pusht-goal-color``, ``pusht-m-bg-color``) — see :mod:`videoaction.envs.pusht`;
* ``metaworld:<task>`` (``reach`` or ``reach-v3``) — see :mod:`videoaction.envs.metaworld`.

Keyword arguments: ``image_size``, ``max_episode_steps`` for all; ``camera`` for Metaworld. Every env reports
``info["is_success"]``; PushT also ``info["coverage"]``. The env is seeded at its first ``reset(seed=...)``;
``seed`` here is only a default for a first ``reset()`` without one.
"""

from __future__ import annotations

import gymnasium as gym

from videoaction.data.errors import VideoActionError


def env_specs() -> list[str]:
    from videoaction.envs.pusht import VARIANTS

    return sorted(VARIANTS) + ["metaworld:<task>"]


class _DefaultSeed(gym.Wrapper):
    """Uses ``seed`` for a first ``reset()`` that gives none, so ``make_env(spec, seed)`` is reproducible."""

    def __init__(self, env: gym.Env, seed: int | None):
        super().__init__(env)
        self._first_seed = seed

    def reset(self, *, seed=None, options=None):
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None
        else:
            self._first_seed = None
        return self.env.reset(seed=seed, options=options)


def make_env(spec: str, seed: int | None = None, image_size: int | None = None,
             max_episode_steps: int | None = None, **kw) -> gym.Env:
    """An environment by spec (see the module docstring); unknown specs list the valid ones."""
    head, _, rest = spec.partition(":")
    head = head.lower()
    if head == "metaworld":
        from videoaction.envs.metaworld import MetaworldConfig, MetaworldEnv

        if not rest or "," in rest:
            raise VideoActionError(f"env spec {spec!r}: give one task as metaworld:<task> (e.g. metaworld:reach)")
        cfg = MetaworldConfig(task=rest, **({"image_size": image_size} if image_size else {}),
                              **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}), **kw)
        return _DefaultSeed(MetaworldEnv(cfg), seed)
    if head.startswith("pusht"):
        from videoaction.envs.pusht import VARIANTS, make_pusht

        name = f"{head}-{rest}" if rest else head  # pusht:bg-color == pusht-bg-color
        if name not in VARIANTS:
            raise VideoActionError(f"unknown environment {spec!r}; valid: {env_specs()}")
        overrides = dict(kw, **({"image_size": image_size} if image_size else {}))
        return _DefaultSeed(make_pusht(name, max_episode_steps=max_episode_steps or 300, **overrides), seed)
    raise VideoActionError(f"unknown environment {spec!r}; valid: {env_specs()}")


__all__ = ["make_env", "env_specs"]
