"""Per-field linear normalisation (min-max to [-1, 1], mean-std, or identity), held inside the policy.

Like Diffusion Policy's ``LinearNormalizer``: y = x * scale + offset per dimension, so the inverse is exact.
Dimensions whose range is below ``range_eps`` (constant in the data) map to 0 instead of dividing by ~0.
Buffers live in the policy's state dict (``normalizer.<field>.scale`` ...), and :meth:`save` / :meth:`load`
also write them standalone as safetensors + JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from videoaction.errors import VideoActionError

MODES = ("minmax", "meanstd", "identity")


class FieldNormalizer(nn.Module):
    """Affine normaliser of one field with its fitted statistics."""

    def __init__(self, dim: int, mode: str = "identity"):
        super().__init__()
        if mode not in MODES:
            raise VideoActionError(f"unknown normalisation mode {mode!r}; expected one of {MODES}")
        self.mode = mode
        for name, value in (("scale", 1.0), ("offset", 0.0), ("min", -1.0), ("max", 1.0), ("mean", 0.0), ("std", 1.0)):
            self.register_buffer(name, torch.full((dim,), value, dtype=torch.float32))

    @property
    def dim(self) -> int:
        return self.scale.shape[0]

    @torch.no_grad()
    def fit(self, x: np.ndarray | torch.Tensor, mode: str, range_eps: float = 1e-4, std_eps: float = 1e-6) -> None:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(-1, self.dim)
        if x.shape[0] == 0:
            raise VideoActionError("cannot fit a normaliser on zero samples")
        if not torch.isfinite(x).all():
            raise VideoActionError("cannot fit a normaliser: data contains NaN or Inf")
        lo, hi = x.min(0).values, x.max(0).values
        mean, std = x.mean(0), x.std(0, unbiased=False)
        if mode == "minmax":
            span = hi - lo
            const = span < range_eps
            scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(range_eps))
            offset = torch.where(const, -lo, -1.0 - lo * scale)  # constant dims map to 0
        elif mode == "meanstd":
            const = std < std_eps
            scale = torch.where(const, torch.ones_like(std), 1.0 / std.clamp_min(std_eps))
            offset = -mean * scale
        elif mode == "identity":
            scale, offset = torch.ones_like(mean), torch.zeros_like(mean)
        else:
            raise VideoActionError(f"unknown normalisation mode {mode!r}; expected one of {MODES}")
        self.mode = mode
        for name, value in (("scale", scale), ("offset", offset), ("min", lo), ("max", hi), ("mean", mean), ("std", std)):
            getattr(self, name).copy_(value.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.offset.to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.offset.to(y.dtype)) / self.scale.to(y.dtype)


class Normalizer(nn.Module):
    """A named set of :class:`FieldNormalizer` (e.g. ``action``, ``state``)."""

    def __init__(self, dims: Mapping[str, int], modes: Mapping[str, str] | None = None):
        super().__init__()
        modes = dict(modes or {})
        self.fields = nn.ModuleDict({k: FieldNormalizer(d, modes.get(k, "identity")) for k, d in dims.items()})

    @classmethod
    def fit_arrays(cls, arrays: Mapping[str, np.ndarray], modes: Mapping[str, str]) -> "Normalizer":
        """Fit one field per array of shape (N, ..., D) with its mode (missing modes: ``minmax``)."""
        norm = cls({k: int(np.asarray(v).shape[-1]) for k, v in arrays.items()})
        for k, v in arrays.items():
            norm.fields[k].fit(v, modes.get(k, "minmax"))
        return norm

    def _field(self, name: str) -> FieldNormalizer:
        if name not in self.fields:
            raise VideoActionError(f"normaliser has no field {name!r}; fields: {sorted(self.fields)}")
        return self.fields[name]

    def normalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        field = self._field(name)
        if x.shape[-1] != field.dim:
            raise VideoActionError(f"normaliser field {name!r}: expected last dimension {field.dim}, "
                                   f"found shape {tuple(x.shape)}")
        return field(x)

    def unnormalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._field(name).inverse(x)

    def data_range(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max) seen when fitting: the range to clip served actions to."""
        field = self._field(name)
        return field.min, field.max

    def normalized_bound(self, name: str) -> torch.Tensor:
        """(D,) largest |normalised value| of the fitted data per dim: 1 for min-max, the largest |z-score| for
        mean-std, the largest |value| for identity; 1 where the field was never fitted (identity defaults)."""
        field = self._field(name)
        lo, hi = field(field.min), field(field.max)
        return torch.maximum(lo.abs(), hi.abs()).clamp_min(1e-6)

    def modes(self) -> dict[str, str]:
        return {k: f.mode for k, f in self.fields.items()}

    # ---- standalone persistence (safetensors + JSON)
    def save(self, directory) -> None:
        from videoaction.utils.io import atomic_write_json, save_state_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.state_dict(), directory / "normalizer.safetensors")
        atomic_write_json(directory / "normalizer.json",
                          {"modes": self.modes(), "dims": {k: f.dim for k, f in self.fields.items()}})

    @classmethod
    def load(cls, directory) -> "Normalizer":
        from videoaction.utils.io import load_state_dict

        directory = Path(directory)
        try:
            meta = json.loads((directory / "normalizer.json").read_text())
        except FileNotFoundError:
            raise VideoActionError(f"{directory}: no normalizer.json") from None
        norm = cls(meta["dims"], meta["modes"])
        norm.load_state_dict(load_state_dict(directory / "normalizer.safetensors"))
        return norm
