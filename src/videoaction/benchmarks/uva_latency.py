"""UVA policy latency per action chunk (batch 1): ``predict_action`` on raw uint8 frames, end to end.

Presets ``uva-tiny`` (small tokenizer, 64 px) and ``uva-base`` (paper: kl16 at 256 px, MAR-B, heads d6 w1024), each
with the action head sampled by: DDPM 100 steps (reference), DDIM 16, DPM-Solver++ 16, DPM-Solver++ 4 (same trained
DDPM head) and a flow-matching head with 4 Euler steps (a differently trained head; same size). Weights are RANDOM:
the figures are timings only, never quality. Also reported per preset: the tokenizer encode of the history frames,
one transformer pass, and the action-head sampling alone, so the dominant cost is visible.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch

from videoaction.benchmarks.timing import machine_info, measure_latency

HEADS = [("ddpm", 100, "ddpm"), ("ddim", 16, "ddpm"), ("dpm", 16, "ddpm"), ("dpm", 4, "ddpm"), ("euler", 4, "flow")]


def _build(preset: str, objective: str):
    from videoaction.config import get_preset
    from videoaction.models.uva.policy import UVAPolicy

    cfg = get_preset(preset)
    if objective == "flow":
        cfg.model.action_head.objective, cfg.model.action_head.sampler = "flow", "euler"
    torch.manual_seed(0)
    return UVAPolicy(cfg, allow_random_tokenizer=True).eval()


def _time(fn: Callable[[], object], iters: int, warmup: int) -> dict:
    with torch.inference_mode():
        return measure_latency(fn, iters=iters, warmup=warmup)


def run(quick: bool = True, presets: tuple[str, ...] = ("uva-tiny", "uva-base"), threads: int | None = 1,
        log=print) -> list[dict]:
    """One record per (preset, head sampler): p50 / p90 ms per ``predict_action`` call at batch 1 (CPU).

    ``threads``: torch intra-op threads while timing (default 1: on a shared, loaded machine more threads make
    the figures 5-10x worse and erratic); restored afterwards. Each record carries the 1-minute load average.
    """
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(quick, presets, log)
    finally:
        torch.set_num_threads(old_threads)


def _run(quick: bool, presets: tuple[str, ...], log) -> list[dict]:
    results: list[dict] = []
    info = machine_info()
    for preset in presets:
        base = preset.startswith("uva-base")
        iters, warmup = (2, 1) if (quick and base) else ((5, 1) if quick else (10 if base else 30, 2))
        policies = {}
        for sampler, steps, objective in HEADS:
            if objective not in policies:
                t0 = time.perf_counter()
                policies[objective] = _build(preset, objective)
                log(f"[uva_latency] built {preset} ({objective} head) in {time.perf_counter() - t0:.1f}s")
            policy = policies[objective]
            spec = policy.observation_spec()["image"].shape
            obs = {"image": np.random.default_rng(0).integers(0, 256, (1, *spec), dtype=np.uint8)}
            gen = torch.Generator().manual_seed(0)
            stats = _time(lambda: policy.predict_action(obs, sampler=sampler, num_steps=steps, generator=gen),
                          iters, warmup)
            rec = {"model": "uva", "benchmark": "uva_latency", "preset": preset, "sampler": sampler, "steps": steps,
                   "head_objective": objective, "batch": 1, "device": "cpu", "threads": info["cpu_threads"],
                   "weights": "random (timing only)", "image_size": policy.cfg.dataset.image_size,
                   "tokens": policy.model.n_tokens, "n_params": sum(p.numel() for p in policy.model.parameters()),
                   "load_avg_1m": os.getloadavg()[0], **stats}
            results.append(rec)
            log(f"[uva_latency] {preset:<9} {sampler:>5}-{steps:<3} p50 {stats['p50_ms']:9.1f} ms  "
                f"p90 {stats['p90_ms']:9.1f} ms")
        results.append(_cached(preset, policies["ddpm"], iters, warmup, log))
        results.append(_breakdown(preset, policies["ddpm"], iters, warmup, log))
        del policies
    return results


def _cached(preset: str, policy, iters: int, warmup: int, log, sampler: str = "ddim", steps: int = 16) -> dict:
    """Steady state of a rollout with the latent cache: each call sees the window shifted by ``n_action_steps``
    frames, so only the history frames not seen before are encoded (2 of 4 for UVA's 16-frame window)."""
    spec = policy.observation_spec()["image"].shape
    shift, n_calls = policy.n_action_steps, iters + warmup + 1
    seq = np.random.default_rng(1).integers(0, 256, (1, spec[0] + shift * n_calls, *spec[1:]), dtype=np.uint8)
    calls = iter(range(n_calls))
    gen = torch.Generator().manual_seed(0)
    policy.enable_latent_cache(64)
    policy.predict_action({"image": seq[:, : spec[0]]}, sampler=sampler, num_steps=steps, generator=gen)

    def step():
        k = next(calls) + 1
        policy.predict_action({"image": seq[:, k * shift: k * shift + spec[0]]}, sampler=sampler, num_steps=steps,
                              generator=gen)

    try:
        stats = _time(step, iters, warmup)
    finally:
        policy.enable_latent_cache(0)
    log(f"[uva_latency] {preset:<9} {sampler:>5}-{steps:<3} + latent cache p50 {stats['p50_ms']:9.1f} ms  "
        f"p90 {stats['p90_ms']:9.1f} ms")
    return {"model": "uva", "benchmark": "uva_latency", "preset": preset, "sampler": sampler, "steps": steps,
            "latent_cache": True,
            "head_objective": "ddpm", "batch": 1, "device": "cpu", "threads": torch.get_num_threads(),
            "weights": "random (timing only)", "load_avg_1m": os.getloadavg()[0], **stats}


def _breakdown(preset: str, policy, iters: int, warmup: int, log) -> dict:
    """Component times: tokenizer encode of the history, one encoder/decoder pass, action-head sampling (100 / 16)."""
    spec = policy.observation_spec()["image"].shape
    obs = {"image": np.random.default_rng(0).integers(0, 256, (1, *spec), dtype=np.uint8)}
    with torch.inference_mode():
        cond = policy.condition(obs)
        z = policy._forward(cond)
    frames = policy.preprocess(obs["image"][:, policy.history_positions])
    head = policy.model.diffactloss
    parts = {
        "encode_ms": lambda: policy.encode_frames(frames),
        "transformer_ms": lambda: policy._forward(cond),
        "action_head_ddpm100_ms": lambda: head.sample_actions(z, num_steps=100, sampler="ddpm"),
        "action_head_ddim16_ms": lambda: head.sample_actions(z, num_steps=16, sampler="ddim"),
    }
    rec = {"benchmark": "uva_latency_breakdown", "preset": preset, "device": "cpu", "weights": "random (timing only)",
           "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}
    for name, fn in parts.items():
        rec[name] = _time(fn, iters, warmup)["p50_ms"]
    rec["load_avg_1m"] = os.getloadavg()[0]
    log(f"[uva_latency] {preset} breakdown (p50 ms): " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in rec.items()
                                                                   if k.endswith("_ms")))
    return rec


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--full" not in sys.argv), indent=1))
