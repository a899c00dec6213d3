"""Learning curves in closed loop: success of saved checkpoints against training wall-clock.

:func:`train_with_curve` trains a run for a wall-clock budget in ``points`` equal segments (``--resume`` between
them, so the optimiser, EMA, data order and RNG continue exactly) and records one checkpoint per segment in
``RUN/curve.json``. :func:`evaluate_curve` rolls every recorded checkpoint out in the simulator on the first
``n_intermediate`` seeds (the curve), then the last and the best checkpoint on all seeds.
The **headline is the last checkpoint** (what the budget buys without peeking at test seeds); the best checkpoint is
reported beside it. :func:`plot_curves` and :func:`curve_section` draw the curves for an HTML report.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_write_json

CURVE_FILE = "curve.json"
CHECKPOINT_RULE = ("headline = last checkpoint (end of the wall-clock budget); best = highest score over the "
                   "curve checkpoints, re-evaluated on the headline seeds and shown beside it")


def read_curve(run_dir) -> list[dict]:
    path = Path(run_dir) / CURVE_FILE
    return json.loads(path.read_text())["points"] if path.is_file() else []


def train_with_curve(cfg, minutes: float, points: int, opts=None, log: Callable[[str], None] = print) -> list[dict]:
    """Train ``cfg`` for ``minutes`` of training wall-clock, saving a curve checkpoint every ``minutes / points``.

    Resumable: segments already in ``RUN/curve.json`` are skipped, an interrupted one continues from the run's
    latest checkpoint. Each point: ``{"index", "minutes" (training clock so far: the trainer stops a segment at the
    first step past its share), "wall_s" (measured, setup and stage 0 included), "step", "checkpoint"}``.
    """
    from videoaction.models.base import family_class
    from videoaction.train.trainer import TrainOptions, train

    train = family_class(cfg.family).train_entry() or train  # a family with its own loop (HMA) declares it
    if points < 1 or minutes <= 0:
        raise VideoActionError(f"train_with_curve: need points >= 1 and minutes > 0, got {points}, {minutes}")
    run_dir = Path(cfg.out)
    curve = read_curve(run_dir)
    seg = minutes / points
    cfg.steps = max(cfg.steps, 10**9)  # the clock ends every segment
    cfg.save_every = 10**9
    cfg.keep_last = points + 2  # prune_checkpoints must not delete curve checkpoints
    for i in range(len(curve), points):
        cfg.time_limit_min = seg
        cfg.resume = (run_dir / "checkpoints").is_dir()
        t0 = time.perf_counter()
        res = train(cfg, opts or TrainOptions(progress=False, log=log))
        wall = time.perf_counter() - t0
        prev_wall = curve[-1]["wall_s"] if curve else 0.0
        curve.append({"index": i + 1, "minutes": round(seg * (i + 1), 6), "step": res.step,
                      "wall_s": prev_wall + wall, "checkpoint": str(res.checkpoint)})
        atomic_write_json(run_dir / CURVE_FILE, {"minutes": minutes, "points": points, "points_done": len(curve),
                                                 "points": curve})
        log(f"curve point {i + 1}/{points}: step {res.step} after {seg * (i + 1):.1f} min of training")
    return curve


def evaluate_curve(curve: Sequence[Mapping[str, Any]], env: str, seeds: Sequence[int], n_intermediate: int,
                   score: Callable[[dict], float], out_dir, max_steps: int | None = None, record_video: int = 0,
                   n_envs: int = 8, evaluate: Callable | None = None) -> dict:
    """Evaluate each curve checkpoint; returns ``{"points", "last", "best", "headline": "last", "rule"}``.

    Every checkpoint is evaluated on ``seeds[:n_intermediate]`` (the curve; the best is chosen there); the last
    (the headline) and the best are then evaluated on all ``seeds``.
    Results already in ``out_dir/step_*/results.json`` with the same seeds are reused (resumable).
    """
    from videoaction.eval.runner import evaluate_policy

    evaluate = evaluate or evaluate_policy
    if not curve:
        raise VideoActionError(f"evaluate_curve: no checkpoints recorded for {out_dir}")
    out = Path(out_dir)
    seeds = [int(s) for s in seeds]
    few = seeds[: max(1, min(n_intermediate, len(seeds)))]

    def run(point, use_seeds, video=0) -> tuple[dict, str]:
        d = out / f"step_{point['step']:07d}" / f"seeds_{len(use_seeds)}"
        f = d / "results.json"
        if f.is_file():
            old = json.loads(f.read_text())
            if [int(s) for s in old.get("seeds", [])] == list(use_seeds):
                return old, str(d)
        return evaluate(point["checkpoint"], env, seeds=list(use_seeds), max_steps=max_steps, out_dir=d,
                        record_video=video, n_envs=min(n_envs, len(use_seeds)), progress=False), str(d)

    rows = []
    for p in curve:  # every point on the same (first) seeds: a consistent curve, and the choice of the best
        res, d = run(p, few)
        rows.append({**dict(p), "seeds": len(few), "score": float(score(res)), "metrics": _summary(res),
                     "eval_dir": d})
    best_i = max(range(len(rows)), key=lambda i: (rows[i]["score"], i))  # ties: the later checkpoint

    def full(i: int, video: int = 0) -> dict:
        res, d = run(curve[i], seeds, video)
        return {**rows[i], "seeds": len(seeds), "score": float(score(res)), "metrics": _summary(res), "eval_dir": d,
                "score_on_curve_seeds": rows[i]["score"], "results": res}

    last = full(len(rows) - 1, record_video)
    best = last if best_i == len(rows) - 1 else full(best_i)
    strip = lambda r: {k: v for k, v in r.items() if k != "results"}  # noqa: E731
    return {"points": rows, "last": strip(last), "best": strip(best), "headline": "last",
            "rule": CHECKPOINT_RULE, "seeds_intermediate": len(few), "seeds_final": len(seeds),
            "_last_results": last["results"], "_best_results": best["results"]}


def _summary(res: Mapping[str, Any]) -> dict:
    m = res.get("metrics", {})
    out = {k: m[k] for k in ("dp_score", "success_rate", "n_episodes") if k in m}
    if "per_task_success" in m:
        out["per_task"] = dict(m["per_task_success"])
    return out


def check_monotone(points: Sequence[Mapping[str, Any]]) -> None:
    """Curve points must advance in training time and steps (a resumed run that restarted would not)."""
    for a, b in zip(points, points[1:]):
        if not (b["minutes"] > a["minutes"] and b["wall_s"] > a["wall_s"] and b["step"] >= a["step"]):
            raise VideoActionError(f"curve points out of order: {a} then {b}")


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], path, ylabel: str, title: str = "",
                floors: Mapping[str, float] | None = None) -> Path:
    """One line per model: score vs training minutes; the last point (headline) is drawn larger."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from videoaction.utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, pts in curves.items():
        xs = [p["minutes"] for p in pts]
        ys = [p["score"] for p in pts]
        (line,) = ax.plot(xs, ys, marker="o", ms=4, label=name)
        ax.plot(xs[-1:], ys[-1:], marker="o", ms=9, color=line.get_color())
    for i, (name, v) in enumerate((floors or {}).items()):
        if v is not None and math.isfinite(v):
            ax.axhline(v, ls="--", lw=1, color=f"C{7 + i % 3}", label=f"{name} (floor)")
    ax.set_xlabel("training wall-clock (min, one CPU thread)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def curve_section(evals: Mapping[str, Mapping[str, Any]], report_dir, ylabel: str, title: str,
                  floors: Mapping[str, float] | None = None) -> tuple[str, str]:
    """``(title, html)`` for :func:`videoaction.eval.report.write_report`'s ``extra_sections``: the plot and a
    table of last vs best checkpoint per model."""
    from videoaction.eval.report import _e, html_table

    png = plot_curves({k: v["points"] for k, v in evals.items()}, Path(report_dir) / "learning_curves.png", ylabel,
                      title, floors)
    rows = []
    for name, ev in evals.items():
        for which in ("last", "best"):
            p = ev[which]
            rows.append({"model": name, "checkpoint": which + (" (headline)" if which == ev["headline"] else ""),
                         "minutes": p["minutes"], "step": p["step"], "seeds": p["seeds"], ylabel: p["score"]})
    notes = (f"<p class='note'>{_e(CHECKPOINT_RULE)}. Intermediate points: first "
             f"{next(iter(evals.values()))['seeds_intermediate']} seeds; the last point: all seeds.</p>")
    return title, f"<figure><img src='{_e(png.name)}' alt='learning curves'></figure>" + html_table(rows) + notes
