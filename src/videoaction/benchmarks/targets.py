"""`videoaction bench --targets`: the evaluation issue's training-budget targets, measured end to end on a CPU.

* **PushT**: UVA-tiny trained for ``minutes`` on scripted demonstrations, evaluated on fixed seeds (DP score and
  success), next to the random and mean-action policies. Target: DP score >= 0.5.
* **Metaworld easy tasks** (default button-press-topdown, drawer-open, reach): one UVA-tiny for all of them,
  conditioned on the task instruction (a learned task embedding) and the 39-d state, trained for ``minutes``;
  success per task over 20 seeds, 300-step episodes. Target: success >= 0.5.

Each environment gets its own directory with the demonstrations, the run, the evaluation and a report;
``targets.json`` holds the headline numbers, the steps reached, and the wall-clock spent per stage. Re-running with
the same ``--out`` reuses finished demonstrations and resumes training from the last checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from videoaction.data.errors import VideoActionError
from videoaction.utils.io import atomic_write_json

METAWORLD_EASY = ("button-press-topdown", "drawer-open", "reach")


@dataclass
class TargetSizes:
    minutes: float = 60.0  # training wall-clock budget per environment (stage 0 tokenizer not included)
    pusht_episodes: int = 100
    metaworld_episodes: int = 30  # per task
    eval_episodes: int = 50  # PushT
    metaworld_eval_episodes: int = 20  # per task (Metaworld renders with OSMesa at ~30 env-steps/s on a CPU)
    metaworld_max_steps: int = 300  # the scripted experts finish these tasks in well under 150 steps
    tokenizer_steps: int = 1000
    batch_size: int = 16
    threads: int | None = None  # torch threads for this process (None: leave torch's default)
    envs: tuple[str, ...] = ("pusht", "metaworld")
    metaworld_tasks: tuple[str, ...] = METAWORLD_EASY
    max_eval_steps: int | None = None  # PushT episode limit; None: the env's own (300)
    seed: int = 0


QUICK = TargetSizes(minutes=0.2, pusht_episodes=3, metaworld_episodes=1, eval_episodes=2, metaworld_eval_episodes=1,
                    metaworld_max_steps=20, tokenizer_steps=10, batch_size=4, max_eval_steps=20)


def pusht_config(data: str, out: str, sizes: TargetSizes):
    """UVA-tiny on PushT demonstrations: the preset as it is, with the wall-clock budget ending training."""
    from videoaction.config import get_preset

    cfg = get_preset("uva-tiny")
    cfg.data, cfg.out, cfg.seed = data, out, sizes.seed
    return _budget(cfg, sizes)


def metaworld_config(data: str, out: str, sizes: TargetSizes):
    """UVA-tiny for several Metaworld tasks: instruction (learned task embedding) + the full 39-d state as
    conditions, Metaworld's 4-d actions (filled from the data)."""
    from videoaction.config import get_preset

    cfg = get_preset("uva-tiny")
    cfg.data, cfg.out, cfg.seed = data, out, sizes.seed
    cfg.dataset.language_key = "language"
    cfg.dataset.state_dims = None  # all 39 dims: hand, gripper, object poses, goal (goal_observable)
    m = cfg.model
    m.use_state = True
    m.language, m.text.kind, m.text.dim, m.text_dim = True, "task_embedding", 64, 64
    m.text_tokens = 4
    m.label_drop_prob = 0.0  # no classifier-free guidance on the task: the instruction is always known
    return _budget(cfg, sizes)


def _budget(cfg, sizes: TargetSizes):
    cfg.steps = 1_000_000  # the wall-clock budget ends training
    cfg.time_limit_min = sizes.minutes
    cfg.save_every = 500
    cfg.log_every = 50
    cfg.optim.batch_size = sizes.batch_size
    cfg.dataset.val_ratio = 0.05
    cfg.resume = (Path(cfg.out) / "checkpoints").is_dir()
    return cfg


def _demos(kind: str, out: Path, episodes: int, sizes: TargetSizes, tasks=None) -> tuple[str, float]:
    from videoaction.data.store import EpisodeStore
    from videoaction.demos.cli import main as demos_main

    t0 = time.perf_counter()
    args = [kind, "--episodes", str(episodes), "--seed", str(sizes.seed), "--out", str(out)]
    if tasks:
        args += ["--tasks", *tasks]
    if demos_main(args):
        raise VideoActionError(f"{kind} demonstration generation failed ({out})")
    if EpisodeStore.open(out).n_episodes < 2:
        raise VideoActionError(f"{out}: fewer than 2 successful demonstrations")
    return str(out), time.perf_counter() - t0


def _train_and_eval(cfg, env: str, sizes: TargetSizes, out: Path, baselines: dict | None = None,
                    n_episodes: int | None = None, max_steps: int | None = None) -> dict:
    from videoaction.eval.report import write_report
    from videoaction.eval.runner import evaluate_policy
    from videoaction.models.base import load_policy
    from videoaction.train.trainer import TrainOptions, train

    t0 = time.perf_counter()
    res = train(cfg, TrainOptions(tokenizer_steps=sizes.tokenizer_steps, tokenizer_batch_size=sizes.batch_size))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    policy = load_policy(res.checkpoint)
    n = n_episodes or sizes.eval_episodes
    kw = dict(n_episodes=n, max_steps=max_steps or sizes.max_eval_steps, n_envs=min(8, n))
    result = evaluate_policy(policy, env, out_dir=out / "eval" / "uva-tiny", record_video=4, **kw)
    base = {name: evaluate_policy(p, env, out_dir=out / "eval" / name, **kw) for name, p in (baselines or {}).items()}
    eval_s = time.perf_counter() - t0
    report = write_report(out / "report", result, run_dir=cfg.out, baselines=base, media_root=out / "eval" / "uva-tiny",
                          title=f"UVA-tiny, {sizes.minutes:g} min of CPU training — {env}")
    return {"env": env, "steps": res.step, "train_s": train_s, "eval_s": eval_s, "report": str(report),
            "metrics": _headline(result), "baselines": {k: _headline(v) for k, v in base.items()},
            "checkpoint": str(res.checkpoint)}


def _headline(result: dict) -> dict:
    m = result["metrics"]
    keys = ("dp_score", "success_rate", "mean_max_coverage", "n_episodes")
    out = {k: m[k] for k in keys if k in m}
    if "per_task_success" in m:
        out["per_task"] = dict(m["per_task_success"])
    return out


def run_targets(out: Path, sizes: TargetSizes | None = None) -> dict:
    """Run the targets for ``sizes.envs``; write and return ``targets.json``'s content."""
    sizes = sizes or TargetSizes()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if sizes.threads:
        import torch

        torch.set_num_threads(sizes.threads)
    summary: dict = {"minutes": sizes.minutes, "batch_size": sizes.batch_size, "envs": {}}
    if "pusht" in sizes.envs:
        from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy

        d = out / "pusht"
        data, demos_s = _demos("pusht", d / "demos.zarr", sizes.pusht_episodes, sizes)
        r = _train_and_eval(pusht_config(data, str(d / "run"), sizes), "pusht", sizes, d,
                            {"random": RandomPolicy(seed=sizes.seed), "mean-action": MeanActionPolicy.from_store(data)})
        r.update(demos_s=demos_s, target={"dp_score": 0.5}, met=r["metrics"]["dp_score"] >= 0.5)
        summary["envs"]["pusht"] = r
        atomic_write_json(out / "targets.json", summary)
    if "metaworld" in sizes.envs:  # (the Metaworld env and task lookup choose the headless GL backend themselves)
        from videoaction.eval.baselines import RandomPolicy

        d = out / "metaworld"
        tasks = list(sizes.metaworld_tasks)
        data, demos_s = _demos("metaworld", d / "demos.zarr", sizes.metaworld_episodes, sizes, tasks)
        r = _train_and_eval(metaworld_config(data, str(d / "run"), sizes), "metaworld:" + ",".join(tasks), sizes, d,
                            {"random": RandomPolicy(seed=sizes.seed)}, n_episodes=sizes.metaworld_eval_episodes,
                            max_steps=sizes.metaworld_max_steps)
        per_task = r["metrics"].get("per_task") or {tasks[0]: r["metrics"]["success_rate"]}
        r.update(demos_s=demos_s, target={"success_rate_per_task": 0.5},
                 met=bool(per_task) and all((v or 0.0) >= 0.5 for v in per_task.values()))
        summary["envs"]["metaworld"] = r
        atomic_write_json(out / "targets.json", summary)
    return summary


def print_targets(summary: dict) -> None:
    for env, r in summary["envs"].items():
        m = r["metrics"]
        head = f"DP score {m['dp_score']:.3f}, success {m['success_rate']:.2f}" if "dp_score" in m else \
            f"success {m['success_rate']:.2f} " + str({t: round(v or 0.0, 2) for t, v in m.get("per_task", {}).items()})
        print(f"{env}: {head} after {r['steps']} steps ({r['train_s'] / 60:.1f} min incl. stage 0) — target "
              f"{'met' if r['met'] else 'not met'}")
        for name, b in r.get("baselines", {}).items():
            print(f"    {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in b.items() if isinstance(v, float)))
