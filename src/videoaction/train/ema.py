"""Exponential moving average of a model's weights, with its step counter saved (the reference loses it).

Decay after ``n`` updates (Diffusion Policy's / diffusers' ``EMAModel`` with warm-up)::

    k = max(0, n - update_after_step - 1)
    decay = 0                                            if k == 0
    decay = clip(1 - (1 + k / inv_gamma) ** -power, min_decay, max_decay)   otherwise

with inv_gamma 1, power 0.75, max 0.9999 (uva.md §10). We keep a full copy of the module (not only its
parameters as diffusers does) so buffers such as the normaliser statistics travel with the EMA weights and the
averaged model can be saved with ``Policy.save_pretrained(..., ema=...)`` and loaded with ``load_policy``.
Frozen parameters (e.g. a frozen tokenizer) are copied at construction, buffers at every update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(n_updates: int, power: float = 0.75, max_decay: float = 0.9999, inv_gamma: float = 1.0,
              min_decay: float = 0.0, update_after_step: int = 0) -> float:
    """Decay used by the ``n_updates``-th update (1-based), same formula as diffusers' ``EMAModel.get_decay``."""
    k = max(0, n_updates - update_after_step - 1)
    if k <= 0:
        return 0.0
    value = 1.0 - (1.0 + k / inv_gamma) ** -power
    return max(min(value, max_decay), min_decay)


class EMA:
    """Averaged copy of ``model``: ``update(model)`` after every optimizer step; ``module`` is the EMA model."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999, inv_gamma: float = 1.0,
                 min_decay: float = 0.0):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.power, self.max_decay, self.inv_gamma, self.min_decay = power, max_decay, inv_gamma, min_decay
        self.n_updates = 0
        self.last_decay = 0.0
        self._pairs: tuple | None = None  # (source model id, [(ema, param)] trained, [(ema, buffer)])

    def _pairs_of(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(averaged, trained, ema buffers, model buffers) tensor lists, built once per source model: the update
        itself is then two multi-tensor calls with no per-parameter Python."""
        if self._pairs is None or self._pairs[0] != id(model):
            ema_params = dict(self.module.named_parameters())
            ema_buffers = dict(self.module.named_buffers())
            pairs = [(ema_params[n], p) for n, p in model.named_parameters() if p.requires_grad]
            bufs = [(ema_buffers[n], b) for n, b in model.named_buffers() if n in ema_buffers]
            self._pairs = (id(model), [a for a, _ in pairs], [p for _, p in pairs], [a for a, _ in bufs],
                           [b for _, b in bufs])
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the current weights of ``model`` (same architecture) into the average; returns the decay used."""
        self.n_updates += 1
        decay = ema_decay(self.n_updates, self.power, self.max_decay, self.inv_gamma, self.min_decay)
        self.last_decay = decay
        averaged, trained, ema_bufs, bufs = self._pairs_of(model)  # frozen parameters: copied at construction
        if averaged:
            if any(a.dtype != t.dtype or a.device != t.device for a, t in zip(averaged, trained)):
                trained = [t.detach().to(a.device, a.dtype) for a, t in zip(averaged, trained)]
            torch._foreach_lerp_(averaged, [t.detach() for t in trained], 1.0 - decay)  # ema += (1-d) (p - ema)
        for dst, src in zip(ema_bufs, bufs):  # normaliser statistics and index buffers: plain copies
            dst.copy_(src)
        return decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], n_updates: int) -> None:
        self.module.load_state_dict(state)
        self.n_updates = int(n_updates)

    def to(self, device) -> "EMA":
        self.module.to(device)
        self._pairs = None  # parameters may be new tensors
        return self
