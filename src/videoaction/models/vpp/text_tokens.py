"""Instruction tokens for the TVP's cross-attention, and the pooled goal vector of the stage-2 action head.

VPP's recipe (vpp.md §2): HF CLIP text model, ``padding="max_length"``, truncation, ``max_length`` 20;
``last_hidden_state`` (B, 20, 512), optional fixed 1-D sin-cos positional encoding, the tokens concatenated with
themselves on channels up to the UNet's cross-attention width (512 -> 1024). The reference also loads a second
(OpenAI) CLIP for the action head's goal; here the goal is ``text_embeds`` of the same model (one text encoder).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from videoaction.models.vpp.config import TextConfig
from videoaction.nn.text import TextEncoderError, _FrozenHF, _local_dir, _require_transformers


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos positional encoding (length, dim): first half sin, second half cos."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    pos = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    pe = torch.cat([pos.sin(), pos.cos()], dim=1)
    if dim % 2:
        pe = torch.cat([pe, torch.zeros(length, 1, dtype=pe.dtype)], dim=1)
    return pe.float()


class CLIPTokens(_FrozenHF):
    """Frozen ``CLIPTextModelWithProjection`` from a local folder; per string: [tokens.flatten(), text_embeds]."""

    def __init__(self, path: str | None, max_length: int):
        transformers = _require_transformers("clip")
        d = _local_dir("clip", path)
        try:
            conf = transformers.AutoConfig.from_pretrained(d, local_files_only=True)
            if conf.model_type == "clip":  # a whole CLIPModel folder (openai/clip-vit-base-patch32): its text half
                text_conf = conf.text_config
                text_conf.projection_dim = conf.projection_dim
                conf = text_conf
            model = transformers.CLIPTextModelWithProjection.from_pretrained(d, config=conf, local_files_only=True)
            tok = transformers.CLIPTokenizer.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise TextEncoderError(f"VPP text: cannot load CLIPTextModelWithProjection + CLIPTokenizer from {d} "
                                   f"({type(exc).__name__}: {exc})") from None
        super().__init__(model, tok, max_length)
        self.width = int(model.config.hidden_size)
        self.dim = int(model.config.projection_dim)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self._tokens(texts)
        out = self.hf_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return torch.cat([out.last_hidden_state.flatten(1), out.text_embeds], dim=1)


class TextTokens(nn.Module):
    """``forward(texts) -> (tokens (B, max_length, cross_dim), goal (B, goal_dim))``.

    ``cfg.kind``: ``clip`` (frozen, weights re-read from ``cfg.path``, not in the state dict), ``task_tokens``
    (learned tokens per known instruction; the instruction list is stored in the config) or ``none`` (zeros)."""

    def __init__(self, cfg: TextConfig, cross_dim: int):
        super().__init__()
        self.cfg, self.cross_dim, self.length = cfg, cross_dim, cfg.max_length
        self._clip: list[CLIPTokens] = []
        if cfg.kind == "clip":
            clip = CLIPTokens(cfg.path, cfg.max_length)
            cfg.dim, cfg.goal_dim = clip.width, clip.dim  # the model's sizes are the truth
            self._clip.append(clip)
        elif cfg.kind == "task_tokens":
            vocab = sorted({str(v).strip() for v in cfg.vocabulary})
            if not vocab:
                raise TextEncoderError("VPP text 'task_tokens': empty vocabulary; train on a store with a language "
                                       "column (dataset.language_key) or set model.text.vocabulary")
            cfg.vocabulary, cfg.goal_dim = tuple(vocab), cfg.dim
            self._index = {v: i for i, v in enumerate(vocab)}
            self.tokens = nn.Embedding(len(vocab), cfg.max_length * cfg.dim)
            nn.init.normal_(self.tokens.weight, std=1.0)
        if cross_dim % cfg.dim:
            raise TextEncoderError(f"VPP text: token width {cfg.dim} does not divide the UNet cross-attention width "
                                   f"{cross_dim} (tokens are concatenated with themselves to fill it)")
        self.register_buffer("pos", sincos_1d(cfg.max_length, cfg.dim), persistent=False)

    def _apply(self, fn, recurse=True):
        for clip in self._clip:
            clip._apply(fn)
        return super()._apply(fn, recurse)

    def raw(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-duplicated tokens (B, L, dim) and goal (B, goal_dim)."""
        b, c, dev = len(texts), self.cfg, self.pos.device
        if c.kind == "none":
            return torch.zeros(b, self.length, c.dim, device=dev), torch.zeros(b, c.goal_dim, device=dev)
        if c.kind == "clip":
            flat = self._clip[0].encode(list(texts)).to(dev, torch.float32)
            return flat[:, : self.length * c.dim].reshape(b, self.length, c.dim), flat[:, self.length * c.dim:]
        idx = []
        for t in texts:
            i = self._index.get(str(t).strip())
            if i is None:
                raise TextEncoderError(f"VPP text: unknown instruction {t!r}; this model knows "
                                       f"{list(self._index)[:10]} ({len(self._index)} in all)")
            idx.append(i)
        tok = self.tokens(torch.tensor(idx, device=dev)).reshape(b, self.length, c.dim)
        return tok, tok.mean(1)

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TextEncoderError(f"VPP text: expected a list of instructions, found the string {texts!r}")
        tok, goal = self.raw(texts)
        if self.cfg.pos_encoding:
            tok = tok + self.pos.to(tok.dtype)
        return tok.repeat(1, 1, self.cross_dim // self.cfg.dim), goal  # (B, L, cross_dim): [t ; t ; ...]


def text_dropout(tokens: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Zero the text states of a random ``prob`` fraction of the batch (CFG training; uncond = zeros)."""
    if prob <= 0:
        return tokens
    dev = generator.device if generator is not None else tokens.device
    keep = torch.rand(tokens.shape[0], generator=generator, device=dev).to(tokens.device) >= prob
    return tokens * keep[:, None, None].to(tokens.dtype)


