"""Multi-embodiment training of HMA on token datasets: one batch per embodiment, temperature mixing.

Each step draws an embodiment with p_i ~ (n_i / N) ** (1 / T) (n_i = its number of windows, T = ``mix_temperature``),
then a batch of windows of ``window`` frames at the embodiment's frame stride from its token dataset; action
statistics (per raw dimension) come from the datasets' manifests and are stored in the model.

    python -m videoaction.models.hma.training --preset hma-tiny-disc --out runs/hma \\
        --domain pusht=tokens/pusht --domain pusht-m=tokens/pushtm --domain metaworld=tokens/mw --steps 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videoaction.data.hma_tokens import TokenDataset
from videoaction.data.sampler import split_episodes
from videoaction.errors import VideoActionError

from .config import HMARunConfig
from .policy import HMAPolicy


class MultiEmbodimentSampler:
    """Windows of every embodiment's dataset and the temperature-mixed choice between them."""

    def __init__(self, datasets: dict[str, TokenDataset], cfg: HMARunConfig, seed: int = 0, overlap: bool = True,
                 split: str = "all", val_ratio: float = 0.0, split_seed: int | None = None):
        """``split``: "all" windows, or "train" / "val": the windows of the episodes the project's
        :func:`~videoaction.data.sampler.split_episodes` holds out (``val_ratio``, ``split_seed``, default
        ``cfg.dataset.split_seed``), so HMA and the episode-store families hold out the same episodes of a store."""
        if split not in ("all", "train", "val"):
            raise VideoActionError(f"split must be all, train or val, found {split!r}")
        m = cfg.model
        self.datasets, self.window, self.scale = datasets, m.window, m.latent_scale
        self.strides = {name: m.domain(name).stride for name in datasets}
        self.starts = {}
        for name, ds in datasets.items():
            dom = m.domain(name)
            if ds.action_dim != dom.action_dim:
                raise VideoActionError(f"{ds.root}: actions have {ds.action_dim} dims, embodiment {name!r} expects "
                                       f"{dom.action_dim}")
            starts = ds.window_starts(m.window, dom.stride, overlap=overlap)
            if split != "all":
                seg = np.asarray(ds.segment_ids)
                seed = cfg.dataset.split_seed if split_seed is None else split_seed
                _, val = split_episodes(int(seg.max()) + 1, val_ratio, seed)
                is_val = val[seg[starts]]
                starts = starts[is_val] if split == "val" else starts[~is_val]
            self.starts[name] = starts
            if len(self.starts[name]) == 0:
                where = "one episode" if split == "all" else f"one of the {split} episodes (val_ratio {val_ratio})"
                raise VideoActionError(f"{ds.root}: no window of {m.window} frames at stride {dom.stride} fits in "
                                       f"{where}")
        n = np.array([len(self.starts[k]) for k in datasets], np.float64)
        p = (n / n.sum()) ** (1.0 / cfg.mix_temperature)
        self.names, self.probs = list(datasets), p / p.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int, name: str | None = None, starts=None) -> dict:
        name = name or self.names[int(self.rng.choice(len(self.names), p=self.probs))]
        ds, stride = self.datasets[name], self.strides[name]
        if starts is None:
            starts = self.rng.choice(self.starts[name], size=batch_size)
        toks, acts = zip(*(ds.window(int(s), self.window, stride) for s in starts))
        tokens = torch.from_numpy(np.stack(toks).astype(np.int64 if ds.layout.quantized else np.float32))
        if not ds.layout.quantized:
            tokens = tokens * self.scale
        return {"tokens": tokens, "action": torch.from_numpy(np.stack(acts).astype(np.float32)), "domain": name}


def fit_statistics(policy: HMAPolicy, datasets: dict[str, TokenDataset]) -> None:
    for name, ds in datasets.items():
        mean, std = ds.action_statistics()
        policy.set_action_stats(name, mean, std)


def make_optimizer(policy: HMAPolicy, cfg: HMARunConfig):
    """AdamW (no decay on 1-D parameters and embeddings) and a linear warm-up to ``optim.lr``."""
    o = cfg.optim
    decay = [p for n, p in policy.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in policy.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=o.lr, betas=tuple(o.betas))
    warm = max(1, o.warmup_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))


def check_precision(precision: str) -> None:
    if precision not in ("no", "bf16"):
        raise VideoActionError(f"optim.mixed_precision {precision!r}: HMA's training loop supports 'no' and 'bf16' "
                               f"(fp16 would need loss scaling)")


def train_step(policy: HMAPolicy, batch: dict, opt, sched, generator: torch.Generator, grad_clip: float,
               precision: str = "no") -> dict:
    """One optimizer step on one embodiment's batch; returns the loss terms. ``precision`` "bf16": the forward pass
    under bf16 autocast on the parameters' device (weights, gradients and optimizer state stay float32)."""
    check_precision(precision)
    device = next(policy.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = policy.compute_loss(batch, generator=generator)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    opt.step()
    sched.step()
    return dict(out.terms)


def train(cfg: HMARunConfig, datasets: dict[str, TokenDataset], out=None, log=print, time_limit_s: float = 0.0,
          policy: HMAPolicy | None = None, val_ratio: float = 0.0) -> tuple[HMAPolicy, list[dict]]:
    """Train for ``cfg.steps`` (or until ``time_limit_s``); returns the model and the logged curve.

    With ``out`` the model is saved there (``save_pretrained``) with ``metrics.jsonl`` (every ``log_every``).
    ``val_ratio`` > 0 keeps the windows of the held-out episodes of every dataset (the project's split) out of
    training."""
    torch.manual_seed(cfg.seed)
    policy = policy or HMAPolicy(cfg)
    fit_statistics(policy, datasets)
    sampler = MultiEmbodimentSampler(datasets, cfg, seed=cfg.seed, split="train" if val_ratio > 0 else "all",
                                     val_ratio=val_ratio)
    o = cfg.optim
    opt, sched = make_optimizer(policy, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    policy.train()
    curve, t0, window = [], time.perf_counter(), []
    for step in range(cfg.steps):
        batch = sampler.batch(o.batch_size)
        window.append({"domain": batch["domain"], **train_step(policy, batch, opt, sched, g, o.grad_clip)})
        last = step == cfg.steps - 1 or (time_limit_s and time.perf_counter() - t0 > time_limit_s)
        if (step + 1) % max(cfg.log_every, 1) == 0 or last:
            row = {"step": step + 1, "time_s": round(time.perf_counter() - t0, 2),
                   "loss": float(np.mean([w["loss"] for w in window]))}
            for name in sampler.names:
                vals = [w["loss"] for w in window if w["domain"] == name]
                if vals:
                    row[f"loss/{name}"] = float(np.mean(vals))
            curve.append(row)
            window = []
            log(json.dumps(row))
        if last:
            break
    policy.eval()
    if out is not None:
        out = Path(out)
        policy.save_pretrained(out)
        with open(out / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in curve)
    return policy, curve


def main(argv: list[str] | None = None) -> int:
    from videoaction.config import get_preset, parse_overrides

    p = argparse.ArgumentParser(prog="python -m videoaction.models.hma.training", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="hma-tiny-disc")
    p.add_argument("--domain", action="append", required=True, metavar="NAME=DIR",
                   help="an embodiment of the preset and its token dataset (repeat)")
    p.add_argument("--time-limit-min", type=float, default=0.0)
    p.add_argument("--val-ratio", type=float, default=0.0, help="hold out the first episodes of every dataset")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = parse_overrides(get_preset(args.preset), rest, prog="hma training")
    datasets = {}
    for spec in args.domain:
        name, _, path = spec.partition("=")
        cfg.model.domain(name)
        datasets[name] = TokenDataset(path, name=name)
    if not cfg.out:
        raise VideoActionError("--out DIR is required")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train(cfg, datasets, out=cfg.out, time_limit_s=args.time_limit_min * 60, val_ratio=args.val_ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
