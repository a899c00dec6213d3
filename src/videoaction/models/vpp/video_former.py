"""Video Former: compresses predictive features (B, F, N, C) into F x Q learnable query tokens (vpp.md §4).

Per layer: (1) perceiver cross-attention per frame: the frame's Q queries attend over [the frame's N tokens ; the Q
queries] (separate pre-LayerNorms); (2) temporal self-attention over the F frames for each query index
(bidirectional; pre-LayerNorm here, the reference has none); (3) feed-forward LN -> Linear x4 -> GELU -> Linear
(no bias). Input: per-token MLP C -> hidden -> dim (GELU) plus a learnable per-frame time embedding.
Output (B, F * Q, dim) after a final LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videoaction.models.vpp.config import VideoFormerConfig


class _Attention(nn.Module):
    """Multi-head attention of queries over keys/values, no biases (reference layout: to_q, to_kv, to_out)."""

    def __init__(self, dim: int, heads: int, dim_head: int, bias: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=bias)
        self.to_out = nn.Linear(inner, dim, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, n, dim_head)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class FormerLayer(nn.Module):
    def __init__(self, cfg: VideoFormerConfig):
        super().__init__()
        d = cfg.dim
        self.norm_media, self.norm_latents = nn.LayerNorm(d), nn.LayerNorm(d)
        self.perceiver = _Attention(d, cfg.heads, cfg.dim_head)
        self.temporal = cfg.temporal_attention
        if self.temporal:  # reference_compat: the reference's (no pre-norm; biases; head width d // heads)
            ref = cfg.reference_compat
            self.norm_time = nn.Identity() if ref else nn.LayerNorm(d)
            self.time_attn = _Attention(d, cfg.heads, d // cfg.heads if ref else cfg.dim_head, bias=ref)
        self.ff = _FeedForward(d)

    def forward(self, q: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """q (B, F, Q, D), media (B, F, N, D) -> (B, F, Q, D)."""
        b, f, nq, d = q.shape
        lat = self.norm_latents(q).flatten(0, 1)  # (B*F, Q, D)
        ctx = torch.cat([self.norm_media(media).flatten(0, 1), lat], dim=1)  # (B*F, N + Q, D)
        q = q + self.perceiver(lat, ctx).view(b, f, nq, d)
        if self.temporal:
            t = self.norm_time(q).transpose(1, 2).flatten(0, 1)  # (B*Q, F, D)
            q = q + self.time_attn(t, t).view(b, nq, f, d).transpose(1, 2)
        return q + self.ff(q)


class VideoFormer(nn.Module):
    def __init__(self, cfg: VideoFormerConfig, in_dim: int, n_frames: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.dim))
        self.time_embed = nn.Parameter(torch.zeros(n_frames, 1, cfg.dim))
        self.queries = nn.Parameter(torch.randn(n_frames, cfg.queries, cfg.dim) * 0.02)
        self.layers = nn.ModuleList(FormerLayer(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.time_embed, std=0.02)

    @property
    def n_tokens(self) -> int:
        return self.queries.shape[0] * self.queries.shape[1]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, F, N, C) -> tokens (B, F * Q, dim)."""
        b = feats.shape[0]
        media = self.proj(feats) + self.time_embed  # (B, F, N, D)
        q = self.queries.expand(b, -1, -1, -1)
        for layer in self.layers:
            q = layer(q, media)
        return self.norm(q.flatten(1, 2))
