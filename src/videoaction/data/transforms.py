"""Image transforms applied identically to every frame of a sample.

uint8 HWC frames -> float CHW in [-1, 1] at ``image_size``: crop (random in training, centred at evaluation)
-> bilinear resize (``align_corners=False``, antialiased) -> optional random shift (replicate pad + crop) and
colour jitter. Training and inference share :func:`crop_resize`, so a policy sees the same pixels it trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from videoaction.config import DatasetConfig


def to_unit_float(frames) -> torch.Tensor:
    """(..., H, W, 3) uint8 (or float 0-255 / 0-1) -> (..., 3, H, W) float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected channels-last frames (..., H, W, 3), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
        if x.numel() and x.max() > 1.5:  # Diffusion Policy's PushT stores float32 0-255
            x = x / 255.0
    return x[..., :3].movedim(-1, -3).contiguous()


def crop_resize(x: torch.Tensor, top: int, left: int, height: int, width: int, size: int) -> torch.Tensor:
    """Crop (N, 3, H, W) at (top, left, height, width) and resize to (size, size)."""
    x = x[..., top: top + height, left: left + width]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    return x


def _crop_box(h: int, w: int, ratio: float, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    ch, cw = max(1, round(h * ratio)), max(1, round(w * ratio))
    if rng is None:
        return (h - ch) // 2, (w - cw) // 2, ch, cw
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def _color_jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors in [1 - s, 1 + s], one draw for all frames. x in [0, 1]."""
    b, c, s = (float(rng.uniform(1 - strength, 1 + strength)) for _ in range(3))
    x = x * b
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    x = (x - mean) * c + mean
    gray = (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])
    x = (x - gray) * s + gray
    return x.clamp(0, 1)


def transform_frames(frames, cfg: DatasetConfig, rng: np.random.Generator | None = None) -> torch.Tensor:
    """One sample's frames (F, H, W, 3) -> (F, 3, S, S) in [-1, 1]; ``rng=None`` = deterministic eval transform."""
    x = to_unit_float(frames)
    h, w = x.shape[-2:]
    top, left, ch, cw = _crop_box(h, w, cfg.crop_ratio, rng)
    x = crop_resize(x, top, left, ch, cw, cfg.image_size)
    if rng is not None and cfg.random_shift > 0:
        s = cfg.random_shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dy, dx = (int(v) for v in rng.integers(0, 2 * s + 1, size=2))
        x = padded[..., dy: dy + cfg.image_size, dx: dx + cfg.image_size]
    if rng is not None and cfg.color_jitter > 0:
        x = _color_jitter(x, cfg.color_jitter, rng)
    return x * 2.0 - 1.0


def preprocess_frames(frames, cfg: DatasetConfig) -> torch.Tensor:
    """Inference transform for a batch: (B, F, H, W, 3) uint8 -> (B, F, 3, S, S) in [-1, 1] (centre crop)."""
    x = to_unit_float(frames)  # (B, F, 3, H, W)
    b, f = x.shape[:2]
    h, w = x.shape[-2:]
    top, left, ch, cw = _crop_box(h, w, cfg.crop_ratio, None)
    x = crop_resize(x.reshape(b * f, *x.shape[2:]), top, left, ch, cw, cfg.image_size)
    return (x * 2.0 - 1.0).reshape(b, f, *x.shape[1:])


def to_uint8_frames(x: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8 (for videos and reports)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def resize_uint8_frames(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., S, S, 3) uint8 with the training resize (:func:`crop_resize` of the full frame:
    bilinear, antialiased when shrinking), rounded back to uint8. Used where raw frames must match a model's size
    before the model's own transform (e.g. evaluation rollouts rendered at another resolution)."""
    s = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if s[0] != s[1]:
        raise ValueError(f"resize_uint8_frames: square sizes only, got {s}")
    x = np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"resize_uint8_frames: expected uint8 frames (..., H, W, 3), got {x.dtype} {x.shape}")
    lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
    if (h, w) == s:
        return x.copy()
    t = to_unit_float(x.reshape(-1, h, w, 3))  # (N, 3, H, W) in [0, 1]
    t = crop_resize(t, 0, 0, h, w, s[0])
    out = (t * 255.0).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)
    return out.reshape(*lead, *s, 3).numpy()
