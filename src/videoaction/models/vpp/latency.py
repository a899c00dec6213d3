"""Latency of each stage of a VPP policy call (vpp.md §9): VAE encode, text, UNet pass, Video Former, action sampling.

``stage_latency(policy, obs)`` runs the same computation as ``predict_action`` piece by piece (synchronising the
device after each) and returns the median milliseconds per stage over ``repeats`` calls after ``warmup`` calls.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch

from videoaction.models.vpp.features import extract_features

STAGES = ("encode", "text", "unet_pass", "video_former", "action_sampling")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stage_latency(policy, obs: Mapping[str, Any], repeats: int = 5, warmup: int = 1,
                  steps: int | None = None) -> dict[str, float]:
    """Median ms per stage (and ``total``) of one ``predict_action``-equivalent call on ``obs``."""
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

        frame = policy._frames(obs["image"])  # (B, 1, 3, S, S)
        z0 = policy.encode(frame)[:, 0]
        mark("encode")
        text, goal = policy.text_states(obs.get("language"), z0.shape[0])
        mark("text")
        feats = extract_features(policy.tvp, z0, text)
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
    return {k: round(float(np.median(v)), 2) for k, v in runs.items()}
