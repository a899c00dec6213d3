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
def teacher_forced_ce(policy: HMAPolicy, tokens: torch.Tensor, actions: torch.Tensor, domain: str,
                      n_prompt: int) -> dict[str, float]:
    """Discrete variant: cross-entropy (nats per token, summed over the vocabulary factors, no label smoothing) and
    accuracy of the one-pass prediction of each frame t >= ``n_prompt`` from the true frames before it (frame t
    fully masked; later frames cannot be seen through the causal temporal attention). Baseline: ``ce_uniform``."""
    m = policy.mcfg
    if m.variant != "discrete":
        raise ValueError("teacher_forced_ce: the discrete variant only")
    x = policy.to_sequence(tokens.to(policy.device))
    acts = actions.to(policy.device).float()
    b, t, s = x.shape[:3]
    V, Fn = m.factored_vocab_size, m.num_factored_vocabs
    ce, acc = [], []
    for f in range(n_prompt, t):
        mask = torch.zeros((b, t, s), dtype=torch.bool, device=x.device)
        mask[:, f] = True
        feats, _ = policy.net(x, mask, acts, domain)
        logits = policy.net.logits(feats[:, f])  # (B, S, F, V)
        target = torch.stack([(x[:, f] // V ** i) % V for i in range(Fn)], dim=-1)  # (B, S, F)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, V).float(), target.reshape(-1), reduction="none")
        ce.append(nll.reshape(b, s, Fn).sum(-1).mean())
        acc.append((logits.argmax(-1) == target).all(-1).float().mean())
    return {"tf_ce": float(torch.stack(ce).mean()), "tf_token_acc": float(torch.stack(acc).mean()),
            "ce_uniform": float(Fn * np.log(V)), "tf_ce_per_frame": [float(c) for c in ce]}


@torch.no_grad()
def video_metrics(policy: HMAPolicy, decode: Callable[[torch.Tensor], np.ndarray], tokens: torch.Tensor,
                  actions: torch.Tensor, domain: str, n_prompt: int, teacher_forced: bool = False, seed: int = 0,
                  frames_out: dict | None = None, **gen_kw) -> dict[str, float]:
    """PSNR (capped at 100 dB per frame) / SSIM of the generated frames and of copy-last-prompt-frame, and seconds
    per generated frame. ``frames_out``, if a dict, receives the uint8 frames ``pred``, ``target`` (the tokenizer's
    decoding of the true tokens) and ``copy_last``, each (B, T - n_prompt, H, W, 3)."""
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
    if frames_out is not None:
        frames_out.update(pred=frames[:, n_prompt:], target=target[:, n_prompt:], copy_last=copy)
    if policy.mcfg.variant == "discrete":
        out["token_acc"] = float((pred[:, n_prompt:] == tokens[:, n_prompt:].to(pred.device)).float().mean())
        out["token_acc_copy_last"] = float((tokens[:, n_prompt:] == tokens[:, n_prompt - 1: n_prompt]).float().mean())
    return out
