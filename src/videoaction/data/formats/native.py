"""The project's own zarr episode store seen as a format reader (used to take a subset of its episodes)."""

from __future__ import annotations

import numpy as np

from videoaction.data.formats.base import EpisodeSource
from videoaction.data.store import EpisodeStore, is_image_array


class NativeSource(EpisodeSource):
    format_name = "store"

    def __init__(self, store: EpisodeStore):
        self.store, self.path = store, store.path
        self.fps = store.attrs.get("fps")
        self.lengths = store.episode_lengths.astype(np.int64)
        self.specs = {k: store.spec(k) for k in store.keys}
        self.meta = {name: list(store.meta_column(name)) for name in store.meta_keys}
        self.attrs = {k: v for k, v in store.attrs.items() if k != "fps"}
        self.image_keys = tuple(k for k, (shape, dtype) in self.specs.items()
                                if dtype == np.uint8 and is_image_array((1, *shape)))
        self.lazy_frames = False
        self._starts = store.episode_starts

    def read(self, episode: int, key: str) -> np.ndarray:
        start = int(self._starts[episode])
        return self.store.get_slice(key, start, start + int(self.lengths[episode]))
