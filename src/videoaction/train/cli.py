"""`videoaction train`: train a model from a preset or a saved config; every config field is a flag.

Examples::

    videoaction train --preset uva-tiny --data pusht.zarr --out runs/uva        # stage 0 + training on a CPU
    videoaction train --preset uva-tiny-video --data pusht.zarr --out runs/s1   # stage 1 (video only)
    videoaction train --preset uva-tiny --data pusht.zarr --out runs/s2 --init runs/s1   # stage 2
    videoaction train --out runs/uva --resume                                  # continue exactly (any kill)
    videoaction train --config runs/uva/config.json --out runs/again           # re-create a run
    accelerate launch --multi_gpu --num_processes 8 -m videoaction.cli train --preset uva-base ...  # 8 GPUs, DDP
    accelerate launch --multi_gpu --num_processes 2 -m videoaction.cli train ... --device cpu  # 2 CPU processes

``--preset`` / ``--config`` pick the starting config; all other ``--dotted.field value`` flags (``--steps``,
``--optim.lr``, ``--model.width``, ``--dataset.image_size`` ...) override it (``videoaction presets NAME`` shows
every field). With ``--resume`` and neither, the run directory's own ``config.json`` is the starting config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videoaction.config import get_preset, load_run_config, parse_overrides
from videoaction.errors import VideoActionError

EPILOG = ("All other flags are run-config fields (tyro): --data PATH --out DIR --steps N --save-every K --log-every K "
          "--eval-every K --keep-last K --resume --init DIR --seed S --device auto|cpu|cuda --optim.batch-size B "
          "--optim.lr LR --optim.grad-accum K --optim.mixed-precision no|bf16|fp16 --model.<field> ... "
          "(`videoaction presets NAME` prints a preset's fields).")


def build_parser() -> argparse.ArgumentParser:
    examples = "\n\n".join(__doc__.split("\n\n")[1:3]).replace("::", ":")
    p = argparse.ArgumentParser(prog="videoaction train", description=__doc__.split("\n\n")[0],
                                epilog=examples + "\n\n" + EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--preset", help="named preset to start from (`videoaction presets` lists them)")
    p.add_argument("--config", help="a run's config.json to start from (re-creates that run)")
    p.add_argument("--init-mar", help="MAR checkpoint to initialise a UVA model from (name+shape matching)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="--init-mar: allow reading a pickled MAR checkpoint-last.pth (runs code from the file)")
    p.add_argument("--action-free-every", type=int, default=4,
                   help="episodes with meta has_action=False: every K-th batch comes from them (video-only modes)")
    p.add_argument("--init-partial", action="store_true",
                   help="--init: skip tensors with other shapes instead of failing (they are still reported)")
    p.add_argument("--tokenizer-steps", type=int, default=1500, help="stage 0: small-autoencoder training steps")
    p.add_argument("--tokenizer-batch-size", type=int, default=32, help="stage 0: batch size")
    p.add_argument("--report-to", default="none", choices=["none", "tensorboard", "wandb"],
                   help="also log to TensorBoard / Weights & Biases (must be installed)")
    p.add_argument("--best-metric", default="val_loss",
                   help="evaluation metric that picks checkpoints/best (default: validation-split loss)")
    p.add_argument("--best-mode", default="min", choices=["min", "max"])
    p.add_argument("--val-batches", type=int, default=2, help="validation batches for val_loss at each save")
    p.add_argument("--eval-env", help="with --eval-every K: roll out the EMA policy in this env spec "
                                      "(videoaction.eval.evaluate_policy) every K steps")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--eval-video", action="store_true",
                   help="with --eval-every K: predicted-video grids and metrics on held-out windows "
                        "(videoaction.eval.evaluate_video; video models only) every K steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl still written)")
    p.add_argument("--latent-cache", default="auto", choices=["auto", "off"],
                   help="auto: a model with a frozen tokenizer encodes the image store once into OUT/latents.zarr and "
                        "trains on the latents (when its frame transform is deterministic); off: encode every step")
    return p


def resolve_config(args: argparse.Namespace, rest: list[str]):
    """Starting config (preset / --config / the run's own config on --resume) plus the overrides in ``rest``."""
    if args.preset and args.config:
        raise VideoActionError("pass --preset or --config, not both")
    if args.config:
        base = load_run_config(args.config)
    elif args.preset:
        base = get_preset(args.preset)
    else:
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--out")
        pre.add_argument("--resume", action="store_true")
        known, _ = pre.parse_known_args(rest)
        saved = Path(known.out) / "config.json" if known.out else None
        if not (known.resume and saved is not None and saved.is_file()):
            raise VideoActionError("pass --preset NAME (see `videoaction presets`), --config FILE, or --out DIR "
                                   "--resume for a run that has a config.json")
        base = load_run_config(saved)
    return parse_overrides(base, rest, prog="videoaction train")


def _eval_fn(args, cfg):
    """Periodic evaluation (every --eval-every steps, EMA weights): env rollouts and/or predicted-video samples."""
    if not (args.eval_env or args.eval_video):
        return None
    run_dir = Path(cfg.out)

    def run(policy, step: int) -> dict:
        out = run_dir / "eval" / f"step_{step:07d}"
        metrics: dict = {}
        if args.eval_env:
            from videoaction.eval import evaluate_policy

            res = evaluate_policy(policy, args.eval_env, n_episodes=args.eval_episodes, out_dir=out,
                                  record_video=1, progress=False)
            metrics.update({k: v for k, v in res.get("metrics", {}).items() if isinstance(v, (int, float))})
        if args.eval_video and hasattr(policy, "predict_video"):
            from videoaction.eval import evaluate_video

            res = evaluate_video(policy, _image_store(cfg), out_dir=out, n_windows=8, n_grids=2, progress=False)
            metrics.update({f"video_{k}": v for k, v in res.get("metrics", res).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        return metrics

    return run


def _image_store(cfg) -> str:
    """The run's data store, or the image store a latent cache was encoded from (for predicted-video grids)."""
    from videoaction.data.store import EpisodeStore

    store = EpisodeStore.open(cfg.data)
    if cfg.dataset.image_key in store.keys:
        return cfg.data
    source = (store.attrs.get("latent_cache") or {}).get("source")
    if not source:
        raise VideoActionError(f"{cfg.data}: no images for --eval-video and no source store recorded")
    return source


def main(argv: list[str] | None = None) -> int:
    from videoaction.train.trainer import TrainOptions, train

    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    cfg = resolve_config(args, rest)
    opts = TrainOptions(init_mar=args.init_mar, init_partial=args.init_partial, allow_pickle=args.allow_pickle,
                        action_free_every=args.action_free_every, tokenizer_steps=args.tokenizer_steps,
                        tokenizer_batch_size=args.tokenizer_batch_size, report_to=args.report_to,
                        best_metric=args.best_metric, best_mode=args.best_mode, val_batches=args.val_batches,
                        progress=not args.no_progress, eval_fn=_eval_fn(args, cfg), latent_cache=args.latent_cache)
    from videoaction.models.base import family_class

    entry = family_class(cfg.family).train_entry()  # a family that trains on other data declares its own loop
    result = (entry or train)(cfg, opts)
    if result.losses and result.is_main:
        print(f"done: step {result.step}, last loss {result.losses[-1]:.4f}; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
