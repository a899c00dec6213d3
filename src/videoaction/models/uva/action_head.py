"""UVA's action head (reference ``DiffActLoss`` with ``act_model_type="conv_fc"``, uva.md §6).

z (B, T*h*w, D) -> per future frame: conv 3x3 (``conv.0``) -> ReLU -> adaptive average pool to p x p -> flatten ->
``fc.0`` (D*p*p -> D) -> ReLU -> ``fc.2`` (D -> D) -> (B, T, D) -> ``interpolate`` Linear(T -> n_actions) along time
-> ``refine.0`` -> ReLU -> ``refine.2`` -> (B, n_actions, D): one conditioning vector per action, each denoised by
the diffusion MLP ``net`` independently. The class extends :class:`DiffusionHead` so that its MLP is ``net``
(state-dict keys ``diffactloss.net.*`` as in the reference).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from videoaction.nn.diffusion import DiffusionHead, DiffusionHeadConfig


class ActionHead(DiffusionHead):
    """Aggregates decoder tokens into ``n_actions`` conditions and diffuses actions (B*n_actions, A)."""

    def __init__(self, action_dim: int, width: int, n_frames: int, grid: tuple[int, int], n_actions: int,
                 cfg: DiffusionHeadConfig, pool: int = 4):
        super().__init__(action_dim, width, cfg)
        self.n_frames, self.grid, self.n_actions, self.width = n_frames, tuple(grid), n_actions, width
        pool = min(pool, grid[0], grid[1])
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(pool))
        self.fc = nn.Sequential(nn.Linear(width * pool * pool, width), nn.ReLU(), nn.Linear(width, width))
        self.interpolate = nn.Linear(n_frames, n_actions)
        self.refine = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def aggregate(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, T*h*w, D) -> per-action conditions (B, n_actions, D)."""
        h, w = self.grid
        x = rearrange(z, "b (t h w) d -> (b t) d h w", t=self.n_frames, h=h, w=w)
        x = self.fc(self.conv(x).flatten(1))  # (B*T, D*p*p) -> (B*T, D)
        x = rearrange(x, "(b t) d -> b d t", t=self.n_frames)
        x = rearrange(self.interpolate(x), "b d n -> b n d")  # T frames -> n_actions along time
        return self.refine(x)

    def action_loss(self, z: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        """Mean diffusion loss of normalised ``actions`` (B, n_actions, A) given decoder output z."""
        cond = self.aggregate(z)
        return self.loss(actions.reshape(-1, actions.shape[-1]), cond.reshape(-1, self.width), None,
                         generator=generator)

    def sample_actions(self, z: torch.Tensor, temperature: float = 1.0, cfg: float = 1.0, num_steps: int | None = None,
                       sampler: str | None = None, generator: torch.Generator | None = None,
                       guidance: bool | None = None, clip_range: float | torch.Tensor | None = None) -> torch.Tensor:
        """Normalised actions (B, n_actions, A); guided (``cfg != 1`` or ``guidance``): z is [cond; uncond] (2B, ...).
        ``clip_range``: per-dim bound (A,) for the denoised actions when the head clips (default ``cfg.clip_range``)."""
        guided = (cfg != 1.0) if guidance is None else bool(guidance)
        cond = self.aggregate(z)  # (B', n, D)
        b = cond.shape[0] // (2 if guided else 1)
        flat = cond.reshape(-1, self.width)  # (B' * n, D): [all cond tokens; all uncond tokens] when guided
        out = self.sample(flat, temperature=temperature, cfg=cfg, num_steps=num_steps, sampler=sampler,
                          generator=generator, guidance=guided, clip_range=clip_range)
        return out.reshape(b, self.n_actions, -1)
