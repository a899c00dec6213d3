"""VPP latency per action chunk at batch 1, per stage (vpp.md §9): VAE encode, text, the truncated UNet pass, Video
Former, action sampling (``models.vpp.latency.stage_latency``), beside UVA and DP-C in ``videoaction bench``.

Preset ``vpp-tiny`` (CPU) with learned instruction tokens; ``vpp-base`` needs the released SVD folder and is only
timed when ``presets`` names it and ``svd_path`` is given. Weights are RANDOM: timings only, never quality. The
sampler is the protocol's DDIM with 10 steps (vpp.md §7).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from videoaction.benchmarks.timing import machine_info

SAMPLER = ("ddim", 10)
INSTRUCTIONS = ("open the drawer", "push the red block")


def _build(preset: str, device: str, svd_path: str | None = None):
    from videoaction.models.vpp.config import PRESETS
    from videoaction.models.vpp.policy import VPPPolicy

    cfg = PRESETS[preset]()
    if svd_path:
        cfg.model.svd_path = svd_path
    if cfg.model.text.kind == "task_tokens":
        cfg.model.text.vocabulary = INSTRUCTIONS
    torch.manual_seed(0)
    return VPPPolicy(cfg).to(device).eval()


def run(quick: bool = True, presets: tuple[str, ...] = ("vpp-tiny",), threads: int | None = 1, device: str = "cpu",
        svd_path: str | None = None, log=print) -> list[dict]:
    """One record per preset: ``p50_ms`` / ``p90_ms`` of the whole call and ``stages_ms`` (the stages of the median
    call, which add up to its total)."""
    from videoaction.models.vpp.latency import STAGES, stage_latency

    old = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    rows, info = [], machine_info()
    try:
        for preset in presets:
            t0 = time.perf_counter()
            policy = _build(preset, device, svd_path)
            size = policy.cfg.dataset.image_size
            log(f"[vpp_latency] built {preset} in {time.perf_counter() - t0:.1f}s")
            obs = {"image": np.random.default_rng(0).integers(0, 256, (1, 1, size, size, 3), dtype=np.uint8),
                   "language": [INSTRUCTIONS[0]]}
            repeats = 3 if quick else 10
            totals: list[float] = []
            ms = stage_latency(policy, obs, repeats=repeats, warmup=1, steps=SAMPLER[1], totals=totals)
            rows.append({"model": "vpp", "benchmark": "vpp_latency", "preset": preset, "sampler": SAMPLER[0],
                         "steps": SAMPLER[1], "p50_ms": ms["total"],
                         "p90_ms": round(max(float(np.percentile(totals, 90)), ms["total"]), 2),
                         "stages_ms": {k: ms[k] for k in STAGES}, "iters": repeats, "batch": 1, "device": device,
                         "threads": info["cpu_threads"] if device == "cpu" else None,
                         "weights": "random (timing only)", "image_size": size,
                         "trained_params": sum(p.numel() for p in policy.parameters() if p.requires_grad),
                         "load_avg_1m": os.getloadavg()[0]})
            log(f"[vpp_latency] {preset}: " + ", ".join(f"{k} {ms[k]:.1f}" for k in STAGES) +
                f"; total {ms['total']:.1f} ms")
            del policy
    finally:
        torch.set_num_threads(old)
    return rows
