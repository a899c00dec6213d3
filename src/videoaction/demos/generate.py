"""One demonstration episode per seed (runs in worker processes; the parent writes the store)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class DemoConfig:
    kind: str = "pusht"  # an environment with scripted demonstrations (its EnvSpec has ``demo``)
    image_size: int = 96
    max_steps: int = 0  # 0 = the environment's max steps (its EnvSpec)
    tasks: list[str] = field(default_factory=list)  # the tasks of multi-task environments
    camera: str = ""  # render camera, for environments that have several ("" = the environment's default)
    wrist_camera: str = ""  # a second camera stored as ``wrist_image``, for environments that have one ("" = none)


_CACHE: dict = {}


def cached(key, make: Callable[[], tuple]) -> tuple:
    """This process's ``(env, expert)`` for ``key``, built once by ``make`` (simulators are slow to create)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def run_job(job: tuple) -> tuple:
    """``job = (cfg, task, seed)`` -> ``(task, seed, data, meta, seconds)``, recorded by the env's demo expert."""
    from videoaction.envs import get_env_spec

    cfg, task, seed = job
    t0 = time.time()
    data, meta = get_env_spec(cfg.kind).demo_recorder()(cfg, task, seed)
    return task, seed, data, meta, time.time() - t0


def close_cached_envs() -> None:
    """Close this process's cached simulators (MuJoCo renderers must be freed before interpreter shutdown)."""
    for env, _ in _CACHE.values():
        env.close()
    _CACHE.clear()


def init_worker(kind: str) -> None:
    from videoaction.envs import get_env_spec

    get_env_spec(kind).prepare_process()
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass


def job_key(task: str, seed: int) -> str:
    return f"{task}@{seed}"


def jobs_for(kind: str, episodes: int, seed: int = 0, tasks: list[str] | None = None, image_size: int = 96,
             max_steps: int = 0, camera: str = "", wrist_camera: str = "") -> list[tuple]:
    """Jobs ``(cfg, task, seed)``: seeds S..S+N-1 (per task for multi-task environments), in a fixed order."""
    from videoaction.envs import get_env_spec

    spec = get_env_spec(kind)
    spec.demo_recorder()  # an environment without scripted demonstrations is an error naming those with them
    task_list = resolve_tasks(kind, tasks)
    cfg = DemoConfig(kind=kind, image_size=image_size, max_steps=max_steps, tasks=task_list, camera=camera,
                     wrist_camera=wrist_camera)
    return [(cfg, t, seed + i) for t in task_list for i in range(episodes)]


def resolve_tasks(kind: str, tasks: list[str] | None) -> list[str]:
    """The demo tasks of ``kind`` (its EnvSpec's ``demo_tasks``; e.g. Metaworld ``mt10`` -> ten task names), or
    ``[kind]`` for single-task environments."""
    from videoaction.envs import get_env_spec

    spec = get_env_spec(kind)
    return spec.demo_tasks(tasks) if spec.demo_tasks is not None else [kind]


def generate(jobs: list[tuple], out, keep_failed: bool = False, workers: int = 1, progress: bool = True,
             attrs: dict | None = None) -> dict:
    """Run ``jobs`` (from :func:`jobs_for`) into the store at ``out``; skips (task, seed) pairs already attempted.

    Resumable: the store's attrs list every attempted ``task@seed`` (failed ones too) and committed episodes are
    also recognised from their metadata, so a kill between the two never repeats an episode. Only this (parent)
    process writes; workers only simulate.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    from videoaction.data.store import EpisodeStore

    kind = jobs[0][0].kind if jobs else "demos"
    base = {"generator": f"videoaction demos {kind}", "image_size": jobs[0][0].image_size if jobs else None}
    store = EpisodeStore.open_or_create(out, attrs={**base, **(attrs or {})})
    attempted = set(store.attrs.get("attempted", []))
    if store.n_episodes:
        attempted |= {job_key(str(t), int(s)) for t, s in zip(store.meta_column("task"), store.meta_column("seed"))}

    todo = [j for j in jobs if job_key(j[1], j[2]) not in attempted]
    st = {"attempted": 0, "succeeded": 0, "kept": 0, "steps": 0, "episode_seconds": 0.0,
          "skipped_already_done": len(jobs) - len(todo)}
    t0 = time.time()
    pool = (mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(kind,))
            if workers > 1 and len(todo) > 1 else None)
    it = pool.imap(run_job, todo) if pool else map(run_job, todo)
    bar = tqdm(total=len(todo), desc=f"demos {kind}", disable=not progress)
    try:
        for task, s, data, meta, secs in it:
            st["attempted"] += 1
            st["succeeded"] += int(meta["success"])
            st["episode_seconds"] += secs
            if meta["success"] or keep_failed:
                store.add_episode(data, meta)
                st["kept"] += 1
                st["steps"] += len(data["action"])
            attempted.add(job_key(task, s))
            store.update_attrs({"attempted": sorted(attempted)})
            bar.update(1)
            bar.set_postfix(success=f"{st['succeeded']}/{st['attempted']}")
    finally:
        bar.close()
        if pool:
            pool.terminate()
        else:
            close_cached_envs()
    st["wall_seconds"] = time.time() - t0
    st["success_rate"] = st["succeeded"] / st["attempted"] if st["attempted"] else float("nan")
    st["skipped"] = st["skipped_already_done"]
    st["n_episodes_in_store"] = store.n_episodes
    return st
