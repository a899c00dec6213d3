"""Task modes, mask-ratio sampling and spatial masks of UVA training (uva.md §7-8), all driven by one generator.

Per batch: one task mode (uniform over the configured subset) and one mask ratio r from a truncated normal on
[mask_ratio_min, 1] (loc 1, std 0.25); per sample: a random permutation of the L spatial positions, the first
ceil(L * r) of which are masked. The same spatial mask applies to every future frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from videoaction.models.uva.config import TASK_MODES


@dataclass(frozen=True)
class ModeSpec:
    """What one task mode feeds the network and which losses it trains (the reference's table)."""

    future: str  # "masked" (mask -> fake_latent_x) | "fake" (all positions fake) | "visible"
    history: bool  # history frames visible (False -> fake_latent_x)
    actions: bool  # ground-truth actions enter through action_proj_cond (else fake_action_latent)
    video_loss: bool
    action_loss: bool


MODE_SPECS: dict[str, ModeSpec] = {
    "video_model": ModeSpec("masked", True, False, True, False),
    "dynamic_model": ModeSpec("masked", True, True, True, False),
    "policy_model": ModeSpec("fake", True, False, False, True),
    "inverse_model": ModeSpec("visible", False, False, False, True),
    "full_dynamic_model": ModeSpec("masked", True, False, True, True),
}
assert set(MODE_SPECS) == set(TASK_MODES)


def gen_device(generator: torch.Generator | None) -> torch.device:
    """Where random draws with ``generator`` must be made (its own device; CPU without one)."""
    return generator.device if generator is not None else torch.device("cpu")


def choose_mode(modes, generator: torch.Generator | None = None) -> str:
    """One task mode for the whole batch, uniform over ``modes``."""
    i = int(torch.randint(len(modes), (1,), generator=generator, device=gen_device(generator)).item())
    return modes[i]


def sample_mask_ratio(generator: torch.Generator | None = None, low: float = 0.7, high: float = 1.0,
                      loc: float = 1.0, std: float = 0.25) -> float:
    """Truncated normal N(loc, std) restricted to [low, high] by exact inverse-CDF sampling (float64)."""
    a = torch.tensor((low - loc) / std, dtype=torch.float64)
    b = torch.tensor((high - loc) / std, dtype=torch.float64)
    u = torch.rand((), generator=generator, dtype=torch.float64, device=gen_device(generator)).cpu()
    pa, pb = torch.special.ndtr(a), torch.special.ndtr(b)
    x = torch.special.ndtri(pa + u * (pb - pa))
    return float(min(max(loc + std * x.item(), low), high))


def random_orders(batch: int, length: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, L) int64: one random permutation of the L spatial positions per sample."""
    return torch.rand(batch, length, generator=generator, device=gen_device(generator)).argsort(dim=1).to(device)


def mask_from_orders(orders: torch.Tensor, n_masked: int) -> torch.Tensor:
    """(B, L) bool, True = masked: the first ``n_masked`` positions of each order."""
    b, length = orders.shape
    mask = torch.zeros(b, length, dtype=torch.bool, device=orders.device)
    if n_masked > 0:
        mask.scatter_(1, orders[:, :n_masked], True)
    return mask


def random_spatial_mask(batch: int, length: int, ratio: float, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, L) bool with ceil(L * ratio) masked positions per sample (own permutation per sample)."""
    n = min(length, math.ceil(length * ratio))
    return mask_from_orders(random_orders(batch, length, generator, device), n)


def cosine_mask_len(step: int, num_iter: int, length: int, n_masked_now: int) -> int:
    """MAR's schedule: floor(L * cos(pi/2 * (step+1)/num_iter)), clamped to [1, n_masked_now - 1]."""
    n = math.floor(length * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
    return int(max(1, min(n_masked_now - 1, n)))
