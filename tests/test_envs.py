"""Environments: dict observations, PushT-M goal in the image, variants, Metaworld, named errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("gym_pusht")
os.environ.setdefault("MUJOCO_GL", "osmesa")

from videoaction.errors import VideoActionError  # noqa: E402
from videoaction.envs import get_env_spec, make_env  # noqa: E402

pytestmark = pytest.mark.sim


def _green_centroid(img: np.ndarray) -> np.ndarray:
    img = img.astype(int)
    mask = (img[..., 1] > 200) & (img[..., 0] < 180) & (img[..., 2] < 180)
    ys, xs = np.nonzero(mask)
    assert mask.sum() > 50, "goal region not drawn"
    return np.array([xs.mean(), ys.mean()]) / img.shape[1] * 512


@pytest.mark.parametrize("spec", ["pusht", "pusht-m", "pusht:bg-color", "pusht:distractors", "pusht-m:goal-color"])
def test_pusht_obs_and_info(spec):
    env = make_env(spec, image_size=48)
    obs, info = env.reset(seed=5)
    assert obs["image"].shape == (48, 48, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (5,) and obs["state"].dtype == np.float32
    obs, reward, term, trunc, info = env.step(np.array([256.0, 256.0]))
    assert isinstance(info["is_success"], bool) and 0.0 <= info["coverage"] <= 1.0
    assert env.spec is None or env.spec.max_episode_steps in (None, 300)


def test_pusht_m_goal_seeded_and_drawn():
    from videoaction.envs.pusht import LOCAL_KEYPOINTS9, to_world

    env = make_env("pusht-m")
    goals, imgs = [], []
    for seed in (0, 1, 0):
        obs, _ = env.reset(seed=seed)
        goal = env.unwrapped.goal_pose.copy()
        assert 156 <= goal[0] <= 356 and 156 <= goal[1] <= 356 and 0 <= goal[2] < 2 * np.pi
        cog = to_world(LOCAL_KEYPOINTS9[8:], goal)[0]
        assert np.linalg.norm(_green_centroid(obs["image"]) - cog) < 25  # the goal T is where the image shows it
        goals.append(goal)
        imgs.append(obs["image"])
    np.testing.assert_array_equal(goals[0], goals[2])
    np.testing.assert_array_equal(imgs[0], imgs[2])
    assert not np.allclose(goals[0], goals[1])
    fixed = make_env("pusht")
    fixed.reset(seed=0)
    np.testing.assert_allclose(fixed.unwrapped.goal_pose, [256, 256, np.pi / 4])


def test_visual_variants_change_pixels_not_state():
    base, _ = make_env("pusht").reset(seed=2)
    for variant in ("bg-color", "distractors", "goal-color"):
        obs, _ = make_env(f"pusht:{variant}").reset(seed=2)
        np.testing.assert_array_equal(obs["state"], base["state"])
        assert np.abs(obs["image"].astype(int) - base["image"]).sum() > 1000, variant


def test_unknown_names_list_valid_ones():
    with pytest.raises(VideoActionError, match="pusht-m"):
        make_env("pushy")
    with pytest.raises(VideoActionError, match="unknown PushT variant"):
        make_env("pusht:neon")
    with pytest.raises(VideoActionError, match="reach-v3"):
        make_env("metaworld:reach-v9")


def test_task_lists_and_instructions():
    from videoaction.envs.metaworld import MT10, instruction, mt50

    assert len(MT10) == 10 and len(mt50()) == 50 and set(MT10) <= set(mt50())
    for t in mt50():
        s = instruction(t)
        assert s.endswith(".") and len(s.split()) >= 2
    spec = get_env_spec("metaworld")
    assert spec.instruction("drawer-open") == spec.instruction("drawer-open-v3") == "Open the drawer."
    assert get_env_spec("pusht").instruction("") != get_env_spec("pusht-m").instruction("")


def test_metaworld_standard_observation_is_hand_and_gripper():
    """state[:4] (the spec's proprio) is the hand position and gripper opening; the rest holds object / goal."""
    pytest.importorskip("metaworld")
    proto = get_env_spec("metaworld:reach").observation
    assert (proto.proprio_dims, proto.privileged_state_dims) == (4, 39)
    env = make_env("metaworld:reach", image_size=16, max_steps=10)
    try:
        obs, _ = env.reset(seed=3)
        np.testing.assert_allclose(obs["state"][:3], env.env.get_endeff_pos(), atol=1e-6)
        np.testing.assert_allclose(obs["state"][36:39], env.env._target_pos, atol=1e-6)  # goal: privileged
        start = obs["state"].copy()
        for _ in range(3):
            obs, *_ = env.step(np.array([0.0, 0.0, 1.0, 1.0]))  # hand up, close the gripper
        assert obs["state"][2] > start[2] + 1e-3  # z of the hand rose
        assert obs["state"][3] < start[3] - 1e-3  # fingers closer together
        np.testing.assert_allclose(obs["state"][:3], env.env.get_endeff_pos(), atol=1e-6)
    finally:
        env.close()


def test_metaworld_obs():
    pytest.importorskip("metaworld")
    env = make_env("metaworld:reach-v3", image_size=32, max_steps=5)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 5
    assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
    first = obs["state"].copy()
    obs2, _ = env.reset(seed=0)
    np.testing.assert_array_equal(first, obs2["state"])
    trunc = False
    for _ in range(5):
        obs, r, term, trunc, info = env.step(np.zeros(4))
        assert isinstance(info["is_success"], bool)
    assert trunc


def test_no_opengl_backend_error_says_how_to_fix():
    import subprocess
    import sys

    code = ("from videoaction.envs import make_env\nfrom videoaction.errors import VideoActionError\n"
            "try:\n    make_env('metaworld:reach-v3', image_size=16)\nexcept VideoActionError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MUJOCO_GL": "no-such-backend"},
                         capture_output=True, text=True, timeout=120).stdout
    assert "libosmesa6" in out and "MUJOCO_GL=osmesa" in out


def test_headless_machines_default_to_osmesa_before_mujoco_is_imported():
    """`videoaction demos metaworld` in a plain shell (no DISPLAY, no MUJOCO_GL): task names are resolved (which
    imports mujoco) only after the backend is chosen, so rendering works afterwards."""
    import subprocess
    import sys

    code = ("import os\nfrom videoaction.envs.metaworld import resolve_tasks\nresolve_tasks('reach')\n"
            "print(os.environ.get('MUJOCO_GL'))\nfrom videoaction.envs import make_env\n"
            "env = make_env('metaworld:reach', image_size=16)\nobs, _ = env.reset(seed=0)\nprint(obs['image'].shape)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["osmesa", "(16,", "16,", "3)"], out.stderr[-2000:]
    keep = subprocess.run([sys.executable, "-c", "import os\nfrom videoaction.envs.metaworld import ensure_headless_gl\n"
                           "ensure_headless_gl()\nprint(os.environ['MUJOCO_GL'])"],
                          env={**env, "MUJOCO_GL": "egl"}, capture_output=True, text=True, timeout=60)
    assert keep.stdout.strip() == "egl"  # a user's choice is kept
