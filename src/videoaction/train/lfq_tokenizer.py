"""Train the LFQ tokenizer (HMA's discrete tokens) on the frames of one or several stores; report code use.

One tokenizer for several embodiments is what a multi-embodiment world model needs: ``videoaction tokenizer --kind
lfq --data pusht.zarr,metaworld.zarr``. Held-out frames (whole episodes, as :func:`load_frames` splits them) give
the reconstruction PSNR of every store, and the ids of those frames show whether the codebook collapsed:
``distinct_ids`` (ids used at all) and ``varying_positions`` (share of grid positions whose id changes between
frames; 0 means every frame gets the same tokens, so a world model trained on them learns nothing).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from videoaction.nn.tokenizer.lfq import LFQConfig, LFQTokenizer, fit_lfq, save_lfq, tiny_lfq_config
from videoaction.train.tokenizer import load_frames_many, store_paths


@torch.no_grad()
def reconstruct(model: LFQTokenizer, frames: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (N, 3, S, S) -> (ids (N, h, w), reconstructions uint8 (N, 3, S, S))."""
    ids, rec = [], []
    for i in range(0, len(frames), batch_size):
        x = frames[i:i + batch_size].float() / 127.5 - 1.0
        k = model.encode_ids(x)
        ids.append(k)
        rec.append(((model.decode_ids(k) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(ids), torch.cat(rec)


def code_usage(ids: torch.Tensor) -> dict[str, float]:
    """ids (N, h, w) -> distinct ids, share of positions whose id varies over the N frames, perplexity of the ids."""
    flat = ids.flatten()
    counts = torch.bincount(flat - flat.min()).float()
    p = counts[counts > 0] / counts.sum()
    varying = (ids != ids[:1]).any(dim=0).float().mean() if len(ids) > 1 else torch.tensor(0.0)
    return {"distinct_ids": int((counts > 0).sum()), "varying_positions": float(varying),
            "perplexity": float(torch.exp(-(p * p.log()).sum()))}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def train_lfq(store_path, out_dir, cfg: LFQConfig | None = None, steps: int = 1500, batch_size: int = 16,
              image_key: str = "img", image_size: int = 64, lr: float = 2e-3, entropy_weight: float = 0.5,
              max_frames: int = 20000, val_fraction: float = 0.05, seed: int = 0, progress: bool = True,
              log: Callable[[str], None] | None = print) -> dict:
    """Fit an LFQ tokenizer (default :func:`tiny_lfq_config`) on ``store_path`` (one store, a list or comma-separated
    paths); save it with :func:`save_lfq` into ``out_dir`` and return the held-out report (per store and pooled)."""
    cfg = cfg or tiny_lfq_config()
    paths = store_paths(store_path)
    t0 = time.time()
    torch.manual_seed(seed)
    train, val, n_val = load_frames_many(paths, image_key, image_size, max_frames, val_fraction, seed)
    if len(val) == 0:
        val = train[-max(1, len(train) // 20):]
        n_val = [len(val)]
    model = LFQTokenizer(cfg)
    curve = fit_lfq(model, train, steps=steps, batch_size=batch_size, lr=lr, entropy_weight=entropy_weight,
                    seed=seed, progress=progress)
    ids, rec = reconstruct(model, val)
    per_store, at = {}, 0
    for path, n in zip(paths if len(n_val) == len(paths) else ["all"], n_val):
        sl = slice(at, at + n)
        per_store[path] = {"psnr_val": _psnr(rec[sl], val[sl]), "n_val_frames": n, **code_usage(ids[sl])}
        at += n
    report = {"psnr_val": _psnr(rec, val), **code_usage(ids), "stores": per_store, "train_steps": steps,
              "batch_size": batch_size, "image_size": image_size, "image_key": image_key, "seed": seed,
              "entropy_weight": entropy_weight, "n_train_frames": len(train), "n_val_frames": len(val),
              "train_mse_last": float(sum(curve[-20:]) / max(1, len(curve[-20:]))), "train_time_s": time.time() - t0}
    save_lfq(model, out_dir, extra={"store": ",".join(paths), "report": report})
    if log:
        lines = [f"lfq tokenizer: {len(train)} train / {len(val)} held-out frames at {image_size}px, {steps} steps in "
                 f"{report['train_time_s']:.0f} s; vocabulary {cfg.vocab_size}, grid {image_size // cfg.stride}; "
                 f"saved to {Path(out_dir)}"]
        for path, r in per_store.items():
            lines.append(f"  {path}: held-out PSNR {r['psnr_val']:.2f} dB, {r['distinct_ids']} ids, "
                         f"{r['varying_positions']:.0%} of positions vary")
        log("\n".join(lines))
    return report
