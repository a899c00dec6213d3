"""HMA's spatio-temporal transformer with per-embodiment action stems, modulation and optional action heads.

Each frame holds S image tokens and K action tokens (copies of the frame's action embedding + a learned position).
A block: pre-norm spatial attention over the frame's S + K tokens -> action modulation of every token (shift / scale
from the action embedding, residual, zero-initialised) -> **pre-norm** causal temporal attention over frames at each
token position (the reference has no norm there, hma.md §10.7) -> pre-norm MLP. Stems normalise raw actions with
per-dimension statistics stored in the model and embed them with an MLP; a dropped action (null condition for
classifier-free guidance) is a learned null embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from videoaction.nn.diffusion import DiffusionHead
from videoaction.nn.transformer import Attention, Mlp

from .config import HMAConfig


class ActionStem(nn.Module):
    """Raw actions (B, T, A) -> normalised -> Linear, LayerNorm, ReLU, Linear -> (B, T, d)."""

    def __init__(self, action_dim: int, d: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(action_dim))
        self.register_buffer("std", torch.ones(action_dim))
        self.mlp = nn.Sequential(nn.Linear(action_dim, d), nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, d))

    def normalize(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.mean) / self.std.clamp_min(1e-6)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.normalize(a))


class Modulate(nn.Module):
    """x + Linear(LN(x) * (1 + scale) + shift), (shift, scale) = Linear(SiLU(c)); starts as the identity."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).unsqueeze(2).chunk(2, dim=-1)  # (B, T, 1, d) each
        return x + self.out(self.norm(x) * (1 + scale) + shift)


class STBlock(nn.Module):
    def __init__(self, cfg: HMAConfig, domains: list[str]):
        super().__init__()
        d = cfg.d_model
        self.norm_s = nn.LayerNorm(d, eps=1e-6)
        self.attn_s = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop, cfg.proj_drop)
        self.norm_t = nn.LayerNorm(d, eps=1e-6)
        self.attn_t = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop, cfg.proj_drop)
        self.norm_m = nn.LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), cfg.proj_drop)
        self.modulate = None
        if "modulate" in cfg.action_network:
            self.modulate = (nn.ModuleDict({n: Modulate(d) for n in domains}) if cfg.per_domain_modulation
                             else Modulate(d))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, domain: str, causal: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        x = x + self.attn_s(self.norm_s(x).reshape(b * t, n, d)).reshape(b, t, n, d)
        if self.modulate is not None and cond is not None:
            mod = self.modulate[domain] if isinstance(self.modulate, nn.ModuleDict) else self.modulate
            x = mod(x, cond)
        xt = self.norm_t(x).transpose(1, 2).reshape(b * n, t, d)
        x = x + self.attn_t(xt, attn_mask=causal).reshape(b, n, t, d).transpose(1, 2)
        return x + self.mlp(self.norm_m(x))


class HMANetwork(nn.Module):
    """tokens / latent patches + actions of one embodiment -> per-token features (B, T, S, d) and, for the
    discrete variant, logits (B, T, S, F, V) through :meth:`logits`; continuous: :meth:`diffusion_condition`."""

    def __init__(self, cfg: HMAConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, T, S, K = cfg.d_model, cfg.window, cfg.tokens_per_frame, cfg.n_action_tokens
        names = [dom.name for dom in cfg.domains]
        self.use_action_tokens = "concat" in cfg.action_network
        self.n_extra = K if self.use_action_tokens else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, T, S + self.n_extra, d))
        self.mask_token = nn.Parameter(torch.zeros(d))
        if cfg.variant == "discrete":
            V = cfg.factored_vocab_size
            self.token_embed = nn.ModuleList([nn.Embedding(V, d) for _ in range(cfg.num_factored_vocabs)])
            self.out_norm = nn.LayerNorm(d, eps=1e-6)
            self.out = nn.Linear(d, cfg.num_factored_vocabs * V)
        else:
            self.in_proj = nn.Linear(cfg.token_channels, d, bias=False)
            self.in_norm = nn.LayerNorm(d, eps=1e-6)
            self.out_norm = nn.LayerNorm(d, eps=1e-6)
            self.out = nn.Linear(d, d)
            self.diffusion_pos = nn.Parameter(torch.zeros(1, T, S, d))
            self.diffloss = DiffusionHead(cfg.token_channels, d, cfg.diff_head)
        self.stems = nn.ModuleDict({dom.name: ActionStem(dom.frame_action_dim, d) for dom in cfg.domains})
        self.null_action = nn.Parameter(torch.zeros(d))
        self.action_pos = nn.Parameter(torch.zeros(1, 1, max(K, 1), d))
        self.blocks = nn.ModuleList([STBlock(cfg, names) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        if cfg.predict_actions:
            self.action_heads = nn.ModuleDict({dom.name: nn.Linear(d, dom.frame_action_dim) for dom in cfg.domains})
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)
        for p in (self.pos_embed, self.mask_token, self.null_action, self.action_pos):
            nn.init.normal_(p, std=0.02)
        if cfg.variant == "continuous":
            nn.init.normal_(self.diffusion_pos, std=0.02)

    # -------------------------------------------------------------------------------------- embeddings
    def embed_actions(self, actions: torch.Tensor | None, domain: str, drop: torch.Tensor | None) -> torch.Tensor:
        """Raw actions (B, T, A) -> (B, T, d); ``drop`` (B, T) bool -> the null action. Frame t sees action t - 1
        with ``previous_action`` (frame 0 the null action), else action t."""
        b, t = drop.shape if drop is not None else actions.shape[:2]
        null = self.null_action.expand(b, t, -1)
        if actions is None:
            return null
        stem = self.stems[domain]
        if actions.shape[-1] != stem.mean.numel():
            raise ValueError(f"embodiment {domain!r}: actions have {actions.shape[-1]} dims per frame, the model "
                             f"expects {stem.mean.numel()}")
        emb = stem(actions.float())
        keep = torch.ones(b, t, dtype=torch.bool, device=emb.device) if drop is None else ~drop
        if self.cfg.previous_action:
            emb = torch.cat([null[:, :1], emb[:, :-1]], dim=1)
            keep = torch.cat([torch.zeros_like(keep[:, :1]), keep[:, :-1]], dim=1)
        return torch.where(keep.unsqueeze(-1), emb, null)

    def embed_tokens(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Discrete ids (B, T, S) or continuous patches (B, T, S, C); ``mask`` (B, T, S) -> (B, T, S, d)."""
        if self.cfg.variant == "discrete":
            V = self.cfg.factored_vocab_size
            ids = x.long().clamp_min(0)
            emb = sum(table((ids // V ** i) % V) for i, table in enumerate(self.token_embed))
        else:
            emb = self.in_norm(self.in_proj(x.float()))
        return torch.where(mask.unsqueeze(-1), self.mask_token.to(emb.dtype), emb)

    # -------------------------------------------------------------------------------------- trunk
    def forward(self, x: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor | None, domain: str,
                drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> image-token features (B, T, S, d), pooled action-token features (B, T, d)."""
        h = self.embed_tokens(x, mask)
        b, t, s, d = h.shape
        if t > self.cfg.window:
            raise ValueError(f"{t} frames > the model's window {self.cfg.window}")
        cond = self.embed_actions(actions, domain, drop)  # (B, T, d)
        if self.use_action_tokens:
            h = torch.cat([h, cond.unsqueeze(2) + self.action_pos.expand(b, t, -1, -1)], dim=2)
        h = h + self.pos_embed[:, :t]
        modulation = cond if "modulate" in self.cfg.action_network else None
        causal = self.causal[:t, :t]
        for block in self.blocks:
            h = block(h, modulation, domain, causal)
        h = self.norm(h)
        pooled = h[:, :, s:].mean(2) if self.use_action_tokens else h.mean(2)
        return h[:, :, :s], pooled

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, S, d) -> (B, T, S, F, V)."""
        out = self.out(self.out_norm(feats))
        return out.unflatten(-1, (self.cfg.num_factored_vocabs, self.cfg.factored_vocab_size))

    def diffusion_condition(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, S, d) -> per-token condition z for the diffusion head (B, T, S, d)."""
        return self.out(self.out_norm(feats)) + self.diffusion_pos[:, : feats.shape[1]]

    def predict_actions(self, pooled: torch.Tensor, domain: str) -> torch.Tensor:
        """Pooled action-token features (B, T, d) -> normalised actions (B, T, A)."""
        return self.action_heads[domain](pooled)
