"""UVA (Unified Video Action): one joint video-action latent transformer that is a policy, a video model, forward and
inverse dynamics model and planner. ``UVAPolicy`` (policy.py) is the entry point; ``UVARunConfig`` / ``PRESETS``
(config.py) configure it. Attributes are imported lazily so that reading presets stays cheap."""

from __future__ import annotations

_LAZY = {"UVAPolicy": "policy", "UVARunConfig": "config", "UVAConfig": "config", "PRESETS": "config",
         "SIZES": "config", "UVANetwork": "network"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
