"""Iterative decoding of one frame: MaskGIT (discrete ids) and MAR (continuous latents), model-agnostic.

Both take a prediction function of the current tokens and mask, so they run on the HMA network or on a toy oracle
(tests). Schedule: after step s of K, ``floor(S cos(pi/2 (s + 1) / K))`` positions stay masked (0 after the last).

* MaskGIT: every step samples all still-masked positions (greedy when ``temperature <= 0``), then re-masks the
  scheduled number among them, chosen at random (the reference's ``unmask_mode="random"``) or least confident first.
* MAR: one random order per sample; each step predicts exactly the positions leaving the mask and **adds them to
  the known set** (the reference re-sampled every position not in the next mask at every step, hma.md §10.1), so
  each position is sampled once.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def masked_after(step: int, steps: int, n: int) -> int:
    """Positions still masked after ``step`` (0-based) of ``steps``: floor(n cos(pi/2 (step+1)/steps))."""
    return int(math.floor(n * math.cos(math.pi / 2 * (step + 1) / steps) + 1e-6)) if step + 1 < steps else 0


def _sample_factors(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """logits (B, S, F, V) -> factor ids (B, S, F) and the probability of the drawn ids (B, S)."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-8), dim=-1)
    if temperature <= 0:
        ids = logits.argmax(-1)
    else:
        flat = probs.reshape(-1, probs.shape[-1])
        ids = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    conf = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).prod(-1)
    return ids, conf


@torch.no_grad()
def maskgit_frame(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                  mask: torch.Tensor, t: int, vocab: int, steps: int = 2, temperature: float = 0.0,
                  unmask_mode: str = "random", generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill frame ``t`` of ids ``tokens`` (B, T, S) where ``mask`` (B, T, S) is True (frames > t stay masked).

    ``logits_fn(tokens, mask) -> (B, S, F, V)`` logits for frame t; ``vocab`` = V (factor size). Returns a copy."""
    tokens, mask = tokens.clone(), mask.clone()
    todo = mask[:, t].clone()  # (B, S) positions of frame t still unknown
    b, s = todo.shape
    for step in range(steps):
        logits = logits_fn(tokens, mask)
        ids, conf = _sample_factors(logits, temperature, generator)
        value = sum(ids[..., i] * vocab ** i for i in range(ids.shape[-1]))  # (B, S)
        frame = torch.where(todo, value, tokens[:, t])
        remain = masked_after(step, steps, s)
        if unmask_mode == "random":
            score = torch.rand((b, s), generator=generator, device=tokens.device)
        else:
            score = conf.float()
        score = torch.where(todo, score, torch.full_like(score, math.inf))  # known positions are never re-masked
        new_todo = torch.zeros_like(todo)
        if remain > 0:
            lowest = score.argsort(dim=1)[:, :remain]
            new_todo.scatter_(1, lowest, True)
            new_todo &= todo
        tokens[:, t] = frame
        todo = new_todo
        mask[:, t] = todo
    return tokens


@torch.no_grad()
def mar_frame(z_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              sample_fn: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, mask: torch.Tensor, t: int,
              steps: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill frame ``t`` of patches ``latents`` (B, T, S, C) where ``mask`` (B, T, S) is True.

    ``z_fn(latents, mask) -> (B, S, Z)`` conditions for frame t; ``sample_fn(z (N, Z)) -> (N, C)`` draws tokens (the
    diffusion head, CFG inside). Known positions are never re-sampled. Returns a copy."""
    latents, mask = latents.clone(), mask.clone()
    todo = mask[:, t].clone()
    b, s = todo.shape
    order = torch.rand((b, s), generator=generator, device=latents.device)
    order = torch.where(todo, order, torch.full_like(order, math.inf)).argsort(dim=1)  # unknown positions first
    n_todo = todo.sum(1)  # (B,)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s, device=order.device).expand(b, s).contiguous())
    for step in range(steps):
        frac = math.cos(math.pi / 2 * (step + 1) / steps) if step + 1 < steps else 0.0
        remain = torch.floor(n_todo.double() * frac + 1e-6).long()  # (B,) unknown positions kept masked
        keep_masked = rank < remain.unsqueeze(1)  # the first `remain` of the order stay masked
        predict = todo & ~keep_masked
        if predict.any():
            z = z_fn(latents, mask)  # (B, S, Z)
            frame = latents[:, t].clone()
            frame[predict] = sample_fn(z[predict]).to(frame.dtype)
            latents[:, t] = frame
        todo = todo & keep_masked
        mask[:, t] = todo  # the known set grows (hma.md §10.1 fix)
    return latents


@torch.no_grad()
def generate_frames(fill_frame: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], tokens: torch.Tensor,
                    n_prompt: int, teacher_forced: bool = False) -> torch.Tensor:
    """Frames ``n_prompt..T-1`` one at a time. Autoregressive: each frame is conditioned on the generated ones
    (later frames masked); teacher-forced: on the ground truth before it. ``fill_frame(tokens, mask, t)`` returns
    tokens with frame t filled. -> tokens with every frame >= n_prompt predicted."""
    b, T, s = tokens.shape[:3]
    out = tokens.clone()
    for t in range(n_prompt, T):
        mask = torch.zeros((b, T, s), dtype=torch.bool, device=tokens.device)
        mask[:, t:] = True
        context = tokens.clone() if teacher_forced else out.clone()
        filled = fill_frame(context, mask, t)
        out[:, t] = filled[:, t]
    return out
