"""`videoaction quickstart`: the whole pipeline on a CPU, from nothing but installed packages.

1. scripted PushT demonstrations (the project's planning expert on the real gym-pusht simulator);
2. stage 0 + training of a tiny UVA (small autoencoder, tiny latent transformer);
3. evaluation in gym-pusht next to trivial baselines (random policy, mean-action policy), both PushT metrics;
4. video metrics on held-out episodes next to the copy-last-frame / mean-action baselines;
5. an HTML report with rollout videos, predicted-vs-real grids and training curves.

Default sizes take about 20 minutes on 2 cores; ``--smoke`` runs every stage at toy size (CI); ``--episodes``,
``--steps`` and ``--eval-episodes`` buy more. Re-running with the same ``--out`` reuses finished stages.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from videoaction.data.errors import VideoActionError


@dataclass
class QuickstartSizes:
    episodes: int = 60  # scripted demonstrations
    steps: int = 2400  # UVA training steps (~0.35 s each at batch 16 on 2 cores, 4 x 4 tokens per frame)
    tokenizer_steps: int = 600  # stage 0 (31.7 dB held-out PSNR on PushT frames, 4 x 4 x 16 latents)
    batch_size: int = 16
    eval_episodes: int = 20
    max_steps: int = 300  # evaluation episode limit
    demo_max_steps: int = 300
    video_windows: int = 16
    workers: int = 2


SMOKE = QuickstartSizes(episodes=3, steps=20, tokenizer_steps=20, batch_size=4, eval_episodes=2, max_steps=16,
                        demo_max_steps=40, video_windows=2, workers=1)


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)


def run(out: Path, sizes: QuickstartSizes, smoke: bool, seed: int = 0) -> dict:
    from videoaction.config import get_preset
    from videoaction.data.store import EpisodeStore
    from videoaction.demos.cli import main as demos_main
    from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy
    from videoaction.eval.report import write_report
    from videoaction.eval.runner import evaluate_policy
    from videoaction.eval.video_eval import evaluate_video
    from videoaction.models.base import load_policy
    from videoaction.train.trainer import TrainOptions, train
    from videoaction.utils.io import atomic_write_json

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data" / "pusht.zarr"
    run_dir = out / "run"
    timings: dict[str, float] = {}

    t0 = _stage(f"1/5 scripted demonstrations: {sizes.episodes} PushT episodes -> {data}")
    demo_args = ["pusht", "--episodes", str(sizes.episodes), "--seed", str(seed), "--out", str(data),
                 "--workers", str(sizes.workers)]
    if smoke:
        demo_args += ["--keep-failed", "--max-steps", str(sizes.demo_max_steps)]
    if demos_main(demo_args):
        raise VideoActionError("demonstration generation failed")
    store = EpisodeStore.open(data)
    if store.n_episodes < 2:
        raise VideoActionError(f"{data}: only {store.n_episodes} demonstrations were kept; need at least 2")
    timings["demos_s"] = time.perf_counter() - t0
    _done(t0)

    t0 = _stage(f"2/5 training a tiny UVA for {sizes.steps} steps (stage 0 tokenizer: {sizes.tokenizer_steps} steps)")
    cfg = get_preset("uva-tiny")
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
    resume = (run_dir / "checkpoints").is_dir()
    cfg.resume = resume
    result = train(cfg, TrainOptions(tokenizer_steps=sizes.tokenizer_steps, tokenizer_batch_size=sizes.batch_size,
                                     log=lambda m: print(f"    {m}", flush=True)))
    timings["train_s"] = time.perf_counter() - t0
    _done(t0)

    t0 = _stage(f"3/5 evaluating in gym-pusht: {sizes.eval_episodes} episodes each for UVA and two baselines")
    policy = load_policy(result.checkpoint)
    eval_kw = dict(n_episodes=sizes.eval_episodes, max_steps=sizes.max_steps, n_envs=min(8, sizes.eval_episodes))
    uva = evaluate_policy(policy, "pusht", out_dir=out / "eval" / "uva", record_video=min(4, sizes.eval_episodes),
                          **eval_kw)
    baselines = {
        "random": evaluate_policy(RandomPolicy(seed=seed), "pusht", out_dir=out / "eval" / "random", **eval_kw),
        "mean-action": evaluate_policy(MeanActionPolicy.from_store(data), "pusht",
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
    report = write_report(out / "report", uva, run_dir=run_dir, baselines=baselines, video_results=video,
                          media_root=out / "eval" / "uva", title="videoaction quickstart — tiny UVA on PushT")
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "report": str(report),
        "demonstrations": {"episodes": store.n_episodes, "steps": store.n_steps},
        "training": {"steps": result.step, "first_loss": result.losses[0] if result.losses else None,
                     "last_loss": result.losses[-1] if result.losses else None},
        "pusht": {name: {k: res["metrics"].get(k) for k in ("dp_score", "success_rate")}
                  for name, res in {"uva-tiny": uva, **baselines}.items()},
        "video": video.get("metrics", {}),
        "held_out": held_out_verdicts(video.get("metrics", {})),
        "timings_s": timings,
    }
    atomic_write_json(out / "summary.json", summary)
    _print_summary(summary)
    return summary


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
    print("\n=== headline")
    print(f"{'policy':<14}{'PushT DP score':>16}{'success':>10}")
    for name, m in summary["pusht"].items():
        print(f"{name:<14}{m['dp_score']:>16.3f}{m['success_rate']:>10.2f}")
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
    args = parser.parse_args(argv)
    sizes = QuickstartSizes(**vars(SMOKE)) if args.smoke else QuickstartSizes()
    for name in ("episodes", "steps", "tokenizer_steps", "eval_episodes", "workers"):
        value = getattr(args, name)
        if value is not None:
            setattr(sizes, name, value)
    run(Path(args.out), sizes, smoke=args.smoke, seed=args.seed)
    return 0
