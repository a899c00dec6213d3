"""Stage 0: train the small image autoencoder on a store's own frames (minutes on a CPU).

Loss: MSE + ``kl_weight`` * KL (KL summed over the latent, divided by the number of pixel values, so the weight is
per pixel like LDM's 1e-6) + optional ``l1_weight`` * L1. Adam with warm-up and cosine decay. Held-out frames
(whole episodes, ~5 %) give the reported reconstruction PSNR. After training ``scale`` = 1 / std of the posterior
means on training frames (unit-std latents, the role 0.2325 plays for kl16). Writes ``tokenizer.safetensors`` +
``tokenizer.json`` atomically (the JSON last; it marks a complete save).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from videoaction.errors import VideoActionError
from videoaction.data.store import EpisodeStore
from videoaction.data.transforms import crop_resize, to_unit_float
from videoaction.nn.tokenizer import SmallAutoencoder, TokenizerConfig, save_tokenizer


@dataclass
class TokenizerTrainResult:
    path: Path
    psnr_val: float  # dB on held-out frames, posterior mean, pixels in [0, 1]
    psnr_init: float  # same before training
    mse_val: float
    scale: float
    train_time_s: float
    n_train: int
    n_val: int


def store_paths(store_path) -> list[str]:
    """One store, several (a list), or a comma-separated string of them -> a list of paths."""
    if isinstance(store_path, (list, tuple)):
        return [str(p) for p in store_path]
    return [p.strip() for p in str(store_path).split(",") if p.strip()]


def load_frames_many(store_path, image_key: str = "img", image_size: int = 64, max_frames: int = 20000,
                     val_fraction: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """:func:`load_frames` of every store in ``store_path`` (``max_frames`` shared equally), concatenated; also the
    number of held-out frames of each store (in order), so metrics can be reported per store."""
    paths = store_paths(store_path)
    if not paths:
        raise VideoActionError("no episode store given")
    train, val, n_val = [], [], []
    for p in paths:
        t, v = load_frames(p, image_key, image_size, max(1, max_frames // len(paths)), val_fraction, seed)
        train.append(t)
        val.append(v)
        n_val.append(len(v))
    return torch.cat(train), torch.cat(val), n_val


def load_frames(store_path, image_key: str = "img", image_size: int = 64, max_frames: int = 20000,
                val_fraction: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of a store as uint8 (N, 3, S, S) tensors (centre square crop + antialiased bilinear resize, the
    evaluation transform of ``videoaction.data.transforms``), split into train / held-out by whole episodes."""
    store = EpisodeStore.open(store_path)
    if image_key not in store.keys:
        raise VideoActionError(f"{store_path}: no image key '{image_key}' (store keys: {store.keys}); "
                               f"pass --image-key")
    shape, dtype = store.spec(image_key)
    if len(shape) != 3 or shape[-1] not in (1, 3, 4):
        raise VideoActionError(f"{store_path}: key '{image_key}' has per-step shape {shape}, expected (H, W, 3) "
                               f"images")
    ends = store.episode_ends.astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    n_ep, n = len(ends), int(store.n_steps)
    if n < 2:
        raise VideoActionError(f"{store_path}: only {n} frames; need at least 2 to train a tokenizer")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(n, dtype=bool)
    if n_ep >= 2:
        n_val_ep = max(1, int(round(val_fraction * n_ep)))
        for e in rng.permutation(n_ep)[:n_val_ep]:
            is_val[starts[e]: ends[e]] = True
    else:  # one episode: hold out its tail
        is_val[n - max(1, int(round(val_fraction * n))):] = True
    keep = np.arange(n)
    if n > max_frames:  # evenly spaced subset (consecutive frames are near-duplicates anyway)
        keep = np.unique(np.linspace(0, n - 1, max_frames).round().astype(np.int64))
    out = []
    h, w = shape[:2]
    side = min(h, w)
    for a in range(0, len(keep), 1024):
        idx = keep[a: a + 1024]
        raw = store.get_slice(image_key, int(idx[0]), int(idx[-1]) + 1)[idx - idx[0]]
        x = crop_resize(to_unit_float(raw), (h - side) // 2, (w - side) // 2, side, side, image_size)
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    frames = torch.cat(out)
    val = torch.from_numpy(is_val[keep])
    return frames[~val], frames[val]


def _to_model(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate_psnr(model: SmallAutoencoder, frames: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Mean per-frame PSNR (dB, pixels in [0, 1]) and MSE of the posterior-mean reconstruction."""
    model.eval()
    psnr, mse = [], []
    for a in range(0, len(frames), batch_size):
        x = _to_model(frames[a: a + batch_size])
        y = model.decode_raw(model.posterior(x).mode()).clamp(-1, 1)
        m = ((y - x) / 2).pow(2).flatten(1).mean(1)  # [0, 1] pixel scale
        mse.append(m)
        psnr.append(-10 * torch.log10(m.clamp_min(1e-10)))
    model.train()
    return float(torch.cat(psnr).mean()), float(torch.cat(mse).mean())


@torch.no_grad()
def measure_scale(model: SmallAutoencoder, frames: torch.Tensor, n: int = 2048, batch_size: int = 256) -> float:
    """1 / std of the posterior means over (up to ``n``) frames."""
    model.eval()
    idx = torch.linspace(0, len(frames) - 1, min(n, len(frames))).round().long()
    zs = [model.posterior(_to_model(frames[idx[a: a + batch_size]])).mode() for a in range(0, len(idx), batch_size)]
    std = float(torch.cat(zs).float().std())
    model.train()
    return 1.0 / max(std, 1e-8)


def train_tokenizer(store_path, out_dir, cfg: TokenizerConfig | None = None, steps: int = 600, batch_size: int = 32,
                    image_key: str = "img", image_size: int = 64, seed: int = 0, lr: float = 2e-3,
                    kl_weight: float = 1e-5, l1_weight: float = 0.0, max_frames: int = 20000,
                    val_fraction: float = 0.05, progress: bool = True,
                    log: Callable[[str], None] | None = print, result: list | None = None) -> Path:
    """Train the small autoencoder on the ``image_key`` frames of ``store_path`` (one store, or several: a list or
    comma-separated paths, one tokenizer for all their frames); save into ``out_dir``; return it.

    ``cfg`` gives latent_channels / stride / channels / kl (kind must be "small"). ``result``, if a list, receives
    a ``TokenizerTrainResult`` (PSNR, scale, timing).
    """
    cfg = cfg or TokenizerConfig(kind="small")
    if cfg.kind != "small":
        raise VideoActionError(f"train_tokenizer trains the 'small' tokenizer, not '{cfg.kind}'")
    if image_size % cfg.stride:
        raise VideoActionError(f"image size {image_size} is not a multiple of the tokenizer stride {cfg.stride}")
    t0 = time.time()
    torch.manual_seed(seed)
    train, val, _ = load_frames_many(store_path, image_key, image_size, max_frames, val_fraction, seed)
    if len(val) == 0:
        val = train[-max(1, len(train) // 20):]
    model = SmallAutoencoder.from_config(replace(cfg, scale=1.0)).to(memory_format=torch.channels_last)
    psnr0, _ = evaluate_psnr(model, val[:512])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = min(100, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    gen = torch.Generator().manual_seed(seed)
    n_pix = 3 * image_size * image_size
    bar = tqdm(range(steps), desc="tokenizer", disable=not progress, dynamic_ncols=True)
    ema_loss = None
    for step in bar:
        x = _to_model(train[torch.randint(0, len(train), (batch_size,), generator=gen)])
        post = model.posterior(x)
        z = post.sample(gen) if cfg.kl else post.mode()
        y = model.decode_raw(z)
        loss = F.mse_loss(y, x)
        if l1_weight:
            loss = loss + l1_weight * (y - x).abs().mean()
        if cfg.kl:
            loss = loss + kl_weight * post.kl().mean() / n_pix
        if not torch.isfinite(loss):
            raise VideoActionError(f"tokenizer training: loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{ema_loss:.4f}", psnr_train=f"{-10 * math.log10(max(ema_loss / 4, 1e-10)):.1f}")
    psnr, mse = evaluate_psnr(model, val)
    model.scale = measure_scale(model, train)
    elapsed = time.time() - t0
    out = save_tokenizer(model.to(memory_format=torch.contiguous_format), out_dir, extra={
        "psnr_val": psnr, "psnr_init": psnr0, "mse_val": mse, "train_steps": steps, "batch_size": batch_size,
        "image_size": image_size, "image_key": image_key, "store": ",".join(store_paths(store_path)), "seed": seed,
        "kl_weight": kl_weight if cfg.kl else 0.0, "l1_weight": l1_weight, "n_train_frames": len(train),
        "n_val_frames": len(val), "train_time_s": round(elapsed, 1)})
    if log:
        log(f"tokenizer: {len(train)} train / {len(val)} held-out frames at {image_size}px, {steps} steps in "
            f"{elapsed:.0f} s; held-out PSNR {psnr:.2f} dB (untrained {psnr0:.2f} dB); latent "
            f"{model.latent_channels}x{image_size // model.stride}x{image_size // model.stride}, scale "
            f"{model.scale:.4f}; saved to {out}")
    if result is not None:
        result.append(TokenizerTrainResult(out, psnr, psnr0, mse, model.scale, elapsed, len(train), len(val)))
    return out
