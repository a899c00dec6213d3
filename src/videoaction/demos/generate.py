"""Demonstration generation: scripted experts rolled out in worker processes, written to an episode store.

* Deterministic: job i is (task, seed S + i) whatever the number of workers; results are written in job order.
* Resumable: the store is append-only and atomic per episode; a re-run skips every job already attempted — those
  recorded in the store's ``attempted`` attribute and those whose episode is in the store (so a kill between the
  episode and the attribute write cannot duplicate it). Only the parent process writes.
* PushT / PushT-M record Diffusion Policy's keys (``img``, ``state``, ``keypoint``, ``action``, ``n_contacts``)
  plus ``coverage``; Metaworld records ``img``, ``state`` (39), ``action`` (4). Per-episode metadata: ``success``,
  ``seed``, ``task``, ``language``, ``length``, and the goal pose for PushT.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videoaction.data.errors import VideoActionError


@dataclass(frozen=True)
class DemoJob:
    env: str  # make_env spec: pusht, pusht-m, metaworld:<task>
    seed: int
    max_steps: int
    image_size: int
    camera: str = "corner2"

    @property
    def key(self) -> str:
        return f"{self.env}@{self.seed}"


def _pusht_episode(job: DemoJob) -> tuple[dict, dict]:
    from videoaction.demos.pusht_expert import LOCAL_KEYPOINTS9, run_expert_episode, to_world
    from videoaction.envs import make_env

    env = make_env(job.env, job.seed, image_size=job.image_size, max_episode_steps=job.max_steps)
    rec: dict[str, list] = {k: [] for k in ("img", "state", "keypoint", "action", "n_contacts", "coverage")}

    def on_step(obs, action, reward, info):
        state = obs["state"]
        rec["img"].append(obs["image"])
        rec["state"].append(state)
        rec["keypoint"].append(to_world(LOCAL_KEYPOINTS9, state[2:5]).astype(np.float32))
        rec["action"].append(np.asarray(action, np.float32))
        rec["n_contacts"].append([float(info.get("n_contacts", 0))])
        rec["coverage"].append([float(info["coverage"])])

    try:
        result = run_expert_episode(env, job.seed, max_steps=job.max_steps, on_step=on_step)
        goal = np.asarray(env.unwrapped.goal_pose, dtype=np.float64)
        language = env.unwrapped.language
    finally:
        env.close()
    data = {k: np.asarray(v, dtype=np.uint8 if k == "img" else np.float32) for k, v in rec.items()}
    meta = {"success": bool(result["success"]), "seed": job.seed, "task": job.env, "language": language,
            "length": int(result["steps"]), "goal_x": float(goal[0]), "goal_y": float(goal[1]),
            "goal_theta": float(goal[2])}
    return data, meta


def _metaworld_episode(job: DemoJob) -> tuple[dict, dict]:
    import warnings

    from metaworld.policies import ENV_POLICY_MAP

    from videoaction.envs import make_env

    task = job.env.split(":", 1)[1]
    env = make_env(job.env, job.seed, image_size=job.image_size, camera=job.camera, max_episode_steps=job.max_steps)
    expert = ENV_POLICY_MAP[f"{task}-v3"]()
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # the experts' own P-gains
    rec: dict[str, list] = {"img": [], "state": [], "action": []}
    success = False
    try:
        obs, info = env.reset(seed=job.seed)
        for _ in range(job.max_steps):
            action = np.clip(expert.get_action(obs["state"].astype(np.float64)), -1, 1).astype(np.float32)
            rec["img"].append(obs["image"])
            rec["state"].append(obs["state"])
            rec["action"].append(action)
            obs, _, terminated, truncated, info = env.step(action)
            if info["is_success"]:
                success = True
                break
            if terminated or truncated:
                break
        language = info.get("language", task)
    finally:
        env.close()
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "action": np.asarray(rec["action"], np.float32)}
    meta = {"success": success, "seed": job.seed, "task": task, "language": language, "length": len(rec["action"])}
    return data, meta


def run_job(job: DemoJob) -> tuple[DemoJob, dict, dict, float]:
    """Worker entry point: one expert episode."""
    t0 = time.perf_counter()
    data, meta = (_metaworld_episode if job.env.startswith("metaworld:") else _pusht_episode)(job)
    return job, data, meta, time.perf_counter() - t0


def _done_keys(store) -> set[str]:
    done = set(store.attrs.get("attempted", []))
    if store.n_episodes and {"task", "seed"} <= set(store.meta_keys):
        tasks, seeds = store.meta_column("task"), store.meta_column("seed")
        prefix = "metaworld:" if store.attrs.get("generator") == "metaworld" else ""
        done |= {f"{prefix}{t}@{int(s)}" for t, s in zip(tasks, seeds)}
    return done


def generate(jobs: list[DemoJob], out, keep_failed: bool = False, workers: int = 1, progress: bool = True,
             attrs: dict | None = None) -> dict:
    """Run ``jobs`` (skipping those already attempted in ``out``) and append their episodes to the store."""
    from tqdm.auto import tqdm

    from videoaction.data.store import EpisodeStore

    if not jobs:
        raise VideoActionError("no demonstration jobs to run")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    store = EpisodeStore.open_or_create(Path(out), attrs={**(attrs or {}), "keep_failed": keep_failed})
    done = _done_keys(store)
    todo = [j for j in jobs if j.key not in done]
    attempted = list(store.attrs.get("attempted", []))
    stats = {"attempted": 0, "succeeded": 0, "kept": 0, "skipped_already_done": len(jobs) - len(todo),
             "episode_s": [], "lengths": []}
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"demos -> {Path(out).name}", unit="ep", disable=not progress)

    def consume(results):
        for job, data, meta, seconds in results:
            stats["attempted"] += 1
            stats["episode_s"].append(seconds)
            stats["succeeded"] += int(meta["success"])
            if (meta["success"] or keep_failed) and meta["length"] > 0:
                store.add_episode(data, meta)
                stats["kept"] += 1
                stats["lengths"].append(meta["length"])
            attempted.append(job.key)
            store.update_attrs({"attempted": attempted})
            bar.update(1)
            bar.set_postfix(success=f"{stats['succeeded']}/{stats['attempted']}", kept=stats["kept"])

    try:
        if workers <= 1 or len(todo) <= 1:
            consume(map(run_job, todo))
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                consume(pool.imap(run_job, todo))
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    return {
        "store": str(out), "episodes_in_store": store.n_episodes, "attempted": stats["attempted"],
        "succeeded": stats["succeeded"], "kept": stats["kept"], "skipped_already_done": stats["skipped_already_done"],
        "success_rate": stats["succeeded"] / max(stats["attempted"], 1),
        "mean_length": float(np.mean(stats["lengths"])) if stats["lengths"] else None,
        "mean_episode_s": float(np.mean(stats["episode_s"])) if stats["episode_s"] else None,
        "wall_s": wall, "episodes_per_min": 60.0 * stats["attempted"] / max(wall, 1e-9), "workers": workers,
    }


def jobs_for(kind: str, episodes: int, seed: int, tasks: list[str] | None = None, max_steps: int | None = None,
             image_size: int = 96, camera: str = "corner2") -> list[DemoJob]:
    """Job list of a generator: ``pusht`` / ``pusht-m`` (seeds S..S+N-1) or ``metaworld`` (N per task)."""
    if episodes < 1:
        raise VideoActionError(f"--episodes must be >= 1, got {episodes}")
    if kind in ("pusht", "pusht-m"):
        return [DemoJob(kind, seed + i, max_steps or 300, image_size) for i in range(episodes)]
    if kind == "metaworld":
        from videoaction.envs.metaworld import resolve_tasks

        names = resolve_tasks(tasks or ["mt10"])
        return [DemoJob(f"metaworld:{t}", seed + i, max_steps or 500, image_size, camera)
                for t in names for i in range(episodes)]
    raise VideoActionError(f"unknown demonstration generator {kind!r}; valid: pusht, pusht-m, metaworld")


__all__ = ["DemoJob", "generate", "jobs_for", "run_job"]
