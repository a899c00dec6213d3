"""End-effector pose conventions for real-robot data (UMI, the UVA real-world setting).

Shapes: ``(..., 3)`` positions and axis-angle rotation vectors, ``(..., 3, 3)`` rotation matrices,
``(..., 4, 4)`` homogeneous poses, ``(..., 6)`` pose vectors (position + axis-angle, UMI's ``tcp_pose``),
``(..., 9)`` "pose9" vectors (position + 6-d rotation) and ``(..., 10)`` actions (pose9 + gripper width).

6-d rotation: the first two **rows** of the rotation matrix, ``R[..., :2, :]`` flattened (Zhou et al. 2019 in the
layout of pytorch3d's ``matrix_to_rotation_6d``, which Diffusion Policy, UMI and UVA use), recovered by Gram-Schmidt.
Keeping their layout means actions produced here feed their checkpoints unchanged.

Relative poses (UMI ``pose_repr: relative``): every pose in a window is expressed in the frame of the *current*
pose (the last observation step), ``rel = inv(base) @ pose``; ``absolute = base @ rel`` inverts it exactly.
"""

from __future__ import annotations

import numpy as np

from videoaction.errors import VideoActionError

_EPS = 1e-8


def _check_last(x: np.ndarray, dims: tuple[int, ...], name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[x.ndim - len(dims):] != dims:
        raise VideoActionError(f"{name}: expected shape (..., {', '.join(map(str, dims))}), found {x.shape}")
    return x


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: (..., 3) rotation vectors -> (..., 3, 3) rotation matrices."""
    rotvec = _check_last(rotvec, (3,), "axis_angle_to_matrix")
    angle = np.linalg.norm(rotvec, axis=-1)[..., None, None]  # (..., 1, 1)
    x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*rotvec.shape[:-1], 3, 3)  # [v]_x
    small = angle < 1e-6
    safe = np.where(small, 1.0, angle)
    a = np.where(small, 1.0 - angle**2 / 6.0, np.sin(safe) / safe)  # sin(t)/t
    b = np.where(small, 0.5 - angle**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)  # (1-cos t)/t^2
    return np.eye(3) + a * k + b * (k @ k)


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors with angle in [0, pi]."""
    r = _check_last(matrix, (3, 3), "matrix_to_axis_angle")
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    vee = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.linalg.norm(vee, axis=-1) / 2.0
    angle = np.arctan2(sin, cos)  # (...) well conditioned at 0 and pi, unlike arccos
    out = np.empty(r.shape[:-2] + (3,))
    regular = sin > 1e-4
    # generic case: axis from the skew part
    scale = np.where(regular, angle / np.where(regular, 2.0 * sin, 1.0), 0.5 + angle**2 / 12.0)
    out[...] = vee * scale[..., None]
    # near pi the skew part vanishes: the axis is the dominant column of (R + I) / 2
    near_pi = (~regular) & (cos < 0)
    if np.any(near_pi):
        rp, c = r[near_pi], cos[near_pi][:, None, None]
        # symmetric part: cos I + (1 - cos) a a^T, so a a^T = (sym - cos I) / (1 - cos)
        aat = ((rp + np.swapaxes(rp, -1, -2)) / 2.0 - c * np.eye(3)) / (1.0 - c)
        diag = np.clip(np.diagonal(aat, axis1=-2, axis2=-1), 0.0, None)
        col = np.argmax(diag, axis=-1)
        rows = np.arange(len(rp))
        axis = aat[rows, :, col] / np.sqrt(np.maximum(diag[rows, col], _EPS))[:, None]
        axis /= np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), _EPS)
        # fix the sign with the (small) skew part when it carries information
        v = vee[near_pi]
        sign = np.where(np.sum(axis * v, axis=-1) < 0, -1.0, 1.0)
        out[near_pi] = axis * (sign * angle[near_pi])[:, None]
    return out


def matrix_to_rot6d(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first two rows of each rotation matrix."""
    r = _check_last(matrix, (3, 3), "matrix_to_rot6d")
    return r[..., :2, :].reshape(*r.shape[:-2], 6).copy()


def rot6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt (any two non-parallel vectors give a valid rotation)."""
    d6 = _check_last(d6, (6,), "rot6d_to_matrix")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), _EPS)
    b2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = b2 / np.maximum(np.linalg.norm(b2, axis=-1, keepdims=True), _EPS)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-2)


def pose6_to_matrix(pose: np.ndarray) -> np.ndarray:
    """(..., 6) position + axis-angle -> (..., 4, 4) homogeneous pose."""
    pose = _check_last(pose, (6,), "pose6_to_matrix")
    out = np.zeros(pose.shape[:-1] + (4, 4))
    out[..., :3, :3] = axis_angle_to_matrix(pose[..., 3:])
    out[..., :3, 3] = pose[..., :3]
    out[..., 3, 3] = 1.0
    return out


def matrix_to_pose6(mat: np.ndarray) -> np.ndarray:
    mat = _check_last(mat, (4, 4), "matrix_to_pose6")
    return np.concatenate([mat[..., :3, 3], matrix_to_axis_angle(mat[..., :3, :3])], axis=-1)


def matrix_to_pose9(mat: np.ndarray) -> np.ndarray:
    """(..., 4, 4) -> (..., 9): position + 6-d rotation (UMI's ``mat_to_pose10d`` without the gripper)."""
    mat = _check_last(mat, (4, 4), "matrix_to_pose9")
    return np.concatenate([mat[..., :3, 3], matrix_to_rot6d(mat[..., :3, :3])], axis=-1)


def pose9_to_matrix(pose9: np.ndarray) -> np.ndarray:
    pose9 = _check_last(pose9, (9,), "pose9_to_matrix")
    out = np.zeros(pose9.shape[:-1] + (4, 4))
    out[..., :3, :3] = rot6d_to_matrix(pose9[..., 3:])
    out[..., :3, 3] = pose9[..., :3]
    out[..., 3, 3] = 1.0
    return out


def invert_pose(mat: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) without a general matrix inverse."""
    mat = _check_last(mat, (4, 4), "invert_pose")
    out = np.zeros_like(mat)
    rt = np.swapaxes(mat[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ mat[..., :3, 3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def to_relative(poses: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Poses (..., T, 4, 4) in the frame of ``base`` (..., 4, 4): inv(base) @ pose."""
    return invert_pose(base)[..., None, :, :] @ poses


def from_relative(rel: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_relative`: base @ rel."""
    return np.asarray(base, dtype=np.float64)[..., None, :, :] @ rel


def relative_window(eef_pos: np.ndarray, eef_rotvec: np.ndarray, action_pose6: np.ndarray | None = None,
                    current: int = -1) -> dict[str, np.ndarray]:
    """UMI's relative representation of one window.

    ``eef_pos`` (T, 3) and ``eef_rotvec`` (T, 3) are observed poses; ``action_pose6`` (Ta, 6) absolute target poses
    (position + axis-angle). Everything is expressed relative to the observed pose at index ``current``
    (the present step). Returns ``proprio`` (T, 9) and, if actions are given, ``action`` (Ta, 9), both pose9.
    """
    obs = pose6_to_matrix(np.concatenate([_check_last(eef_pos, (3,), "eef_pos"),
                                          _check_last(eef_rotvec, (3,), "eef_rotvec")], axis=-1))  # (T, 4, 4)
    base = obs[current]
    out = {"proprio": matrix_to_pose9(to_relative(obs, base))}
    if action_pose6 is not None:
        out["action"] = matrix_to_pose9(to_relative(pose6_to_matrix(action_pose6), base))
    return out


def absolute_actions(rel_action9: np.ndarray, current_pose6: np.ndarray) -> np.ndarray:
    """Turn relative pose9 actions (Ta, 9) back into absolute pose6 targets (Ta, 6) given the current pose (6,)."""
    base = pose6_to_matrix(current_pose6)
    return matrix_to_pose6(from_relative(pose9_to_matrix(rel_action9), base))


def latency_shift(values: np.ndarray, steps: int, episode_ends: np.ndarray | None = None) -> np.ndarray:
    """Compensate a sensor/actuator latency of ``steps`` control steps inside each episode.

    ``out[t] = values[t + steps]`` (``steps > 0`` reads later samples: an observation that was recorded late is
    pulled back to the time it describes; ``steps < 0`` delays), repeating the first/last sample of the episode
    at its edges, as UMI's sampler does with ``latency_steps``. ``episode_ends`` are exclusive cumulative ends
    (default: one episode).
    """
    values = np.asarray(values)
    n = len(values)
    ends = np.asarray([n] if episode_ends is None else episode_ends, dtype=np.int64)
    if len(ends) and ends[-1] != n:
        raise VideoActionError(f"latency_shift: episode_ends end at {ends[-1]} but there are {n} values")
    starts = np.concatenate([[0], ends[:-1]])
    idx = np.empty(n, dtype=np.int64)
    for s, e in zip(starts, ends):
        idx[s:e] = np.clip(np.arange(s, e) + steps, s, e - 1)
    return values[idx]


def latency_steps(latency_s: float, fps: float) -> int:
    """A latency in seconds as a whole number of control steps (UMI rounds the same way)."""
    return int(round(latency_s * fps))


def action10(pose9: np.ndarray, gripper_width: np.ndarray) -> np.ndarray:
    """Concatenate pose9 (..., 9) and gripper width (..., 1) into UVA/UMI's 10-d action."""
    gripper_width = np.asarray(gripper_width, dtype=np.float64)
    if gripper_width.shape[-1:] != (1,):
        gripper_width = gripper_width[..., None]
    return np.concatenate([pose9, gripper_width], axis=-1)


def relative_pose_gripper(state: np.ndarray, action: np.ndarray, current: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """A window of UMI-layout arrays in the relative convention.

    ``state`` (T, 7R) and ``action`` (Ta, 7R) hold per robot (position 3, axis-angle 3, gripper width 1), absolute
    (what :mod:`videoaction.data.formats.umi` reads). Returns proprio (T, 10R) and actions (Ta, 10R): per robot
    pose9 relative to that robot's pose at ``current`` plus the (absolute) gripper width, UVA/UMI's 10-d layout.
    """
    state = np.asarray(state, dtype=np.float64)
    action = np.asarray(action, dtype=np.float64)
    if state.shape[-1] % 7 or action.shape[-1] != state.shape[-1]:
        raise VideoActionError(f"relative_pose_gripper: expected (T, 7R) state and action, found {state.shape} "
                               f"and {action.shape}")
    proprio, acts = [], []
    for r in range(state.shape[-1] // 7):
        s, a = state[:, 7 * r: 7 * r + 7], action[:, 7 * r: 7 * r + 7]
        rel = relative_window(s[:, :3], s[:, 3:6], a[:, :6], current=current)
        proprio.append(action10(rel["proprio"], s[:, 6:7]))
        acts.append(action10(rel["action"], a[:, 6:7]))
    return np.concatenate(proprio, -1), np.concatenate(acts, -1)


def absolute_pose_gripper(rel_action: np.ndarray, current_state: np.ndarray) -> np.ndarray:
    """Inverse of :func:`relative_pose_gripper` for actions: (Ta, 10R) relative + the current (7R,) state ->
    (Ta, 7R) absolute targets (position, axis-angle, gripper width) a robot controller executes."""
    rel_action = np.asarray(rel_action, dtype=np.float64)
    current_state = np.asarray(current_state, dtype=np.float64)
    out = []
    for r in range(current_state.shape[-1] // 7):
        a = rel_action[:, 10 * r: 10 * r + 10]
        out.append(np.concatenate([absolute_actions(a[:, :9], current_state[7 * r: 7 * r + 6]), a[:, 9:10]], -1))
    return np.concatenate(out, -1)
