"""`videoaction bench`: UVA vs Diffusion Policy, measured side by side in one process.

Sections (JSON keys): ``latency`` (action-chunk latency at batch 1, p50/p90, per model / preset / sampler),
``training`` (samples/s per family and preset; UVA with and without the latent cache), ``data`` (data-loader
throughput, demo generators), ``serve`` (loopback server load), ``machine``. ``--quick`` runs the reduced set CI
affords; ``--quality`` additionally trains both families for the same wall-clock budget and evaluates them;
``--gpu`` is a run of its own: paper-size UVA and DP-C on one GPU within 8 minutes (``benchmarks.gpu``).
Ratios are printed from numbers taken in this same run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from pathlib import Path

from videoaction.benchmarks.timing import machine_info
from videoaction.utils.io import atomic_write_json

# --quick: tiny presets only (the paper-size models take minutes per call on a CPU)
QUICK_KWARGS = {
    "videoaction.benchmarks.uva_latency": {"presets": ("uva-tiny",)},
    "videoaction.benchmarks.dp_latency": {"presets": ("dp-tiny",)},
    "videoaction.benchmarks.vpp_latency": {"presets": ("vpp-tiny",)},
}

SECTIONS = {
    "latency": ["videoaction.benchmarks.uva_latency", "videoaction.benchmarks.dp_latency",
                "videoaction.benchmarks.vpp_latency"],
    "vpp": ["videoaction.benchmarks.vpp_latency"],  # VPP's per-stage latency alone
    "training": ["videoaction.benchmarks.training"],
    "data": ["videoaction.benchmarks.demos"],
    "serve": ["videoaction.benchmarks.serve_load"],
}


def _run_module(name: str, quick: bool, errors: list[str]):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        errors.append(f"{name}: not available ({exc})")
        return None
    t0 = time.perf_counter()
    print(f"--- {name} ({'quick' if quick else 'full'})", flush=True)
    result = module.run(quick=quick, **(QUICK_KWARGS.get(name, {}) if quick else {}))
    print(f"    {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def ratios(latency: list[dict]) -> list[dict]:
    """UVA / DP-C latency at equal steps and UVA few-step / DP-C-100, per preset scale (tiny, base)."""
    out = []
    by = {(r["model"], r["preset"], r["sampler"], r["steps"]): r for r in latency if not r.get("latent_cache")}
    for scale in ("tiny", "base"):
        dp = {k[3]: v for k, v in by.items() if k[0] == "dp" and k[1].endswith(scale)}
        uva = {k: v for k, v in by.items() if k[0] == "uva" and k[1].endswith(scale)}
        for (_, preset, sampler, steps), r in sorted(uva.items(), key=lambda kv: kv[0][3]):
            if steps in dp:
                out.append({"scale": scale, "comparison": f"UVA {sampler}-{steps} / DP-C {dp[steps]['sampler']}-{steps}",
                            "ratio_p50": r["p50_ms"] / dp[steps]["p50_ms"], "target": 0.5})
            if 100 in dp and steps < 16:
                out.append({"scale": scale, "comparison": f"UVA {sampler}-{steps} / DP-C {dp[100]['sampler']}-100",
                            "ratio_p50": r["p50_ms"] / dp[100]["p50_ms"], "target": 0.1})
    return out


def print_tables(report: dict) -> None:
    if report.get("latency"):
        print("\naction-chunk latency, batch 1")
        print(f"{'model':<6}{'preset':<12}{'sampler':<10}{'steps':>6}{'p50 ms':>10}{'p90 ms':>10}")
        for r in report["latency"]:
            cache = "  (history latent cache)" if r.get("latent_cache") else ""
            print(f"{r['model']:<6}{r['preset']:<12}{r['sampler']:<10}{r['steps']:>6}{r['p50_ms']:>10.1f}"
                  f"{r.get('p90_ms', float('nan')):>10.1f}{cache}")
            if r.get("stages_ms"):  # VPP: median ms per stage
                print("        stages: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items()))
    for r in report.get("ratios", []):
        ok = "meets" if r["ratio_p50"] <= r["target"] else "misses"
        print(f"  [{r['scale']}] {r['comparison']}: {r['ratio_p50']:.3f} ({ok} target <= {r['target']})")
    if report.get("training"):
        print("\ntraining throughput (samples per CPU-second on a CPU: one thread, load-independent)")
        for r in report["training"]:
            extra = "  latent cache" if r.get("latent_cache") else ""
            extra += f"  ({r['tokenizer']} at {r['image_size']} px)" if r.get("setting") else ""
            per_cpu = f"{r['samples_per_cpu_s']:>9.1f} per CPU-s" if "samples_per_cpu_s" in r else ""
            print(f"  {r['model']:<6}{r['preset']:<12}{r['samples_per_s']:>10.1f} samples/s{per_cpu}{extra}")
    for r in report.get("training_ratios", []):
        verdict = "" if r["target"] is None else \
            f" ({'meets' if r['ratio'] >= r['target'] else 'misses'} target >= {r['target']})"
        print(f"  {r['comparison']}: {r['ratio']:.2f}{verdict}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="videoaction bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="reduced set (tiny presets, few iterations)")
    parser.add_argument("--sections", nargs="+", default=["latency", "training", "data"],
                        choices=sorted(SECTIONS), help="which sections to run (default: latency training data)")
    parser.add_argument("--quality", action="store_true",
                        help="also train UVA-tiny and DP-C-tiny for the same wall-clock budget and evaluate both")
    parser.add_argument("--quality-minutes", type=float, default=30.0, help="training budget per family (--quality)")
    parser.add_argument("--quality-data", help="demonstration store for --quality (default: generate PushT demos)")
    parser.add_argument("--targets", action="store_true",
                        help="the closed-loop targets: UVA-tiny, UVA-action and DP-C-tiny on PushT (image + "
                             "agent_pos) and one UVA-tiny on Metaworld easy tasks (image + 4-d proprio + instruction), "
                             "trained side by side for the same wall-clock budget, with learning curves and floors on "
                             "the same seeds (writes OUT without .json / targets.json)")
    parser.add_argument("--targets-minutes", type=float, default=60.0, help="training budget per environment")
    from videoaction.benchmarks.targets import TARGET_ENVS, TargetSizes

    parser.add_argument("--targets-envs", nargs="+", default=list(TargetSizes().envs), choices=sorted(TARGET_ENVS),
                        help="environments of --targets (default: pusht metaworld; families: UVA vs VPP vs DP-C on "
                             "one Metaworld task)")
    parser.add_argument("--targets-models", nargs="+", metavar="ENV=PRESET[,PRESET...]", default=[],
                        help="--targets: the presets trained for an environment instead of its default ones, e.g. "
                             "metaworld=uva-tiny-metaworld,uva-tiny-fast-metaworld")
    parser.add_argument("--world-models", action="store_true",
                        help="HMA-tiny (discrete, continuous) vs UVA-tiny vs copy-last-frame as video world models on "
                             "held-out clips of PushT, PushT-M and Metaworld, one protocol, the same CPU budget per "
                             "family (writes OUT without .json / world_models.{json,md})")
    parser.add_argument("--world-models-minutes", type=float, default=30.0,
                        help="--world-models: training budget per family (UVA: split over its per-embodiment models)")
    parser.add_argument("--threads", type=int, help="torch threads (e.g. 1 to run two benchmarks side by side)")
    parser.add_argument("--gpu", action="store_true",
                        help="paper-size UVA and DP-C on the GPU in one run of <= 8 min (benchmarks/gpu.sh): latency "
                             "(eager, CUDA graph, torch.compile), training samples/s with and without the latent "
                             "cache; writes OUT and OUT with .md. Without CUDA: tiny presets, a smoke test")
    parser.add_argument("--gpu-budget-s", type=float, help="--gpu: time budget of the whole run in seconds")
    args = parser.parse_args(argv)

    if args.gpu:  # one device run of its own
        from videoaction.benchmarks.gpu import main as gpu_main

        return gpu_main(["--out", args.out] + (["--budget-s", str(args.gpu_budget_s)] if args.gpu_budget_s else []))

    if args.world_models:  # a long experiment of its own
        from videoaction.benchmarks.world_models import QUICK as WM_QUICK
        from videoaction.benchmarks.world_models import WorldModelSizes, print_world_models, run_world_models

        base = WM_QUICK if args.quick else WorldModelSizes(minutes=args.world_models_minutes)
        summary = run_world_models(Path(args.out).with_suffix(""),
                                   dataclasses.replace(base, threads=args.threads or base.threads))
        summary["machine"] = machine_info()
        atomic_write_json(Path(args.out), summary)
        print_world_models(summary)
        return 0
    if args.targets:  # a long experiment of its own: nothing else runs beside it
        from videoaction.benchmarks.targets import (QUICK, TargetSizes, print_targets, run_targets,
                                                    targets_models)

        base = QUICK if args.quick else TargetSizes(minutes=args.targets_minutes)
        sizes = dataclasses.replace(base, envs=tuple(args.targets_envs), threads=args.threads or base.threads,
                                    **targets_models(args.targets_models))
        summary = run_targets(Path(args.out).with_suffix(""), sizes)
        summary["machine"] = machine_info()
        atomic_write_json(Path(args.out), summary)
        print_targets(summary)
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    errors: list[str] = []
    report: dict = {"latency": [], "training": [], "data": {}, "machine": machine_info(), "quick": args.quick}
    for chosen in dict.fromkeys(args.sections):
        section = "latency" if chosen == "vpp" else chosen  # VPP's rows join the latency table
        for module in SECTIONS[chosen]:
            if chosen == "vpp" and "latency" in args.sections:
                continue  # already in the latency section
            result = _run_module(module, args.quick, errors)
            if result is None:
                continue
            if section in ("latency", "training"):
                for row in (result.get("rows", []) if isinstance(result, dict) else result):
                    if section == "latency" and "p50_ms" not in row:  # per-stage breakdowns
                        report["data"].setdefault("latency_breakdown", []).append(row)
                    elif row.get("model") == "data":  # data-loader throughput
                        report["data"].setdefault("loader", []).append(row)
                    else:
                        report[section].append(row)
            elif section == "data":
                report["data"][module.rsplit(".", 1)[-1]] = result
            else:
                report[section] = result
    report["ratios"] = ratios(report["latency"])
    if report["training"]:
        from videoaction.benchmarks.training import training_ratios

        report["training_ratios"] = training_ratios(report["training"])
    if args.quality:
        from videoaction.benchmarks.quality import run_quality

        report["quality"] = run_quality(Path(args.out).with_suffix(""), minutes=args.quality_minutes,
                                        data=args.quality_data, quick=args.quick)
    if errors:
        report["errors"] = errors
    atomic_write_json(args.out, report)
    print_tables(report)
    for e in errors:
        print(f"note: {e}")
    print(f"\nwrote {args.out}")
    return 0
