"""The [cond; uncond] batch layout of classifier-free guidance, in one place.

A guided pass runs the network once on a doubled batch: rows ``[:B]`` conditional, rows ``[B:]`` unconditional
(the guidance condition dropped). :func:`doubled` builds such a batch from one input, :func:`uncond_flags` marks
its unconditional half, and :func:`per_half` applies a selection to each half and keeps the layout (the heads
expect ``[all cond rows; all uncond rows]``, see :class:`videoaction.nn.diffusion.DiffusionHead`).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T", torch.Tensor, None)


def doubled(x: T) -> T:
    """(B, ...) -> (2B, ...) = [x; x]; None stays None."""
    return None if x is None else torch.cat([x, x])


def uncond_flags(b: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(2B,) bool, True on the unconditional half."""
    return torch.arange(2 * b, device=device) >= b


def per_half(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """[fn(cond half); fn(uncond half)] of a doubled batch x (2B, ...)."""
    b = x.shape[0] // 2
    return torch.cat([fn(x[:b]), fn(x[b:])])
