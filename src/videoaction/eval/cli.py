"""``videoaction eval``: evaluate a checkpoint (or a baseline) in a simulator and/or on held-out video.

Examples::

    videoaction eval --checkpoint runs/uva/checkpoints/latest --env pusht --episodes 50 --out eval/pusht
    videoaction eval --checkpoint CKPT --env metaworld:reach,drawer-open --episodes 10 --out eval/mw
    videoaction eval --policy random --env pusht --episodes 20 --out eval/random
    videoaction eval --video --checkpoint CKPT --data demos/pusht.zarr --out eval/video [--i3d i3d_torchscript.pt]

Writes ``results.json`` (simulator), ``video_results.json`` (--video), videos / grids and ``report.html`` in --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from videoaction.errors import VideoActionError


def parse_seeds(items: list[str] | None) -> list[int] | None:
    """``100000-100009``, ``1,2,3`` or ``1 2 3`` -> list of ints (ranges inclusive)."""
    if not items:
        return None
    seeds: list[int] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1) if not part.startswith("-") else part[1:].split("-", 1)
                    seeds += list(range(int(a), int(b) + 1))
                else:
                    seeds.append(int(part))
            except ValueError:
                raise VideoActionError(f"--seeds: cannot parse {part!r} (use 100000-100049, 1,2,3 or 1 2 3)") from None
    return seeds


def parse_sampler(text: str | None) -> dict:
    """``ddim`` / ``ddim:16`` / ``ddpm:100`` -> predict_action kwargs {sampler, num_steps}."""
    if not text:
        return {}
    name, _, steps = text.partition(":")
    out: dict = {"sampler": name.strip()}
    if steps:
        try:
            out["num_steps"] = int(steps)
        except ValueError:
            raise VideoActionError(f"--sampler: steps must be an integer, got {steps!r} (e.g. ddim:16)") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videoaction eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", help="checkpoint directory (config.json + model.safetensors), any model family")
    p.add_argument("--policy", choices=["random", "mean-action"],
                   help="evaluate a trivial baseline instead of a checkpoint (mean-action needs --data)")
    p.add_argument("--env", action="append", help=f"one of the registered environments: {env_choices()}; repeat "
                   "--env for several environments (results_<env>.json each, one report)")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="an option passed to the environment's constructor, repeatable (e.g. abs_action=true, "
                   "flip=vertical, hard_reset=false, image_size=128); values are read as JSON where they parse "
                   "(true, 3, 0.5, \"x\"), else as text")
    p.add_argument("--action-convention", choices=sorted(_conventions()),
                   help="what the checkpoint's actions mean, when its config does not say (dataset.action_convention); "
                   "chunks are converted to the environment's convention (docs/evaluation.md)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task (simulator, default 50) / held-out windows (--video, default 16)")
    p.add_argument("--seeds", nargs="+", help="explicit seeds (default: 100000, 100001, ...): 100000-100049 or 1,2,3")
    p.add_argument("--seed-start", type=int, default=None,
                   help="first default seed (default: the environment's, 100000 for PushT and Metaworld)")
    p.add_argument("--n-envs", type=int, default=8, help="parallel environments")
    p.add_argument("--async", dest="vector", action="store_const", const="async", default="sync",
                   help="one process per environment (AsyncVectorEnv) instead of in-process")
    p.add_argument("--max-steps", type=int, default=None,
                   help="steps per episode (default: the environment's; PushT 300, Metaworld 500)")
    p.add_argument("--privileged-state", action="store_true",
                   help="let the policy condition on the full simulator state (object / goal poses), beyond the "
                   "environment's standard observation; results are labelled privileged_state (default: only for "
                   "presets whose name contains privileged_state)")
    p.add_argument("--record", type=int, default=4, help="rollout videos to record per task (first N seeds)")
    p.add_argument("--image-size", type=int, default=None, help="environment render size (default: the env's)")
    p.add_argument("--sampler", help="diffusion sampler override, e.g. ddim, ddim:16, ddpm:100")
    p.add_argument("--no-ema", action="store_true", help="load model.safetensors even if ema.safetensors exists")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--baselines", action="store_true",
                   help="also evaluate the random (and, with --data, mean-action) baselines for the report")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--video", action="store_true", help="held-out video metrics (needs --checkpoint and --data)")
    p.add_argument("--data", help="episode store: held-out episodes for --video, mean action for the baselines "
                   "(HMA checkpoints: token datasets, DIR or NAME=DIR,NAME=DIR)")
    p.add_argument("--num-iter", type=int, default=1, help="--video: MAR sampling iterations")
    p.add_argument("--lpips", help="--video: LPIPS TorchScript file (never downloaded)")
    p.add_argument("--i3d", help="--video: I3D TorchScript file for FVD (never downloaded)")
    p.add_argument("--seed", type=int, default=0, help="torch seed for sampling")
    p.add_argument("--run-dir", help="training run directory (metrics.jsonl curves, config) for the report")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _conventions() -> list[str]:
    from videoaction.envs.action_conventions import CONVENTIONS

    return list(CONVENTIONS)


def env_choices() -> str:
    """Every registered environment's spec forms (from the registry, so a new environment shows up here)."""
    from videoaction.envs.spec import valid_specs

    return " | ".join(valid_specs())


def parse_env_kwargs(items: list[str] | None) -> dict:
    """``["abs_action=true", "flip=vertical"]`` -> ``{"abs_action": True, "flip": "vertical"}`` (JSON values where
    they parse, text otherwise)."""
    import json

    out: dict = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise VideoActionError(f"--env-kwarg: expected KEY=VALUE with a Python identifier as KEY, got {item!r} "
                                   "(e.g. --env-kwarg abs_action=true)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = {"True": True, "False": False, "None": None}.get(value.strip(), value)
    return out


def _env_kwargs(args) -> dict:
    out = {"image_size": args.image_size} if args.image_size else {}
    out.update(parse_env_kwargs(args.env_kwarg))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.env is None and not args.video:
        raise VideoActionError("nothing to do: give --env ENV (simulator) and/or --video (held-out video metrics)")
    if args.checkpoint is None and args.policy is None:
        raise VideoActionError("give --checkpoint DIR or --policy random|mean-action")
    if args.video and (args.checkpoint is None or args.data is None):
        raise VideoActionError("--video needs --checkpoint DIR and --data STORE")
    if args.policy == "mean-action" and args.data is None:
        raise VideoActionError("--policy mean-action needs --data STORE (the mean action of its episodes)")
    if args.env:
        from videoaction.envs.spec import get_env_spec

        for env in args.env:  # unknown names fail here, before a model is loaded
            get_env_spec(env).prepare_process()  # e.g. the headless GL backend, before anything imports mujoco
    from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy, baseline_policies
    from videoaction.eval.report import write_report
    from videoaction.eval.runner import default_seeds, evaluate_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy, ckpt_cfg = None, None
    if args.checkpoint:
        from videoaction.models.base import load_policy, read_checkpoint_config, resolve_checkpoint_dir

        ckpt_dir = resolve_checkpoint_dir(args.checkpoint)
        ckpt_cfg = read_checkpoint_config(ckpt_dir)
        if args.run_dir is None:
            args.run_dir = _guess_run_dir(Path(args.checkpoint), ckpt_dir)
        policy = load_policy(args.checkpoint, prefer_ema=not args.no_ema, map_location=_device(args.device))
        name = f"{ckpt_cfg.get('preset') or ckpt_cfg['family']} ({args.checkpoint})"
    elif args.policy == "random":
        policy, name = RandomPolicy(seed=args.seed), "random"
    else:
        policy, name = MeanActionPolicy.from_store(args.data), "mean-action"
    runs, baselines, video_res = [], {}, None
    for env in args.env or []:
        n_eps = args.episodes or 50
        seeds = parse_seeds(args.seeds) or default_seeds(env, n_eps, args.seed_start)
        common = dict(seeds=seeds, n_envs=args.n_envs, max_steps=args.max_steps, env_kwargs=_env_kwargs(args),
                      vector=args.vector, progress=not args.quiet, torch_seed=args.seed,
                      privileged_state=True if args.privileged_state else None)
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in env)
        fname = "results.json" if len(args.env) == 1 else f"results_{slug}.json"
        extra = {"name": name, "checkpoint": args.checkpoint, "checkpoint_config": ckpt_cfg}
        res = evaluate_policy(policy, env, out_dir=out, record_video=args.record, results_file=fname,
                              predict_kwargs=parse_sampler(args.sampler) if args.checkpoint else None,
                              extra=extra, action_convention=args.action_convention, **common)
        runs.append(res)
        _print_metrics(name, res)
        if args.baselines:
            for bname, bp in baseline_policies(args.data, seed=args.seed).items():
                if bname == args.policy:
                    continue
                r = evaluate_policy(bp, env, out_dir=out / "baselines" / bname, record_video=0,
                                    results_file=fname, extra={"name": bname}, **common)
                baselines[f"{bname} ({env})" if len(args.env) > 1 else bname] = r
                _print_metrics(bname, r)
    if args.video:
        from videoaction.eval.video_eval import evaluate_video

        entry = policy.video_eval_entry()  # a family with its own video data declares its evaluation
        video_res = (entry or evaluate_video)(policy, args.data, out_dir=out, n_windows=args.episodes or 16,
                                              num_iter=args.num_iter, seed=args.seed, lpips_path=args.lpips,
                                              i3d_path=args.i3d, progress=not args.quiet)
        for row in video_res["table"]:
            print(f"{row['metric']:<58} model {row['model']:.4f}   {row['baseline is']} {row['baseline']:.4f}")
        for note in video_res["notes"][1:]:
            print(f"note: {note}")
    if not args.no_report:
        path = write_report(out, runs or None, run_dir=args.run_dir, baselines=baselines or None,
                            video_results=video_res, config=ckpt_cfg)
        print(f"report: {path}")
    return 0


def _guess_run_dir(given: Path, ckpt_dir: Path) -> Path | None:
    """The training run directory (the one holding ``metrics.jsonl``) of a checkpoint, if there is one."""
    for d in (given, ckpt_dir.parent.parent, given.parent.parent):
        if (d / "metrics.jsonl").is_file():
            return d
    return None


def _print_metrics(name: str, results: dict) -> None:
    m = results["metrics"]
    parts = [f"{name} on {results['env']}: {m['n_episodes']} episodes"]
    labels = results.get("metric_labels") or {"success_rate": "success rate"}
    parts += [f"{label} {m[k]:.3f}" for k, label in labels.items() if isinstance(m.get(k), (int, float))]
    for task, v in (m.get("per_task_success") or {}).items():
        parts.append(f"{task} {v:.2f}")
    t = results["timing"]
    parts.append(f"{t['wall_s']:.1f} s, {t['env_steps_per_s']:.0f} env-steps/s")
    print(" | ".join(parts))
