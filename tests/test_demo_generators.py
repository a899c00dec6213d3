"""Demonstration generators and environments: keys, shapes, metadata, determinism, resume, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")

from videoaction.errors import VideoActionError  # noqa: E402
from videoaction.data.store import EpisodeStore  # noqa: E402
from videoaction.demos.cli import main as demos_main  # noqa: E402
from videoaction.demos.generate import generate, jobs_for  # noqa: E402
from videoaction.envs import make_env  # noqa: E402


def test_pusht_demos_keys_shapes_metadata(tmp_path):
    out = tmp_path / "pusht.zarr"
    assert demos_main(["pusht", "--episodes", "2", "--seed", "0", "--out", str(out), "--workers", "1",
                       "--no-progress"]) == 0
    store = EpisodeStore.open(out)
    assert store.n_episodes == 2  # the expert solves seeds 0 and 1
    assert store.keys == ["action", "coverage", "img", "keypoint", "n_contacts", "state"]
    n = store.n_steps
    assert store.spec("img") == ((96, 96, 3), np.dtype("uint8")) and store.spec("state") == ((5,), np.dtype("float32"))
    assert store.spec("keypoint") == ((9, 2), np.dtype("float32")) and store.spec("action")[0] == (2,)
    ep = store.get_episode(0)
    assert ep["coverage"][-1, 0] > 0.95 and ep["coverage"][:-1].max() <= 0.95  # ends at the first success
    assert 0 <= ep["action"].min() and ep["action"].max() <= 512
    # keypoint 8 (centre of gravity) sits 45 px along the stem from the block origin
    assert np.allclose(np.linalg.norm(ep["keypoint"][:, 8] - ep["state"][:, 2:4], axis=1), 45.0, atol=1e-3)
    meta = store.episode_meta(1)
    assert meta["success"] is True and meta["seed"] == 1 and meta["task"] == "pusht"
    assert meta["length"] == store.episode_lengths[1] and "T-shaped" in meta["language"]
    assert store.episode_ends[-1] == n


def test_resume_skips_done_jobs_and_never_duplicates(tmp_path):
    out = tmp_path / "m.zarr"
    jobs = jobs_for("pusht-m", episodes=3, seed=10, max_steps=15)
    first = generate(jobs[:2], out, keep_failed=True, progress=False)
    assert first["attempted"] == 2
    # a kill after an episode was written but before the "attempted" attribute: the store still knows the seed
    store = EpisodeStore.open(out, mode="a")
    store.update_attrs({"attempted": ["pusht-m@10"]})
    again = generate(jobs, out, keep_failed=True, progress=False)
    assert again["skipped_already_done"] == 2 and again["attempted"] == 1
    store = EpisodeStore.open(out)
    assert store.meta_column("seed").tolist() == [10, 11, 12]
    goals = np.stack([store.meta_column(k) for k in ("goal_x", "goal_y", "goal_theta")], 1)
    assert len(np.unique(goals[:, 0])) == 3 and np.all(np.abs(goals[:, :2] - 256) <= 100)


def test_pusht_m_goal_is_seeded_and_drawn():
    env = make_env("pusht-m", 0)
    try:
        obs_a, info_a = env.reset(seed=5)
        obs_b, info_b = env.reset(seed=5)
        obs_c, info_c = env.reset(seed=6)
    finally:
        env.close()
    assert np.array_equal(info_a["goal_pose"], info_b["goal_pose"]) and np.array_equal(obs_a["image"], obs_b["image"])
    assert not np.allclose(info_a["goal_pose"], info_c["goal_pose"])
    fixed = make_env("pusht", 0)
    try:
        obs_f, _ = fixed.reset(seed=5, options={"reset_to_state": obs_a["state"]})
    finally:
        fixed.close()
    # same agent and block, different goal: only the goal drawing differs between the two images
    assert not np.array_equal(obs_f["image"], obs_a["image"])
    green = (obs_a["image"][..., 1] > 200) & (obs_a["image"][..., 0] < 180)
    assert green.sum() > 50  # the goal T is drawn in the image


def test_robustness_variants_change_only_the_look():
    images = {}
    for spec in ("pusht", "pusht-bg-color", "pusht-goal-color", "pusht-bg-objects"):
        env = make_env(spec, 0)
        try:
            obs, info = env.reset(seed=3)
        finally:
            env.close()
        images[spec] = obs["image"]
        assert info["coverage"] >= 0.0 and "is_success" in info
    for spec in ("pusht-bg-color", "pusht-goal-color", "pusht-bg-objects"):
        assert not np.array_equal(images[spec], images["pusht"]), spec


def test_metaworld_demos_and_unknown_names(tmp_path):
    pytest.importorskip("metaworld")
    out = tmp_path / "mw.zarr"
    summary = generate(jobs_for("metaworld", 1, 0, ["reach"], image_size=32), out, progress=False)
    assert summary["succeeded"] == 1
    store = EpisodeStore.open(out)
    assert store.spec("img")[0] == (32, 32, 3) and store.spec("state")[0] == (39,) and store.spec("action")[0] == (4,)
    assert store.episode_meta(0)["task"] == "reach" and store.episode_meta(0)["language"] == "Reach the goal position."
    with pytest.raises(VideoActionError, match="unknown Metaworld task 'reachh'.*reach"):
        jobs_for("metaworld", 1, 0, ["reachh"])
    with pytest.raises(VideoActionError, match="unknown environment 'pushT-x'"):
        make_env("pushT-x")


@pytest.mark.slow
def test_pusht_expert_success_on_a_handful_of_seeds(tmp_path):
    summary = generate(jobs_for("pusht", episodes=6, seed=100), tmp_path / "e.zarr", keep_failed=True,
                       workers=2, progress=False)
    assert summary["success_rate"] >= 5 / 6  # 100 % measured on seeds 0-99 (benchmarks/demos)
