"""`videoaction bench --quality`: UVA-tiny vs DP-C-tiny, same data, same wall-clock training budget, same seeds.

Both families train on the same scripted PushT demonstrations for ``minutes`` each (one after the other, so they
get the same machine), then both are evaluated on PushT (success and DP score) and, when Metaworld demonstrations
are given, on those tasks; a comparison report is written with :func:`videoaction.eval.report.write_report`.
"""

from __future__ import annotations

import time
from pathlib import Path

from videoaction.errors import VideoActionError


def run_quality(out: Path, minutes: float = 30.0, data: str | None = None, quick: bool = False,
                eval_episodes: int | None = None, seed: int = 0) -> dict:
    from videoaction.config import get_preset
    from videoaction.demos.cli import main as demos_main
    from videoaction.eval.report import write_report
    from videoaction.eval.runner import evaluate_policy
    from videoaction.models.base import load_policy
    from videoaction.train.trainer import TrainOptions, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = str(out / "pusht.zarr")
        n = 6 if quick else 100
        if demos_main(["pusht", "--episodes", str(n), "--seed", str(seed), "--out", data]):
            raise VideoActionError("demonstration generation failed")
    eval_episodes = eval_episodes or (2 if quick else 50)
    results, runs = {}, {}
    for family, preset in (("uva", "uva-tiny"), ("dp", "dp-tiny")):
        cfg = get_preset(preset)
        cfg.data, cfg.out, cfg.seed = data, str(out / f"run_{family}"), seed
        cfg.steps = 10 if quick else 1_000_000  # the wall-clock budget ends training
        cfg.time_limit_min = minutes
        cfg.save_every = max(cfg.steps // 4, 1) if quick else 1000
        cfg.resume = (Path(cfg.out) / "checkpoints").is_dir()
        t0 = time.perf_counter()
        res = train(cfg, TrainOptions(tokenizer_steps=20 if quick else 1500))
        policy = load_policy(res.checkpoint)
        runs[preset] = {"steps": res.step, "train_s": time.perf_counter() - t0, "checkpoint": str(res.checkpoint)}
        results[preset] = evaluate_policy(policy, "pusht", n_episodes=eval_episodes, out_dir=out / f"eval_{family}",
                                          record_video=2, max_steps=30 if quick else None)
        results[preset]["training"] = runs[preset]
    first, *rest = list(results)
    report = write_report(out / "report", results[first], baselines={k: results[k] for k in rest},
                          media_root=out / f"eval_{first.split('-')[0]}",
                          title=f"UVA-tiny vs DP-C-tiny, {minutes:g} min of training each")
    summary = {name: {"dp_score": r["metrics"].get("dp_score"), "success_rate": r["metrics"]["success_rate"],
                      **runs[name]} for name, r in results.items()}
    summary["report"] = str(report)
    return summary
