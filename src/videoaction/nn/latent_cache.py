"""Latents of observed frames, remembered by content: consecutive policy calls share most history frames.

UVA executing 8 of 16 actions sees 2 of its 4 history frames again at the next call; a family that encodes frames
with a frozen tokenizer wraps its encoder call with :meth:`LatentCache.encode` and only new frames are encoded.
Keys are a hash of the frame's bytes and shape, so the cache is safe across environments and episodes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch


class LatentCache:
    """LRU map frame bytes -> latent, holding at most ``max_frames`` latents."""

    def __init__(self, max_frames: int = 256):
        self.max_frames = int(max_frames)
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def encode(self, frames, encode_fn: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """Raw frames (B, F, H, W, 3) -> latents (B, F, ...); ``encode_fn`` gets only the unseen frames as one
        (1, N, H, W, 3) uint8 array and returns their latents (1, N, ...)."""
        arr = np.ascontiguousarray(frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames))
        b, f = arr.shape[:2]
        suffix = str(arr.shape[2:]).encode()
        keys = [hashlib.blake2b(arr[i, j].tobytes() + suffix, digest_size=16).digest()
                for i in range(b) for j in range(f)]
        todo = sorted({k: n for n, k in enumerate(keys) if k not in self._store}.values())  # first of duplicates
        if todo:
            new = encode_fn(arr.reshape(b * f, *arr.shape[2:])[todo][None])[0]
            for n, z in zip(todo, new):
                self._store[keys[n]] = z
        out = torch.stack([self._store[k] for k in keys])
        for k in keys:
            self._store.move_to_end(k)
        while len(self._store) > self.max_frames:
            self._store.popitem(last=False)
        return out.reshape(b, f, *out.shape[1:])
