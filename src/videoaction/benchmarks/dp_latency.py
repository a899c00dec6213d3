"""DP-C (Diffusion Policy, CNN) latency per action chunk at batch 1: ``predict_action`` on raw uint8 frames.

Same input format as the UVA benchmark: 96x96 uint8 frames (DP's To = 2 of them) plus the proprio state, end to end
(preprocessing, ResNet-18-GN encoder, all U-Net denoising steps, un-normalisation). Presets ``dp-tiny`` and
``dp-base`` (paper size, U-Net [512, 1024, 2048], ~263 M parameters), each with DDPM 100 steps (DP's PushT default)
and DDIM 16 steps (DP's real-robot setting). Weights are RANDOM: timings only, never quality. Per preset also a
breakdown record: observation encoding and one U-Net pass, so the dominant cost is visible.

``--quick`` keeps everything but DP-base DDPM-100 (about 100 U-Net passes of a 252 M-parameter net per call, ~1 min
on one loaded CPU core); pass ``samplers`` to force it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from videoaction.benchmarks.timing import machine_info, measure_latency

SAMPLERS: tuple[tuple[str, int], ...] = (("ddpm", 100), ("ddim", 16))
FRAME_SIZE = 96  # the environment's render size (PushT), same frames as the UVA benchmark


def _build(preset: str, device: str):
    from videoaction.models.dp.config import PRESETS
    from videoaction.models.dp.policy import DiffusionPolicy

    cfg = PRESETS[preset]()
    torch.manual_seed(0)
    return DiffusionPolicy(cfg).to(device).eval()


def _observation(policy, rng: np.random.Generator) -> dict[str, np.ndarray]:
    m = policy.mcfg
    obs = {"image": rng.integers(0, 256, (1, m.n_obs_steps, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)}
    if m.state_dim:
        obs["state"] = rng.uniform(0.0, 512.0, (1, m.n_obs_steps, m.state_dim)).astype(np.float32)
    return obs


def _plan(preset: str, quick: bool) -> tuple[tuple[tuple[str, int], ...], int, int]:
    """(samplers, iters, warmup) for a preset."""
    base = "base" in preset
    if quick:
        return (tuple(s for s in SAMPLERS if s != ("ddpm", 100)) if base else SAMPLERS), (2 if base else 5), 1
    return SAMPLERS, (3 if base else 20), (1 if base else 2)


def run(quick: bool = True, presets: tuple[str, ...] = ("dp-tiny", "dp-base"), threads: int | None = 1,
        device: str = "cpu", samplers: tuple[tuple[str, int], ...] | None = None, log=print) -> list[dict]:
    """One record per (preset, sampler) with p50 / p90 ms per ``predict_action`` call at batch 1, plus one
    ``dp_latency_breakdown`` record per preset.

    ``threads``: torch intra-op threads while timing on CPU (default 1, like the UVA benchmark: on a shared, loaded
    machine more threads make the figures erratic); restored afterwards. ``device``: ``cpu`` or ``cuda`` (CUDA-event
    timing). ``samplers``: ((name, steps), ...) to run for every preset instead of the quick/full plan.
    """
    old_threads = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    try:
        return _run(quick, presets, device, samplers, log)
    finally:
        torch.set_num_threads(old_threads)


def _run(quick: bool, presets, device: str, samplers, log) -> list[dict]:
    results: list[dict] = []
    info = machine_info()
    for preset in presets:
        plan, iters, warmup = _plan(preset, quick)
        plan = samplers or plan
        t0 = time.perf_counter()
        policy = _build(preset, device)
        n_params = sum(p.numel() for p in policy.parameters())
        log(f"[dp_latency] built {preset} ({n_params / 1e6:.1f} M params) in {time.perf_counter() - t0:.1f}s")
        obs = _observation(policy, np.random.default_rng(0))
        for sampler, steps in plan:
            gen = torch.Generator().manual_seed(0)
            with torch.inference_mode():
                stats = measure_latency(lambda: policy.predict_action(obs, sampler=sampler, num_steps=steps,
                                                                      generator=gen),
                                        iters=iters, warmup=warmup, device=device)
            rec = {"model": "dp", "benchmark": "dp_latency", "preset": preset, "sampler": sampler, "steps": steps,
                   "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "mean_ms": stats["mean_ms"],
                   "iters": stats["iters"], "batch": 1, "device": device,
                   "threads": info["cpu_threads"] if device == "cpu" else None, "weights": "random (timing only)",
                   "frame_size": FRAME_SIZE, "image_size": policy.cfg.dataset.image_size, "n_params": n_params,
                   "load_avg_1m": os.getloadavg()[0]}
            results.append(rec)
            log(f"[dp_latency] {preset:<8} {sampler:>5}-{steps:<3} p50 {stats['p50_ms']:9.1f} ms  "
                f"p90 {stats['p90_ms']:9.1f} ms")
        results.append(_breakdown(preset, policy, obs, device, iters, warmup, log))
        del policy
    return results


def _breakdown(preset: str, policy, obs, device: str, iters: int, warmup: int, log) -> dict:
    """Component times (p50 ms): preprocessing + image/proprio encoding, and one U-Net denoising pass."""
    m = policy.mcfg
    with torch.inference_mode():
        cond = policy._global_cond(policy.history_inputs(obs))
    traj = torch.randn(1, policy.horizon, m.action_dim, device=policy.device)
    t = torch.tensor(50, device=policy.device)

    def encode():
        return policy._global_cond(policy.history_inputs(obs))

    parts = {"encode_ms": encode, "unet_step_ms": lambda: policy.model(traj, t, cond)}
    rec = {"model": "dp", "benchmark": "dp_latency_breakdown", "preset": preset, "device": device,
           "weights": "random (timing only)", "threads": torch.get_num_threads() if device == "cpu" else None,
           "unet_params": sum(p.numel() for p in policy.model.parameters()),
           "encoder_params": sum(p.numel() for p in policy.obs_encoder.parameters())}
    for name, fn in parts.items():
        with torch.inference_mode():
            rec[name] = measure_latency(fn, iters=max(iters, 3), warmup=warmup, device=device)["p50_ms"]
    rec["load_avg_1m"] = os.getloadavg()[0]
    log(f"[dp_latency] {preset} breakdown (p50 ms): encode {rec['encode_ms']:.1f}, "
        f"one U-Net pass {rec['unet_step_ms']:.1f}")
    return rec


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--full" not in sys.argv), indent=1))
