"""Relative end-effector windows for training (UMI / UVA real-world ``pose_repr: relative``).

With ``DatasetConfig.pose_repr = "relative"`` the store's state and action keys hold, per robot, an absolute
end-effector pose and gripper width: position (3) + axis-angle (3) + gripper (1), i.e. ``(T, 7R)`` -- the UMI
reader's ``state`` / ``action`` (built from ``robot<i>_eef_pos``, ``robot<i>_eef_rot_axis_angle``,
``robot<i>_gripper_width`` with its observation / action latencies applied). Each training window is expressed in
the frame of every robot's pose at the *current* step (the window's last history step): per robot, position (3)
+ 6-d rotation (first two rows of R) of ``inv(current) @ pose``, then the absolute gripper width -- ``(T, 10R)``,
UVA / UMI's layout. Proprio, actions and history actions share that one base, so the current proprio and (without
action latency) the current action are the identity pose. Evaluation converts predicted chunks back with the
environment's current pose (:mod:`videoaction.envs.action_conventions`, ``rel_rot6d10``).
"""

from __future__ import annotations

import numpy as np

from videoaction.data import poses
from videoaction.errors import ConfigError, VideoActionError

POSE_REPRS = ("abs", "relative")
RELATIVE_CONVENTION = "rel_rot6d10"  # one robot's relative pose9 + gripper (envs.action_conventions)
ABS_DIM, REL_DIM = 7, 10  # per robot: stored (pos 3, axis-angle 3, gripper 1) -> (pos 3, rot6d 6, gripper 1)


def check_pose_repr(value: str) -> bool:
    """True for ``"relative"``, False for ``"abs"``; a named error otherwise."""
    if value not in POSE_REPRS:
        raise ConfigError(f"dataset.pose_repr must be one of {list(POSE_REPRS)}, found {value!r}")
    return value == "relative"


def n_robots(dim: int, what: str) -> int:
    """Robots in a ``(.., 7R)`` pose + gripper vector, or a named error."""
    if dim <= 0 or dim % ABS_DIM:
        raise VideoActionError(f"{what}: relative poses need per robot position (3) + axis-angle (3) + gripper (1), "
                               f"a multiple of {ABS_DIM} dims; found {dim}")
    return dim // ABS_DIM


def relative_to_current(state: np.ndarray, current: int, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Express windows in the frame of each robot's pose at step ``current``.

    ``state`` (..., T, 7R) absolute observed poses; ``others`` further (..., Ti, 7R) absolute arrays of the same
    windows (actions, history actions; NaN rows stay NaN). Returns ``(state_rel, *others_rel)``, each
    (..., Ti, 10R) float32: per robot pose9 relative to ``state[..., current, :]`` + the gripper unchanged.
    """
    state = np.asarray(state, dtype=np.float64)
    r_count = n_robots(state.shape[-1], "state")
    arrays = [state] + [np.asarray(a, dtype=np.float64) for a in others]
    for a in arrays[1:]:
        if a.shape[-1] != state.shape[-1]:
            raise VideoActionError(f"relative poses: every array needs the state's {state.shape[-1]} dims "
                                   f"(7 per robot), found {a.shape}")
    outs = [[] for _ in arrays]
    for r in range(r_count):
        sl = slice(ABS_DIM * r, ABS_DIM * r + ABS_DIM)
        base = poses.pose6_to_matrix(state[..., current, sl][..., :6])  # (..., 4, 4)
        for out, a in zip(outs, arrays):
            rel = poses.to_relative(poses.pose6_to_matrix(a[..., sl][..., :6]), base)  # (..., Ti, 4, 4)
            out.append(np.concatenate([poses.matrix_to_pose9(rel), a[..., sl][..., 6:7]], -1))
    return tuple(np.concatenate(o, -1).astype(np.float32) for o in outs)


def relative_proprio(state_history: np.ndarray) -> np.ndarray:
    """Inference-side proprio: an observed history (..., T, 7R) of absolute poses -> (..., T, 10R) relative to its
    last (current) step, exactly what training windows hold at their history steps."""
    return relative_to_current(state_history, -1)[0]


__all__ = ["ABS_DIM", "POSE_REPRS", "REL_DIM", "RELATIVE_CONVENTION", "check_pose_repr", "n_robots",
           "relative_proprio", "relative_to_current"]
