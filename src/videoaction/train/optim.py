"""Optimizer step pieces of the training loop, without per-parameter Python loops.

* :func:`make_adamw`: AdamW with the fused kernel (one C++ pass over all parameters, CPU and CUDA) where this
  torch build has it for the parameters' device, else the multi-tensor ``foreach`` path; the plain per-tensor loop
  never runs. Same update rule and state dict (checkpoints resume across the three).
* :func:`clip_gradients`: global-norm clipping through ``torch._foreach_norm`` / ``_foreach_mul_`` (accelerate's
  ``clip_grad_norm_`` and torch's default take a per-tensor path on a CPU); returns the norm before clipping, or only
  measures it when ``max_norm <= 0``.

On a 1-thread CPU step of ``uva-tiny`` (8 M parameters) these replace ~35 ms of AdamW and ~20 ms of clipping by
~10 ms together (``videoaction bench --sections training`` shows the total).
"""

from __future__ import annotations

from typing import Iterable

import torch


def make_adamw(param_groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (fused where supported, else foreach)."""
    betas = (float(betas[0]), float(betas[1]))
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # device / dtype without a fused kernel
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, foreach=True)


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """``fused`` / ``foreach`` / ``for-loop``: which AdamW implementation ``optimizer`` runs."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    group = inner.param_groups[0] if inner.param_groups else {}
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"


@torch.no_grad()
def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients of ``params`` so their global L2 norm is at most ``max_norm`` (no-op if <= 0).

    Returns the norm before clipping (``nan`` / ``inf`` pass through, and then nothing is scaled)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    by_key: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:  # foreach kernels need one device and dtype per call
        by_key.setdefault((g.device, g.dtype), []).append(g)
    norms = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(group)).float())
             for group in by_key.values()]
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    value = float(total)
    if max_norm > 0 and value > max_norm and torch.isfinite(total):
        coef = max_norm / (value + 1e-6)
        for group in by_key.values():
            torch._foreach_mul_(group, coef)
    return value
