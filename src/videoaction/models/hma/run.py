"""`videoaction train` for HMA: a run directory with project checkpoints and exact resume, on token datasets.

HMA reads token datasets (``videoaction encode --format hma``), not episode stores, so it declares this function as
its :meth:`~videoaction.models.base.Policy.train_entry`; the CLI dispatches here through that declaration.

``--data`` names the datasets: ``DIR`` (the embodiment is the dataset's own name), or ``NAME=DIR`` pairs separated
by commas; embodiments whose ``model.domains[i].data`` is set are added. Every dataset's episodes are split as
the episode-store families split a store (``dataset.val_ratio``, ``dataset.split_seed``): the held-out ones are
the windows :mod:`videoaction.models.hma.video_eval` evaluates on.

Layout (as the shared trainer's, :mod:`videoaction.train.checkpoint`): ``OUT/config.json``, ``OUT/metrics.jsonl``,
``OUT/checkpoints/step_XXXXXXX/`` (``config.json`` with ``"family": "hma"``, ``model.safetensors``, optimizer
tensors, ``train_state.json`` with step, scheduler and the sampler's RNG, ``rng_rank0.safetensors``) and a
``latest`` pointer; ``--resume`` continues bit-exactly from ``latest``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from videoaction.config import to_dict
from videoaction.errors import VideoActionError
from videoaction.train.ema import EMA

from .config import HMARunConfig
from .policy import HMAPolicy
from .training import MultiEmbodimentSampler, check_precision, fit_statistics, make_optimizer, train_step


def resolve_datasets(cfg: HMARunConfig, data: str | None = None) -> dict:
    """``data`` (default ``cfg.data``: ``DIR`` or ``NAME=DIR,NAME=DIR``) plus ``model.domains[i].data`` ->
    {embodiment: TokenDataset}; every embodiment must be one of the model's."""
    from videoaction.data.hma_tokens import TokenDataset

    data = cfg.data if data is None else data
    out: dict = {}
    for item in [s.strip() for s in str(data or "").split(",") if s.strip()]:
        name, sep, path = item.partition("=")
        ds = TokenDataset(path, name=name) if sep else TokenDataset(item)
        known = [d.name for d in cfg.model.domains]
        if ds.name not in known:
            raise VideoActionError(f"{ds.root}: the dataset's embodiment {ds.name!r} is not one of the model's "
                                   f"{known}; pass --data NAME={ds.root} with one of them")
        out[ds.name] = ds
    for dom in cfg.model.domains:
        if dom.data and dom.name not in out:
            out[dom.name] = TokenDataset(dom.data, name=dom.name)
    if not out:
        raise VideoActionError("hma: no token dataset; pass --data DIR or --data NAME=DIR,NAME=DIR "
                               "(`videoaction encode --format hma` writes them)")
    return out


def fit_token_layout(cfg: HMARunConfig, datasets: dict, log=None) -> None:
    """Fill ``model.grid`` and ``model.vocab_size`` / ``model.latent_channels`` from the token datasets (as the
    shared trainer fills action / image sizes from a store). Datasets that disagree, or tokens of the other variant
    (ids for a continuous model, latents for a discrete one), are an error."""
    m = cfg.model
    layouts = {name: ds.layout for name, ds in datasets.items()}
    kinds = {lay.frame_shape[:-2] + (lay.vocab_size,) + lay.frame_shape[-2:] for lay in layouts.values()}
    if len(kinds) > 1:
        raise VideoActionError("hma: the token datasets do not share one tokenizer layout: " + ", ".join(
            f"{n} {lay.frame_shape} vocab {lay.vocab_size}" for n, lay in layouts.items()))
    name, lay = next(iter(layouts.items()))
    want = "discrete" if lay.quantized else "continuous"
    if m.variant != want:
        raise VideoActionError(f"{datasets[name].root}: holds {'token ids' if lay.quantized else 'latents'}, the "
                               f"model is {m.variant}; use a hma-*-{want[:4]} preset or re-encode the data")
    h, w = lay.frame_shape[-2:]
    if h != w:
        raise VideoActionError(f"{datasets[name].root}: token grid {h}x{w} is not square")
    new = {"grid": int(h)}
    if lay.quantized:
        new["vocab_size"] = int(lay.vocab_size)
    else:
        new["latent_channels"] = int(lay.frame_shape[0])
    changed = {k: v for k, v in new.items() if getattr(m, k) != v}
    for k, v in changed.items():
        setattr(m, k, v)
    m.validate()
    if changed and log:
        log("hma: from the token datasets: " + ", ".join(f"model.{k}={v}" for k, v in changed.items()))


def run_device(name: str) -> torch.device:
    """``RunConfig.device``: "auto" (CUDA when there is one), "cpu" or "cuda[:N]"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VideoActionError(f"--device {name}: no CUDA device here")
    return device


def _sampler_state(sampler: MultiEmbodimentSampler) -> dict:
    return sampler.rng.bit_generator.state


def train_run(cfg: HMARunConfig, opts=None):
    """Train (or resume, with ``cfg.resume``) an HMA run in ``cfg.out``; returns a ``TrainResult``."""
    from tqdm.auto import tqdm

    from videoaction.train import checkpoint as ck
    from videoaction.train.metrics import MetricsLogger
    from videoaction.train.trainer import TrainOptions, TrainResult
    from videoaction.utils.io import atomic_write_json, load_state_dict

    opts = opts or TrainOptions()
    log = opts.log
    if not cfg.out:
        raise VideoActionError("a run needs --out DIR")
    cfg.model.validate()
    check_precision(cfg.optim.mixed_precision)
    run_dir = Path(cfg.out)
    latest = ck.read_pointer(run_dir / ck.CHECKPOINTS, ck.LATEST)
    if latest is not None and not cfg.resume:
        raise VideoActionError(f"{run_dir} already holds a run (checkpoints/latest -> {latest.name}); pass --resume "
                               f"to continue it, or choose another --out")
    datasets = resolve_datasets(cfg)
    fit_token_layout(cfg, datasets, log)
    torch.manual_seed(cfg.seed)
    policy = HMAPolicy(cfg)
    fit_statistics(policy, datasets)
    val_ratio = float(cfg.dataset.val_ratio)
    sampler = MultiEmbodimentSampler(datasets, cfg, seed=cfg.seed, split="train" if val_ratio > 0 else "all",
                                     val_ratio=val_ratio)
    if cfg.init and latest is None:
        from videoaction.train.setup import load_init

        load_init(policy, cfg.init, opts.init_partial, log)
    device = run_device(cfg.device)
    policy.to(device)
    opt, sched = make_optimizer(policy, cfg)
    o = cfg.optim
    ema = EMA(policy, power=o.ema_power, max_decay=o.ema_max) if o.ema else None
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    step = 0
    if cfg.resume and latest is not None:
        policy.load_state_dict(load_state_dict(latest / "model.safetensors"))
        state, optimizer = ck.read_train_state(latest)
        if ema is not None:
            if not (latest / "ema.safetensors").is_file():
                raise VideoActionError(f"--resume with optim.ema: {latest} has no ema.safetensors (the run was "
                                       f"trained without EMA); resume with --optim.no-ema")
            ema.load_state_dict(load_state_dict(latest / "ema.safetensors"), state.get("ema_updates", 0))
        opt.load_state_dict(optimizer)
        sched.load_state_dict(state["scheduler"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        ck.load_rank_rng(latest, 0, g)
        step = int(state["step"])
        log(f"resumed from {latest} at step {step}")
    config = {**to_dict(cfg), "resume": False}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config)
    n = sum(p.numel() for p in policy.parameters())
    log(f"hma model: {n / 1e6:.2f} M parameters on {device}; embodiments "
        + ", ".join(f"{k} ({len(v)} windows)" for k, v in sampler.starts.items()))

    def save() -> Path:
        tmp = ck.begin_checkpoint(run_dir, step)
        ck.save_rank_rng(tmp, 0, g)
        policy.save_pretrained(tmp, config, ema=ema.module if ema is not None else None)
        ck.write_train_state(tmp, opt.state_dict(), {"step": step, "scheduler": sched.state_dict(),
                                                     "ema_updates": ema.n_updates if ema is not None else 0,
                                                     "sampler_rng": _sampler_state(sampler), "world_size": 1,
                                                     "seed": cfg.seed, "time": time.time()})
        final = ck.commit_checkpoint(tmp, ck.step_name(step))
        ck.prune_checkpoints(run_dir, cfg.keep_last)
        return final

    metrics = MetricsLogger(run_dir, True, opts.report_to, config, resume_step=step if latest is not None else None)
    losses, window, ckpt = [], [], latest
    bar = tqdm(total=cfg.steps, initial=step, disable=not opts.progress, desc=f"train {cfg.preset or 'hma'}",
               unit="step")
    t0 = t_log = time.perf_counter()
    policy.train()
    try:
        while step < cfg.steps:
            batch = {k: v.to(device) if torch.is_tensor(v) else v
                     for k, v in sampler.batch(cfg.optim.batch_size).items()}
            terms = train_step(policy, batch, opt, sched, g, cfg.optim.grad_clip, cfg.optim.mixed_precision)
            if ema is not None:
                ema.update(policy)
            if not np.isfinite(terms["loss"]):
                raise VideoActionError(f"hma: non-finite loss at step {step + 1} on {batch['domain']!r} ({terms}); "
                                       f"lower --optim.lr or check the dataset")
            window.append({"domain": batch["domain"], **terms})
            step += 1
            bar.update(1)
            timed_out = bool(cfg.time_limit_min) and time.perf_counter() - t0 > 60.0 * cfg.time_limit_min
            if step % max(cfg.log_every, 1) == 0 or step == cfg.steps or timed_out:
                rec = {"step": step, "loss": float(np.mean([w["loss"] for w in window])),
                       "lr": sched.get_last_lr()[0], "time_s": round(time.perf_counter() - t_log, 3)}
                for name in sampler.names:
                    vals = [w["loss"] for w in window if w["domain"] == name]
                    if vals:
                        rec[f"loss/{name}"] = float(np.mean(vals))
                metrics.log(rec)
                losses.append(rec["loss"])
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                window, t_log = [], time.perf_counter()
            if step % max(cfg.save_every, 1) == 0 or step == cfg.steps or timed_out:
                ckpt = save()
            if timed_out:
                log(f"time limit of {cfg.time_limit_min:g} min reached at step {step}; resume with --resume")
                break
    finally:
        bar.close()
        metrics.close()
    policy.eval()
    if step >= cfg.steps and not losses:
        log(f"already at step {step} >= steps {cfg.steps}; nothing to do")
    return TrainResult(run_dir, step, ckpt, losses)
