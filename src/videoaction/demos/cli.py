"""``videoaction demos {pusht,pusht-m,metaworld}``: scripted demonstrations into an episode store.

Episode i uses seed S+i whatever the worker count (Metaworld: per task). Resumable: the store's attrs record every
attempted (task, seed), failed ones too; a re-run skips them. Only the parent process writes (atomic per episode).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from videoaction.data.errors import VideoActionError
from videoaction.demos.generate import DemoConfig, init_worker, run_job


def resolve_tasks(kind: str, tasks: list[str] | None) -> list[str]:
    if kind != "metaworld":
        return [kind]
    from videoaction.envs import mt10_tasks, mt50_tasks

    out: list[str] = []
    for t in tasks or ["mt10"]:
        if t.lower() == "mt10":
            out += mt10_tasks()
        elif t.lower() == "mt50":
            out += mt50_tasks()
        else:
            name = t if t.endswith("-v3") else f"{t}-v3"
            if name not in mt50_tasks():
                raise VideoActionError(f"unknown Metaworld task {t!r}; valid: mt10, mt50, {', '.join(mt50_tasks())}")
            out.append(name)
    return list(dict.fromkeys(out))


def generate(kind: str, out: str, episodes: int, seed: int = 0, tasks: list[str] | None = None,
             keep_failed: bool = False, workers: int = 1, image_size: int = 96, max_steps: int = 0,
             camera: str = "corner2", progress: bool = True) -> dict:
    """Generate demonstrations; returns counts and timing."""
    from tqdm import tqdm

    from videoaction.data.store import EpisodeStore

    if kind not in ("pusht", "pusht-m", "metaworld"):
        raise VideoActionError(f"unknown demo kind {kind!r}; valid: pusht, pusht-m, metaworld")
    task_list = resolve_tasks(kind, tasks)
    cfg = DemoConfig(kind=kind, image_size=image_size, max_steps=max_steps, tasks=task_list, camera=camera)
    store = EpisodeStore.open_or_create(out, attrs={"generator": f"videoaction demos {kind}", "image_size": image_size})
    attempted = {tuple(x) for x in store.attrs.get("attempted", [])}
    if store.n_episodes:  # an episode committed just before a kill may be missing from attrs
        attempted |= {(str(t), int(s)) for t, s in zip(store.meta_column("task"), store.meta_column("seed"))}
    jobs = [(cfg, t, seed + i) for t in task_list for i in range(episodes) if (t, seed + i) not in attempted]
    stats = {"attempted": 0, "succeeded": 0, "kept": 0, "steps": 0, "episode_seconds": 0.0, "skipped":
             len(task_list) * episodes - len(jobs)}
    t0 = time.time()
    pool = mp.get_context("spawn").Pool(workers, initializer=init_worker) if workers > 1 and len(jobs) > 1 else None
    it = pool.imap(run_job, jobs) if pool else map(run_job, jobs)
    bar = tqdm(total=len(jobs), desc=f"demos {kind}", disable=not progress)
    try:
        for task, s, data, meta, secs in it:
            stats["attempted"] += 1
            stats["succeeded"] += int(meta["success"])
            stats["episode_seconds"] += secs
            if meta["success"] or keep_failed:
                store.add_episode(data, meta)
                stats["kept"] += 1
                stats["steps"] += len(data["action"])
            attempted.add((task, s))
            store.update_attrs({"attempted": sorted([list(a) for a in attempted])})
            bar.update(1)
            bar.set_postfix(success=f"{stats['succeeded']}/{stats['attempted']}")
    finally:
        bar.close()
        if pool:
            pool.terminate()
    stats["wall_seconds"] = time.time() - t0
    stats["n_episodes_in_store"] = store.n_episodes
    return stats


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="videoaction demos", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["pusht", "pusht-m", "metaworld"])
    p.add_argument("--episodes", type=int, default=10, help="attempts (per task for metaworld)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", nargs="*", default=None, help="metaworld: mt10, mt50 or task names")
    p.add_argument("--keep-failed", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--max-steps", type=int, default=0, help="0 = env default (300 PushT, 500 Metaworld)")
    p.add_argument("--camera", default="corner2")
    a = p.parse_args(argv)
    st = generate(a.kind, a.out, a.episodes, a.seed, a.tasks, a.keep_failed, a.workers, a.image_size, a.max_steps,
                  a.camera)
    print(f"attempted {st['attempted']} (skipped {st['skipped']} already done), succeeded {st['succeeded']}, "
          f"kept {st['kept']}; store has {st['n_episodes_in_store']} episodes; {st['wall_seconds']:.1f}s")
    return 0
