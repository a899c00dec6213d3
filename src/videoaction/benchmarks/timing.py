"""Latency measurement shared by the benchmarks: warm-up, then per-call wall times (CUDA events on GPUs)."""

from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np
import torch


def measure_latency(fn: Callable[[], object], iters: int = 20, warmup: int = 3,
                    device: torch.device | str = "cpu") -> dict:
    """Call ``fn`` ``warmup`` times, then ``iters`` timed times; returns p50/p90/mean in milliseconds."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times)
    return {"p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "mean_ms": float(arr.mean()), "iters": iters}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
