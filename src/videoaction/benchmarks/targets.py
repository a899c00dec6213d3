"""`videoaction bench --targets`: closed-loop success for a CPU training budget, every model on equal terms.

* **PushT** (image + agent_pos): UVA-tiny (``uva-tiny-pusht``), the UVA-action ablation (``uva-tiny-action``: no
  video loss, everything else equal) and DP-C-tiny (``dp-tiny``), trained **side by side in one invocation** for the
  same training wall-clock (one torch thread each, so they share the machine equally); DP score and success on fixed
  seeds next to the random and mean-action floors on the same seeds. Target: UVA DP score >= 0.5 and >= DP-C.
* **Metaworld** button-press-topdown, drawer-open, reach (image + 4-d proprio): one ``uva-tiny-metaworld`` for the
  three tasks, conditioned on the instruction; success per task next to the random floor on the same seeds.
  DP-C has no language / task conditioning in this project, so it has no Metaworld multi-task row.
* **Learning curves** (:mod:`videoaction.eval.curves`): ``curve_points`` checkpoints per run at equal shares of the
  budget, each evaluated in closed loop (intermediate ones on the first ``curve_episodes`` seeds); the headline
  number is the **last** checkpoint on all seeds, the best checkpoint is shown beside it.

Stages: demonstrations -> stage 0 tokenizer and latent cache per environment (shared by UVA and UVA-action, not
part of the budget) -> all training runs at once -> evaluations (``eval_workers`` processes).
``OUT/targets.json`` holds the table; ``OUT/<env>/report/report.html`` the plots, rollouts and per-seed tables.
Re-running with the same ``--out`` skips finished demonstrations, tokenizers, curve segments and evaluations
(resumable after a kill).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_write_json

METAWORLD_EASY = ("button-press-topdown", "drawer-open", "reach")


@dataclass
class TargetSizes:
    minutes: float = 45.0  # training wall-clock per run (every run of the invocation trains this long, side by side)
    pusht_episodes: int = 100
    metaworld_episodes: int = 30  # per task
    eval_episodes: int = 50  # per task, the headline (last checkpoint) and the floors
    curve_points: int = 10  # checkpoints per run at equal shares of the budget
    curve_episodes: int = 10  # PushT seeds for intermediate checkpoints
    metaworld_curve_points: int = 5  # Metaworld renders at ~30 env-steps/s on a CPU core: fewer, cheaper points
    metaworld_curve_episodes: int = 4  # per task
    metaworld_max_steps: int = 150  # the scripted experts finish these tasks in 36-93 steps
    max_eval_steps: int | None = None  # PushT episode limit; None: the env's own (300)
    tokenizer_steps: int = 600  # stage 0 (31.7 dB held-out PSNR on PushT frames)
    batch_size: int = 16
    threads: int | None = 1  # torch threads per training / evaluation process
    eval_workers: int = 3  # evaluation processes
    envs: tuple[str, ...] = ("pusht", "metaworld")
    metaworld_tasks: tuple[str, ...] = METAWORLD_EASY
    pusht_models: tuple[str, ...] = ("uva-tiny-pusht", "uva-tiny-action", "dp-tiny")
    metaworld_models: tuple[str, ...] = ("uva-tiny-metaworld",)
    # families on one Metaworld task at equal budget; "a>b": train preset a, then b initialised from it (--init)
    families_task: str = "drawer-open"
    families_models: tuple[str, ...] = ("uva-tiny-metaworld", "vpp-tiny-video>vpp-tiny", "dp-tiny-metaworld")
    families_curve_episodes: int = 10
    families_episodes: int = 30
    pretrain_share: float = 0.5  # of a pipeline's budget spent on its earlier stages ("a" of "a>b")
    seed: int = 0
    smoke: bool = False  # shrink the networks (tests)
    prepare_only: bool = False  # stop after demonstrations and stage 0 (a later run with the same out reuses them)
    overrides: dict = field(default_factory=dict)  # "dotted.field": value applied to every run config


QUICK = TargetSizes(minutes=0.15, pusht_episodes=3, metaworld_episodes=1, eval_episodes=3, curve_points=2,
                    curve_episodes=2, metaworld_curve_points=2, metaworld_curve_episodes=1, metaworld_max_steps=12,
                    max_eval_steps=12, tokenizer_steps=5, batch_size=4, smoke=True, eval_workers=2,
                    metaworld_tasks=("drawer-open", "reach"), families_episodes=2, families_curve_episodes=1)


# ----------------------------------------------------------------------------------------------- configs
def run_config(preset: str, data: str, out: str, sizes: TargetSizes, tokenizer: str | None = None):
    """The preset as it is, on ``data``, with the invocation's batch size (the wall-clock budget ends training)."""
    from videoaction.config import get_preset

    cfg = get_preset(preset)
    cfg.data, cfg.out, cfg.seed = data, out, sizes.seed
    cfg.log_every = 50
    cfg.optim.batch_size = sizes.batch_size
    cfg.dataset.val_ratio = 0.05
    m = cfg.model
    if tokenizer and hasattr(m, "tokenizer"):
        m.tokenizer.path = tokenizer
    if sizes.smoke:
        if hasattr(m, "video_head"):
            m.width, m.num_heads = 64, 2
            m.video_head.width = m.action_head.width = 64
            m.video_head.depth = m.action_head.depth = 1
        elif hasattr(m, "down_dims"):
            m.down_dims, m.backbone_width = (16, 32), 8
    for key, value in sizes.overrides.items():
        obj, *path = [cfg, *key.split(".")]
        for k in path[:-1]:
            obj = getattr(obj, k)
        if not hasattr(obj, path[-1]):
            raise VideoActionError(f"TargetSizes.overrides: unknown config field {key!r}")
        setattr(obj, path[-1], value)
    return cfg


# ----------------------------------------------------------------------------------------------- workers
def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _demos_job(kind: str, out: str, episodes: int, seed: int, tasks: tuple[str, ...] | None, threads) -> dict:
    from videoaction.data.store import EpisodeStore
    from videoaction.demos.cli import main as demos_main

    _threads(threads)
    marker = Path(out + ".done.json")
    if marker.is_file():
        return {"path": out, "reused": True, **__import__("json").loads(marker.read_text())}
    t0 = time.perf_counter()
    args = [kind, "--episodes", str(episodes), "--seed", str(seed), "--out", out, "--no-progress"]
    if tasks:
        args += ["--tasks", *tasks]
    if demos_main(args):
        raise VideoActionError(f"{kind} demonstration generation failed ({out})")
    n = EpisodeStore.open(out).n_episodes
    if n < 2:
        raise VideoActionError(f"{out}: fewer than 2 successful demonstrations")
    info = {"episodes": n, "attempts": episodes, "seconds": time.perf_counter() - t0}
    atomic_write_json(marker, info)
    return {"path": out, **info}


def _tokenizer_job(preset: str, data: str, out: str, steps: int, batch_size: int, seed: int, threads) -> dict:
    from videoaction.config import get_preset
    from videoaction.train.tokenizer import train_tokenizer

    import json

    _threads(threads)
    report = Path(out + ".json")
    if (Path(out) / "tokenizer.json").is_file() and report.is_file():
        return {**json.loads(report.read_text()), "reused": True}
    cfg = get_preset(preset)
    t0 = time.perf_counter()
    res: list = []
    train_tokenizer(data, out, cfg.model.tokenizer, steps=steps, batch_size=batch_size,
                    image_key=cfg.dataset.image_key, image_size=cfg.dataset.image_size, seed=seed, progress=False,
                    log=None, result=res)
    info = {"path": out, "steps": steps, "seconds": time.perf_counter() - t0,
            "psnr_val": res[0].psnr_val if res else None}
    atomic_write_json(report, info)
    return info


def _latents_job(preset: str, data: str, tokenizer: str, out: str, threads) -> dict:
    """Encode every frame once with the shared tokenizer (the latent cache both UVA runs train on)."""
    import dataclasses

    from videoaction.config import get_preset
    from videoaction.train.encode import encode_store

    _threads(threads)
    marker = Path(out + ".done.json")
    if marker.is_file():
        return {"path": out, "reused": True}
    cfg = get_preset(preset)
    t0 = time.perf_counter()
    encode_store(data, out, dataclasses.replace(cfg.model.tokenizer, path=tokenizer), image_size=cfg.dataset.image_size,
                 crop_ratio=cfg.dataset.crop_ratio, image_key=cfg.dataset.image_key, device="cpu", overwrite=True,
                 restart_stale=True, progress=False, log=lambda m: None)
    info = {"path": out, "seconds": time.perf_counter() - t0}
    atomic_write_json(marker, info)
    return info


def stages(model: str) -> list[str]:
    """``"a>b"`` -> ``["a", "b"]``: a pipeline of presets, each initialised from the previous run (``--init``)."""
    return model.split(">")


def label(model: str) -> str:
    """The run and evaluation folder of a model: its last stage's preset."""
    return stages(model)[-1]


def _train_job(cfgs: list, minutes: float, points: int, threads, pretrain_share: float = 0.5) -> list[dict]:
    """Train a model (``cfgs``: its stages) for ``minutes`` of training wall-clock in all. Earlier stages share
    ``pretrain_share`` of the budget; the curve points are the last stage's, their minutes counted from the start
    of the first stage. Resumable stage by stage."""
    from videoaction.eval.curves import train_with_curve
    from videoaction.train.trainer import TrainOptions

    _threads(threads)
    pre_minutes = minutes * pretrain_share if len(cfgs) > 1 else 0.0
    done = 0.0
    for i, cfg in enumerate(cfgs):
        log_path = Path(cfg.out) / "train.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        def log(msg: str, path=log_path) -> None:
            with open(path, "a") as f:
                f.write(msg + "\n")

        last = i == len(cfgs) - 1
        share = minutes - pre_minutes if last else pre_minutes / (len(cfgs) - 1)
        if i:
            cfg.init = prev[-1]["checkpoint"]
        prev = train_with_curve(cfg, share, points if last else 1, TrainOptions(progress=False, log=log), log=log)
        if not last:
            done += share
    return [dict(p, minutes=round(p["minutes"] + done, 6), stage_minutes=p["minutes"]) for p in prev]


def _curve_eval_job(curve: list[dict], env: str, seeds: list[int], n_intermediate: int, score_key: str, out: str,
                    max_steps, record_video: int, threads) -> dict:
    from videoaction.eval.curves import evaluate_curve

    _threads(threads)
    return evaluate_curve(curve, env, seeds, n_intermediate, lambda r: float(r["metrics"][score_key]), out,
                          max_steps=max_steps, record_video=record_video)


def _floor_job(name: str, env: str, seeds: list[int], data: str, out: str, max_steps, seed: int, threads) -> dict:
    import json

    from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy
    from videoaction.eval.runner import evaluate_policy

    _threads(threads)
    f = Path(out) / "results.json"
    if f.is_file() and json.loads(f.read_text()).get("seeds") == seeds:
        return json.loads(f.read_text())
    policy = RandomPolicy(seed=seed) if name == "random" else MeanActionPolicy.from_store(data)
    return evaluate_policy(policy, env, seeds=seeds, max_steps=max_steps, out_dir=out, n_envs=min(8, len(seeds)),
                           progress=False)


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class _Env:
    """One environment of the benchmark: what is trained and evaluated there, and the issue's target for it."""

    name: str  # key of TARGET_ENVS
    spec: str  # evaluation env spec
    models: tuple[str, ...]
    floors: tuple[str, ...]
    max_steps: int | None
    points: int
    curve_episodes: int
    demo_kind: str
    episodes: int
    tasks: tuple[str, ...] | None = None
    score: str = "success_rate"  # headline metric (results["metrics"] key) and its label
    score_label: str = "success rate"
    target: float = 0.5  # the headline target: >= this
    target_per_task: bool = False  # the target holds for each task (else for the headline score)
    compare_to: str | None = None  # model-name prefix the main UVA run must match or beat in the same run


def _pusht(sizes: TargetSizes) -> _Env:
    return _Env("pusht", "pusht", sizes.pusht_models, ("random", "mean-action"), sizes.max_eval_steps,
                sizes.curve_points, sizes.curve_episodes, "pusht", sizes.pusht_episodes,
                score="dp_score", score_label="DP score", target=0.5, compare_to="dp")


def _metaworld(sizes: TargetSizes) -> _Env:
    tasks = tuple(sizes.metaworld_tasks)
    return _Env("metaworld", "metaworld:" + ",".join(tasks), sizes.metaworld_models, ("random",),
                sizes.metaworld_max_steps, sizes.metaworld_curve_points, sizes.metaworld_curve_episodes, "metaworld",
                sizes.metaworld_episodes, tasks, score="success_rate", score_label="success rate (mean over tasks)",
                target=0.5, target_per_task=True)


def _families(sizes: TargetSizes) -> _Env:
    """UVA vs VPP vs DP-C on one Metaworld task (image + 4-d proprio; VPP reads image + instruction), equal budget."""
    task = sizes.families_task
    return _Env("families", f"metaworld:{task}", sizes.families_models, ("random",), sizes.metaworld_max_steps,
                sizes.metaworld_curve_points, sizes.families_curve_episodes, "metaworld", sizes.families_episodes,
                (task,), score="success_rate", score_label=f"success rate ({task})", target=0.5)


# the environments of the closed-loop targets: name -> its description built from the invocation's sizes
TARGET_ENVS: dict[str, Callable[[TargetSizes], _Env]] = {"pusht": _pusht, "metaworld": _metaworld,
                                                         "families": _families}


def targets_models(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """``["metaworld=uva-tiny-metaworld,uva-tiny-fast-metaworld"]`` -> ``{"metaworld_models": (...)}``: the
    ``TargetSizes`` fields that replace an environment's default presets (each preset, and each stage of an
    ``"a>b"`` pipeline, checked to exist)."""
    from videoaction.config import all_presets

    out = {}
    for spec in specs:
        env, sep, presets = spec.partition("=")
        names = tuple(p for p in presets.split(",") if p)
        if not sep or env not in TARGET_ENVS or not names:
            raise VideoActionError(f"bench --targets-models: expected ENV=PRESET[,PRESET...] with ENV one of "
                                   f"{sorted(TARGET_ENVS)}, got {spec!r}")
        unknown = [p for n in names for p in stages(n) if p not in all_presets()]
        if unknown:
            raise VideoActionError(f"bench --targets-models {spec!r}: unknown preset {unknown[0]!r}")
        out[f"{env}_models"] = names
    return out


def _envs(sizes: TargetSizes) -> list[_Env]:
    unknown = [e for e in sizes.envs if e not in TARGET_ENVS]
    if unknown:
        raise VideoActionError(f"bench --targets: unknown environment {unknown[0]!r}; choose from {sorted(TARGET_ENVS)}")
    return [TARGET_ENVS[e](sizes) for e in sizes.envs]


def _pool(n: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    os.environ.setdefault("MUJOCO_GL", "osmesa")  # children render headless (Metaworld)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    return ProcessPoolExecutor(max_workers=max(1, n), mp_context=mp.get_context("spawn"))


def run_targets(out: Path, sizes: TargetSizes | None = None, log=print) -> dict:
    """Run every stage for ``sizes.envs``; write and return ``OUT/targets.json``'s content."""
    from videoaction.eval.runner import default_seeds

    sizes = sizes or TargetSizes()
    if not sizes.threads:  # one thread per process unless asked otherwise: the runs share the machine equally
        sizes = replace(sizes, threads=1)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    envs = _envs(sizes)
    t = {}
    summary: dict = {"budget_minutes": sizes.minutes, "sizes": asdict(sizes), "envs": {}, "stage_s": t}

    t0 = time.perf_counter()
    log(f"1/4 demonstrations: {', '.join(e.name for e in envs)}")
    with _pool(len(envs)) as pool:
        futs = {e.name: pool.submit(_demos_job, e.demo_kind, str(out / e.name / "demos.zarr"), e.episodes,
                                    sizes.seed, e.tasks, sizes.threads) for e in envs}
        demos = {k: f.result() for k, f in futs.items()}
    t["demos"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("2/4 stage 0: one tokenizer per environment, shared by its UVA runs (not part of the budget)")
    uva_envs = [e for e in envs if any(m.startswith("uva") for m in e.models)]
    with _pool(len(uva_envs)) as pool:
        futs = {e.name: pool.submit(_tokenizer_job, next(m for m in e.models if m.startswith("uva")),
                                    demos[e.name]["path"], str(out / e.name / "tokenizer"), sizes.tokenizer_steps,
                                    sizes.batch_size, sizes.seed, sizes.threads) for e in uva_envs}
        tokenizers = {k: f.result() for k, f in futs.items()}
    t["tokenizers"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("   latent cache: every frame encoded once per environment by its tokenizer, shared by its UVA runs")
    with _pool(len(uva_envs)) as pool:
        futs = {e.name: pool.submit(_latents_job, next(m for m in e.models if m.startswith("uva")),
                                    demos[e.name]["path"], tokenizers[e.name]["path"],
                                    str(out / e.name / "latents.zarr"), sizes.threads) for e in uva_envs}
        latents = {k: f.result() for k, f in futs.items()}
    t["latents"] = time.perf_counter() - t0
    if sizes.prepare_only:
        return summary

    t0 = time.perf_counter()
    jobs = [(e, m) for e in envs for m in e.models]
    log(f"3/4 training {len(jobs)} runs side by side for {sizes.minutes:g} min each: "
        + ", ".join(f"{e.name}/{m}" for e, m in jobs))
    with _pool(len(jobs)) as pool:
        futs = {}
        for e, m in jobs:
            cfgs = []
            for p in stages(m):
                uva = p.startswith("uva")
                cfgs.append(run_config(p, latents[e.name]["path"] if uva else demos[e.name]["path"],
                                       str(out / e.name / "runs" / p), sizes,
                                       tokenizers[e.name]["path"] if uva else None))
            futs[(e.name, m)] = pool.submit(_train_job, cfgs, sizes.minutes, e.points, sizes.threads,
                                            sizes.pretrain_share)
        curves = {k: f.result() for k, f in futs.items()}
    t["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"4/4 evaluation: curves and floors ({sizes.eval_workers} processes)")
    seeds = {e.name: [int(s) for s in default_seeds(e.spec, sizes.eval_episodes)] for e in envs}
    with _pool(sizes.eval_workers) as pool:
        evals, floors = {}, {}
        for e in sorted(envs, key=lambda e: e.name != "metaworld"):  # longest jobs first: Metaworld renders slowly
            for i, m in enumerate(e.models):
                evals[(e.name, m)] = pool.submit(
                    _curve_eval_job, curves[(e.name, m)], e.spec, seeds[e.name], e.curve_episodes,
                    e.score, str(out / e.name / "eval" / label(m)), e.max_steps, 4 if i == 0 else 0, sizes.threads)
            for f in e.floors:
                floors[(e.name, f)] = pool.submit(_floor_job, f, e.spec, seeds[e.name], demos[e.name]["path"],
                                                  str(out / e.name / "eval" / "floors" / f), e.max_steps, sizes.seed,
                                                  sizes.threads)
        evals = {k: f.result() for k, f in evals.items()}
        floors = {k: f.result() for k, f in floors.items()}
    t["evaluation"] = time.perf_counter() - t0

    for e in envs:
        summary["envs"][e.name] = _env_summary(e, out, sizes, seeds[e.name], demos[e.name], tokenizers.get(e.name),
                                               {m: evals[(e.name, m)] for m in e.models},
                                               {f: floors[(e.name, f)] for f in e.floors})
    summary["table"] = table(summary)
    atomic_write_json(out / "targets.json", summary)
    return summary


def table(summary: dict) -> list[dict]:
    """One flat row per model and floor: what the closing note's table shows."""
    rows = []
    for env, r in summary["envs"].items():
        for m in r["models"]:
            rows.append({"env": env, "policy": m["model"], "privileged_state": m["privileged_state"],
                         "budget_min": m["budget_minutes"], "steps": m["steps"], "steps_per_min": m["steps_per_min"],
                         "seeds": m["seeds"], "checkpoint": "last", r["score"]: m["score"],
                         "success_rate": m.get("success_rate"), "per_task": m.get("per_task"),
                         f"best_{r['score']}": m["best"]["score"], "best_at_min": m["best"]["minutes"]})
        for f, v in r["floors"].items():
            rows.append({"env": env, "policy": f"{f} (floor)", "seeds": v["seeds"], r["score"]: v["score"],
                         "success_rate": v.get("success_rate"), "per_task": v.get("per_task")})
    return rows


def _env_summary(e: _Env, out: Path, sizes: TargetSizes, seeds: list[int], demos: dict, tokenizer: dict | None,
                 evals: dict, floors: dict) -> dict:
    from videoaction.eval.curves import CHECKPOINT_RULE, curve_section
    from videoaction.eval.report import write_report

    key, label = e.score, e.score_label
    rows, results = [], []
    for m, ev in evals.items():
        last, best = ev["last"], ev["best"]
        res = dict(ev["_last_results"], name=f"{m} (last checkpoint)")
        results.append(res)
        rows.append({"model": m, "privileged_state": "privileged_state" in m, "budget_minutes": last["minutes"],
                     "steps": last["step"], "steps_per_min": last["step"] / last["minutes"],
                     "seeds": last["seeds"], "score": last["score"], **_metrics(last["metrics"]),
                     "best": {"score": best["score"], "step": best["step"], "minutes": best["minutes"],
                              "seeds": best["seeds"], **_metrics(best["metrics"])},
                     "curve": [{k: p[k] for k in ("minutes", "step", "wall_s", "seeds", "score")}
                               for p in ev["points"]]})
    floor_rows = {f: {"score": float(r["metrics"][key]), **_metrics(r["metrics"]), "seeds": len(r["seeds"])}
                  for f, r in floors.items()}
    title = f"{e.name}: closed-loop success after {sizes.minutes:g} min of CPU training per model"
    section = curve_section(evals, out / e.name / "report", label, f"Learning curves — {e.name}",
                            {f: r["score"] for f, r in floor_rows.items()})
    first = next(iter(evals.values()))
    report = write_report(out / e.name / "report", results, run_dir=None, extra_sections=[section],
                          baselines={f"{f} (floor)": dict(r, name=f) for f, r in floors.items()},
                          media_root=first["last"]["eval_dir"], title=title)
    summary = {"env": e.spec, "score": key, "score_label": label, "seeds": seeds, "max_steps": e.max_steps,
               "checkpoint_rule": CHECKPOINT_RULE, "curve_seeds_intermediate": first["seeds_intermediate"],
               "demos": demos, "tokenizer": tokenizer, "models": rows, "floors": floor_rows, "report": str(report)}
    summary["targets"] = _verdicts(e, rows, floor_rows)
    return summary


def _metrics(m: dict) -> dict:
    out = {k: m[k] for k in ("dp_score", "success_rate") if k in m}
    if "per_task" in m:
        out["per_task"] = {k.split(":", 1)[-1]: v for k, v in m["per_task"].items()}
    return out


def _verdicts(e: _Env, rows: list[dict], floors: dict) -> dict:
    by = {r["model"]: r for r in rows}
    uva = next((r for r in rows if r["model"].startswith("uva") and "action" not in r["model"]), None)
    out: dict = {}
    if uva is None:
        return out
    best_floor = max((f["score"] for f in floors.values()), default=0.0)
    out["uva_over_best_floor"] = uva["score"] - best_floor
    if e.target_per_task:
        per_task = uva.get("per_task", {})
        out[f"uva_{e.score}_ge_{e.target:g}_each_task"] = bool(per_task) and all(v >= e.target
                                                                                 for v in per_task.values())
    else:
        out[f"uva_{e.score}_ge_{e.target:g}"] = uva["score"] >= e.target
    other = next((r for r in rows if e.compare_to and r["model"].startswith(e.compare_to)), None)
    if other is not None:
        out[f"uva_ge_{e.compare_to}"] = uva["score"] >= other["score"]
    action = next((r for r in rows if "action" in r["model"]), None)
    if action is not None:
        out["uva_minus_uva_action"] = uva["score"] - action["score"]
    out["models"] = sorted(by)
    return out


def print_targets(summary: dict) -> None:
    for env, r in summary["envs"].items():
        print(f"\n{env} ({r['score_label']}, {len(r['seeds'])} seeds, headline = last checkpoint)")
        print(f"  {'model':<28}{'score':>7}{'best':>7}{'steps':>8}{'steps/min':>11}  per task")
        for m in r["models"]:
            pt = " ".join(f"{k}={v:.2f}" for k, v in m.get("per_task", {}).items())
            print(f"  {m['model']:<28}{m['score']:>7.3f}{m['best']['score']:>7.3f}{m['steps']:>8}"
                  f"{m['steps_per_min']:>11.1f}  {pt}")
        for f, v in r["floors"].items():
            print(f"  {f + ' (floor)':<28}{v['score']:>7.3f}")
        print(f"  targets: {r['targets']}")
        print(f"  report: {r['report']}")
