"""`videoaction demos {pusht,pusht-m,metaworld} --episodes N --seed S --out PATH`: scripted demonstrations.

Runs N attempts on seeds S .. S+N-1 (Metaworld: N per task) in parallel worker processes and appends the kept
episodes (successful ones unless ``--keep-failed``) to a Diffusion-Policy-compatible store. Re-running the same
command after a kill continues where it stopped.
"""

from __future__ import annotations

import argparse
import json

from videoaction.demos.generate import generate, jobs_for


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videoaction demos", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["pusht", "pusht-m", "metaworld"])
    p.add_argument("--episodes", type=int, required=True, help="attempts (Metaworld: per task)")
    p.add_argument("--seed", type=int, default=0, help="first seed (episode i uses seed S + i)")
    p.add_argument("--out", required=True, help="episode store to create or append to")
    p.add_argument("--tasks", nargs="+", help="Metaworld task names, or the sets mt10 / mt50 (default mt10)")
    p.add_argument("--keep-failed", action="store_true", help="also keep episodes the expert did not finish")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--image-size", type=int, default=96, help="square image size (default 96, as PushT)")
    p.add_argument("--camera", default="corner2", help="Metaworld camera (default corner2)")
    p.add_argument("--max-steps", type=int, help="episode step limit (default: PushT 300, Metaworld 500)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    jobs = jobs_for(args.kind, args.episodes, args.seed, args.tasks, args.max_steps, args.image_size, args.camera)
    summary = generate(jobs, args.out, keep_failed=args.keep_failed, workers=args.workers,
                       progress=not args.no_progress,
                       attrs={"generator": args.kind, "image_size": args.image_size, "fps": 10 if
                              args.kind.startswith("pusht") else 80, "camera": args.camera if args.kind == "metaworld"
                              else None})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['attempted']} attempted ({summary['skipped_already_done']} already done), "
              f"{summary['succeeded']} succeeded ({100 * summary['success_rate']:.0f} %), {summary['kept']} kept; "
              f"store has {summary['episodes_in_store']} episodes; {summary['episodes_per_min']:.1f} episodes/min")
    return 0
