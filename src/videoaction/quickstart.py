"""`videoaction quickstart`: the whole pipeline on a CPU, from nothing but installed packages.

1. scripted demonstrations of the task (default: Metaworld drawer-open, camera image + 4-d proprio);
2. stage 0 + training of a tiny UVA (small autoencoder, tiny latent transformer);
3. closed-loop evaluation in the simulator next to the random and mean-action floors **on the same seeds**, and a
   verdict: the policy *acts* when its success is at least ``ACT_FACTOR`` x the best floor and at least
   ``ACT_MARGIN`` above it;
4. video metrics on held-out episodes next to the copy-last-frame / mean-action baselines;
5. an HTML report with rollout videos, predicted-vs-real grids and training curves.

Default sizes take about 20 minutes on 2 cores; ``--smoke`` runs every stage at toy size (CI); ``--episodes``,
``--steps`` and ``--eval-episodes`` buy more; ``--task pusht`` runs PushT (image + agent_pos) instead, which needs
far more training than this budget to push the block. Re-running with the same ``--out`` reuses finished stages.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from videoaction.errors import VideoActionError


@dataclass(frozen=True)
class QuickstartTask:
    """What the quickstart demonstrates, trains and evaluates on."""

    env: str  # evaluation env spec
    demo_kind: str  # `videoaction demos` kind
    preset: str  # model preset (its observation protocol)
    max_steps: int  # evaluation episode limit
    score: str  # headline metric key of the results
    demo_tasks: tuple[str, ...] = ()


TASKS = {
    "drawer-open": QuickstartTask("metaworld:drawer-open", "metaworld", "uva-tiny-metaworld", 150, "success_rate",
                                  ("drawer-open",)),
    "button-press-topdown": QuickstartTask("metaworld:button-press-topdown", "metaworld", "uva-tiny-metaworld", 150,
                                           "success_rate", ("button-press-topdown",)),
    "pusht": QuickstartTask("pusht", "pusht", "uva-tiny-pusht", 300, "dp_score"),
}
DEFAULT_TASK = "drawer-open"
ACT_FACTOR, ACT_MARGIN = 3.0, 0.2  # "acts": score >= 3 x the best floor and >= best floor + 0.2


def acts(score: float, floors: dict[str, float]) -> bool:
    """The quickstart's verdict rule: clearly above every trivial policy on the same seeds."""
    best = max(floors.values())
    return score >= ACT_FACTOR * best - 1e-9 and score >= best + ACT_MARGIN - 1e-9


@dataclass
class QuickstartSizes:
    episodes: int = 40  # scripted demonstrations (per task)
    steps: int = 2400  # UVA training steps
    tokenizer_steps: int = 600  # stage 0
    batch_size: int = 16
    eval_episodes: int = 20  # seeds, the same for the model and both floors
    max_steps: int | None = None  # evaluation episode limit (None: the task's)
    demo_max_steps: int = 0  # 0: the env's own
    video_windows: int = 16
    workers: int = 2


SMOKE = QuickstartSizes(episodes=2, steps=20, tokenizer_steps=20, batch_size=4, eval_episodes=2, max_steps=16,
                        demo_max_steps=0, video_windows=2, workers=1)


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)


def run(out: Path, sizes: QuickstartSizes, smoke: bool, seed: int = 0, task: str = DEFAULT_TASK) -> dict:
    from videoaction.config import get_preset
    from videoaction.data.store import EpisodeStore
    from videoaction.demos.cli import main as demos_main
    from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy
    from videoaction.eval.report import write_report
    from videoaction.eval.runner import default_seeds, evaluate_policy
    from videoaction.eval.video_eval import evaluate_video
    from videoaction.models.base import load_policy
    from videoaction.train.trainer import TrainOptions, train
    from videoaction.utils.io import atomic_write_json

    if task not in TASKS:
        raise VideoActionError(f"quickstart: unknown task {task!r}; choose from {sorted(TASKS)}")
    tk = TASKS[task]
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data" / f"{task}.zarr"
    run_dir = out / "run"
    timings: dict[str, float] = {}

    t0 = _stage(f"1/5 scripted demonstrations: {sizes.episodes} {task} episodes -> {data}")
    demo_args = [tk.demo_kind, "--episodes", str(sizes.episodes), "--seed", str(seed), "--out", str(data),
                 "--workers", str(sizes.workers)]
    if tk.demo_tasks:
        demo_args += ["--tasks", *tk.demo_tasks]
    if smoke:
        demo_args += ["--keep-failed"]
    if sizes.demo_max_steps:
        demo_args += ["--max-steps", str(sizes.demo_max_steps)]
    if demos_main(demo_args):
        raise VideoActionError("demonstration generation failed")
    store = EpisodeStore.open(data)
    if store.n_episodes < 2:
        raise VideoActionError(f"{data}: only {store.n_episodes} demonstrations were kept; need at least 2")
    timings["demos_s"] = time.perf_counter() - t0
    _done(t0)

    t0 = _stage(f"2/5 training a tiny UVA ({tk.preset}) for {sizes.steps} steps (stage 0 tokenizer: "
                f"{sizes.tokenizer_steps} steps)")
    cfg = get_preset(tk.preset)
    cfg.data, cfg.out, cfg.seed = str(data), str(run_dir), seed
    cfg.steps = sizes.steps
    cfg.save_every = max(sizes.steps // 2, 1)
    cfg.log_every = max(min(25, sizes.steps // 4), 1)
    cfg.optim.batch_size = sizes.batch_size
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(sizes.steps // 10, 1))
    cfg.dataset.val_ratio = 0.1
    if smoke:
        cfg.model.width, cfg.model.num_heads = 64, 2
        cfg.model.video_head.width = cfg.model.action_head.width = 64
        cfg.model.video_head.depth = cfg.model.action_head.depth = 1
    cfg.resume = (run_dir / "checkpoints").is_dir()
    result = train(cfg, TrainOptions(tokenizer_steps=sizes.tokenizer_steps, tokenizer_batch_size=sizes.batch_size,
                                     log=lambda m: print(f"    {m}", flush=True)))
    timings["train_s"] = time.perf_counter() - t0
    _done(t0)

    seeds = [int(s) for s in default_seeds(tk.env, sizes.eval_episodes)]
    t0 = _stage(f"3/5 closed loop in {tk.env}: the same {len(seeds)} seeds for UVA and two floors")
    policy = load_policy(result.checkpoint)
    eval_kw = dict(seeds=seeds, max_steps=sizes.max_steps or tk.max_steps, n_envs=min(8, len(seeds)))
    uva = evaluate_policy(policy, tk.env, out_dir=out / "eval" / "uva", record_video=min(4, len(seeds)), **eval_kw)
    baselines = {
        "random": evaluate_policy(RandomPolicy(seed=seed), tk.env, out_dir=out / "eval" / "random", **eval_kw),
        "mean-action": evaluate_policy(MeanActionPolicy.from_store(data), tk.env,
                                       out_dir=out / "eval" / "mean-action", **eval_kw),
    }
    timings["eval_s"] = time.perf_counter() - t0
    _done(t0)

    t0 = _stage("4/5 video prediction on held-out episodes (vs copy-last-frame and mean-action baselines)")
    video = evaluate_video(policy, data, out_dir=out / "eval" / "video", n_windows=sizes.video_windows,
                           n_grids=min(4, sizes.video_windows))
    timings["video_eval_s"] = time.perf_counter() - t0
    _done(t0)

    t0 = _stage("5/5 writing the report")
    closed = closed_loop_summary(tk, {"uva-tiny": uva, **baselines}, result.checkpoint)
    report = write_report(out / "report", uva, run_dir=run_dir, baselines=baselines, video_results=video,
                          media_root=out / "eval" / "uva", title=f"videoaction quickstart — tiny UVA on {tk.env}",
                          extra_sections=[{"title": "Does the policy act?", "text": closed["verdict_text"]}])
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "report": str(report),
        "task": task,
        "demonstrations": {"episodes": store.n_episodes, "steps": store.n_steps},
        "training": {"preset": tk.preset, "steps": result.step, "checkpoint": str(result.checkpoint),
                     "first_loss": result.losses[0] if result.losses else None,
                     "last_loss": result.losses[-1] if result.losses else None},
        "closed_loop": closed,
        "video": video.get("metrics", {}),
        "held_out": held_out_verdicts(video.get("metrics", {})),
        "timings_s": timings,
    }
    atomic_write_json(out / "summary.json", summary)
    _print_summary(summary)
    return summary


def closed_loop_summary(tk: QuickstartTask, results: dict[str, dict], checkpoint) -> dict:
    """Model and floors on the same seeds, the score each, and the verdict of :func:`acts`."""
    seeds = {name: [int(s) for s in r["seeds"]] for name, r in results.items()}
    if len({tuple(v) for v in seeds.values()}) != 1:
        raise VideoActionError(f"quickstart: model and floors were evaluated on different seeds: {seeds}")
    scores = {name: float(r["metrics"][tk.score]) for name, r in results.items()}
    floors = {k: v for k, v in scores.items() if k != "uva-tiny"}
    ok = acts(scores["uva-tiny"], floors)
    text = (f"{tk.score} {scores['uva-tiny']:.3f} vs floors " + ", ".join(f"{k} {v:.3f}" for k, v in floors.items())
            + f" on the same {len(seeds['uva-tiny'])} seeds: the policy "
            + ("acts" if ok else "does NOT act yet") + f" (rule: >= {ACT_FACTOR:g} x the best floor and >= best "
            f"floor + {ACT_MARGIN:g}).")
    return {"env": tk.env, "score": tk.score, "seeds": seeds["uva-tiny"], "scores": scores,
            "success_rate": {k: float(r["metrics"]["success_rate"]) for k, r in results.items()},
            "checkpoint": str(checkpoint), "acts": ok, "rule": {"factor": ACT_FACTOR, "margin": ACT_MARGIN},
            "verdict_text": text}


# (label, model key, baseline key, baseline, +1 if higher is better else -1) in evaluate_video's metrics
HELD_OUT_ROWS = (("video PSNR (dB) ↑", "psnr", "psnr_copy_last", "copy last frame", 1),
                 ("video SSIM ↑", "ssim", "ssim_copy_last", "copy last frame", 1),
                 ("policy action MSE (norm.) ↓", "policy_mse_norm", "action_mse_norm_mean_action", "mean action", -1),
                 ("inverse dynamics MSE (norm.) ↓", "inverse_dynamics_mse_norm", "action_mse_norm_mean_action",
                  "mean action", -1))


def held_out_verdicts(video: dict) -> list[dict]:
    """Each held-out metric next to its trivial baseline, and whether the model beats it."""
    return [{"metric": label, "key": mk, "model": video[mk], "baseline": video[bk], "baseline_is": name,
             "learned": bool(sign * (video[mk] - video[bk]) > 0)}
            for label, mk, bk, name, sign in HELD_OUT_ROWS if mk in video and bk in video]


def _print_summary(summary: dict) -> None:
    c = summary["closed_loop"]
    print(f"\n=== headline: closed loop in {c['env']}, {len(c['seeds'])} seeds (the same for every policy)")
    print(f"{'policy':<14}{c['score']:>16}{'success':>10}")
    for name, v in c["scores"].items():
        print(f"{name:<14}{v:>16.3f}{c['success_rate'][name]:>10.2f}")
    print(c["verdict_text"])
    tr = summary["training"]
    if tr["first_loss"] is not None:
        print(f"training loss {tr['first_loss']:.3f} -> {tr['last_loss']:.3f} over {tr['steps']} steps")
    print(f"\nheld-out episodes{'':<16}{'model':>9}{'baseline':>10}  {'(baseline)':<18}learned?")
    for r in summary["held_out"]:
        print(f"{r['metric']:<33}{r['model']:>9.4f}{r['baseline']:>10.4f}  ({r['baseline_is']:<15}) "
              f"{'yes' if r['learned'] else 'no'}")
    print(f"total {summary['timings_s']['total_s'] / 60:.1f} min; report: {summary['report']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="videoaction quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="quickstart", help="output directory (default: ./quickstart)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: every stage end to end in about a minute")
    defaults = QuickstartSizes()
    for name in ("episodes", "steps", "tokenizer_steps", "eval_episodes", "workers"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {getattr(defaults, name)} (smoke: {getattr(SMOKE, name)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS),
                        help=f"what to learn (default {DEFAULT_TASK})")
    args = parser.parse_args(argv)
    sizes = QuickstartSizes(**vars(SMOKE)) if args.smoke else QuickstartSizes()
    for name in ("episodes", "steps", "tokenizer_steps", "eval_episodes", "workers"):
        value = getattr(args, name)
        if value is not None:
            setattr(sizes, name, value)
    run(Path(args.out), sizes, smoke=args.smoke, seed=args.seed, task=args.task)
    return 0
