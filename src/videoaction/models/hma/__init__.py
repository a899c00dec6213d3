"""HMA (Heterogeneous Masked Autoregression): an action-conditioned video world model trained jointly on
embodiments with different action spaces. ``HMAPolicy`` (policy.py) is the entry point; ``HMARunConfig`` /
``PRESETS`` (config.py) configure it; training.py mixes token datasets; decoding.py holds MaskGIT / MAR decoding.
Attributes are imported lazily so that reading presets stays cheap."""

from __future__ import annotations

_LAZY = {"HMAPolicy": "policy", "HMARunConfig": "config", "HMAConfig": "config", "DomainConfig": "config",
         "PRESETS": "config", "HMANetwork": "network"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
