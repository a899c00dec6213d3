"""HMA video metrics on held-out windows: PSNR / SSIM of generated frames, Delta-PSNR controllability, time per frame.

Delta-PSNR (Genie-style, hma.md §8) = PSNR(frames generated with the true actions) - mean over trials of
PSNR(frames generated with random actions ~ N(dataset mean, std)); ~0 for a model that ignores its actions.
``decode`` maps dataset tokens (B, T, ...) to uint8 frames (B, T, H, W, 3) (the tokenizer's decoder).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from videoaction.eval.metrics import psnr, ssim

from .policy import HMAPolicy


MAX_PSNR = 100.0  # identical frames count as 100 dB (a mean over frames stays finite)


def _frames_psnr(pred: np.ndarray, target: np.ndarray, n_prompt: int) -> float:
    vals = psnr(pred[:, n_prompt:], target[:, n_prompt:], reduce=False)
    return float(np.minimum(vals, MAX_PSNR).mean())


@torch.no_grad()
def delta_psnr(policy: HMAPolicy, decode: Callable[[torch.Tensor], np.ndarray], tokens: torch.Tensor,
               actions: torch.Tensor, domain: str, n_prompt: int, trials: int = 3, seed: int = 0,
               **gen_kw) -> dict[str, float]:
    """-> ``psnr`` (true actions), ``psnr_random`` (mean over trials), ``delta_psnr`` (their difference)."""
    stem = policy.net.stems[domain]
    target = decode(tokens)
    g = torch.Generator().manual_seed(seed)
    pred = policy.generate(tokens, actions, domain, n_prompt, generator=torch.Generator().manual_seed(seed), **gen_kw)
    p_true = _frames_psnr(decode(pred), target, n_prompt)
    rand = []
    for _ in range(trials):
        fake = stem.mean + stem.std * torch.randn(actions.shape, generator=g)
        pr = policy.generate(tokens, fake, domain, n_prompt, generator=torch.Generator().manual_seed(seed), **gen_kw)
        rand.append(_frames_psnr(decode(pr), target, n_prompt))
    return {"psnr": p_true, "psnr_random": float(np.mean(rand)), "delta_psnr": p_true - float(np.mean(rand))}


@torch.no_grad()
def video_metrics(policy: HMAPolicy, decode: Callable[[torch.Tensor], np.ndarray], tokens: torch.Tensor,
                  actions: torch.Tensor, domain: str, n_prompt: int, teacher_forced: bool = False, seed: int = 0,
                  **gen_kw) -> dict[str, float]:
    """PSNR (capped at 100 dB per frame) / SSIM of the generated frames and of copy-last-prompt-frame, and seconds per generated frame."""
    target = decode(tokens)
    t0 = time.perf_counter()
    pred = policy.generate(tokens, actions, domain, n_prompt, teacher_forced=teacher_forced,
                           generator=torch.Generator().manual_seed(seed), **gen_kw)
    gen_s = (time.perf_counter() - t0) / max(1, (tokens.shape[1] - n_prompt) * tokens.shape[0])
    frames = decode(pred)
    copy = np.repeat(target[:, n_prompt - 1: n_prompt], target.shape[1] - n_prompt, axis=1)
    out = {"psnr": _frames_psnr(frames, target, n_prompt),
           "ssim": ssim(frames[:, n_prompt:], target[:, n_prompt:]),
           "psnr_copy_last": _frames_psnr(copy, target[:, n_prompt:], 0), "ssim_copy_last": ssim(copy, target[:, n_prompt:]),
           "gen_s_per_frame": gen_s}
    if policy.mcfg.variant == "discrete":
        out["token_acc"] = float((pred[:, n_prompt:] == tokens[:, n_prompt:].to(pred.device)).float().mean())
        out["token_acc_copy_last"] = float((tokens[:, n_prompt:] == tokens[:, n_prompt - 1: n_prompt]).float().mean())
    return out
