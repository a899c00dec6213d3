"""LeRobot datasets, format v2.1 (one parquet + mp4 per episode) and v3.0 (many episodes per file).

Layout (``meta/info.json`` names every path template)::

    v2.1  meta/info.json  meta/episodes.jsonl  meta/episodes_stats.jsonl  meta/tasks.jsonl
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
          videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4
    v3.0  meta/info.json  meta/stats.json  meta/tasks.parquet  meta/episodes/chunk-XXX/file-XXX.parquet
          data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet
          videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4

Frame parquet columns: every non-video feature (vectors as fixed-size lists) + ``timestamp`` (float32),
``frame_index``, ``episode_index``, ``index``, ``task_index`` (int64). Store keys are the LeRobot feature names
(``observation.state``, ``observation.images.top``, ``action`` ...); the episode's first task becomes the
``language`` metadata column (all of them, joined by " | ", the ``tasks`` column).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from videoaction.data.formats.base import EpisodeSource, FormatError
from videoaction.data.formats.video import decode_video

INFO_PATH = "meta/info.json"
RESERVED_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
VIDEOACTION_META = "meta/videoaction.json"  # our key map (store key -> LeRobot name); LeRobot ignores it


def detect(path: Path) -> bool:
    return path.is_dir() and (path / INFO_PATH).is_file()


def _load_json(path: Path, root: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(root, "missing metadata file", key=str(path.relative_to(root))) from None
    except json.JSONDecodeError as exc:
        raise FormatError(root, f"not valid JSON ({exc}); truncated file?", key=str(path.relative_to(root))) from None


def _load_jsonl(path: Path, root: Path) -> list[dict]:
    if not path.is_file():
        raise FormatError(root, "missing metadata file", key=str(path.relative_to(root)))
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise FormatError(root, f"line {n + 1} is not valid JSON (truncated file?)",
                                  key=str(path.relative_to(root))) from None
    return rows


def _read_parquet(path: Path, root: Path, columns=None):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FormatError(root, "missing parquet file", key=str(path.relative_to(root)))
    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for truncated footers
        raise FormatError(root, f"unreadable parquet ({type(exc).__name__}: {exc}); truncated file?",
                          key=str(path.relative_to(root))) from None


def _feature_spec(root: Path, name: str, ft: dict) -> tuple[tuple[int, ...], np.dtype]:
    try:
        shape = tuple(int(s) for s in ft["shape"])
        dtype = ft["dtype"]
    except (KeyError, TypeError, ValueError):
        raise FormatError(root, "feature entry needs 'dtype' and 'shape'", key=f"{INFO_PATH}:features.{name}",
                          found=ft) from None
    if dtype in ("video", "image"):
        if len(shape) != 3:
            raise FormatError(root, "image/video feature shape must be 3-d", key=f"features.{name}", found=shape)
        names = ft.get("names") or []
        if list(names)[:1] == ["channels"] or (shape[0] in (1, 3) and shape[-1] not in (1, 3)):
            shape = (shape[1], shape[2], shape[0])  # (C, H, W) -> (H, W, C)
        return shape, np.dtype(np.uint8)
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise FormatError(root, "unknown feature dtype", key=f"features.{name}", found=dtype) from None
    return shape, np_dtype


class LeRobotSource(EpisodeSource):
    format_name = "lerobot"

    def __init__(self, path, **_):
        root = Path(path)
        self.path = root
        self.info = _load_json(root / INFO_PATH, root)
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith(("v2", "v3")):
            raise FormatError(root, "unsupported LeRobot codebase_version", key=f"{INFO_PATH}:codebase_version",
                              expected="v2.0, v2.1 or v3.0", found=version or None)
        self.version = version
        self.fps = float(self.info.get("fps") or 0) or None
        if not self.fps:
            raise FormatError(root, "missing fps", key=f"{INFO_PATH}:fps")
        features = self.info.get("features")
        if not isinstance(features, dict) or not all(isinstance(ft, dict) for ft in features.values()):
            raise FormatError(root, "missing or malformed features", key=f"{INFO_PATH}:features",
                              expected="{name: {dtype, shape, names}}")
        self.features = features
        self.video_keys = [k for k, ft in features.items() if ft.get("dtype") == "video"]
        rename = {}
        if (root / VIDEOACTION_META).is_file():
            rename = {v: k for k, v in _load_json(root / VIDEOACTION_META, root).get("key_map", {}).items()}
        self.rename = rename  # LeRobot name -> store key
        self.specs, self.columns = {}, {}
        for name, ft in features.items():
            if name in RESERVED_COLUMNS or ft.get("dtype") == "string":
                continue  # bookkeeping columns; per-frame strings (e.g. language) are not array data
            shape, dtype = _feature_spec(root, name, ft)
            key = rename.get(name, name)
            self.specs[key] = (shape, dtype)
            self.columns[key] = name
        self.image_keys = tuple(self.rename.get(k, k) for k, ft in features.items()
                                if ft.get("dtype") in ("video", "image"))
        if version.startswith("v3"):
            self._load_episodes_v3()
        else:
            self._load_episodes_v2()
        self.attrs = {"lerobot_version": version, "robot_type": self.info.get("robot_type")}
        self._tables: OrderedDict[Path, object] = OrderedDict()

    # ------------------------------------------------------------------ metadata
    def _load_episodes_v2(self) -> None:
        root = self.path
        rows = sorted(_load_jsonl(root / "meta/episodes.jsonl", root), key=lambda r: r["episode_index"])
        self.episode_index = np.array([r["episode_index"] for r in rows], dtype=np.int64)
        self.lengths = np.array([r["length"] for r in rows], dtype=np.int64)
        tasks = [list(r.get("tasks") or []) for r in rows]
        chunks = int(self.info.get("chunks_size") or 1000)
        self.data_files = [root / self.info["data_path"].format(episode_chunk=int(e) // chunks, episode_index=int(e))
                           for e in self.episode_index]
        self.video_from = {k: [(root / self.info["video_path"].format(episode_chunk=int(e) // chunks, video_key=k,
                                                                        episode_index=int(e)), 0.0)
                               for e in self.episode_index] for k in self.video_keys}
        self._set_meta(tasks)

    def _load_episodes_v3(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = self.path
        files = sorted((root / "meta/episodes").glob("*/*.parquet"))
        if not files:
            raise FormatError(root, "no episode metadata parquet files", key="meta/episodes/chunk-*/file-*.parquet")
        try:
            names = pq.read_schema(files[0]).names
        except Exception as exc:
            raise FormatError(root, f"unreadable parquet ({type(exc).__name__}: {exc}); truncated file?",
                              key=str(files[0].relative_to(root))) from None
        cols = set(names)
        wanted = [c for c in names if not c.startswith("stats/")]  # per-episode stats are not needed to read
        table = pa.concat_tables([_read_parquet(f, root, columns=wanted) for f in files])
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for c in need + [f"videos/{k}/{f}" for k in self.video_keys for f in ("chunk_index", "file_index",
                                                                             "from_timestamp")]:
            if c not in cols:
                raise FormatError(root, "episode metadata column missing", key=f"meta/episodes:{c}",
                                  expected=need)
        d = table.to_pydict()
        order = np.argsort(d["episode_index"])

        def pick(column: str) -> list:
            return [d[column][i] for i in order]

        self.episode_index = np.array(pick("episode_index"), dtype=np.int64)
        self.lengths = np.array(pick("length"), dtype=np.int64)
        self.data_files = [root / self.info["data_path"].format(chunk_index=int(c), file_index=int(f))
                           for c, f in zip(pick("data/chunk_index"), pick("data/file_index"))]
        self.video_from = {}
        for k in self.video_keys:
            self.video_from[k] = [
                (root / self.info["video_path"].format(video_key=k, chunk_index=int(c), file_index=int(f)), float(t))
                for c, f, t in zip(pick(f"videos/{k}/chunk_index"), pick(f"videos/{k}/file_index"),
                                   pick(f"videos/{k}/from_timestamp"))]
        self._set_meta([list(t or []) for t in pick("tasks")] if "tasks" in d else [[] for _ in order])

    def _set_meta(self, tasks: list[list[str]]) -> None:
        self.meta = {"language": [t[0] if t else "" for t in tasks], "tasks": [" | ".join(t) for t in tasks],
                     "episode_index": self.episode_index.tolist()}

    # ------------------------------------------------------------------ data
    def _table(self, path: Path):
        if path in self._tables:
            self._tables.move_to_end(path)
            return self._tables[path]
        table = _read_parquet(path, self.path)
        missing = [c for c in ["episode_index", *[self.columns[k] for k in self.specs
                                                  if self.columns[k] not in self.video_keys]]
                   if c not in table.column_names]
        if missing:
            raise FormatError(self.path, "data parquet lacks feature columns", key=str(path.relative_to(self.path)),
                              expected=missing, found=table.column_names)
        ep = np.asarray(table["episode_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
        cut = np.flatnonzero(np.diff(ep)) + 1  # rows of one episode are contiguous in LeRobot's files
        starts, stops = np.concatenate([[0], cut]), np.concatenate([cut, [len(ep)]])
        rows = {int(ep[a]): (int(a), int(b)) for a, b in zip(starts, stops)} if len(ep) else {}
        if len(rows) != len(starts):
            raise FormatError(self.path, "an episode's frames are not contiguous in its data file",
                              key=str(path.relative_to(self.path)))
        self._tables[path] = (table, rows)
        while len(self._tables) > 2:
            self._tables.popitem(last=False)
        return self._tables[path]

    def read(self, episode: int, key: str) -> np.ndarray:
        name = self.columns[key]
        length = int(self.lengths[episode])
        if name in self.video_keys:
            path, start = self.video_from[name][episode]
            frames = decode_video(path, start, length, self.fps, key=name)
            return self.check_array(frames, key, name, length)
        table, index = self._table(self.data_files[episode])
        ep_id = int(self.episode_index[episode])
        if ep_id not in index:
            raise FormatError(self.path, "episode has no frames in its data file (truncated dataset?)",
                              key=str(self.data_files[episode].relative_to(self.path)), expected=f"episode {ep_id}")
        start, stop = index[ep_id]
        rows = table.slice(start, stop - start)
        col = rows[name]
        shape, dtype = self.specs[key]
        if self.features[name].get("dtype") == "image":
            arr = np.stack([_decode_image(v, self.path, name) for v in col.to_pylist()]) if len(col) else \
                np.empty((0, *shape), np.uint8)
        else:
            arr = _column_to_numpy(col, len(rows), shape, self.path, name)
        return self.check_array(arr, key, f"{self.data_files[episode].relative_to(self.path)}:{name}", length)


def _decode_image(value, root, name) -> np.ndarray:
    import io

    from PIL import Image

    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise FormatError(root, "image cell without embedded bytes", key=name)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _column_to_numpy(col, n: int, shape: tuple[int, ...], root, name) -> np.ndarray:
    """A parquet column of scalars or (nested) lists as an (n, *shape) array."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    if values.size != n * int(np.prod(shape)):
        raise FormatError(root, "column has the wrong number of values per frame", key=name,
                          expected=f"shape {shape} per frame", found=f"{values.size} values for {n} frames")
    return values.reshape(n, *shape)
