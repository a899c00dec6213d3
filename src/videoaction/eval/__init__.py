"""Evaluation: simulator rollouts (``runner``), metrics, videos, held-out video prediction (``video_eval``),
HTML reports (``report``) and trivial baselines. Heavy modules are imported on first use."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_policy": "videoaction.eval.runner",
    "default_seeds": "videoaction.eval.runner",
    "RandomPolicy": "videoaction.eval.baselines",
    "MeanActionPolicy": "videoaction.eval.baselines",
    "baseline_policies": "videoaction.eval.baselines",
    "write_report": "videoaction.eval.report",
    "evaluate_video": "videoaction.eval.video_eval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'videoaction.eval' has no attribute {name!r}")
