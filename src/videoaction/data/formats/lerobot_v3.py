"""The two on-disk layouts of :class:`~videoaction.data.formats.lerobot_write.LeRobotWriter` (v3.0 and v2.1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from videoaction.data.formats.lerobot_write import CHUNKS_SIZE, DATA_FILES_SIZE_IN_MB, VIDEO_FILES_SIZE_IN_MB
from videoaction.data.formats.video import concat_videos, video_duration
from videoaction.utils.io import atomic_path

V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="snappy")


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _chunk_file(n: int) -> tuple[int, int]:
    return n // CHUNKS_SIZE, n % CHUNKS_SIZE


def tasks_table(tasks: dict[str, int]):
    """``meta/tasks.parquet`` as pandas writes LeRobot's DataFrame: column ``task_index``, index ``task``."""
    import pyarrow as pa

    names = list(tasks)
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()), "task": pa.array(names)})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def write_v3(writer, episodes: list[dict], tables: list, tasks: dict[str, int], video_names: list[str]) -> dict:
    import pyarrow as pa

    root, staging = writer.root, writer.staging
    # frame data: consecutive episodes packed into files of at most DATA_FILES_SIZE_IN_MB
    limit = DATA_FILES_SIZE_IN_MB * 1024 * 1024
    file_no, group, size = 0, [], 0
    for ep, table in zip(episodes, tables):
        if group and size + table.nbytes > limit:
            _flush(root, file_no, group)
            file_no, group, size = file_no + 1, [], 0
        group.append(table)
        size += table.nbytes
        ep["data/chunk_index"], ep["data/file_index"] = _chunk_file(file_no)
    _flush(root, file_no, group)
    for name in video_names:  # consecutive episodes' videos joined into files of at most VIDEO_FILES_SIZE_IN_MB
        _pack_videos(root, staging, episodes, name)
    rows: dict[str, list] = {c: [] for c in ("episode_index", "tasks", "length", "data/chunk_index",
                                            "data/file_index", "dataset_from_index", "dataset_to_index")}
    for ep in episodes:
        i = ep["episode_index"]
        for c, v in (("episode_index", i), ("tasks", ep["tasks"]), ("length", ep["length"]),
                     ("data/chunk_index", ep["data/chunk_index"]), ("data/file_index", ep["data/file_index"]),
                     ("dataset_from_index", ep["from"]), ("dataset_to_index", ep["to"])):
            rows[c].append(v)
        for name in video_names:
            for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
                rows.setdefault(f"videos/{name}/{c}", []).append(ep["videos"][name][c])
        rows.setdefault("meta/episodes/chunk_index", []).append(0)
        rows.setdefault("meta/episodes/file_index", []).append(0)
        for feat, stats in ep["stats"].items():
            for stat, value in stats.items():
                rows.setdefault(f"stats/{feat}/{stat}", []).append(value)
    columns = {}
    for c, values in rows.items():
        if c == "tasks":
            columns[c] = pa.array(values, pa.list_(pa.string()))
        elif c.startswith("stats/"):
            columns[c] = pa.array(values)
        elif c.endswith("timestamp"):
            columns[c] = pa.array(values, pa.float64())
        else:
            columns[c] = pa.array(values, pa.int64())
    _write_parquet(pa.table(columns), root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0))
    _write_parquet(tasks_table(tasks), root / "meta/tasks.parquet")
    return {"chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "data_path": V3_DATA_PATH,
            "video_path": V3_VIDEO_PATH if video_names else None}


def _pack_videos(root: Path, staging: Path, episodes: list[dict], name: str) -> None:
    """Join the staged per-episode mp4s of camera ``name`` into v3.0 video files; set each episode's
    ``videos/<name>/{chunk_index, file_index, from_timestamp, to_timestamp}``."""
    limit = VIDEO_FILES_SIZE_IN_MB * 1024 * 1024
    groups, size = [[]], 0
    for ep in episodes:
        src = staging / f"episode_{ep['episode_index']:06d}" / f"{name}.mp4"
        if groups[-1] and size + src.stat().st_size > limit:
            groups.append([])
            size = 0
        groups[-1].append((ep, src))
        size += src.stat().st_size
    for file_no, group in enumerate(groups):
        chunk, file = _chunk_file(file_no)
        start = 0.0
        for ep, src in group:
            duration = video_duration(src)
            ep.setdefault("videos", {})[name] = {"chunk_index": chunk, "file_index": file, "from_timestamp": start,
                                                 "to_timestamp": start + duration}
            start += duration
        dst = root / V3_VIDEO_PATH.format(video_key=name, chunk_index=chunk, file_index=file)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst, suffix=".mp4") as tmp:
            concat_videos([src for _, src in group], Path(tmp))


def _flush(root: Path, file_no: int, group: list) -> None:
    import pyarrow as pa

    chunk, file = _chunk_file(file_no)
    _write_parquet(pa.concat_tables(group), root / V3_DATA_PATH.format(chunk_index=chunk, file_index=file))


def write_v21(writer, episodes: list[dict], tables: list, tasks: dict[str, int], video_names: list[str]) -> dict:
    root, staging = writer.root, writer.staging
    lines_ep, lines_stats = [], []
    for ep, table in zip(episodes, tables):
        i = ep["episode_index"]
        chunk = i // CHUNKS_SIZE
        _write_parquet(table, root / V21_DATA_PATH.format(episode_chunk=chunk, episode_index=i))
        for name in video_names:
            src = staging / f"episode_{i:06d}" / f"{name}.mp4"
            if src.exists():
                _move(src, root / V21_VIDEO_PATH.format(episode_chunk=chunk, video_key=name, episode_index=i))
        lines_ep.append(json.dumps({"episode_index": i, "tasks": ep["tasks"], "length": ep["length"]}))
        lines_stats.append(json.dumps({"episode_index": i, "stats": ep["stats"]}))
    for rel, lines in (("meta/episodes.jsonl", lines_ep), ("meta/episodes_stats.jsonl", lines_stats),
                       ("meta/tasks.jsonl", [json.dumps({"task_index": v, "task": t}) for t, v in tasks.items()])):
        with atomic_path(root / rel, suffix=".jsonl") as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n")
    n = len(episodes)
    return {"total_videos": n * len(video_names), "total_chunks": (n - 1) // CHUNKS_SIZE + 1,
            "chunks_size": CHUNKS_SIZE, "data_path": V21_DATA_PATH,
            "video_path": V21_VIDEO_PATH if video_names else None}

