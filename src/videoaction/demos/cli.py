"""``videoaction demos ENV``: scripted demonstrations into an episode store, for every environment whose EnvSpec
names a demo expert (``pusht``, ``pusht-m``, ``metaworld`` today).

Episode i uses seed S+i whatever the worker count (per task for multi-task environments). Resumable: the store's
attrs record every attempted ``task@seed``, failed ones too; a re-run skips them. Only the parent process writes
(atomic per episode).
"""

from __future__ import annotations

import argparse

from videoaction.demos.generate import generate, jobs_for, resolve_tasks

__all__ = ["generate_kind", "main", "resolve_tasks"]


def generate_kind(kind: str, out: str, episodes: int, seed: int = 0, tasks: list[str] | None = None,
                  keep_failed: bool = False, workers: int = 1, image_size: int = 96, max_steps: int = 0,
                  camera: str = "", progress: bool = True, wrist_camera: str = "") -> dict:
    """Build the jobs for ``kind`` and run them (see :func:`videoaction.demos.generate.generate`)."""
    jobs = jobs_for(kind, episodes, seed, tasks, image_size=image_size, max_steps=max_steps, camera=camera,
                    wrist_camera=wrist_camera)
    return generate(jobs, out, keep_failed=keep_failed, workers=workers, progress=progress)


def main(argv: list[str]) -> int:
    from videoaction.envs.spec import demo_env_names

    p = argparse.ArgumentParser(prog="videoaction demos", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=demo_env_names(), help="environment")
    p.add_argument("--episodes", type=int, default=10, help="attempts (per task for multi-task environments)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", nargs="*", default=None, help="multi-task environments: task names or sets "
                   "(metaworld: mt10, mt50, reach, ...)")
    p.add_argument("--keep-failed", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--max-steps", type=int, default=0, help="0 = the environment's default (its EnvSpec)")
    p.add_argument("--camera", default="", help="render camera of environments with several (metaworld: corner2, "
                   "...); default: the environment's")
    p.add_argument("--wrist-camera", default="", help="a second camera stored as wrist_image (metaworld: "
                   "gripperPOV, behindGripper, corner3, ...); default: none")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    st = generate_kind(a.kind, a.out, a.episodes, a.seed, a.tasks, a.keep_failed, a.workers, a.image_size,
                       a.max_steps, a.camera, progress=not a.no_progress, wrist_camera=a.wrist_camera)
    print(f"attempted {st['attempted']} (skipped {st['skipped_already_done']} already done), succeeded "
          f"{st['succeeded']}, kept {st['kept']}; store has {st['n_episodes_in_store']} episodes; "
          f"{st['wall_seconds']:.1f}s")
    return 0
