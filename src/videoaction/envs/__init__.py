"""Environments: ``make_env("pusht" | "pusht-m" | "pusht:<variant>" | "metaworld:<task>", seed)``.

Every env returns dict observations ``image`` uint8 (H, W, 3) and ``state`` float32 (D,), and ``info`` with
``is_success`` (PushT also ``coverage``). PushT variants: see :class:`videoaction.envs.pusht.PushTVisualConfig`.
"""

from __future__ import annotations

import gymnasium as gym

from videoaction.data.errors import VideoActionError

PUSHT_SPECS = ("pusht", "pusht-m")


def mt10_tasks() -> list[str]:
    from videoaction.envs.metaworld import MT10

    return list(MT10)


def mt50_tasks() -> list[str]:
    from videoaction.envs.metaworld import mt50

    return mt50()


def task_instruction(task: str) -> str:
    from videoaction.envs.metaworld import instruction

    return instruction(task)


def valid_specs() -> list[str]:
    from videoaction.envs.pusht import VARIANTS

    return [*PUSHT_SPECS, *(f"{p}:{v}" for p in PUSHT_SPECS for v in VARIANTS), "metaworld:<task>"]


def make_env(spec: str, seed: int | None = None, **kw) -> gym.Env:
    """Build an env from a spec; ``seed`` seeds the first reset (``env.reset()`` then uses it).

    PushT kw: ``image_size`` (96), ``max_steps`` (300), ``visual`` (PushTVisualConfig). Metaworld kw:
    ``image_size``, ``camera`` ("corner2"), ``max_steps`` (500), ``goal_observable`` (True).
    """
    name, _, variant = spec.partition(":")
    for base in ("pusht-m", "pusht"):  # dash form: pusht-bg-color, pusht-m-goal-color, ...
        if not variant and name.startswith(base + "-") and name != "pusht-m":
            name, variant = base, name[len(base) + 1:]
            break
    if name in PUSHT_SPECS:
        from videoaction.envs.pusht import PushTVisualConfig, VAPushTEnv

        visual = kw.pop("visual", None) or PushTVisualConfig.from_variant(variant or None)
        max_steps = kw.pop("max_steps", 300)
        env = gym.wrappers.TimeLimit(VAPushTEnv(multi_goal=(name == "pusht-m"), visual=visual, **kw), max_steps)
    elif name == "metaworld":
        from videoaction.envs.metaworld import MetaworldEnv

        if not variant:
            raise VideoActionError(f"metaworld spec needs a task, e.g. 'metaworld:reach-v3'; valid: {mt50_tasks()}")
        env = MetaworldEnv(variant, **kw)
    else:
        raise VideoActionError(f"unknown environment {spec!r}; valid: {', '.join(valid_specs())}")
    if seed is not None:
        env.reset(seed=seed)
    return env


__all__ = ["make_env", "mt10_tasks", "mt50_tasks", "task_instruction", "valid_specs"]
