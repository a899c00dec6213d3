"""One demonstration episode per seed (runs in worker processes; the parent writes the store)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class DemoConfig:
    kind: str = "pusht"  # pusht | pusht-m | metaworld
    image_size: int = 96
    max_steps: int = 0  # 0 = the env default (PushT 300, Metaworld 500)
    tasks: list[str] = field(default_factory=lambda: ["mt10"])
    camera: str = "corner2"


_CACHE: dict = {}


def _pusht_episode(cfg: DemoConfig, seed: int) -> tuple[dict, dict]:
    from videoaction.demos.pusht_expert import PushTExpert, run_expert_episode
    from videoaction.envs import make_env

    key = ("pusht", cfg.kind, cfg.image_size)
    if key not in _CACHE:
        _CACHE[key] = (make_env(cfg.kind, image_size=cfg.image_size), PushTExpert())
    env, expert = _CACHE[key]
    rec: dict[str, list] = {k: [] for k in ("img", "state", "keypoint", "action", "n_contacts", "coverage")}
    kp = {"v": None}

    def on_step(obs, action, reward, info):  # obs is the observation the action was chosen from
        rec["img"].append(obs["image"])
        rec["state"].append(obs["state"])
        rec["keypoint"].append(kp["v"])
        rec["action"].append(action)
        rec["n_contacts"].append([float(info.get("n_contacts", 0))])
        rec["coverage"].append([float(info["coverage"])])  # after this step's action (like the reward)
        kp["v"] = env.unwrapped.keypoints9()

    # keypoints/coverage of the *pre-action* state: seed them after reset via a wrapper around reset
    orig_reset = env.reset

    def reset(**kw):
        out = orig_reset(**kw)
        kp["v"] = env.unwrapped.keypoints9()
        return out

    env.reset = reset
    try:
        res = run_expert_episode(env, seed, expert, max_steps=cfg.max_steps or 300, on_step=on_step)
    finally:
        env.reset = orig_reset
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "keypoint": np.asarray(rec["keypoint"], np.float32), "action": np.asarray(rec["action"], np.float32),
            "n_contacts": np.asarray(rec["n_contacts"], np.float32), "coverage": np.asarray(rec["coverage"], np.float32)}
    lang = "Push the T-shaped block onto the green target." if cfg.kind == "pusht" else \
        "Push the T-shaped block onto the green target pose shown in the image."
    goal = env.unwrapped.goal_pose
    meta = {"success": bool(res["success"]), "seed": int(seed), "task": cfg.kind, "language": lang,
            "length": len(rec["action"]), "goal_x": float(goal[0]), "goal_y": float(goal[1]),
            "goal_theta": float(goal[2])}
    return data, meta


def _metaworld_episode(cfg: DemoConfig, task: str, seed: int) -> tuple[dict, dict]:
    from metaworld.policies import ENV_POLICY_MAP

    from videoaction.envs import make_env

    key = ("mw", task, cfg.image_size)
    if key not in _CACHE:
        _CACHE[key] = (make_env(f"metaworld:{task}", image_size=cfg.image_size, camera=cfg.camera,
                                max_steps=cfg.max_steps or 500), ENV_POLICY_MAP[task]())
    env, policy = _CACHE[key]
    obs, _ = env.reset(seed=seed)
    rec: dict[str, list] = {"img": [], "state": [], "action": []}
    success, done = False, False
    import warnings

    while not done:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action = np.clip(policy.get_action(env.last_raw_obs), -1, 1).astype(np.float32)
        rec["img"].append(obs["image"])
        rec["state"].append(obs["state"])
        rec["action"].append(action)
        obs, _, term, trunc, info = env.step(action)
        success = info["is_success"]
        done = success or term or trunc
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "action": np.asarray(rec["action"], np.float32)}
    meta = {"success": bool(success), "seed": int(seed), "task": task.removesuffix("-v3"), "language": env.language,
            "length": len(rec["action"])}
    return data, meta


def run_job(job: tuple) -> tuple:
    """``job = (cfg, task, seed)`` -> ``(task, seed, data, meta, seconds)``."""
    cfg, task, seed = job
    t0 = time.time()
    if cfg.kind == "metaworld":
        data, meta = _metaworld_episode(cfg, task, seed)
    else:
        data, meta = _pusht_episode(cfg, seed)
    return task, seed, data, meta, time.time() - t0


def close_cached_envs() -> None:
    """Close this process's cached simulators (MuJoCo renderers must be freed before interpreter shutdown)."""
    for env, _ in _CACHE.values():
        env.close()
    _CACHE.clear()


def init_worker() -> None:
    from videoaction.envs.metaworld import ensure_headless_gl

    ensure_headless_gl()
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass


def job_key(task: str, seed: int) -> str:
    return f"{task}@{seed}"


def jobs_for(kind: str, episodes: int, seed: int = 0, tasks: list[str] | None = None, image_size: int = 96,
             max_steps: int = 0, camera: str = "corner2") -> list[tuple]:
    """Jobs ``(cfg, task, seed)``: seeds S..S+N-1 (per task for Metaworld), in a fixed order."""
    from videoaction.data.errors import VideoActionError

    if kind not in ("pusht", "pusht-m", "metaworld"):
        raise VideoActionError(f"unknown demo kind {kind!r}; valid: pusht, pusht-m, metaworld")
    task_list = resolve_tasks(kind, tasks)
    cfg = DemoConfig(kind=kind, image_size=image_size, max_steps=max_steps, tasks=task_list, camera=camera)
    return [(cfg, t, seed + i) for t in task_list for i in range(episodes)]


def resolve_tasks(kind: str, tasks: list[str] | None) -> list[str]:
    """Metaworld task names (``-v3`` names) from ``mt10``/``mt50``/names; ``[kind]`` for PushT."""
    if kind != "metaworld":
        return [kind]
    from videoaction.envs.metaworld import resolve_tasks as metaworld_tasks

    return [f"{t}-v3" for t in metaworld_tasks(tasks or ["mt10"])]


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

    def short(task: str) -> str:
        return task.removesuffix("-v3")

    todo = [j for j in jobs if job_key(short(j[1]), j[2]) not in attempted]
    st = {"attempted": 0, "succeeded": 0, "kept": 0, "steps": 0, "episode_seconds": 0.0,
          "skipped_already_done": len(jobs) - len(todo)}
    t0 = time.time()
    pool = mp.get_context("spawn").Pool(workers, initializer=init_worker) if workers > 1 and len(todo) > 1 else None
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
            attempted.add(job_key(short(task), s))
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
