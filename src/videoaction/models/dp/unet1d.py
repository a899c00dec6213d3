"""Diffusion Policy's 1-D temporal U-Net with FiLM conditioning (``ConditionalUnet1D``).

The sequence (B, T, A) is treated as A channels over T steps. Every residual block is conditioned on
``[step embedding, global condition]`` through FiLM (per-channel scale and bias). Down/up-sampling and the sinusoidal
step embedding are diffusers' building blocks (``Downsample1D`` = conv k3 s2, ``Upsample1D`` = transposed conv k4 s2,
``Timesteps`` with DP's sin-then-cos layout); module names mirror DP's (``diffusion_step_encoder.{1,3}``,
``down_modules.i.{0,1,2}``, ``mid_modules``, ``up_modules``, ``final_conv``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.models.downsampling import Downsample1D
from diffusers.models.embeddings import Timesteps
from diffusers.models.upsampling import Upsample1D
from torch import nn


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish (length preserving)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, out_ch), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM after the first: out = scale(c) * h + bias(c); 1x1-conv shortcut if needed."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int = 5, n_groups: int = 8,
                 cond_predict_scale: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(in_ch, out_ch, kernel_size, n_groups),
                                     Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)])
        self.out_channels = out_ch
        self.cond_predict_scale = cond_predict_scale
        cond_channels = out_ch * 2 if cond_predict_scale else out_ch
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels), nn.Unflatten(-1, (cond_channels, 1)))
        self.residual_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (B, in_ch, T), cond: (B, cond_dim) -> (B, out_ch, T)
        out = self.blocks[0](x)
        embed = self.cond_encoder(cond)  # (B, cond_channels, 1)
        if self.cond_predict_scale:
            scale, bias = embed.chunk(2, dim=1)  # DP: reshape (B, 2, C, 1) -> [:, 0] scale, [:, 1] bias
            out = scale * out + bias
        else:
            out = out + embed
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """(B, T, input_dim) noisy sequence, (B,) steps, (B, global_cond_dim) -> (B, T, input_dim) prediction.

    T must be divisible by ``2 ** (len(down_dims) - 1)``.
    """

    def __init__(self, input_dim: int, global_cond_dim: int, step_embed_dim: int = 128,
                 down_dims: Sequence[int] = (512, 1024, 2048), kernel_size: int = 5, n_groups: int = 8,
                 cond_predict_scale: bool = True):
        super().__init__()
        all_dims = [input_dim, *down_dims]
        self.diffusion_step_encoder = nn.Sequential(
            Timesteps(step_embed_dim, flip_sin_to_cos=False, downscale_freq_shift=1),  # DP's SinusoidalPosEmb
            nn.Linear(step_embed_dim, step_embed_dim * 4), nn.Mish(), nn.Linear(step_embed_dim * 4, step_embed_dim))
        cond_dim = step_embed_dim + global_cond_dim

        def res(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(i, o, cond_dim, kernel_size, n_groups, cond_predict_scale)

        in_out = list(zip(all_dims[:-1], all_dims[1:]))
        self.down_modules = nn.ModuleList()
        for ind, (d_in, d_out) in enumerate(in_out):
            last = ind == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                res(d_in, d_out), res(d_out, d_out),
                Downsample1D(d_out, use_conv=True) if not last else nn.Identity()]))
        mid = all_dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])
        self.up_modules = nn.ModuleList()
        # as in DP every up level upsamples (len(in_out) - 1 of them, undoing the downsamples); the skip of the
        # first down level is therefore never consumed (DP's layout, kept for parity)
        for d_in, d_out in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([
                res(d_out * 2, d_in), res(d_in, d_in), Upsample1D(d_in, use_conv_transpose=True)]))
        start = down_dims[0]
        self.final_conv = nn.Sequential(Conv1dBlock(start, start, kernel_size, n_groups), nn.Conv1d(start, input_dim, 1))
        self.downsample_factor = 2 ** (len(down_dims) - 1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, global_cond: torch.Tensor) -> torch.Tensor:
        b, t, _ = sample.shape
        if t % self.downsample_factor:
            raise ValueError(f"ConditionalUnet1D: sequence length {t} is not divisible by {self.downsample_factor}")
        x = sample.transpose(1, 2)  # (B, A, T)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep[None]
        timestep = timestep.expand(b)
        emb = self.diffusion_step_encoder(timestep).to(sample.dtype)  # (B, step_embed_dim)
        cond = torch.cat([emb, global_cond.to(sample.dtype)], dim=-1)  # (B, cond_dim)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)  # (B, T, A)
