"""MDT-style encoder-decoder diffusion transformer for action chunks, with EDM preconditioning (vpp.md §5).

Encoder: [goal token ; Video Former tokens] + learned positions -> pre-LN bidirectional blocks (``nn.transformer``).
Decoder: action tokens (Linear A -> D) + learned action-token positions; each block: self-attention among the action
tokens (causal, as MDT; configurable), cross-attention to ALL encoder tokens (never causal), MLP; self-attention and
MLP are modulated by the noise level with AdaLN (shift, 1 + scale, gate), zero-initialised.

Reference defects fixed here (vpp.md §11): the reference passes ``is_causal=True`` to the cross-attention, so action
token i reads only context tokens 0..i; its encoder adds no positional embedding; its AdaLN is ``shift + x * scale``
without "1 +" and without zero-init; its sampler's sigma_min differs between training and evaluation silently
(here the sampler settings are explicit arguments / config fields).

EDM: sigma_data 0.5, c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
c_noise = ln(s) / 4; loss = MSE(F, (a - c_skip a_s) / c_out); training sigma log-logistic (loc ln 0.5, scale 0.5)
truncated to [train_sigma_min, train_sigma_max]. Sampling: exponential sigma schedule sigma_max -> sigma_min, then 0,
with DDIM (DPM-Solver-1) or DPM-Solver++(2M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from videoaction.errors import ConfigError
from videoaction.models.vpp.config import ActionHeadConfig
from videoaction.nn.transformer import Block


class CrossAttention(nn.Module):
    """Queries attend over every context token (no mask)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q(x).view(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        d = cfg.dim
        self.causal = cfg.causal_self_attention
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.self_attn = CrossAttention(d, cfg.heads)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross_attn = CrossAttention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.drop = nn.Dropout(cfg.resid_dropout)
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.adaln[1].weight)
        nn.init.zeros_(self.adaln[1].bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaln(emb).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), sh1, sc1)
        x = x + g1[:, None] * self.drop(self.self_attn(h, h, causal=self.causal))
        x = x + self.drop(self.cross_attn(self.norm_cross(x), context, causal=False))
        h = _modulate(self.norm2(x), sh2, sc2)
        return x + g2[:, None] * self.drop(self.mlp(h))


class SigmaEmbedding(nn.Module):
    """c_noise = ln(sigma) / 4 -> sinusoid -> Linear -> Mish -> Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=c_noise.device) / half)
        arg = c_noise.float()[:, None] * freqs[None] * 1000  # c_noise spans ~[-2, 1]: spread it like DDPM steps
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=-1))


# ---------------------------------------------------------------------------------------- reference_compat
class _RefAttention(nn.Module):
    """The reference's attention: key / query / value with biases, output projection without; ``causal`` is passed
    to SDPA also for cross-attention (upper-left aligned: query i reads keys 0..i)."""

    def __init__(self, dim: int, heads: int, causal: bool, attn_drop: float, resid_drop: float):
        super().__init__()
        self.heads, self.causal, self.attn_drop = heads, causal, attn_drop
        self.key, self.query, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(resid_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        src = x if context is None else context
        q = self.query(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.key(src).view(b, src.shape[1], self.heads, -1).transpose(1, 2)
        v = self.value(src).view(b, src.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.resid_dropout(self.c_proj(out.transpose(1, 2).reshape(b, n, d)))


class _RefBlock(nn.Module):
    """Pre-LN block of the reference (bias-free LayerNorms and MLP); ``film``: decoder block with causal self- and
    cross-attention and AdaLN ``shift + x * scale`` (no "1 +", not zero-initialised)."""

    def __init__(self, cfg: ActionHeadConfig, film: bool):
        super().__init__()
        d, h = cfg.dim, cfg.heads
        self.film = film
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = _RefAttention(d, h, film, cfg.attn_dropout, cfg.resid_dropout)
        if film:
            self.cross_att = _RefAttention(d, h, True, cfg.attn_dropout, cfg.resid_dropout)
            self.ln3 = nn.LayerNorm(d)
            self.adaLN_zero = nn.Module()
            self.adaLN_zero.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.ln_2 = nn.LayerNorm(d, bias=False)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)
        self.mlp_drop = nn.Dropout(cfg.resid_dropout)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_drop(self.mlp.c_proj(F.gelu(self.mlp.c_fc(x))))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if not self.film:
            x = x + self.attn(self.ln_1(x))
            return x + self._mlp(self.ln_2(x))
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_zero.modulation(emb).chunk(6, dim=-1)  # each (B, 1, D)
        x = x + g1 * self.attn(sh1 + self.ln_1(x) * sc1)
        x = x + self.cross_att(self.ln3(x), context)
        return x + g2 * self._mlp(sh2 + self.ln_2(x) * sc2)


class ReferenceNet(nn.Module):
    """The reference's action network (MDT ``DiffusionTransformer`` as VPP builds it for CALVIN), parameter names as
    in its ``model.inner_model.*``: goal ``lang_emb`` MLP, ``tok_emb`` on the Video Former tokens, a bidirectional
    encoder without positions, ``action_emb`` -> FiLM decoder -> ``action_pred``; sigma embedding sin-then-cos of
    ln(sigma)/4 (frequencies exp(-ln(10000) k / (D/2 - 1))) -> Linear -> Mish -> Linear."""

    def __init__(self, cfg: ActionHeadConfig, action_dim: int, goal_dim: int):
        super().__init__()
        d = cfg.dim
        self.lang_emb = nn.Sequential(nn.Linear(goal_dim, cfg.goal_hidden), nn.GELU(), nn.Linear(cfg.goal_hidden, d))
        self.tok_emb = nn.Linear(d, d)
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList(_RefBlock(cfg, film=False) for _ in range(cfg.encoder_depth))
        self.encoder.ln = nn.LayerNorm(d, bias=False)
        self.decoder = nn.Module()
        self.decoder.blocks = nn.ModuleList(_RefBlock(cfg, film=True) for _ in range(cfg.decoder_depth))
        self.decoder.ln = nn.LayerNorm(d, bias=False)
        self.sigma_emb = nn.Sequential(nn.Identity(), nn.Linear(d, 2 * d), nn.Mish(), nn.Linear(2 * d, d))
        self.action_emb = nn.Linear(action_dim, d)
        self.action_pred = nn.Linear(d, action_dim)
        for m in self.modules():  # the reference's init: N(0, 0.02) linears, zero biases
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def context(self, goal: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.lang_emb(goal)[:, None], self.tok_emb(tokens)], dim=1)
        for block in self.encoder.blocks:
            x = block(x)
        return self.encoder.ln(x)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        half = self.action_emb.out_features // 2
        freqs = torch.exp(torch.arange(half, device=c_noise.device) * -(math.log(10000) / (half - 1)))
        arg = c_noise.float()[:, None, None] * freqs  # (B, 1, D/2)
        emb = self.sigma_emb(torch.cat([arg.sin(), arg.cos()], dim=-1))  # (B, 1, D)
        h = self.action_emb(x_in)
        for block in self.decoder.blocks:
            h = block(h, emb, context)
        return self.action_pred(self.decoder.ln(h))


class ActionHead(nn.Module):
    """``context(goal, tokens)`` once per observation, then ``denoise`` / ``loss`` / ``sample`` on action chunks."""

    def __init__(self, cfg: ActionHeadConfig, action_dim: int, n_actions: int, goal_dim: int, n_context: int):
        super().__init__()
        d = cfg.dim
        self.cfg, self.action_dim, self.n_actions = cfg, action_dim, n_actions
        if cfg.reference_compat:  # the reference's network and defects, for converted weights
            self.net = ReferenceNet(cfg, action_dim, goal_dim)
            return
        self.goal_proj = nn.Sequential(nn.Linear(goal_dim, cfg.goal_hidden), nn.GELU(), nn.Linear(cfg.goal_hidden, d))
        self.context_pos = nn.Parameter(torch.randn(1, 1 + n_context, d) * 0.02)
        self.encoder = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, attn_drop=cfg.attn_dropout,
                                           proj_drop=cfg.resid_dropout) for _ in range(cfg.encoder_depth))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.action_in = nn.Linear(action_dim, d)
        self.action_pos = nn.Parameter(torch.randn(1, n_actions, d) * 0.02)
        self.sigma_emb = SigmaEmbedding(d)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.action_out = nn.Linear(d, action_dim)
        for lin in (self.final_adaln[1], self.action_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------------------------------ network
    def context(self, goal: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """goal (B, Dg), tokens (B, N, D) -> encoded context (B, 1 + N, D)."""
        if self.cfg.reference_compat:
            return self.net.context(goal, tokens)
        x = torch.cat([self.goal_proj(goal)[:, None], tokens], dim=1) + self.context_pos
        for block in self.encoder:
            x = block(x)
        return self.encoder_norm(x)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Preconditioned actions (B, T, A), c_noise (B,), context (B, N, D) -> raw output F (B, T, A)."""
        if self.cfg.reference_compat:
            return self.net(x_in, c_noise, context)
        emb = self.sigma_emb(c_noise)
        h = self.action_in(x_in) + self.action_pos
        for block in self.decoder:
            h = block(h, context, emb)
        shift, scale = self.final_adaln(emb).chunk(2, dim=-1)
        return self.action_out(_modulate(self.final_norm(h), shift, scale))

    # ------------------------------------------------------------------------------------------ EDM
    def _precond(self, sigma: torch.Tensor):
        sd = self.cfg.sigma_data
        s = sigma.view(-1, 1, 1)
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        return c_skip, c_out, c_in

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Noisy actions (B, T, A) at sigma (B,) -> denoised actions."""
        c_skip, c_out, c_in = self._precond(sigma)
        return c_skip * x + c_out * self(x * c_in, sigma.log() / 4, context)

    def sample_train_sigma(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Truncated log-logistic sigmas (loc, scale) on [train_sigma_min, train_sigma_max]."""
        c = self.cfg
        lo = torch.sigmoid(torch.tensor((math.log(c.train_sigma_min) - c.sigma_loc) / c.sigma_scale))
        hi = torch.sigmoid(torch.tensor((math.log(c.train_sigma_max) - c.sigma_loc) / c.sigma_scale))
        dev = generator.device if generator is not None else device
        u = torch.rand(n, generator=generator, device=dev).to(device) * (hi - lo) + lo
        return (torch.logit(u) * c.sigma_scale + c.sigma_loc).exp()

    def loss(self, actions: torch.Tensor, context: torch.Tensor, generator: torch.Generator | None = None,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """EDM loss of normalised actions (B, T, A) given the encoded context; ``mask`` (B, T) keeps steps."""
        b = actions.shape[0]
        sigma = self.sample_train_sigma(b, actions.device, generator)
        noise = randn_tensor(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        x = actions + noise * sigma.view(-1, 1, 1)
        c_skip, c_out, c_in = self._precond(sigma)
        target = (actions - c_skip * x) / c_out
        err = ((self(x * c_in, sigma.log() / 4, context) - target) ** 2).mean(-1)  # (B, T)
        if mask is None:
            return err.mean()
        keep = mask.to(err.dtype)
        return (err * keep).sum() / keep.sum().clamp_min(1.0)

    # ------------------------------------------------------------------------------------------ sampling
    @staticmethod
    def sigmas(steps: int, sigma_min: float, sigma_max: float, device=None) -> torch.Tensor:
        """Exponential schedule sigma_max -> sigma_min in ``steps`` values, then 0 (steps + 1 values)."""
        s = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, device=device).exp()
        return torch.cat([s, s.new_zeros(1)])

    @torch.no_grad()
    def sample(self, context: torch.Tensor, steps: int | None = None, sigma_min: float | None = None,
               sigma_max: float | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised action chunk (B, T, A); every argument left None takes the config's evaluation value."""
        c = self.cfg
        steps, sampler = steps or c.sample_steps, sampler or c.sampler
        sigma_min = c.sample_sigma_min if sigma_min is None else sigma_min
        sigma_max = c.sample_sigma_max if sigma_max is None else sigma_max
        if sampler not in ("ddim", "dpmpp_2m"):
            raise ConfigError(f"VPP action sampler must be ddim or dpmpp_2m, found {sampler!r}")
        if not 0 < sigma_min <= sigma_max:
            raise ConfigError(f"VPP action sampler: need 0 < sigma_min <= sigma_max, found {sigma_min}, {sigma_max}")
        b = context.shape[0]
        sig = self.sigmas(steps, sigma_min, sigma_max, context.device)
        x = randn_tensor((b, self.n_actions, self.action_dim), generator=generator, device=context.device,
                         dtype=context.dtype) * sig[0]
        old = None
        for i in range(steps):
            s, s_next = sig[i], sig[i + 1]
            den = self.denoise(x, s.expand(b), context)
            if s_next == 0:
                x = den
                break
            h = s.log() - s_next.log()  # t = -ln sigma
            d = den
            if sampler == "dpmpp_2m" and old is not None:
                r = (sig[i - 1].log() - s.log()) / h
                d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (s_next / s) * x - torch.expm1(-h) * d
            old = den
        return x
