"""Small convolutional autoencoder for the CPU presets, trained on the dataset's own frames (stage 0).

64x64x3 -> 8x8x8 at the defaults (stride 8, 8 latent channels). GroupNorm + SiLU residual blocks, one per level,
stride-2 convolutions down, nearest-upsample + conv up. KL posterior (logvar head) or plain AE. ``scale`` is
measured after training so the scaled latents have unit std (the role 0.2325 plays for kl16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import DiagonalGaussian, Tokenizer
from .config import TokenizerConfig, TokenizerError


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c, eps=1e-6)


class SmallResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # blocks start as identity: faster, stabler early training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def default_channels(stride: int) -> tuple[int, ...]:
    levels = int(round(math.log2(stride)))
    return tuple([32, 64, 128, 128, 128][:levels])


class SmallAutoencoder(Tokenizer):
    """Images (N, 3, H, W) -> latents (N, C, H/s, W/s); s = 2^len(channels) in {4, 8, 16}."""

    kind = "small"

    def __init__(self, latent_channels: int = 8, stride: int = 8, channels: tuple[int, ...] = (),
                 kl: bool = True, scale: float | None = None):
        super().__init__()
        if stride not in (4, 8, 16):
            raise TokenizerError(f"small tokenizer: stride must be 4, 8 or 16, got {stride}")
        chans = tuple(channels) or default_channels(stride)
        if 2 ** len(chans) != stride:
            raise TokenizerError(f"small tokenizer: {len(chans)} channel levels {chans} give stride "
                                 f"{2 ** len(chans)}, not {stride}")
        self.latent_channels, self.stride, self.kl = latent_channels, stride, kl
        self.scale = 1.0 if scale is None else float(scale)
        self.channels = chans
        # encoder: conv_in at full resolution, then per level a stride-2 conv followed by a residual block
        enc: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1)]
        cin = chans[0]
        for c in chans:
            enc += [nn.Conv2d(cin, c, 4, stride=2, padding=1), SmallResBlock(c, c)]
            cin = c
        enc += [_gn(cin), nn.SiLU(), nn.Conv2d(cin, (2 if kl else 1) * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        # decoder: mirror image, nearest-upsample + conv per level
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, chans[-1], 3, padding=1), SmallResBlock(chans[-1], chans[-1])]
        cin = chans[-1]
        for c in reversed(chans):
            dec += [SmallResBlock(cin, c), nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
            cin = c
        dec += [_gn(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.encoder(x)
        if not self.kl:  # plain AE: a point posterior (logvar -30 -> std ~3e-7; mode == sample in effect)
            h = torch.cat([h, torch.full_like(h, -30.0)], dim=1)
        return DiagonalGaussian(h)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def config_dict(self) -> dict:
        return {"kind": "small", "latent_channels": self.latent_channels, "stride": self.stride,
                "channels": list(self.channels), "kl": self.kl, "scale": self.scale}

    @classmethod
    def from_config(cls, cfg: TokenizerConfig) -> "SmallAutoencoder":
        return cls(cfg.latent_channels, cfg.stride, tuple(cfg.channels), cfg.kl, cfg.scale)
