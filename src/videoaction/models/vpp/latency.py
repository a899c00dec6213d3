"""Latency of each stage of a VPP policy call (vpp.md §9): VAE encode, text, UNet pass, Video Former, action sampling.

``stage_latency(policy, obs)`` runs the same computation as ``predict_action`` piece by piece (every camera of
``policy.history_layout.cameras``; synchronising the device after each) and returns the milliseconds per stage
of the median (by total) of ``repeats`` calls after ``warmup`` calls.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch

STAGES = ("encode", "text", "unet_pass", "video_former", "action_sampling")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stage_latency(policy, obs: Mapping[str, Any], repeats: int = 5, warmup: int = 1,
                  steps: int | None = None, totals: list[float] | None = None) -> dict[str, float]:
    """ms per stage (and ``total``) of the median of ``repeats`` ``predict_action``-equivalent calls on ``obs``
    (by total time; the stages are that call's, so they add up to the total). ``totals``, when given, receives
    every measured call's total ms (for percentiles)."""
    dev = policy.device
    runs: dict[str, list[float]] = {k: [] for k in (*STAGES, "total")}
    for i in range(warmup + repeats):
        t: dict[str, float] = {}
        start = last = time.perf_counter()

        def mark(name: str) -> None:
            nonlocal last
            _sync(dev)
            now = time.perf_counter()
            t[name] = (now - last) * 1000
            last = now

        inputs = policy.history_inputs(obs)  # every camera (B, 1, 3, S, S), validated
        z0 = policy.camera_latents(inputs)  # (n_cameras * B, C, h, w)
        mark("encode")
        text, goal = policy.text_states(inputs.get("language"), z0.shape[0] // len(policy.history_layout.cameras))
        mark("text")
        feats = policy.camera_features(z0, text)  # (B, F, n_cameras * N, C)
        mark("unet_pass")
        tokens = policy.former(feats)
        mark("video_former")
        ctx = policy.head.context(goal, tokens)
        policy.head.sample(ctx, steps=steps)
        mark("action_sampling")
        t["total"] = (last - start) * 1000
        if i >= warmup:
            for k, v in t.items():
                runs[k].append(v)
    if totals is not None:
        totals.extend(runs["total"])
    mid = int(np.argsort(runs["total"])[(len(runs["total"]) - 1) // 2])  # the median call (lower middle)
    return {k: round(v[mid], 2) for k, v in runs.items()}  # its stages, so that they add up to its total
