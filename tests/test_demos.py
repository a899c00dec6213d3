"""Demonstration generators: keys, shapes, dtypes, boundaries, metadata, resume, expert success."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("gym_pusht")
os.environ.setdefault("MUJOCO_GL", "osmesa")

from videoaction.data.store import EpisodeStore  # noqa: E402
from videoaction.demos.cli import generate_kind as generate, main  # noqa: E402

pytestmark = pytest.mark.sim


def test_pusht_short_episodes(tmp_path):
    out = tmp_path / "p.zarr"
    st = generate("pusht", str(out), episodes=2, seed=0, keep_failed=True, image_size=32, max_steps=12,
                  progress=False)
    assert st["attempted"] == 2
    s = EpisodeStore.open(out)
    assert s.n_episodes == 2 and list(s.episode_lengths) == [12, 12]
    specs = {k: s.spec(k) for k in s.keys}
    assert specs == {"img": ((32, 32, 3), np.uint8), "state": ((5,), np.float32), "keypoint": ((9, 2), np.float32),
                     "action": ((2,), np.float32), "n_contacts": ((1,), np.float32), "coverage": ((1,), np.float32)}
    ep = s.get_episode(1)
    # state at step 0 is the reset state of seed 1; the keypoints agree with the state's block pose
    from videoaction.envs.pusht import LOCAL_KEYPOINTS9, to_world

    np.testing.assert_allclose(ep["keypoint"][0], to_world(LOCAL_KEYPOINTS9, ep["state"][0, 2:]), atol=1e-2)
    meta = s.episode_meta(1)
    assert {k: meta[k] for k in ("success", "seed", "task", "length")} == {"success": False, "seed": 1,
                                                                           "task": "pusht", "length": 12}
    np.testing.assert_allclose([meta["goal_x"], meta["goal_y"], meta["goal_theta"]], [256, 256, np.pi / 4])
    assert "T-shaped" in meta["language"]


def test_expert_moves_its_target_like_a_hand(tmp_path):
    """The commanded target never jumps more than ``max_target_speed`` px per step, starting at the agent."""
    from videoaction.demos.pusht_expert import ExpertConfig, PushTExpert

    ex = PushTExpert(ExpertConfig(max_target_speed=25.0))
    r = ex.ramp([0.0, 0.0], [60.0, 80.0])  # 100 px -> 4 steps of 25 px
    np.testing.assert_allclose(r, [[15, 20], [30, 40], [45, 60], [60, 80]])
    assert len(ex.push_actions([0, 0], [10, 0])) == ex.cfg.push_steps  # short push: ramp, then hold
    assert len(PushTExpert(ExpertConfig(max_target_speed=None)).ramp([0, 0], [60, 80])) == 1  # the old jumps
    out = tmp_path / "p.zarr"
    generate("pusht", str(out), episodes=1, seed=3, keep_failed=True, image_size=32, max_steps=60, progress=False)
    ep = EpisodeStore.open(out).get_episode(0)
    targets = np.concatenate([ep["state"][:1, :2], ep["action"]])  # the agent's start, then every command
    assert np.linalg.norm(np.diff(targets, axis=0), axis=1).max() <= 25.0 + 1e-3


def test_pusht_m_and_metaworld_short(tmp_path):
    out = tmp_path / "m.zarr"
    generate("pusht-m", str(out), episodes=1, seed=3, keep_failed=True, image_size=32, max_steps=5, progress=False)
    s = EpisodeStore.open(out)
    assert s.n_episodes == 1 and s.episode_meta(0)["task"] == "pusht-m"
    pytest.importorskip("metaworld")
    out = tmp_path / "mw.zarr"
    assert main(["metaworld", "--tasks", "reach", "drawer-close", "--episodes", "1", "--out", str(out),
                 "--image-size", "24", "--max-steps", "8", "--keep-failed"]) == 0
    s = EpisodeStore.open(out)
    assert s.n_episodes == 2 and s.n_steps <= 16
    assert {k: s.spec(k) for k in s.keys} == {"img": ((24, 24, 3), np.uint8), "state": ((39,), np.float32),
                                              "action": ((4,), np.float32)}
    assert sorted(s.meta_column("task")) == ["drawer-close", "reach"]
    assert all(len(x) > 5 for x in s.meta_column("language"))


def test_resume_after_interrupt_no_duplicates(tmp_path):
    out = tmp_path / "r.zarr"
    kw = dict(keep_failed=True, image_size=16, max_steps=4, progress=False)
    generate("pusht", str(out), episodes=2, seed=10, **kw)
    # simulate a kill mid-append: data grown by a partial episode that never got committed
    s = EpisodeStore.open(out, mode="a")
    arr = s.array("action")
    arr.resize((arr.shape[0] + 3, 2))
    with pytest.raises(Exception):
        EpisodeStore.open(out)  # read-only open refuses the half-written tail
    st = generate("pusht", str(out), episodes=4, seed=10, **kw)
    assert st["skipped_already_done"] == 2 and st["attempted"] == 2
    s = EpisodeStore.open(out)
    assert list(s.meta_column("seed")) == [10, 11, 12, 13] and s.n_steps == 16
    # deterministic: the same seed regenerated elsewhere gives the same episode
    other = tmp_path / "o.zarr"
    generate("pusht", str(other), episodes=1, seed=12, **kw)
    np.testing.assert_array_equal(EpisodeStore.open(other).get_episode(0)["img"], s.get_episode(2)["img"])


def test_pusht_expert_succeeds_on_seeds():
    from gym_pusht.envs.pusht import PushTEnv

    from videoaction.demos.pusht_expert import PushTExpert, run_expert_episode

    env, expert = PushTEnv(obs_type="state"), PushTExpert()
    results = [run_expert_episode(env, s, expert) for s in (0, 3, 6)]
    assert all(r["success"] for r in results), results
    assert all(r["coverage"] > 0.95 and r["steps"] <= 300 for r in results)


def test_workers_match_sequential(tmp_path):
    kw = dict(keep_failed=True, image_size=16, max_steps=4, progress=False)
    generate("pusht", str(tmp_path / "a.zarr"), episodes=2, seed=20, workers=2, **kw)
    generate("pusht", str(tmp_path / "b.zarr"), episodes=2, seed=20, workers=1, **kw)
    a, b = EpisodeStore.open(tmp_path / "a.zarr"), EpisodeStore.open(tmp_path / "b.zarr")
    assert list(a.meta_column("seed")) == [20, 21]
    for k in a.keys:
        np.testing.assert_array_equal(a.to_numpy([k])[k], b.to_numpy([k])[k])
