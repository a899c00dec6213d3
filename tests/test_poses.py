"""Pose conventions: known rotations, round trips, relative actions, latency shifts."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from videoaction.data import poses
from videoaction.errors import VideoActionError


def test_axis_angle_known_rotations():
    # 90 degrees about z maps x to y
    r = poses.axis_angle_to_matrix(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(poses.axis_angle_to_matrix(np.zeros(3)), np.eye(3))
    # 180 degrees about x
    r = poses.axis_angle_to_matrix(np.array([np.pi, 0.0, 0.0]))
    np.testing.assert_allclose(r, np.diag([1.0, -1.0, -1.0]), atol=1e-12)


def test_axis_angle_round_trip_matches_scipy_including_near_pi_and_tiny_angles():
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi - 1e-3, 190), [1e-9, 1e-7, 0.0, np.pi - 1e-6, np.pi,
                                                                  np.pi - 1e-5, 1e-5, 2e-4, np.pi - 2e-4, 0.5]])
    rotvec = axes * angles[:, None]
    mats = poses.axis_angle_to_matrix(rotvec)
    np.testing.assert_allclose(mats, Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-10)
    back = poses.matrix_to_axis_angle(mats)
    # compare as rotations (at exactly pi, v and -v are the same rotation)
    np.testing.assert_allclose(poses.axis_angle_to_matrix(back), mats, atol=1e-8)
    regular = angles < np.pi - 1e-3
    np.testing.assert_allclose(back[regular], rotvec[regular], atol=1e-8)


def test_rot6d_is_first_two_rows_and_round_trips():
    rng = np.random.default_rng(1)
    mats = Rotation.random(50, random_state=2).as_matrix()
    d6 = poses.matrix_to_rot6d(mats)
    np.testing.assert_array_equal(d6[:, :3], mats[:, 0, :])
    np.testing.assert_array_equal(d6[:, 3:], mats[:, 1, :])
    np.testing.assert_allclose(poses.rot6d_to_matrix(d6), mats, atol=1e-12)
    # Gram-Schmidt turns a perturbed 6-d vector into a proper rotation
    noisy = poses.rot6d_to_matrix(d6 + rng.normal(scale=0.05, size=d6.shape))
    np.testing.assert_allclose(noisy @ np.swapaxes(noisy, -1, -2), np.broadcast_to(np.eye(3), noisy.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(noisy), 1.0, atol=1e-12)


def test_relative_window_known_poses():
    # current pose: at (1, 0, 0), rotated 90 degrees about z; the action moves 1 along world y
    eef_pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    eef_rot = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.pi / 2]])
    action = np.array([[1.0, 1.0, 0.0, 0.0, 0.0, np.pi / 2]])
    out = poses.relative_window(eef_pos, eef_rot, action)
    # the present step is the identity pose in its own frame
    np.testing.assert_allclose(out["proprio"][-1], [0, 0, 0, 1, 0, 0, 0, 1, 0], atol=1e-12)
    # world +y is the gripper's +x after a 90 degree yaw
    np.testing.assert_allclose(out["action"][0, :3], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["action"][0, 3:], [1, 0, 0, 0, 1, 0], atol=1e-12)
    # the previous step (origin, no rotation) seen from the present pose
    np.testing.assert_allclose(out["proprio"][0, :3], [0.0, 1.0, 0.0], atol=1e-12)
    back = poses.absolute_actions(out["action"], np.concatenate([eef_pos[-1], eef_rot[-1]]))
    np.testing.assert_allclose(back, action, atol=1e-12)


def test_relative_round_trip_random_poses():
    rng = np.random.default_rng(3)
    pose6 = np.concatenate([rng.normal(size=(16, 3)), Rotation.random(16, random_state=4).as_rotvec()], -1)
    base = pose6[7]
    mats = poses.pose6_to_matrix(pose6)
    rel = poses.to_relative(mats, poses.pose6_to_matrix(base))
    np.testing.assert_allclose(rel[7], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(poses.from_relative(rel, poses.pose6_to_matrix(base)), mats, atol=1e-12)
    np.testing.assert_allclose(poses.invert_pose(mats) @ mats, np.broadcast_to(np.eye(4), mats.shape), atol=1e-12)
    np.testing.assert_allclose(poses.pose9_to_matrix(poses.matrix_to_pose9(mats)), mats, atol=1e-12)
    np.testing.assert_allclose(poses.absolute_actions(poses.matrix_to_pose9(rel), base), pose6, atol=1e-9)


def test_latency_shift_stays_inside_episodes():
    values = np.arange(10)
    ends = np.array([4, 10])
    np.testing.assert_array_equal(poses.latency_shift(values, 2, ends), [2, 3, 3, 3, 6, 7, 8, 9, 9, 9])
    np.testing.assert_array_equal(poses.latency_shift(values, -1, ends), [0, 0, 1, 2, 4, 4, 5, 6, 7, 8])
    assert poses.latency_steps(0.17, 10) == 2
    with pytest.raises(VideoActionError):
        poses.latency_shift(values, 1, np.array([4, 9]))


def test_action10_and_shape_errors():
    a = poses.action10(np.zeros((5, 9)), np.ones(5))
    assert a.shape == (5, 10) and np.all(a[:, -1] == 1)
    with pytest.raises(VideoActionError, match=r"\(\.\.\., 3\)"):
        poses.axis_angle_to_matrix(np.zeros((4, 4)))


def test_umi_layout_relative_actions_round_trip_for_two_robots():
    rng = np.random.default_rng(5)
    t = 6

    def arm():
        return np.concatenate([rng.normal(size=(t, 3)), Rotation.random(t, random_state=rng.integers(1 << 30))
                               .as_rotvec(), rng.uniform(0, 0.08, (t, 1))], -1)

    state, action = np.concatenate([arm(), arm()], -1), np.concatenate([arm(), arm()], -1)
    proprio, rel = poses.relative_pose_gripper(state, action, current=3)
    assert proprio.shape == (t, 20) and rel.shape == (t, 20)
    np.testing.assert_allclose(proprio[3, :9], [0, 0, 0, 1, 0, 0, 0, 1, 0], atol=1e-12)  # robot 0 at "now"
    np.testing.assert_allclose(proprio[3, 10:19], [0, 0, 0, 1, 0, 0, 0, 1, 0], atol=1e-12)  # robot 1 at "now"
    np.testing.assert_allclose(rel[:, 9], action[:, 6])  # gripper widths stay absolute
    np.testing.assert_allclose(poses.absolute_pose_gripper(rel, state[3]), action, atol=1e-9)
    with pytest.raises(VideoActionError):
        poses.relative_pose_gripper(state[:, :8], action[:, :8])
