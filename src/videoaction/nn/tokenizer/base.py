"""Common interface of the image tokenizers: ``encode`` (scaled latents) and ``decode`` (pixels in [-1, 1])."""

from __future__ import annotations

import torch
from torch import nn

from .config import TokenizerError


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from moments (N, 2C, h, w); logvar clamped to [-30, 20] as in LDM."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) summed over (C, h, w): (N,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class Tokenizer(nn.Module):
    """Base class. Subclasses implement ``posterior(x) -> DiagonalGaussian`` (or a point) and ``decode_raw``.

    Attributes: ``latent_channels`` C, ``stride`` s, ``scale`` (latents are multiplied by it after encoding).
    """

    latent_channels: int
    stride: int
    scale: float
    kind: str = "base"

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        raise NotImplementedError

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise TokenizerError(f"{self.kind} tokenizer: expected images (N, 3, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise TokenizerError(f"{self.kind} tokenizer: image size {h}x{w} is not a multiple of the stride "
                                 f"{self.stride}")

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> latents (N, C, H/s, W/s) times ``scale``.

        ``sample=False`` (default) returns the posterior mean (deterministic; the reference samples even at
        inference, which makes its policy stochastic for no benefit). ``sample=True`` draws from the posterior
        (training-time augmentation).
        """
        self._check_input(x)
        post = self.posterior(x)
        z = post.sample(generator) if sample else post.mode()
        return z * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, C, h, w) -> images (N, 3, h*s, w*s) clamped to [-1, 1]."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise TokenizerError(f"{self.kind} tokenizer: expected latents (N, {self.latent_channels}, h, w), "
                                 f"got shape {tuple(z.shape)}")
        return self.decode_raw(z / self.scale).clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"latent_channels={self.latent_channels}, stride={self.stride}, scale={self.scale:.5g}"
