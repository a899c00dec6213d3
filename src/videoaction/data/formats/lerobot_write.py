"""Write episodes as a LeRobot dataset (v3.0 by default, v2.1 on request), resumably.

Each episode is first staged under ``<dst>/.staging/episode_XXXXXX/`` (frame parquet, one mp4 per camera, a JSON
with its tasks and stats) and the staged folder is renamed into place only when complete, so an interrupted
conversion resumes at the first missing episode. :meth:`LeRobotWriter.finalize` lays the staged episodes out in the
published layout and writes ``meta/info.json`` last; a folder without it is an unfinished conversion.

v3.0: frame parquet files and mp4 files hold many consecutive episodes (up to ``data_files_size_in_mb`` /
``video_files_size_in_mb``); episode k of a video file starts at the summed durations of the episodes before it
(``videos/<key>/from_timestamp``), the videos being joined without re-encoding.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from videoaction.data.formats.base import FormatError
from videoaction.data.formats.lerobot import INFO_PATH, VIDEOACTION_META
from videoaction.data.formats.video import DEFAULT_CRF, DEFAULT_GOP, DEFAULT_PIX_FMT, DEFAULT_VCODEC, encode_video
from videoaction.utils.io import atomic_write_json

CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def lerobot_name(key: str, is_image: bool) -> str:
    """Store key -> LeRobot feature name (names already in LeRobot's style are kept)."""
    if key == "action" or key.startswith(("observation.", "next.", "action.")):
        return key
    if is_image:
        return f"observation.images.{key}"
    return "observation.state" if key == "state" else f"observation.{key}"


def _stats(arr: np.ndarray, image: bool, quantiles: bool) -> dict[str, Any]:
    """LeRobot's per-feature stats: images per channel as (3, 1, 1) in [0, 1] on <= ~100 sampled frames."""
    if image:
        idx = np.round(np.linspace(0, len(arr) - 1, min(len(arr), 100))).astype(int)
        x = arr[idx].astype(np.float64) / 255.0  # (n, H, W, C)
        step = max(1, max(x.shape[1:3]) // 150) if max(x.shape[1:3]) >= 300 else 1
        x = x[:, ::step, ::step].reshape(-1, x.shape[-1])
        shape = (x.shape[-1], 1, 1)
    else:
        x = arr.reshape(len(arr), -1).astype(np.float64)
        shape = arr.shape[1:] or (1,)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    if quantiles:
        out.update({k: np.quantile(x, q, axis=0) for k, q in QUANTILES.items()})
    out = {k: np.asarray(v).reshape(shape).tolist() for k, v in out.items()}
    out["count"] = [int(len(arr))]
    return out


def _merge_stats(per_episode: list[dict]) -> dict:
    """Aggregate per-episode stats (weighted mean / pooled variance; quantiles averaged as LeRobot does)."""
    out = {}
    for key in per_episode[0]:
        items = [s[key] for s in per_episode]
        n = np.array([s["count"][0] for s in items], dtype=np.float64)
        w = n / n.sum()
        means = np.stack([np.array(s["mean"]) for s in items])
        stds = np.stack([np.array(s["std"]) for s in items])
        wb = w.reshape(-1, *([1] * (means.ndim - 1)))
        mu = (wb * means).sum(0)
        var = (wb * (stds**2 + (means - mu) ** 2)).sum(0)
        agg = {"min": np.min([s["min"] for s in items], 0).tolist(),
               "max": np.max([s["max"] for s in items], 0).tolist(),
               "mean": mu.tolist(), "std": np.sqrt(var).tolist(), "count": [int(n.sum())]}
        for q in QUANTILES:
            if q in items[0]:
                agg[q] = (wb * np.stack([np.array(s[q]) for s in items])).sum(0).tolist()
        out[key] = agg
    return out


class LeRobotWriter:
    """Stage episodes, then :meth:`finalize` into a LeRobot v3.0 / v2.1 dataset folder at ``root``."""

    def __init__(self, root, fps: int, image_keys: list[str], specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                 version: str = "v3.0", robot_type: str | None = None, vcodec: str = DEFAULT_VCODEC,
                 crf: int | None = DEFAULT_CRF, g: int | None = DEFAULT_GOP):
        if version not in ("v3.0", "v2.1"):
            raise FormatError(root, "unsupported LeRobot version to write", expected="v3.0 or v2.1", found=version)
        self.root, self.fps, self.version = Path(root), int(round(fps)), version
        if (self.root / INFO_PATH).exists():
            raise FormatError(self.root, "a finished LeRobot dataset already exists here; pick a new path")
        self.staging = self.root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.image_keys = list(image_keys)
        self.specs = {k: (tuple(s), np.dtype(d)) for k, (s, d) in specs.items()}
        self.key_map = {k: lerobot_name(k, k in self.image_keys) for k in self.specs}
        self.robot_type, self.vcodec, self.crf, self.g = robot_type, vcodec, crf, g
        plan = {"fps": self.fps, "version": version, "key_map": self.key_map, "vcodec": vcodec}
        plan_file = self.staging / "plan.json"
        if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
            raise FormatError(self.root, "an unfinished conversion with other settings is staged here; resume it "
                              "with the same options or pick a new path", key=".staging/plan.json",
                              expected=json.loads(plan_file.read_text()), found=plan)
        plan_file.write_text(json.dumps(plan))

    def staged(self) -> int:
        """Episodes already staged completely (an interrupted run resumes after them)."""
        n = 0
        while (self.staging / f"episode_{n:06d}" / "episode.json").is_file():
            n += 1
        return n

    def add_episode(self, index: int, data: Mapping[str, np.ndarray], tasks: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        final = self.staging / f"episode_{index:06d}"
        if (final / "episode.json").is_file():
            return
        tmp = self.staging / f".tmp_episode_{index:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        length = len(next(iter(data.values())))
        info: dict[str, Any] = {"episode_index": index, "length": length, "tasks": list(tasks) or [""],
                                "stats": {}, "video_info": {}}
        columns: dict[str, Any] = {}
        for key, (shape, dtype) in self.specs.items():
            arr = np.asarray(data[key])
            if arr.shape != (length, *shape):
                raise FormatError(self.root, "episode array has the wrong shape", key=key,
                                  expected=(length, *shape), found=arr.shape)
            name = self.key_map[key]
            image = key in self.image_keys
            info["stats"][name] = _stats(arr, image, self.version == "v3.0")
            if image:
                info["video_info"][name] = encode_video(arr, tmp / f"{name}.mp4", self.fps, self.vcodec,
                                                        DEFAULT_PIX_FMT, self.g, self.crf)
                continue
            flat = arr.reshape(length, -1)
            if shape in ((), (1,)):
                columns[name] = pa.array(flat[:, 0])
            else:
                values = pa.array(flat.reshape(-1))  # HF datasets' Sequence(length=n): list field named "item"
                columns[name] = pa.FixedSizeListArray.from_arrays(
                    values, type=pa.list_(pa.field("item", values.type), flat.shape[1]))
        frame_index = np.arange(length, dtype=np.int64)
        timestamp = (frame_index / self.fps).astype(np.float32)
        for name, values in (("timestamp", timestamp), ("frame_index", frame_index)):
            columns[name] = pa.array(values)
            info["stats"][name] = _stats(values, False, self.version == "v3.0")
        pq.write_table(pa.table(columns), tmp / "frames.parquet", compression="snappy")
        (tmp / "episode.json").write_text(json.dumps(info))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    # ------------------------------------------------------------------ finalize
    def _features(self, first: dict) -> dict:
        features = {}
        for key, (shape, dtype) in self.specs.items():
            name = self.key_map[key]
            if key in self.image_keys:
                features[name] = {"dtype": "video", "shape": list(shape), "names": ["height", "width", "channels"],
                                  "info": first["video_info"][name]}
            else:
                flat = int(np.prod(shape)) if shape else 1
                features[name] = {"dtype": str(dtype), "shape": [flat], "names": None}
        features.update({
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        })
        return features

    def finalize(self, n_episodes: int) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if n_episodes == 0:
            raise FormatError(self.root, "no episodes to write")
        episodes = [json.loads((self.staging / f"episode_{i:06d}" / "episode.json").read_text())
                    for i in range(n_episodes)]
        tasks: dict[str, int] = {}
        for ep in episodes:
            for t in ep["tasks"]:
                tasks.setdefault(t, len(tasks))
        start = 0
        tables = []
        for ep in episodes:
            i, n = ep["episode_index"], ep["length"]
            table = pq.read_table(self.staging / f"episode_{i:06d}" / "frames.parquet")
            table = table.append_column("episode_index", pa.array(np.full(n, i, dtype=np.int64)))
            table = table.append_column("index", pa.array(np.arange(start, start + n, dtype=np.int64)))
            table = table.append_column("task_index", pa.array(np.full(n, tasks[ep["tasks"][0]], dtype=np.int64)))
            for name, values in (("episode_index", np.full(n, i)), ("index", np.arange(start, start + n)),
                                 ("task_index", np.full(n, tasks[ep["tasks"][0]]))):
                ep["stats"][name] = _stats(values.astype(np.int64), False, self.version == "v3.0")
            ep["from"], ep["to"] = start, start + n
            start += n
            tables.append(table)
        video_names = [self.key_map[k] for k in self.image_keys]
        if self.version == "v3.0":
            from videoaction.data.formats.lerobot_v3 import write_v3

            info_paths = write_v3(self, episodes, tables, tasks, video_names)
        else:
            from videoaction.data.formats.lerobot_v3 import write_v21

            info_paths = write_v21(self, episodes, tables, tasks, video_names)
        stats = _merge_stats([ep["stats"] for ep in episodes])
        atomic_write_json(self.root / "meta/stats.json", stats)
        atomic_write_json(self.root / VIDEOACTION_META, {"key_map": self.key_map})
        info = {
            "codebase_version": self.version,
            "robot_type": self.robot_type,
            "total_episodes": n_episodes,
            "total_frames": start,
            "total_tasks": len(tasks),
            **info_paths,
            "fps": self.fps,
            "splits": {"train": f"0:{n_episodes}"},
            "features": self._features(episodes[0]),
        }
        atomic_write_json(self.root / INFO_PATH, info)  # last: its presence marks a finished dataset
        shutil.rmtree(self.staging)
        return self.root
