"""``videoaction data convert``: any readable dataset -> a native episode store or a LeRobot dataset.

Both targets are atomic per episode and resumable: re-running the same command continues after the last complete
episode (the store commits ``meta/episode_ends`` last; the LeRobot writer stages whole episodes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from videoaction.data.formats.base import FormatError, SourceStore
from videoaction.data.store import EpisodeStore, is_image_array


def open_any(path: str | Path, fmt: str | None = None, episodes: Iterable[int] | None = None, **options):
    """A read interface over ``path``: a native episode store (``fmt`` None or "store") or a format reader."""
    from videoaction.data.formats import detect_format, open_source

    path = Path(path)
    if fmt == "store" or (fmt is None and detect_format(path) is None):
        store = EpisodeStore.open(path)
        if episodes is not None:
            from videoaction.data.formats.native import NativeSource

            return SourceStore(NativeSource(store), episodes=episodes)
        return store
    return SourceStore(open_source(path, fmt, **options), episodes=episodes)


def image_keys_of(store) -> list[str]:
    source = getattr(store, "source", None)
    if source is not None:
        return list(source.image_keys)
    out = []
    for key in store.keys:
        shape, dtype = store.spec(key)
        if dtype == np.uint8 and is_image_array((1, *shape)) and shape[-1] == 3:
            out.append(key)
    return out


def _episode_meta(store, i: int) -> dict[str, Any]:
    meta = {k: v for k, v in store.episode_meta(i).items() if isinstance(v, (str, int, float, bool, np.generic))}
    meta["source_episode"] = store.source_episode(i) if hasattr(store, "source_episode") else i
    return meta


class StoreTarget:
    """Write into a native zarr episode store (created, or resumed when it exists)."""

    def __init__(self, dst, store, attrs: dict):
        self.dst = Path(dst)
        existing = EpisodeStore.open(self.dst, mode="a") if self.dst.exists() else None
        if existing is not None and existing.attrs.get("converted_from") not in (None, attrs["converted_from"]):
            raise FormatError(self.dst, "this store was converted from another source; pick a new destination",
                              expected=attrs["converted_from"], found=existing.attrs.get("converted_from"))
        self.out = existing or EpisodeStore.create(self.dst, attrs=attrs)

    def done(self) -> int:
        return self.out.n_episodes

    def add(self, i: int, data: dict, meta: dict) -> None:
        self.out.add_episode(data, meta)

    def finish(self, n: int) -> Path:
        self.out.update_attrs({"complete": True})
        return self.dst


class LeRobotTarget:
    """Write a LeRobot dataset folder (v3.0 default, v2.1 with ``version``)."""

    def __init__(self, dst, store, attrs: dict, version: str = "v3.0", vcodec: str | None = None, fps: float = 10):
        from videoaction.data.formats.lerobot_write import LeRobotWriter

        kwargs = {"vcodec": vcodec} if vcodec else {}
        specs = {k: store.spec(k) for k in store.keys}
        self.writer = LeRobotWriter(dst, fps=fps, image_keys=image_keys_of(store), specs=specs, version=version,
                                    robot_type=attrs.get("robot_type"), **kwargs)

    def done(self) -> int:
        return self.writer.staged()

    def add(self, i: int, data: dict, meta: dict) -> None:
        tasks = [str(meta.get("language") or meta.get("task") or "")]
        self.writer.add_episode(i, data, tasks)

    def finish(self, n: int) -> Path:
        return self.writer.finalize(n)


def targets() -> dict:
    """Conversion targets: the native store plus every registered format that has a writer."""
    from videoaction.data.formats import FORMATS

    return {"store": StoreTarget, **{name: spec.writer for name, spec in FORMATS.items() if spec.writer}}


def convert(src, dst, src_format: str | None = None, to: str = "store", episodes: Iterable[int] | None = None,
            fps: float | None = None, progress: bool = True, target_options: dict | None = None,
            **reader_options) -> dict:
    """Convert ``src`` into ``dst``; returns a summary with frames per second of conversion."""
    writers = targets()
    if to not in writers:
        raise FormatError(dst, "unknown conversion target", expected=sorted(writers), found=to)
    store = open_any(src, src_format, episodes, **reader_options)
    attrs = {"converted_from": str(Path(src).resolve()), "source_format": store.attrs.get("format", "store")}
    src_fps = fps or store.attrs.get("fps") or 10
    attrs["fps"] = float(src_fps)
    for k in ("robot_type", "lerobot_version", "env_args", "action_convention"):
        if store.attrs.get(k) is not None:
            attrs[k] = store.attrs[k]
    opts = dict(target_options or {})
    if to == "lerobot":
        opts["fps"] = src_fps
    target = writers[to](dst, store, attrs, **opts)
    start = target.done()
    n = store.n_episodes
    frames, t0 = 0, time.perf_counter()
    for i in tqdm(range(start, n), desc=f"convert -> {to}", disable=not progress, initial=start, total=n):
        data = store.get_episode(i)
        target.add(i, data, _episode_meta(store, i))
        frames += len(next(iter(data.values())))
    path = target.finish(n)
    seconds = time.perf_counter() - t0
    return {"dst": str(path), "episodes": n, "resumed_at": start, "frames": frames, "seconds": seconds,
            "frames_per_s": frames / seconds if seconds > 0 else float("inf")}
