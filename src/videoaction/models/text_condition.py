"""The text encoder's life cycle, shared by every language-conditioned family.

* A *learned* encoder (``task_embedding``: one vector per instruction of a vocabulary the training setup fills
  from the dataset) is built with the policy; the policy holds it as ``text_encoder`` so its weights are saved.
* A *frozen pretrained* encoder (``clip``, ``sentence``) is built on first use from its local path, kept out of the
  state dict (checkpoints stay small, loading a checkpoint reads no text model) and moved to the caller's device.

Both check that their feature size is the one the network was built for.
"""

from __future__ import annotations

from typing import Sequence

import torch

from videoaction.errors import VideoActionError
from videoaction.nn.text import TextEncoder, TextEncoderConfig, build_text_encoder

LEARNED_KINDS = ("task_embedding", "none")  # weights (if any) live in the policy's state dict


class TextConditioning:
    """``encode(texts, device)`` -> (B, text_dim) features; ``learned`` is the module a policy must register."""

    def __init__(self, cfg: TextEncoderConfig):
        self.cfg = cfg
        self.learned: TextEncoder | None = build_text_encoder(cfg) if cfg.kind in LEARNED_KINDS else None
        self._frozen: TextEncoder | None = None

    @property
    def dim(self) -> int | None:
        """Feature size when known without loading a pretrained model (learned encoders); else None."""
        return int(self.learned.dim) if self.learned is not None else None

    def encoder(self, expected_dim: int) -> TextEncoder:
        if self.learned is not None:
            return self.learned
        if self._frozen is None:
            frozen = build_text_encoder(self.cfg).requires_grad_(False).eval()
            if int(frozen.dim) != expected_dim:
                raise VideoActionError(f"text encoder {self.cfg.kind} at {self.cfg.path}: feature size {frozen.dim} "
                                       f"but the model was built for model.text_dim {expected_dim}")
            self._frozen = frozen
        return self._frozen

    def encode(self, texts: Sequence[str], device: torch.device, expected_dim: int) -> torch.Tensor:
        """Instructions (list of B strings) -> (B, text_dim) float32 on ``device``."""
        if isinstance(texts, str) or len(texts) == 0:
            raise VideoActionError(f"language must be a non-empty list of strings, found {texts!r}")
        enc = self.encoder(expected_dim)
        if enc is self._frozen:
            enc.to(device)
        return enc.encode(list(texts)).to(device, torch.float32)
