"""Serve a policy over websocket + msgpack (openpi's protocol) and drive a robot from it.

* :mod:`videoaction.serve.protocol` — msgpack-numpy encoding (openpi-compatible), strict decoding, validation
* :mod:`videoaction.serve.server` — :class:`PolicyServer`, :class:`ServerThread`, :class:`ServeConfig`
* :mod:`videoaction.serve.client` — :class:`PolicyClient` (metadata, infer, reconnect)
* :mod:`videoaction.serve.executor` — :class:`ChunkExecutor` (latency-aware action-chunk execution, smoothing)

The client side (protocol, client, executor) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PolicyServer": "server", "ServerThread": "server", "ServeConfig": "server",
    "PolicyClient": "client", "ChunkExecutor": "executor", "RequestError": "protocol", "ServerError": "protocol",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"videoaction.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'videoaction.serve' has no attribute {name!r}")
