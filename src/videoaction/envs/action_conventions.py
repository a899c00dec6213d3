"""Action conventions: what a 7-d or 10-d action vector means, and the converters between them.

A policy predicts actions in the convention of its training data (``DatasetConfig.action_convention``, filled
from the store attribute ``action_convention`` that the format readers write); an environment executes actions
in its own (``EnvSpec.action_convention``, or the env instance's ``action_convention`` attribute when a constructor
option such as ``abs_action`` changes it). The evaluation runner converts every predicted chunk between the two
(:func:`chunk_converter`). Layouts (single arm; shapes ``(B, Ta, D)``):

* ``delta_axis_angle7``: position delta (3) + axis-angle delta (3) + gripper, a controller's delta command
  (LIBERO's OSC_POSE in [-1, 1]); only convertible to itself (the scaling lives in the controller).
* ``abs_axis_angle7``: world position (3) + axis-angle (3) + gripper (DP's / robosuite's absolute OSC_POSE).
* ``abs_rot6d10``: world position (3) + 6-d rotation (first two rows of R, :mod:`videoaction.data.poses`) + gripper
  (Diffusion Policy's ``abs_action`` rot6d, UVA's LIBERO-10 conversion).
* ``rel_rot6d10``: pose relative to the end-effector pose at the chunk start (position 3 + 6-d rotation,
  ``inv(current) @ target``) + gripper (UMI / UVA real-world ``pose_repr: relative``); converting it needs the
  current pose, which the environment's ``EnvSpec.ee_pose(obs)`` gives (position + axis-angle).
* ``xy2`` (PushT target), ``mw4`` (Metaworld hand delta + gripper): no pose, identity only.

The gripper value passes through unchanged (its scale, -1/1 or a width in metres, is the data's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from videoaction.data import poses
from videoaction.errors import VideoActionError


class ActionConventionError(VideoActionError):
    """An unknown action convention, an action of the wrong size, or two conventions with no converter."""


# absolute pose of a chunk: position (B, T, 3), rotation matrix (B, T, 3, 3), gripper (B, T, 1)
AbsPose = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ActionConvention:
    """``to_abs(chunk, current_pose6) -> AbsPose`` and ``from_abs(AbsPose, current_pose6) -> chunk`` make it
    convertible to every other pose convention (None: identity only); ``needs_pose``: they read the current
    end-effector pose (B, 6)."""

    name: str
    dim: int
    doc: str
    to_abs: Callable[[np.ndarray, np.ndarray | None], AbsPose] | None = None
    from_abs: Callable[[AbsPose, np.ndarray | None], np.ndarray] | None = None
    needs_pose: bool = False


def _abs7_to(x, _pose):
    return x[..., :3], poses.axis_angle_to_matrix(x[..., 3:6]), x[..., 6:7]


def _abs7_from(p: AbsPose, _pose):
    return np.concatenate([p[0], poses.matrix_to_axis_angle(p[1]), p[2]], -1)


def _abs10_to(x, _pose):
    return x[..., :3], poses.rot6d_to_matrix(x[..., 3:9]), x[..., 9:10]


def _abs10_from(p: AbsPose, _pose):
    return np.concatenate([p[0], poses.matrix_to_rot6d(p[1]), p[2]], -1)


def _base(pose6: np.ndarray | None, batch: int) -> np.ndarray:
    """(B, 6) current pose -> (B, 1, 4, 4) base frame."""
    if pose6 is None:
        raise ActionConventionError("relative actions need the current end-effector pose (the environment's "
                                    "EnvSpec.ee_pose); none was given")
    pose6 = np.asarray(pose6, dtype=np.float64).reshape(batch, 6)
    return poses.pose6_to_matrix(pose6)[:, None]


def _rel10_to(x, pose6):
    rel = poses.pose9_to_matrix(x[..., :9])  # (B, T, 4, 4)
    mat = _base(pose6, x.shape[0]) @ rel
    return mat[..., :3, 3], mat[..., :3, :3], x[..., 9:10]


def _rel10_from(p: AbsPose, pose6):
    mat = np.zeros(p[0].shape[:-1] + (4, 4))
    mat[..., :3, :3], mat[..., :3, 3], mat[..., 3, 3] = p[1], p[0], 1.0
    rel = poses.invert_pose(_base(pose6, mat.shape[0])) @ mat
    return np.concatenate([poses.matrix_to_pose9(rel), p[2]], -1)


CONVENTIONS: dict[str, ActionConvention] = {c.name: c for c in (
    ActionConvention("delta_axis_angle7", 7, "controller delta: position (3) + axis-angle (3) + gripper"),
    ActionConvention("abs_axis_angle7", 7, "absolute: world position (3) + axis-angle (3) + gripper",
                     _abs7_to, _abs7_from),
    ActionConvention("abs_rot6d10", 10, "absolute: world position (3) + 6-d rotation (R[:2, :]) + gripper",
                     _abs10_to, _abs10_from),
    ActionConvention("rel_rot6d10", 10, "relative to the pose at the chunk start: position (3) + 6-d rotation + "
                     "gripper", _rel10_to, _rel10_from, needs_pose=True),
    ActionConvention("xy2", 2, "PushT: agent target position (x, y)"),
    ActionConvention("mw4", 4, "Metaworld: hand delta (3) + gripper"),
)}


def get_convention(name: str) -> ActionConvention:
    if name not in CONVENTIONS:
        raise ActionConventionError(f"unknown action convention {name!r}; known: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def can_convert(src: str, dst: str) -> bool:
    a, b = get_convention(src), get_convention(dst)
    return src == dst or (a.to_abs is not None and b.from_abs is not None)


def convert_actions(chunk: np.ndarray, src: str, dst: str, current_pose: np.ndarray | None = None) -> np.ndarray:
    """``chunk`` (B, Ta, D_src) or (Ta, D_src) in convention ``src`` -> the same actions in ``dst``.
    ``current_pose`` (B, 6) or (6,): the end-effector pose (position + axis-angle) at the chunk start, needed when
    either side is relative."""
    a, b = get_convention(src), get_convention(dst)
    x = np.asarray(chunk, dtype=np.float64)
    single = x.ndim == 2
    x = x[None] if single else x
    if x.ndim != 3 or x.shape[-1] != a.dim:
        raise ActionConventionError(f"actions in convention {src!r} must be (B, Ta, {a.dim}) or (Ta, {a.dim}), "
                                    f"found {np.shape(chunk)}")
    if src == dst:
        out = x
    elif not can_convert(src, dst):
        raise ActionConventionError(
            f"no converter from action convention {src!r} to {dst!r} (pose conventions convert among "
            f"{', '.join(n for n, c in CONVENTIONS.items() if c.to_abs)}; a delta command only to itself). For an "
            "environment with a delta controller, build it with absolute actions if it has that option "
            "(e.g. --env-kwarg abs_action=true for LIBERO)")
    else:
        out = b.from_abs(a.to_abs(x, current_pose), current_pose)
    out = out.astype(np.float32)
    return out[0] if single else out


def chunk_converter(policy_convention: str | None, env_convention: str | None,
                    ee_pose: Callable[[dict], np.ndarray] | None = None):
    """The function ``(chunk (B, Ta, D), obs_now {key: (B, ...)}) -> chunk`` the runner applies to every predicted
    chunk, or None when no conversion is needed (either convention undeclared, or both equal). Refuses at once
    (before any episode runs) a pair with no converter, or a relative policy in an env without ``ee_pose``."""
    if not policy_convention or not env_convention or policy_convention == env_convention:
        return None
    src, dst = get_convention(policy_convention), get_convention(env_convention)
    if not can_convert(src.name, dst.name):
        convert_actions(np.zeros((1, 1, src.dim)), src.name, dst.name)  # raises the named error
    if (src.needs_pose or dst.needs_pose) and ee_pose is None:
        raise ActionConventionError(f"converting {src.name!r} actions to {dst.name!r} needs the current "
                                    "end-effector pose, and this environment's spec declares no ee_pose")

    def convert(chunk: np.ndarray, obs_now: dict) -> np.ndarray:
        pose = np.asarray(ee_pose(obs_now)) if (src.needs_pose or dst.needs_pose) else None
        return convert_actions(chunk, src.name, dst.name, pose)

    convert.description = f"{src.name} -> {dst.name}"
    return convert


def policy_action_convention(policy: Any) -> str | None:
    """The convention a policy's actions are in: its ``action_convention`` attribute, else its run config's
    ``dataset.action_convention`` (None / "" when undeclared)."""
    value = getattr(policy, "action_convention", None)
    if value is None:
        value = getattr(getattr(getattr(policy, "cfg", None), "dataset", None), "action_convention", None)
    return value or None


__all__ = ["ActionConvention", "ActionConventionError", "CONVENTIONS", "can_convert", "chunk_converter",
           "convert_actions", "get_convention", "policy_action_convention"]
