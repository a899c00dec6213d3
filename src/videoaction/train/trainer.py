"""The training loop of every model family, on accelerate (CPU, N GPUs, several nodes; DDP or FSDP).

``train(cfg, opts)`` runs one stage: stage 0 (small tokenizer) when needed, data + normaliser, model (+ ``--init``),
AdamW (no decay on 1-D parameters) with a diffusers schedule stepped once per optimizer step, gradient clipping,
autocast, gradient accumulation, EMA, checkpoints every ``save_every`` steps and exact resume. Each rank draws its
masks / modes / noise from its own generator seeded ``seed + rank`` (the reference seeds all ranks alike) and reads
its own block of every global batch (see ``loader.py``); logged metrics are averaged over ranks.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from videoaction.config import RunConfig, to_dict
from videoaction.errors import VideoActionError
from videoaction.train import checkpoint as ck
from videoaction.train.ema import EMA
from videoaction.train.loader import (batch_mode, make_loader, make_order, move_batch, split_action_free,
                                      window_weights)
from videoaction.train.metrics import MetricsLogger
from videoaction.train.optim import clip_gradients, make_adamw
from videoaction.utils.io import atomic_write_json
from videoaction.train.setup import (auto_latent_cache, batch_shapes, check_latent_fit, check_policy_fits,
                                     count_params, fill_model_sizes, init_from_mar_weights, load_init, param_groups,
                                     prepare_tokenizer)


class TrainError(VideoActionError):
    """Training stopped for a reason the user can act on (non-finite loss, out of memory, ...)."""


@dataclass
class TrainOptions:
    """Trainer knobs that are not part of the model's run config."""

    init_mar: str | None = None  # MAR checkpoint to initialise a UVA model from (models.convert.init_from_mar)
    init_partial: bool = False  # --init: skip tensors whose shapes differ instead of failing
    allow_pickle: bool = False  # --init-mar: permit reading a pickled MAR checkpoint-last.pth
    tokenizer_steps: int = 1500  # stage 0
    tokenizer_batch_size: int = 32
    report_to: str = "none"  # none | tensorboard | wandb
    best_metric: str = "val_loss"  # key of an evaluation record; "val_loss" = loss on the validation split
    best_mode: str = "min"  # min | max
    val_batches: int = 2  # batches of the validation split for val_loss at every save
    progress: bool = True
    eval_fn: Callable[[nn.Module, int], dict] | None = None  # (EMA policy, step) -> metrics, every eval_every
    action_free_every: int = 4  # episodes with meta has_action=False: every K-th micro-batch, video-only modes
    # "auto": an image store is encoded once by the frozen tokenizer into DIR/latents.zarr and the run trains on the
    # latents (setup.auto_latent_cache says when it cannot); "off": the tokenizer encodes the frames at every step
    latent_cache: str = "auto"
    log: Callable[[str], None] = print


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # logged losses of this invocation
    best: dict | None = None
    reports: dict = field(default_factory=dict)
    is_main: bool = True


class _LossModule(nn.Module):
    """Routes ``compute_loss`` through ``forward`` so DDP/FSDP hooks and accelerate's autocast apply."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict, generator: torch.Generator | None = None, mode: str | None = None):
        out = self.policy.compute_loss(batch, generator=generator, mode=mode)
        return out.loss, out.terms


def _make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from accelerate.state import AcceleratorState, PartialState

    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state()  # a second run in this process may use another precision / device
    return Accelerator(mixed_precision=cfg.optim.mixed_precision, gradient_accumulation_steps=cfg.optim.grad_accum,
                       cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def train(cfg: RunConfig, opts: TrainOptions | None = None) -> TrainResult:
    """Run (or resume, with ``cfg.resume``) the training described by ``cfg``; returns where it ended."""
    opts = opts or TrainOptions()
    return Trainer(cfg, opts).run()


class Trainer:
    def __init__(self, cfg: RunConfig, opts: TrainOptions):
        self.cfg, self.opts = cfg, opts
        if not cfg.data or not cfg.out:
            raise VideoActionError("a run needs --data STORE and --out DIR")
        if cfg.optim.mixed_precision not in ("no", "fp16", "bf16"):
            raise VideoActionError(f"optim.mixed_precision must be no, fp16 or bf16, found "
                                   f"{cfg.optim.mixed_precision!r}")
        self.run_dir = Path(cfg.out)
        self.acc = _make_accelerator(cfg)
        from accelerate.utils import DistributedType

        if self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise TrainError(f"{self.acc.distributed_type.value}: the trainer's EMA and checkpoints handle whole "
                             f"(DDP-replicated) models only; launch with DDP (`accelerate launch --multi_gpu`)")
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.log = opts.log if self.main else (lambda msg: None)
        self.reports: dict[str, Any] = {}
        self._stop = False

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from videoaction.data.dataset import SequenceDataset
        from videoaction.data.store import EpisodeStore
        from videoaction.models.base import family_class

        cfg, opts = self.cfg, self.opts
        latest = ck.read_pointer(self.run_dir / ck.CHECKPOINTS, ck.LATEST)
        if latest is not None and not cfg.resume:
            raise VideoActionError(f"{self.run_dir} already holds a run (checkpoints/latest -> {latest.name}); pass "
                                   f"--resume to continue it, or choose another --out")
        self.resume_from = latest if cfg.resume else None
        if cfg.resume and latest is None:
            self.log(f"--resume: no checkpoint in {self.run_dir} yet; starting from step 0")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        store = EpisodeStore.open(cfg.data)
        tok = prepare_tokenizer(cfg, self.run_dir, store, opts.tokenizer_steps, opts.tokenizer_batch_size,
                                self.log, self.main, self.acc.wait_for_everyone, progress=opts.progress)
        if tok:
            self.reports["tokenizer"] = tok
        if opts.latent_cache == "auto":
            cache = auto_latent_cache(cfg, store, self.run_dir, self.log, self.acc.wait_for_everyone,
                                      str(self.acc.device), progress=opts.progress and self.main)
            if cache is not None:
                store, self.reports["latent_cache"] = cache, str(cache.path)
        elif opts.latent_cache != "off":
            raise VideoActionError(f"TrainOptions.latent_cache must be 'auto' or 'off', found {opts.latent_cache!r}")
        self.dataset = SequenceDataset(store, cfg.dataset, split="train", seed=cfg.seed)
        fill_model_sizes(cfg, self.dataset, self.log)
        normalizer, self.has_action, self.pools = split_action_free(
            self.dataset, store, getattr(cfg.model, "task_modes", ()), opts.action_free_every, self.log)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.policy = family_class(cfg.family)(cfg)
        check_policy_fits(self.policy, self.dataset, self.log)
        check_latent_fit(cfg, self.dataset)
        self.policy.set_normalizer(normalizer)
        if cfg.init and self.resume_from is None:
            self.reports["init"] = load_init(self.policy, cfg.init, opts.init_partial, self.log)
        if opts.init_mar and self.resume_from is None:
            self.reports["init_mar"] = init_from_mar_weights(self.policy, opts.init_mar, opts.allow_pickle, self.log)
        if self.main:
            atomic_write_json(self.run_dir / "config.json", self._config_dict())  # after sizes / tokenizer resolved
            if "init" in self.reports or "init_mar" in self.reports:
                atomic_write_json(self.run_dir / "init_report.json",
                                  {k: v for k, v in self.reports.items() if k.startswith("init")})
        total, trainable = count_params(self.policy)
        self.log(f"{cfg.family} model: {total / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trained); "
                 f"{len(self.dataset)} training windows from {store.n_episodes} episodes"
                 f"{' (latent cache)' if self.dataset.use_latents else ''}; {self.world} process(es) on "
                 f"{self.acc.device}")
        self.policy.to(self.acc.device)
        self.ema = EMA(self.policy, power=cfg.optim.ema_power, max_decay=cfg.optim.ema_max) \
            if cfg.optim.ema and self.main else None
        o = cfg.optim
        if o.compile:  # after the EMA copy, which stays eager
            targets = self.policy.compile_targets()
            if not targets:
                raise VideoActionError(f"optim.compile: the {cfg.family!r} family names no modules to compile "
                                       f"(Policy.compile_targets)")
            for module in targets:
                module.compile(dynamic=False)
            self.log(f"optim.compile: {len(targets)} modules compiled in place (compilation runs on the first steps)")
        self.optimizer = make_adamw(param_groups(self.policy, o.weight_decay), o.lr, tuple(o.betas))
        from diffusers.optimization import get_scheduler

        self.scheduler = get_scheduler(o.scheduler, self.optimizer, num_warmup_steps=o.warmup_steps,
                                       num_training_steps=cfg.steps)
        self.step, self.best = 0, None
        self.order_saved: dict | None = None
        if self.resume_from is not None:
            self._load_weights(self.resume_from)
        self.model, self.optimizer = self.acc.prepare(_LossModule(self.policy), self.optimizer)
        self.generator = torch.Generator(device=self.acc.device)
        self.generator.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        np.random.seed((cfg.seed + self.rank) % (1 << 32))
        torch.manual_seed(cfg.seed + self.rank + 100_003)
        if self.resume_from is not None:
            self._load_train_state(self.resume_from)
        weights = window_weights(self.dataset, store)  # a weighted dataset mixture: draw windows by weight
        if weights is not None:
            self.log("sampling windows by dataset weight (dataset_weight metadata)")
        self.order = make_order(len(self.dataset), o.batch_size, self.world, self.rank, cfg.seed, self.pools,
                                opts.action_free_every, weights=weights)
        if self.order_saved is not None:
            self.order.load_state_dict(self.order_saved)
        self.loader = make_loader(self.dataset, self.order, o.num_workers, pin_memory=self.acc.device.type == "cuda")
        self.val_dataset = None
        if opts.val_batches > 0 and self.main:
            val = SequenceDataset(store, cfg.dataset, split="val", seed=cfg.seed)
            self.val_indices = np.arange(len(val))
            if self.has_action is not None:  # validation loss on action-labelled windows only
                self.val_indices = np.nonzero(self.has_action[val.sampler.indices[:, 4]])[0]
            self.val_dataset = val if len(self.val_indices) > 0 else None
        self.metrics = MetricsLogger(self.run_dir, self.main, opts.report_to, to_dict(cfg),
                                     resume_step=self.step if self.resume_from is not None else None)

    def _load_weights(self, ckpt: Path) -> None:
        from videoaction.utils.io import load_state_dict

        self.policy.load_state_dict(load_state_dict(ckpt / "model.safetensors", self.acc.device))
        state = json.loads((ckpt / ck.TRAIN_STATE_JSON).read_text())
        if self.ema is not None:
            if (ckpt / "ema.safetensors").is_file():
                self.ema.load_state_dict(load_state_dict(ckpt / "ema.safetensors", self.acc.device),
                                         state.get("ema_updates", 0))
            else:
                self.log(f"{ckpt}: no EMA weights; the EMA restarts from the current weights")

    def _load_train_state(self, ckpt: Path) -> None:
        state, optimizer = ck.read_train_state(ckpt)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.order_saved = state["order"]
        self.best = state.get("best")
        if state.get("world_size") != self.world:
            self.log(f"resuming a {state.get('world_size')}-process run on {self.world} processes: the data order "
                     f"continues, per-rank random streams restart (not bit-exact)")
            self.generator.manual_seed(self.cfg.seed + self.rank + 7919 * self.step)
        elif not ck.load_rank_rng(ckpt, self.rank, self.generator):
            self.log(f"{ckpt}: no RNG state for rank {self.rank}; reseeding")
        self.log(f"resumed from {ckpt} at step {self.step} (epoch {self.order_saved['epoch']}, "
                 f"position {self.order_saved['position']})")

    # ------------------------------------------------------------------------------------------ checkpoints
    def _config_dict(self) -> dict:
        """The resolved run config as saved (``resume`` off: the file re-creates the run from scratch)."""
        return {**to_dict(self.cfg), "resume": False}

    def _train_state(self) -> dict:
        return {"step": self.step, "order": self.order.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema_updates": self.ema.n_updates if self.ema is not None else 0, "best": self.best,
                "world_size": self.world, "seed": self.cfg.seed, "time": time.time()}

    def save(self, debug: bool = False, batch: dict | None = None) -> Path | None:
        """Checkpoint the current step on every rank (collective); returns its directory on the main process."""
        acc = self.acc
        if not debug:
            self._update_best()
        name = ("debug_" if debug else "") + ck.step_name(self.step)
        if self.main:
            ck.begin_checkpoint(self.run_dir, self.step, "debug_" if debug else "")
        acc.wait_for_everyone()
        tmp = self.run_dir / ck.CHECKPOINTS / f".tmp_{name}"
        tmp.mkdir(parents=True, exist_ok=True)  # other nodes without a shared filesystem: kept locally
        ck.save_rank_rng(tmp, self.rank, self.generator)
        acc.wait_for_everyone()
        final = None
        if self.main:
            optim_state = self.optimizer.state_dict()
            self.policy.save_pretrained(tmp, self._config_dict(), ema=self.ema.module if self.ema is not None else None)
            ck.write_train_state(tmp, optim_state, self._train_state())
            if batch is not None:
                from videoaction.utils.io import save_state_dict

                save_state_dict({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)},
                                tmp / "batch.safetensors")
            final = ck.commit_checkpoint(tmp, name, update_latest=not debug)
            if not debug:
                if self.best is not None and self.best.get("step") == self.step:
                    ck.write_pointer(final.parent, ck.BEST, final.name)
                ck.prune_checkpoints(self.run_dir, self.cfg.keep_last)
        acc.wait_for_everyone()
        return final

    @torch.no_grad()
    def _val_loss(self) -> float | None:
        if self.val_dataset is None:
            return None
        model = self.ema.module if self.ema is not None else self.policy
        was_training = model.training
        model.eval()
        gen = torch.Generator(device=self.acc.device).manual_seed(12345)
        b = self.cfg.optim.batch_size
        idx = np.random.default_rng(0).permutation(self.val_indices)[: b * self.opts.val_batches]
        losses = []
        for a in range(0, len(idx), b):
            items = [self.val_dataset[int(i)] for i in idx[a: a + b]]
            batch = move_batch(torch.utils.data.default_collate(items), self.acc.device)
            with self.acc.autocast():
                losses.append(float(model.compute_loss(batch, generator=gen).loss))
        model.train(was_training)
        return float(np.mean(losses))

    def _update_best(self) -> None:
        if not self.main:
            return
        metric = self.opts.best_metric
        value = self._val_loss() if metric == "val_loss" else self._last_eval.get(metric)
        if metric == "val_loss" and value is not None:
            self.metrics.log({"kind": "eval", "step": self.step, "val_loss": value})
        if value is None or not math.isfinite(value):
            return
        better = self.best is None or (value < self.best["value"] if self.opts.best_mode == "min"
                                       else value > self.best["value"])
        if better:
            self.best = {"metric": metric, "value": value, "step": self.step}

    # ------------------------------------------------------------------------------------------ loop
    def _reduce_flags(self, *flags: bool) -> list[bool]:
        if self.world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.acc.device)
        return [bool(v > 0) for v in self.acc.reduce(t, "sum").tolist()]

    def _gather_terms(self, terms: dict[str, list[float]]) -> tuple[dict[str, float], list[dict] | None]:
        local = {k: float(np.mean(v)) for k, v in terms.items()}
        local["gen_seed"] = float(self.generator.initial_seed())
        if self.world == 1:
            local.pop("gen_seed")
            return local, None
        from accelerate.utils import gather_object

        ranks = gather_object([local])
        merged: dict[str, list[float]] = {}
        for r in ranks:
            for k, v in r.items():
                if k != "gen_seed":
                    merged.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in merged.items()}, [dict(r, rank=i) for i, r in enumerate(ranks)]

    def _nonfinite(self, terms: dict, batch: dict) -> None:
        terms_txt = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        path = None
        try:
            path = self.save(debug=True, batch=batch)
        except Exception as exc:  # never hide the original problem behind a failed debug save
            self.log(f"could not save the debug checkpoint: {exc}")
        raise TrainError(f"non-finite loss at step {self.step + 1} (rank {self.rank}: {terms_txt}); training stopped."
                         f" Weights before this step{f' and the batch are in {path}' if path else ''}. Check the data "
                         f"for NaN/Inf, lower --optim.lr, or use bf16 instead of fp16.")

    def _oom(self, exc: BaseException) -> TrainError:
        o = self.cfg.optim
        half = max(1, o.batch_size // 2)
        return TrainError(f"out of GPU memory at step {self.step + 1} with batch size {o.batch_size} per process "
                          f"(grad_accum {o.grad_accum}): try --optim.batch_size {half} --optim.grad_accum "
                          f"{o.grad_accum * max(1, o.batch_size // half)} (same effective batch), "
                          f"--optim.mixed_precision bf16, or a smaller --preset ({exc.__class__.__name__})")

    def _on_signal(self, signum, frame) -> None:
        self._stop = True
        self.log(f"signal {signum}: saving a checkpoint after this step, then stopping")

    def run(self) -> TrainResult:
        self._setup()
        cfg, acc, o = self.cfg, self.acc, self.cfg.optim
        self._last_eval: dict[str, float] = {}
        losses: list[float] = []
        ckpt = None
        if self.step >= cfg.steps:
            self.log(f"already at step {self.step} >= steps {cfg.steps}; nothing to do")
            ckpt = ck.read_pointer(self.run_dir / ck.CHECKPOINTS, ck.LATEST)
            return TrainResult(self.run_dir, self.step, ckpt, losses, self.best, self.reports, self.main)
        old_handler = signal.signal(signal.SIGTERM, self._on_signal) if self._in_main_thread() else None
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.main and self.opts.progress),
                   desc=f"train {cfg.preset or cfg.family}", dynamic_ncols=True, unit="step")
        batches = iter(self.loader)
        window: dict[str, list[float]] = {}
        t_log, steps_since = time.perf_counter(), 0
        global_batch = o.batch_size * self.world * o.grad_accum
        self.model.train()
        t_start = time.perf_counter()
        try:
            while self.step < cfg.steps:
                grad_norm = self._train_step(batches, window)
                self.step += 1
                steps_since += 1
                if self.ema is not None:
                    self.ema.update(self.policy)
                bar.update(1)
                if self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - t_log
                    mean, ranks = self._gather_terms(window)
                    rec = {"step": self.step, **mean, "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": grad_norm, "samples_per_s": global_batch * steps_since / max(dt, 1e-9),
                           "epoch": self.order.state.epoch}
                    if self.ema is not None:
                        rec["ema_decay"] = self.ema.last_decay
                    if ranks is not None:
                        rec["ranks"] = ranks
                    self.metrics.log(rec)
                    losses.append(rec["loss"])
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                    window, t_log, steps_since = {}, time.perf_counter(), 0
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.opts.eval_fn is not None:
                    self._evaluate()
                if cfg.time_limit_min and time.perf_counter() - t_start > 60.0 * cfg.time_limit_min and not self._stop:
                    self.log(f"time limit of {cfg.time_limit_min:g} min reached at step {self.step}")
                    self._stop = True
                stop = self._reduce_flags(self._stop)[0]
                if self.step % max(cfg.save_every, 1) == 0 or self.step == cfg.steps or stop:
                    ckpt = self.save()
                if stop:
                    self.log(f"stopped at step {self.step}; resume with --resume")
                    break
        except torch.OutOfMemoryError as exc:
            raise self._oom(exc) from None
        finally:
            bar.close()
            self.metrics.close()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
        if self.main and self.best:
            self.log(f"best {self.best['metric']} {self.best['value']:.4g} at step {self.best['step']}")
        acc.wait_for_everyone()
        return TrainResult(self.run_dir, self.step, ckpt, losses, self.best, self.reports, self.main)

    @staticmethod
    def _in_main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()

    def _train_step(self, batches, window: dict[str, list[float]]) -> float:
        """``grad_accum`` micro-batches and one optimizer step; returns the gradient norm (before clipping)."""
        acc, o = self.acc, self.cfg.optim
        grad_norm = float("nan")
        for micro in range(o.grad_accum):
            batch = move_batch(next(batches), acc.device)
            video_only = self.order.next_is_video()
            self.order.next_batch()  # keep the resumable state in step with the loader
            with acc.accumulate(self.model):
                try:
                    loss, terms = self.model(batch, self.generator, batch_mode(video_only))
                except VideoActionError:
                    raise
                except (RuntimeError, ValueError, KeyError, IndexError) as exc:
                    if isinstance(exc, torch.OutOfMemoryError):
                        raise
                    if self.step == 0 and micro == 0:
                        raise TrainError(f"the {self.cfg.family} model rejected the first batch ({exc}); batch: "
                                         f"{batch_shapes(batch)}. Check the dataset keys/sizes against the model "
                                         f"config (`videoaction data info {self.cfg.data}`)") from exc
                    raise
                terms = dict(terms)
                terms.setdefault("loss", float(loss.detach()))
                if self.has_action is not None:
                    terms["action_free"] = float(video_only)
                if self._reduce_flags(not bool(torch.isfinite(loss.detach())))[0]:
                    self._nonfinite(terms, batch)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.unscale_gradients()  # fp16: true gradient scale before measuring / clipping
                    grad_norm = clip_gradients(self.model.parameters(), o.grad_clip)
                    if not math.isfinite(grad_norm) and o.mixed_precision != "fp16":
                        self._nonfinite({**terms, "grad_norm": grad_norm}, batch)
                    self.optimizer.step()
                    if not acc.optimizer_step_was_skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            for k, v in terms.items():
                if isinstance(v, (int, float)):
                    window.setdefault(k, []).append(float(v))
        return grad_norm

    def _evaluate(self) -> None:
        """``opts.eval_fn(policy, step)`` on the main process (EMA weights when present); logged, used for best."""
        if self.main:
            policy = self.ema.module if self.ema is not None else self.policy
            was = policy.training
            policy.eval()
            results = self.opts.eval_fn(policy, self.step) or {}
            policy.train(was)
            self._last_eval = {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
            self.metrics.log({"kind": "eval", "step": self.step, **self._last_eval})
        self.acc.wait_for_everyone()
