"""Episode store: a zarr (v2 format) replay buffer in Diffusion Policy's layout.

Layout (what Diffusion Policy's ``ReplayBuffer`` reads)::

    data/<key>          (N, ...)  episodes concatenated along time
    meta/episode_ends   (E,) int64, exclusive cumulative ends
    meta/<name>         (E,)      per-episode metadata (success, seed, task, language, ...), ignored by DP

Writes are atomic per episode: data arrays are extended first, per-episode metadata next and
``meta/episode_ends`` last, so an interrupted writer leaves at most an uncommitted tail. Opening such a
store read-only raises :class:`StoreError`; opening it with ``mode="a"`` cuts the tail and resumes.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numcodecs
import numpy as np
import zarr

from videoaction.errors import StoreError

DEFAULT_COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
LOWDIM_CHUNK_STEPS = 4096
EPISODE_ENDS = "episode_ends"


def is_image_array(shape: tuple[int, ...]) -> bool:
    """(N, H, W, C) with C in {1, 3, 4}: stored chunked per frame."""
    return len(shape) == 4 and shape[-1] in (1, 3, 4)


def _chunks_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    if is_image_array(shape) or len(shape) >= 4:
        return (1, *shape[1:])
    return (LOWDIM_CHUNK_STEPS, *shape[1:])


def _meta_value(value: Any) -> tuple[np.ndarray, dict]:
    """A per-episode metadata value as a length-1 array plus the zarr create kwargs for its column."""
    if isinstance(value, str):
        return np.array([value], dtype=object), {"dtype": object, "object_codec": numcodecs.VLenUTF8()}
    arr = np.asarray(value)
    if arr.dtype.kind in "OUS":
        return np.array([str(value)], dtype=object), {"dtype": object, "object_codec": numcodecs.VLenUTF8()}
    return arr[None], {"dtype": arr.dtype}


class EpisodeStore:
    """Read and append episodes of a Diffusion-Policy-compatible zarr store."""

    def __init__(self, root: zarr.Group, path: str | os.PathLike, writable: bool):
        self.root, self.path, self.writable = root, Path(path), writable

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path, overwrite: bool = False, attrs: Mapping[str, Any] | None = None) -> "EpisodeStore":
        """A new empty store at ``path`` (a directory). Refuses to replace an existing one unless ``overwrite``."""
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(path, "a file or store already exists here; pass overwrite=True or pick a new path")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        root = zarr.open_group(zarr.DirectoryStore(str(path)), mode="w")
        root.require_group("data")
        meta = root.require_group("meta")
        meta.zeros(EPISODE_ENDS, shape=(0,), chunks=(1 << 16,), dtype=np.int64, compressor=None)
        if attrs:
            root.attrs.update(dict(attrs))
        return cls(root, path, writable=True)

    @classmethod
    def open(cls, path, mode: str = "r") -> "EpisodeStore":
        """Open an existing store. ``mode="r"`` validates it; ``mode="a"`` also repairs an interrupted tail."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise StoreError(path, "no dataset store at this path")
        if mode == "r":  # a dataset in another format (LeRobot, robomimic, UMI, ...): read it in place
            from videoaction.data.formats import open_foreign

            foreign = open_foreign(path)
            if foreign is not None:
                return foreign
        try:
            if path.is_file() and path.suffix == ".zip":
                if mode == "a":
                    raise StoreError(path, "zip stores are read-only; unzip to a directory to append")
                store = zarr.ZipStore(str(path), mode="r")
            else:
                store = zarr.DirectoryStore(str(path))
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except StoreError:
            raise
        except Exception as exc:  # zarr raises several unrelated types for "not a group"
            raise StoreError(path, f"not a readable zarr group ({type(exc).__name__}: {exc})") from None
        self = cls(root, path, writable=(mode == "a"))
        self._validate(repair=(mode == "a"))
        return self

    @classmethod
    def open_or_create(cls, path, attrs: Mapping[str, Any] | None = None) -> "EpisodeStore":
        """Resume writing an existing store (after cutting an interrupted tail) or create a new one."""
        if Path(path).exists():
            store = cls.open(path, mode="a")
            if attrs:
                store.update_attrs(attrs)
            return store
        return cls.create(path, attrs=attrs)

    def load_into_memory(self, keys: Iterable[str] | None = None) -> "EpisodeStore":
        """A read-only in-memory copy (compressed, like Diffusion Policy's ``copy_from_path``)."""
        mem = zarr.MemoryStore()
        dst = zarr.group(store=mem)
        dst.attrs.update(self.attrs)
        data = dst.require_group("data")
        for key in (self.keys if keys is None else list(keys)):
            src = self._data_array(key)
            zarr.copy(src, data, name=key, if_exists="replace")
        zarr.copy(self.root["meta"], dst, name="meta", if_exists="replace")
        return EpisodeStore(dst, self.path, writable=False)

    # ------------------------------------------------------------------ validation
    def _validate(self, repair: bool) -> None:
        path = self.path
        for group in ("data", "meta"):
            if group not in self.root or not isinstance(self.root[group], zarr.Group):
                raise StoreError(path, "missing group", key=group, expected="groups 'data' and 'meta'",
                                 found=sorted(self.root.group_keys()))
        meta = self.root["meta"]
        if EPISODE_ENDS not in meta:
            raise StoreError(path, "missing array", key=f"meta/{EPISODE_ENDS}",
                             expected="int64 cumulative episode ends")
        ends_arr = meta[EPISODE_ENDS]
        if ends_arr.ndim != 1 or ends_arr.dtype.kind not in "iu":
            raise StoreError(path, "wrong dtype or shape", key=f"meta/{EPISODE_ENDS}",
                             expected="1-D integer array", found=f"{ends_arr.dtype} {ends_arr.shape}")
        ends = self._read(ends_arr, f"meta/{EPISODE_ENDS}").astype(np.int64)
        # An interrupted append can leave a last entry that is not larger than the one before (fill value).
        prev = np.concatenate([[0], ends[:-1]])
        bad = np.nonzero(ends <= prev)[0]
        if len(bad):
            first = int(bad[0])
            if repair and first == len(ends) - 1:
                ends_arr.resize(first)
                ends = ends[:first]
            elif first == len(ends) - 1 and ends[first] == 0:
                raise StoreError(path, "the last episode was not completely written (interrupted writer); "
                                 "open with mode='a' (or re-run the generator) to resume", key=f"meta/{EPISODE_ENDS}")
            else:
                length = int(ends[first] - prev[first])
                raise StoreError(path, f"episode {first} is empty or out of order", key=f"meta/{EPISODE_ENDS}",
                                 expected="strictly increasing ends (no empty episodes)",
                                 found=f"length {length} at episode {first}")
        n_steps = int(ends[-1]) if len(ends) else 0
        n_eps = len(ends)
        for key in self.root["data"].array_keys():
            arr = self.root["data"][key]
            if arr.ndim == 0:
                raise StoreError(path, "scalar data array", key=f"data/{key}", expected="(N, ...)", found="()")
            if arr.shape[0] < n_steps:
                raise StoreError(path, "data shorter than meta/episode_ends says (truncated store?)",
                                 key=f"data/{key}", expected=f"length {n_steps}", found=f"length {arr.shape[0]}")
            if arr.shape[0] > n_steps:
                if not repair:
                    raise StoreError(path, "data longer than meta/episode_ends says: an interrupted writer left an "
                                     "incomplete episode; open with mode='a' (or re-run the generator) to resume",
                                     key=f"data/{key}", expected=f"length {n_steps}", found=f"length {arr.shape[0]}")
                arr.resize((n_steps, *arr.shape[1:]))
            expected_chunks = math.ceil(n_steps / arr.chunks[0]) * int(
                np.prod([math.ceil(s / c) for s, c in zip(arr.shape[1:], arr.chunks[1:])] or [1]))
            if n_steps and arr.nchunks_initialized < expected_chunks:
                raise StoreError(path, "chunk files are missing (truncated or partly copied store)",
                                 key=f"data/{key}", expected=f"{expected_chunks} chunks",
                                 found=f"{arr.nchunks_initialized}")
        for name in meta.array_keys():
            if name == EPISODE_ENDS:
                continue
            arr = meta[name]
            if arr.ndim == 0:
                continue  # scalar metadata is allowed and ignored
            if arr.shape[0] > n_eps and repair:
                arr.resize((n_eps, *arr.shape[1:]))
            elif arr.shape[0] > n_eps:
                raise StoreError(path, "more per-episode metadata entries than episodes (interrupted writer); "
                                 "open with mode='a' to resume", key=f"meta/{name}",
                                 expected=f"{n_eps} entries", found=f"{arr.shape[0]}")
            elif arr.shape[0] < n_eps:
                raise StoreError(path, "fewer per-episode metadata entries than episodes", key=f"meta/{name}",
                                 expected=f"{n_eps} entries", found=f"{arr.shape[0]}")

    def _read(self, arr: zarr.Array, key: str, sel=slice(None)) -> np.ndarray:
        try:
            return arr[sel]
        except Exception as exc:
            raise StoreError(self.path, f"could not read ({type(exc).__name__}: {exc}); the store may be corrupt",
                             key=key) from None

    def _data_array(self, key: str) -> zarr.Array:
        data = self.root["data"]
        if key not in data:
            raise StoreError(self.path, "missing data key", key=f"data/{key}", expected=f"one of {self.keys}")
        return data[key]

    # ------------------------------------------------------------------ properties
    @property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self.root["meta"][EPISODE_ENDS][:], dtype=np.int64)

    @property
    def n_episodes(self) -> int:
        return int(self.root["meta"][EPISODE_ENDS].shape[0])

    @property
    def n_steps(self) -> int:
        ends = self.root["meta"][EPISODE_ENDS]
        return int(ends[-1]) if ends.shape[0] else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends]))

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @property
    def keys(self) -> list[str]:
        return sorted(self.root["data"].array_keys())

    @property
    def meta_keys(self) -> list[str]:
        meta = self.root["meta"]
        return sorted(k for k in meta.array_keys() if k != EPISODE_ENDS and meta[k].ndim > 0)

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    def array(self, key: str) -> zarr.Array:
        """The zarr array ``data/<key>`` (may be longer than n_steps only while a writer is active)."""
        return self._data_array(key)

    def spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Per-step shape and dtype of ``data/<key>``."""
        arr = self._data_array(key)
        return tuple(arr.shape[1:]), arr.dtype

    def require_keys(self, spec: Mapping[str, tuple[int, ...] | None]) -> None:
        """Check that each key exists and, if a shape is given, has that per-step shape (None entries match any)."""
        for key, shape in spec.items():
            got, dtype = self.spec(key)
            if shape is not None and (len(shape) != len(got) or any(s is not None and s != g for s, g in zip(shape, got))):
                raise StoreError(self.path, "wrong per-step shape", key=f"data/{key}", expected=tuple(shape), found=got)

    # ------------------------------------------------------------------ reading
    def get_slice(self, key: str, start: int, stop: int) -> np.ndarray:
        return self._read(self._data_array(key), f"data/{key}", slice(start, stop))

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"{self.path}: episode {index} out of range (store has {n} episodes)")
        index %= n
        ends = self.episode_ends
        start = int(ends[index - 1]) if index > 0 else 0
        stop = int(ends[index])
        return {k: self.get_slice(k, start, stop) for k in (self.keys if keys is None else keys)}

    def meta_column(self, name: str) -> np.ndarray:
        meta = self.root["meta"]
        if name not in meta or name == EPISODE_ENDS:
            raise StoreError(self.path, "missing per-episode metadata", key=f"meta/{name}",
                             expected=f"one of {self.meta_keys}")
        return self._read(meta[name], f"meta/{name}")[: self.n_episodes]

    def episode_meta(self, index: int) -> dict[str, Any]:
        out = {}
        for name in self.meta_keys:
            value = self.meta_column(name)[index]
            out[name] = value.item() if isinstance(value, np.generic) else value
        return out

    def to_numpy(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every committed step of ``keys`` as numpy arrays (fastest for training on small stores)."""
        n = self.n_steps
        return {k: self.get_slice(k, 0, n) for k in (self.keys if keys is None else keys)}

    # ------------------------------------------------------------------ writing
    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        self._check_writable()
        self.root.attrs.update(dict(attrs))

    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(self.path, "store is open read-only; open with mode='a' to append")

    def add_episode(self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> int:
        """Append one episode atomically; returns its index.

        ``data`` maps each data key to an array of shape (T, ...) with the same T >= 1 for all keys; the first
        episode fixes the key set, per-step shapes and dtypes. ``meta`` maps names to scalars or strings.
        """
        self._check_writable()
        if not data:
            raise StoreError(self.path, "episode has no data keys")
        arrays = {k: np.asarray(v) for k, v in data.items()}
        lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
        length = next(iter(lengths.values()))
        if any(v is None for v in lengths.values()) or len(set(lengths.values())) != 1:
            raise StoreError(self.path, "episode arrays have different lengths", expected="one length T for all keys",
                             found=lengths)
        if length == 0:
            raise StoreError(self.path, "refusing to write an empty episode (length 0)")
        group = self.root["data"]
        existing = set(group.array_keys())
        if existing and existing != set(arrays):
            raise StoreError(self.path, "episode keys differ from the store's", expected=sorted(existing),
                             found=sorted(arrays))
        for key, arr in arrays.items():
            if key in existing:
                dst = group[key]
                if tuple(dst.shape[1:]) != tuple(arr.shape[1:]):
                    raise StoreError(self.path, "wrong per-step shape", key=f"data/{key}",
                                     expected=tuple(dst.shape[1:]), found=tuple(arr.shape[1:]))
                if np.can_cast(arr.dtype, dst.dtype, casting="same_kind") is False:
                    raise StoreError(self.path, "wrong dtype", key=f"data/{key}", expected=str(dst.dtype),
                                     found=str(arr.dtype))
        n_steps, n_eps = self.n_steps, self.n_episodes
        if n_eps > 0 and set(self.meta_keys) - set(meta or {}):
            raise StoreError(self.path, "episode metadata is missing names the store has",
                             expected=sorted(self.meta_keys), found=sorted(meta or {}))
        for key, arr in arrays.items():
            if key not in existing:
                group.zeros(key, shape=(0, *arr.shape[1:]), chunks=_chunks_for(arr.shape), dtype=arr.dtype,
                            compressor=DEFAULT_COMPRESSOR)
            dst = group[key]
            dst.resize((n_steps + length, *arr.shape[1:]))
            dst[n_steps:] = arr.astype(dst.dtype, copy=False)
        meta_group = self.root["meta"]
        for name, value in (meta or {}).items():
            if name == EPISODE_ENDS:
                raise StoreError(self.path, "metadata name is reserved", key=f"meta/{name}")
            row, kwargs = _meta_value(value)
            if name not in meta_group:
                if n_eps > 0:
                    raise StoreError(self.path, "new per-episode metadata name after the first episode",
                                     key=f"meta/{name}", expected=f"one of {self.meta_keys}")
                meta_group.create_dataset(name, shape=(0, *row.shape[1:]), chunks=(1 << 14, *row.shape[1:]),
                                          compressor=None, **kwargs)
            col = meta_group[name]
            col.resize((n_eps + 1, *row.shape[1:]))
            col[n_eps] = row[0]
        ends = meta_group[EPISODE_ENDS]  # committed last: readers see the episode only after this line
        ends.resize((n_eps + 1,))
        ends[n_eps] = n_steps + length
        return n_eps

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps}, keys={self.keys})"
