"""What every format reader provides, and the adapter that lets training read it like an episode store.

A reader (a *source*) knows its episode lengths, its per-key shapes and dtypes, per-episode metadata and how to
read one key of one episode. :class:`SourceStore` turns any source into the read interface of
:class:`videoaction.data.store.EpisodeStore` (``episode_ends``, ``keys``, ``spec``, ``array(key)[...]`` /
``.oindex``, ``get_slice``, ``to_numpy``, ``meta_column``, ``episode_meta``, ``attrs`` ...), reading lazily with a
small per-episode cache, so ``--data`` can point at a foreign dataset without converting it first.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from videoaction.data.store import EpisodeStore
from videoaction.errors import StoreError


class FormatError(StoreError):
    """A dataset in a foreign format that is missing a key, has a wrong dtype/shape or is truncated."""


class EpisodeSource:
    """Base class of the format readers. Subclasses fill the attributes and implement :meth:`read`."""

    format_name: str = ""
    path: Path
    fps: float | None = None
    lengths: np.ndarray  # (E,) int64 steps per episode
    specs: dict[str, tuple[tuple[int, ...], np.dtype]]  # key -> (per-step shape, dtype)
    meta: dict[str, list]  # per-episode metadata columns (language, task, source index, ...)
    attrs: dict[str, Any]
    image_keys: tuple[str, ...] = ()  # keys holding (H, W, 3) uint8 frames
    # True: frames are read per sample, only the rows asked for (chunked stores such as UMI's zip); datasets
    # should then not copy every frame into RAM. False: decoding whole episodes is the cheap path (videos, files).
    lazy_frames: bool = False

    def read(self, episode: int, key: str) -> np.ndarray:
        """All steps of ``key`` in ``episode``: (T, *shape) with the spec's dtype."""
        raise NotImplementedError

    def read_rows(self, episode: int, key: str, rows: np.ndarray) -> np.ndarray:
        """Only ``rows`` (episode-local indices) of ``key``; readers with chunked storage override this."""
        return self.read(episode, key)[rows]

    def close(self) -> None:
        pass

    # -------------------------------------------------------------- helpers for subclasses
    def check_array(self, arr: np.ndarray, key: str, where: str, length: int | None = None) -> np.ndarray:
        """Named error unless ``arr`` matches the spec of ``key`` (and has ``length`` steps)."""
        shape, dtype = self.specs[key]
        arr = np.asarray(arr)
        if arr.shape[1:] != tuple(shape) or (length is not None and arr.shape[0] != length):
            want = (length if length is not None else "T", *shape)
            raise FormatError(self.path, "wrong shape", key=where, expected=want, found=arr.shape)
        if arr.dtype != dtype:
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise FormatError(self.path, "wrong dtype", key=where, expected=str(dtype), found=str(arr.dtype))
            arr = arr.astype(dtype)
        return arr


def read_episode_list(path: str | Path) -> list[int]:
    """Episode indices from a JSON list (``[0, 3, 7]`` or ``{"episodes": [...]}``) or a text file (one per line /
    comma separated), as UVA's ``used_episode_indices_file``."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "episode list file not found", expected="a JSON list or a text file of indices")
    text = path.read_text().strip()
    try:
        value = json.loads(text) if text.startswith(("[", "{")) else [t for t in text.replace(",", " ").split()]
        if isinstance(value, dict):
            value = value.get("episodes", value.get("used_episode_indices"))
        out = [int(v) for v in value]
    except (ValueError, TypeError) as exc:
        raise FormatError(path, f"could not parse episode indices ({exc})",
                          expected="a JSON list of integers or one integer per line") from None
    if len(set(out)) != len(out):
        raise FormatError(path, "episode indices repeat", found=sorted(i for i in set(out) if out.count(i) > 1))
    return out


def split_subset(subset: Sequence[int], n_episodes: int, val_ratio: float, seed: int = 42,
                 max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) masks over ``n_episodes`` that use only the episodes in ``subset`` (split among themselves)."""
    from videoaction.data.sampler import split_episodes

    idx = check_episode_subset(subset, n_episodes, "episode subset")
    train_sub, val_sub = split_episodes(len(idx), val_ratio, seed, max_train_episodes)
    train, val = np.zeros(n_episodes, dtype=bool), np.zeros(n_episodes, dtype=bool)
    train[idx[train_sub]], val[idx[val_sub]] = True, True
    return train, val


def check_episode_subset(indices: Sequence[int], n_episodes: int, where) -> np.ndarray:
    idx = np.asarray(list(indices), dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= n_episodes)]
    if len(bad):
        raise FormatError(where, "episode index out of range", expected=f"0 <= index < {n_episodes}",
                          found=bad[:10].tolist())
    return idx


class _LazyArray:
    """A read-only (N, ...) view of one key across all episodes: ``arr[a:b]``, ``arr[i]``, ``arr.oindex[idx]``."""

    def __init__(self, store: "SourceStore", key: str):
        self.store, self.key = store, key
        shape, self.dtype = store.spec(key)
        self.shape = (store.n_steps, *shape)
        self.ndim = len(self.shape)
        self.chunks = (1, *shape)
        self.compressor = f"{store.source.format_name} reader"

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sel):
        if isinstance(sel, slice):
            start, stop, step = sel.indices(self.shape[0])
            out = self.store.get_slice(self.key, start, stop)
            return out[::step] if step != 1 else out
        if isinstance(sel, (int, np.integer)):
            i = int(sel) % self.shape[0]
            return self.store.get_slice(self.key, i, i + 1)[0]
        return self.take(np.asarray(sel))

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        ends = self.store.episode_ends
        eps = np.searchsorted(ends, idx, side="right")
        starts = self.store.episode_starts
        source = self.store.source
        for ep in np.unique(eps):
            mask = eps == ep
            rows = idx[mask] - starts[ep]
            if source.lazy_frames:
                out[mask] = source.read_rows(int(self.store.episode_ids[ep]), self.key, rows)
            else:
                out[mask] = self.store.episode_key(int(ep), self.key)[rows]
        return out

    @property
    def oindex(self):
        return _OIndex(self)


class _OIndex:
    def __init__(self, arr: _LazyArray):
        self.arr = arr

    def __getitem__(self, idx):
        return self.arr.take(idx)


class SourceStore(EpisodeStore):
    """The episode-store read interface over a format reader (optionally restricted to a subset of episodes).

    A read-only :class:`EpisodeStore` (code that type-checks for a store accepts it); writing raises StoreError.
    """

    writable = False

    def __init__(self, source: EpisodeSource, episodes: Iterable[int] | None = None, cache_episodes: int = 8):
        self.source = source
        self.path = Path(source.path)
        n_all = len(source.lengths)
        self.episode_ids = (np.arange(n_all) if episodes is None
                            else check_episode_subset(list(episodes), n_all, source.path))
        lengths = np.asarray(source.lengths, dtype=np.int64)[self.episode_ids]
        self._ends = np.cumsum(lengths).astype(np.int64)
        self._lengths = lengths
        self._starts = np.concatenate([[0], self._ends[:-1]]).astype(np.int64)
        self._cache: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._cache_size = max(1, cache_episodes)
        self.lazy_frames = source.lazy_frames

    # ------------------------------------------------------------------ shape of the data
    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def episode_starts(self) -> np.ndarray:
        return self._starts

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ids)

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def keys(self) -> list[str]:
        return sorted(self.source.specs)

    @property
    def meta_keys(self) -> list[str]:
        return sorted(self.source.meta)

    @property
    def attrs(self) -> dict:
        return {"format": self.source.format_name, "fps": self.source.fps, **self.source.attrs}

    def spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        if key not in self.source.specs:
            raise FormatError(self.path, "missing data key", key=key, expected=f"one of {self.keys}")
        shape, dtype = self.source.specs[key]
        return tuple(shape), np.dtype(dtype)

    def require_keys(self, spec: Mapping[str, tuple[int, ...] | None]) -> None:
        for key, shape in spec.items():
            got, _ = self.spec(key)
            if shape is not None and (len(shape) != len(got) or any(s is not None and s != g
                                                                     for s, g in zip(shape, got))):
                raise FormatError(self.path, "wrong per-step shape", key=key, expected=tuple(shape), found=got)

    def array(self, key: str) -> _LazyArray:
        self.spec(key)
        return _LazyArray(self, key)

    # ------------------------------------------------------------------ reading
    def episode_key(self, episode: int, key: str) -> np.ndarray:
        """All steps of ``key`` in (subset) episode ``episode``, cached."""
        ck = (episode, key)
        if ck in self._cache:
            self._cache.move_to_end(ck)
            return self._cache[ck]
        arr = self.source.read(int(self.episode_ids[episode]), key)
        if len(arr) != self.episode_lengths[episode]:
            raise FormatError(self.path, "episode is shorter or longer than its metadata says (truncated file?)",
                              key=key, expected=f"{self.episode_lengths[episode]} steps in episode "
                              f"{int(self.episode_ids[episode])}", found=f"{len(arr)} steps")
        self._cache[ck] = arr
        while len(self._cache) > self._cache_size * max(1, len(self.source.specs)):
            self._cache.popitem(last=False)
        return arr

    def get_slice(self, key: str, start: int, stop: int) -> np.ndarray:
        self.spec(key)
        stop = min(stop, self.n_steps)
        if stop <= start:
            shape, dtype = self.spec(key)
            return np.empty((0, *shape), dtype=dtype)
        first = int(np.searchsorted(self.episode_ends, start, side="right"))
        last = int(np.searchsorted(self.episode_ends, stop - 1, side="right"))
        parts = []
        for ep in range(first, last + 1):
            s = int(self.episode_starts[ep])
            arr = self.episode_key(ep, key)
            parts.append(arr[max(start - s, 0): min(stop - s, len(arr))])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"{self.path}: episode {index} out of range ({n} episodes)")
        index %= n
        return {k: self.episode_key(index, k) for k in (self.keys if keys is None else keys)}

    def to_numpy(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        out = {}
        for key in (self.keys if keys is None else keys):
            shape, dtype = self.spec(key)
            buf = np.empty((self.n_steps, *shape), dtype=dtype)
            for ep in range(self.n_episodes):
                buf[self.episode_starts[ep]: self.episode_ends[ep]] = self.source.read(int(self.episode_ids[ep]), key)
            out[key] = buf
        return out

    def meta_column(self, name: str) -> np.ndarray:
        if name not in self.source.meta:
            raise FormatError(self.path, "missing per-episode metadata", key=name, expected=f"one of {self.meta_keys}")
        col = self.source.meta[name]
        values = [col[int(i)] for i in self.episode_ids]
        if values and all(isinstance(v, str) for v in values):
            return np.array(values, dtype=object)
        return np.asarray(values)

    def episode_meta(self, index: int) -> dict[str, Any]:
        out = {}
        for name in self.meta_keys:
            value = self.meta_column(name)[index]
            out[name] = value.item() if isinstance(value, np.generic) else value
        return out

    def load_into_memory(self, keys: Iterable[str] | None = None) -> "SourceStore":
        """Already read on demand (frames decoded per episode and cached); returns itself."""
        return self

    def source_episode(self, index: int) -> int:
        """The episode's index in the source dataset (differs from ``index`` with a subset)."""
        return int(self.episode_ids[index])

    def close(self) -> None:
        self.source.close()

    def __getstate__(self):  # loader workers get a fresh cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return (f"SourceStore({self.source.format_name}, {str(self.path)!r}, episodes={self.n_episodes}, "
                f"steps={self.n_steps}, keys={self.keys})")


@dataclass(frozen=True)
class FormatSpec:
    """One supported dataset format: how to recognise it, read it and (optionally) write it."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    reader: Callable[..., EpisodeSource]  # reader(path, **options) -> EpisodeSource
    writer: Callable[..., Any] | None = None  # writer(store, dst, **options)
    options: tuple[str, ...] = field(default_factory=tuple)  # reader keyword options it understands
