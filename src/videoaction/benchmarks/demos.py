"""Demo-generator benchmark: PushT expert success over seeds 0-99, mean length, s/episode, episodes/minute.

Each generator runs end to end (expert + rendering + store writes) into a temporary store, one worker process,
so s/episode is per core. ``quick``: PushT seeds 0-9, PushT-M 0-2, Metaworld reach+push 1 episode each.
Full: PushT seeds 0-99, PushT-M 0-19, Metaworld MT10 x 2 episodes. ``python -m videoaction.benchmarks.demos [--quick]``.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np


def _one(kind: str, episodes: int, tasks=None, image_size: int = 96) -> dict:
    from videoaction.data.store import EpisodeStore
    from videoaction.demos.cli import generate_kind as generate

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "demos.zarr")
        st = generate(kind, out, episodes=episodes, seed=0, tasks=tasks, keep_failed=True, workers=1,
                      image_size=image_size, progress=False)
        s = EpisodeStore.open(out)
        lengths = s.episode_lengths
        success = s.meta_column("success").astype(bool)
    n = st["attempted"]
    return {"generator": kind, "tasks": tasks, "episodes": n, "seeds": f"0-{episodes - 1}",
            "success_rate": float(success.mean()), "mean_length": float(lengths.mean()),
            "mean_length_success": float(lengths[success].mean()) if success.any() else None,
            "s_per_episode": st["episode_seconds"] / n, "episodes_per_min": 60.0 * n / st["wall_seconds"],
            "image_size": image_size, "failed_seeds": [int(x) for x in np.nonzero(~success)[0]]}


def run(quick: bool = False) -> dict:
    from videoaction.envs.metaworld import ensure_headless_gl

    ensure_headless_gl()
    rows = [_one("pusht", 10 if quick else 100), _one("pusht-m", 3 if quick else 20)]
    try:
        import metaworld  # noqa: F401

        rows.append(_one("metaworld", 1 if quick else 2, tasks=["reach", "push"] if quick else ["mt10"]))
    except ImportError:
        pass
    return {"demos": rows}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rep = run(quick="--quick" in argv)
    print(f"{'generator':<10}{'episodes':>9}{'success':>9}{'mean len':>10}{'s/ep':>8}{'ep/min':>8}")
    for r in rep["demos"]:
        print(f"{r['generator']:<10}{r['episodes']:>9}{r['success_rate']:>9.2%}{r['mean_length']:>10.1f}"
              f"{r['s_per_episode']:>8.2f}{r['episodes_per_min']:>8.1f}")
    p = rep["demos"][0]
    print(f"PushT expert: success {p['success_rate']:.0%} over seeds {p['seeds']} (coverage > 0.95 within 300 steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
