"""HMA's on-disk token datasets: writer (streamed, resumable, sharded), merge, and a windowed reader.

Layout of one dataset directory (the reference's, so its own encoder's output reads here and ours reads there):

* ``video.bin``            raw memmap: (num_images, h, w) token ids, or (num_images, C, h, w) latents
* ``actions/actions.bin``  float32 (num_images, action_dim); every file in ``actions/`` is concatenated on the last
  axis at load time (sorted by name)
* ``segment_ids.bin``      int32 (num_images,): the episode of each frame (windows crossing episodes are rejected)
* ``metadata.json``        ``token_dtype, action_dim, s, h, w, vocab_size, hz, encoder_name_or_path, encoder_type,
  num_images, name, latent_channels, quantized``
* ``manifest.json``        (ours; optional when reading) self-describing: encoder id and fingerprint, grid, dtype,
  scale, Hz, frame stride, action layout and per-dimension statistics, source, shard and completion state.

A writer appends episode by episode, each in encoder batches; ``progress.json`` records the bytes that are complete
after every episode (written after an fsync), so a killed job truncates the partial tail and resumes with the next
episode. ``merge_shards`` concatenates the complete shards (missing or incomplete ones are reported and skipped),
offsets segment ids and pools the action statistics. ``videoaction merge-shards`` is this module's command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_write_json

METADATA = "metadata.json"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
VIDEO = "video.bin"
SEGMENTS = "segment_ids.bin"
ACTIONS = "actions/actions.bin"
SHARD_RE = re.compile(r"^shard(\d+)_of_(\d+)$")
COPY_CHUNK = 1 << 22  # bytes per read when merging (never a whole shard in memory)


class TokenDataError(VideoActionError):
    """A token dataset that is missing files, inconsistent with its metadata, or asked for an impossible window."""


def shard_name(rank: int, n_shards: int) -> str:
    return f"shard{rank}_of_{n_shards}"


@dataclass(frozen=True)
class TokenLayout:
    """What one frame occupies in ``video.bin``: ids (h, w) with a vocabulary, or latents (C, h, w)."""

    frame_shape: tuple[int, ...]
    dtype: str  # "uint32" ids, "float16"/"float32" latents
    vocab_size: int | None = None

    @property
    def quantized(self) -> bool:
        return self.vocab_size is not None

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize


def hma_metadata(layout: TokenLayout, action_dim: int, num_images: int, name: str, hz: float,
                 encoder: str, encoder_type: str) -> dict:
    """``metadata.json`` with the reference's keys (``s`` is the grid side, 16 in the reference)."""
    h, w = layout.frame_shape[-2:]
    return {"token_dtype": layout.dtype, "action_dim": int(action_dim), "s": int(h), "h": int(h), "w": int(w),
            "vocab_size": layout.vocab_size, "hz": hz, "encoder_name_or_path": encoder, "encoder_type": encoder_type,
            "num_images": int(num_images), "name": name,
            "latent_channels": None if layout.quantized else int(layout.frame_shape[0]),
            "quantized": layout.quantized}


# ------------------------------------------------------------------------------------------------ writer
class TokenWriter:
    """Append episodes of encoded frames to one dataset directory; resumes after the last complete episode.

    ``manifest`` (JSON-able) describes the job; reopening a directory written by a different job is an error.
    """

    def __init__(self, root, layout: TokenLayout, action_dim: int, manifest: dict):
        self.root = Path(root)
        self.layout, self.action_dim = layout, int(action_dim)
        (self.root / "actions").mkdir(parents=True, exist_ok=True)
        job = json.loads(json.dumps(manifest))
        prog_path = self.root / PROGRESS
        if prog_path.is_file():
            prog = json.loads(prog_path.read_text())
            if prog["job"] != job:
                raise TokenDataError(f"{self.root}: partial output of a different encode job (other source, encoder "
                                     f"or settings); delete it or repeat the original command")
        else:
            prog = {"job": job, "episodes": 0, "num_images": 0, "complete": False,
                    "action_sum": [0.0] * self.action_dim, "action_sumsq": [0.0] * self.action_dim}
        self.progress = prog
        n = prog["num_images"]
        # drop whatever a killed run wrote after the last complete episode
        for rel, per_frame in ((VIDEO, layout.frame_bytes), (ACTIONS, 4 * self.action_dim), (SEGMENTS, 4)):
            path = self.root / rel
            with open(path, "ab") as f:
                f.truncate(n * per_frame)
        self._pending = 0

    @property
    def episodes_done(self) -> int:
        return int(self.progress["episodes"])

    @property
    def complete(self) -> bool:
        return bool(self.progress["complete"])

    def add_episode(self, token_batches: Iterable[np.ndarray], actions: np.ndarray) -> int:
        """Stream one episode: token batches (n_i, *frame_shape) in order, actions (T, action_dim)."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise TokenDataError(f"{self.root}: actions must be (T, {self.action_dim}), found {actions.shape}")
        count = 0
        with open(self.root / VIDEO, "ab") as f:
            for batch in token_batches:
                batch = np.ascontiguousarray(batch, dtype=self.layout.dtype)
                if batch.shape[1:] != self.layout.frame_shape:
                    raise TokenDataError(f"{self.root}: encoded frames have shape {batch.shape[1:]}, the dataset "
                                         f"holds {self.layout.frame_shape}")
                f.write(batch.tobytes())
                count += len(batch)
            f.flush()
            os.fsync(f.fileno())
        if count != len(actions):
            raise TokenDataError(f"{self.root}: episode has {count} encoded frames but {len(actions)} actions")
        seg = np.full(count, self.episodes_done, dtype=np.int32)
        for rel, arr in ((ACTIONS, actions), (SEGMENTS, seg)):
            with open(self.root / rel, "ab") as f:
                f.write(arr.tobytes())
                f.flush()
                os.fsync(f.fileno())
        p = self.progress
        a64 = actions.astype(np.float64)
        p["action_sum"] = (np.asarray(p["action_sum"]) + a64.sum(0)).tolist()
        p["action_sumsq"] = (np.asarray(p["action_sumsq"]) + (a64 ** 2).sum(0)).tolist()
        p["episodes"] += 1
        p["num_images"] += count
        atomic_write_json(self.root / PROGRESS, p)
        return count

    def finish(self, metadata: dict) -> None:
        """Write ``metadata.json`` and the manifest (with action statistics) and mark the directory complete."""
        p = self.progress
        stats = action_stats(p["action_sum"], p["action_sumsq"], p["num_images"])
        manifest = {**p["job"], "num_images": p["num_images"], "episodes": p["episodes"], "action_stats": stats,
                    "action_sum": p["action_sum"], "action_sumsq": p["action_sumsq"], "complete": True}
        atomic_write_json(self.root / METADATA, metadata)
        atomic_write_json(self.root / MANIFEST, manifest)
        p["complete"] = True
        atomic_write_json(self.root / PROGRESS, p)


def action_stats(total, total_sq, n: int) -> dict:
    total, total_sq = np.asarray(total, np.float64), np.asarray(total_sq, np.float64)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(total_sq / max(n, 1) - mean ** 2, 0.0))
    return {"mean": mean.tolist(), "std": std.tolist()}


def is_complete(path) -> bool:
    path = Path(path)
    if not (path / METADATA).is_file():
        return False
    prog = path / PROGRESS
    return not prog.is_file() or bool(json.loads(prog.read_text()).get("complete"))


# ------------------------------------------------------------------------------------------------ merge
def merge_shards(shard_dirs: Sequence[Path], out, log=print) -> Path:
    """Concatenate the complete shards into ``out`` (streamed; segment ids offset; statistics pooled).

    Missing or incomplete shards are reported through ``log`` and skipped; none complete is an error.
    """
    out = Path(out)
    present = [Path(d) for d in shard_dirs if is_complete(d)]
    skipped = [str(d) for d in shard_dirs if not is_complete(d)]
    if skipped:
        log(f"merge-shards: skipping {len(skipped)} missing or incomplete shard(s): {skipped}")
    if not present:
        raise TokenDataError(f"merge-shards: none of the {len(shard_dirs)} shards is complete")
    metas = [json.loads((d / METADATA).read_text()) for d in present]
    keys = ("token_dtype", "action_dim", "h", "w", "vocab_size", "latent_channels", "quantized")
    for d, m in zip(present[1:], metas[1:]):
        diff = {k: (metas[0].get(k), m.get(k)) for k in keys if metas[0].get(k) != m.get(k)}
        if diff:
            raise TokenDataError(f"merge-shards: {d} differs from {present[0]} in {diff}")
    tmp = out.parent / f".{out.name}.merging"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "actions").mkdir(parents=True)
    offset, total, s_sum, s_sq, episodes = 0, 0, 0.0, 0.0, 0
    with open(tmp / VIDEO, "wb") as fv, open(tmp / ACTIONS, "wb") as fa, open(tmp / SEGMENTS, "wb") as fs:
        for d, m in zip(present, metas):
            for src, dst in ((d / VIDEO, fv), (d / ACTIONS, fa)):
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, dst, COPY_CHUNK)
            seg = np.memmap(d / SEGMENTS, dtype=np.int32, mode="r")
            for a in range(0, len(seg), COPY_CHUNK // 4):
                fs.write((np.asarray(seg[a: a + COPY_CHUNK // 4]) + offset).astype(np.int32).tobytes())
            n_seg = int(seg[-1]) + 1 if len(seg) else 0
            offset += n_seg
            total += int(m["num_images"])
            man = _read_manifest(d)
            if man and "action_sum" in man:
                s_sum = s_sum + np.asarray(man["action_sum"])
                s_sq = s_sq + np.asarray(man["action_sumsq"])
                episodes += int(man.get("episodes", n_seg))
            else:
                a = TokenDataset(d).actions.astype(np.float64)
                s_sum, s_sq, episodes = s_sum + a.sum(0), s_sq + (a ** 2).sum(0), episodes + n_seg
    meta = {**metas[0], "num_images": total, "name": metas[0]["name"]}
    first = _read_manifest(present[0]) or {}
    manifest = {**{k: v for k, v in first.items() if k not in ("shard",)}, "num_images": total,
                "episodes": episodes, "merged_from": [str(d) for d in present], "skipped_shards": skipped,
                "action_sum": np.asarray(s_sum).tolist(), "action_sumsq": np.asarray(s_sq).tolist(),
                "action_stats": action_stats(s_sum, s_sq, total), "complete": True}
    atomic_write_json(tmp / METADATA, meta)
    atomic_write_json(tmp / MANIFEST, manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"merged {len(present)} shard(s) into {out}: {total} frames, {offset} episodes")
    return out


def _read_manifest(d: Path) -> dict | None:
    return json.loads((d / MANIFEST).read_text()) if (d / MANIFEST).is_file() else None


def find_shards(shards_dir, n_shards: int | None = None) -> list[Path]:
    """Expected shard directories ``shard{r}_of_{N}`` under ``shards_dir`` (N from the names if not given)."""
    shards_dir = Path(shards_dir)
    if n_shards is None:
        found = [SHARD_RE.match(p.name) for p in shards_dir.iterdir()] if shards_dir.is_dir() else []
        counts = {int(m.group(2)) for m in found if m}
        if len(counts) != 1:
            raise TokenDataError(f"{shards_dir}: expected directories shard<r>_of_<N> with one N, found N in "
                                 f"{sorted(counts)}; pass --num-shards")
        n_shards = counts.pop()
    return [shards_dir / shard_name(r, n_shards) for r in range(n_shards)]


# ------------------------------------------------------------------------------------------------ reader
class TokenDataset:
    """Read one dataset directory (ours or the reference encoder's) as memmaps, and cut training windows.

    ``window(i)`` returns frames ``start, start + stride, ...`` (``window`` of them) and, per frame, the
    concatenated raw actions of the ``stride`` steps leading to the next frame: (window, action_dim * stride).
    """

    def __init__(self, root, name: str | None = None):
        self.root = Path(root)
        mpath = self.root / METADATA
        if not mpath.is_file():
            raise TokenDataError(f"{self.root}: not a token dataset (no {METADATA})")
        self.metadata = meta = json.loads(mpath.read_text())
        for key in ("num_images", "h", "w"):
            if key not in meta:
                raise TokenDataError(f"{mpath}: missing key {key!r}")
        self.manifest = _read_manifest(self.root) or {}
        quantized = meta.get("quantized", meta.get("vocab_size") is not None)
        n, h, w = int(meta["num_images"]), int(meta["h"]), int(meta["w"])
        dtype = np.dtype(meta.get("token_dtype", "uint32" if quantized else "float16"))
        shape = (h, w) if quantized else (int(meta.get("latent_channels") or 4), h, w)
        self.layout = TokenLayout(shape, dtype.name, meta.get("vocab_size") if quantized else None)
        self.name = name or meta.get("name") or self.root.name
        self.video = self._memmap(VIDEO, dtype, (n, *shape))
        seg = self.root / SEGMENTS
        self.segment_ids = self._memmap(SEGMENTS, np.int32, (n,)) if seg.is_file() else np.zeros(n, np.int32)
        parts = []
        adir = self.root / "actions"
        for f in sorted(adir.iterdir()) if adir.is_dir() else []:
            size = f.stat().st_size
            if n == 0 or size % (4 * n):
                raise TokenDataError(f"{f}: {size} bytes is not float32 (num_images={n}, D)")
            parts.append(np.memmap(f, dtype=np.float32, mode="r").reshape(n, -1))
        self.actions = np.concatenate(parts, axis=-1) if parts else np.zeros((n, 0), np.float32)

    def _memmap(self, rel: str, dtype, shape) -> np.memmap:
        path = self.root / rel
        need = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not path.is_file() or path.stat().st_size != need:
            got = path.stat().st_size if path.is_file() else "missing"
            raise TokenDataError(f"{path}: expected {need} bytes for {np.dtype(dtype).name} {shape} per "
                                 f"{METADATA}, found {got}")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return len(self.video)

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def action_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per raw action dimension mean and std (from the manifest, else computed)."""
        st = self.manifest.get("action_stats")
        if st:
            return np.asarray(st["mean"], np.float32), np.asarray(st["std"], np.float32)
        a = np.asarray(self.actions, np.float64)
        return a.mean(0).astype(np.float32), a.std(0).astype(np.float32)

    def window_starts(self, window: int, stride: int = 1, overlap: bool = False) -> np.ndarray:
        """Start frames of windows inside one episode (the actions of the last frame's stride included); without
        ``overlap`` each frame is used by at most one window (the reference's ``filter_overlaps``)."""
        span = window * stride  # frames [start, start + span) are covered (last frame + its actions)
        n = len(self)
        if n < span:
            return np.zeros(0, np.int64)
        starts = np.arange(n - span + 1)
        seg = np.asarray(self.segment_ids)
        starts = starts[seg[starts] == seg[starts + span - 1]]
        if overlap:
            return starts
        keep, next_free = [], -1
        for s in starts:  # greedy: windows of one episode tile without sharing frames
            if s >= next_free:
                keep.append(s)
                next_free = s + span
        return np.asarray(keep, np.int64)

    def window(self, start: int, window: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (window, *frame_shape), actions (window, action_dim * stride)) starting at frame ``start``."""
        stop = start + window * stride
        if start < 0 or stop > len(self):
            raise TokenDataError(f"{self.root}: window [{start}, {stop}) outside {len(self)} frames")
        tokens = np.asarray(self.video[start:stop:stride])
        actions = np.asarray(self.actions[start:stop]).reshape(window, -1)
        return tokens, actions


# ------------------------------------------------------------------------------------------------ encoding
class FrameEncoder:
    """Images (N, 3, S, S) in [-1, 1] -> what ``video.bin`` stores: LFQ ids (uint32) or tokenizer latents."""

    def __init__(self, spec: str, allow_pickle: bool = False, dtype: str = "float16"):
        from videoaction.nn.tokenizer.lfq import is_lfq_path, load_lfq

        self.spec = spec
        if is_lfq_path(spec):
            self.model = load_lfq(spec, allow_pickle=allow_pickle)
            self.discrete, self.encoder_type, self.defaults = True, "magvit", {}
            self.info = {"kind": "lfq", "path": str(Path(spec).resolve()), "vocab_size": self.model.vocab_size,
                         "stride": self.model.stride, "scale": 1.0}
        else:
            from videoaction.nn.tokenizer import build_tokenizer, resolved_config
            from videoaction.train.encode import resolve_tokenizer

            cfg, self.defaults = resolve_tokenizer(spec)
            self.model = build_tokenizer(cfg)
            cfg = resolved_config(self.model, cfg)
            self.discrete, self.encoder_type = False, cfg.kind
            self.info = {"kind": cfg.kind, "path": cfg.path, "latent_channels": self.model.latent_channels,
                         "stride": self.model.stride, "scale": float(self.model.scale)}
        from videoaction.train.setup import weights_fingerprint

        wpath = Path(self.info["path"]) if self.info["path"] else None
        if self.discrete and wpath is not None and wpath.is_dir():
            wpath = wpath / "model.safetensors"
        self.info["fingerprint"] = weights_fingerprint(wpath)
        self.dtype = "uint32" if self.discrete else dtype
        self.model.eval()

    def layout(self, image_size: int) -> TokenLayout:
        g = image_size // self.model.stride
        if self.discrete:
            return TokenLayout((g, g), "uint32", int(self.model.vocab_size))
        return TokenLayout((int(self.model.latent_channels), g, g), self.dtype)

    def __call__(self, x):
        import torch

        with torch.no_grad():
            if self.discrete:
                return self.model.encode_ids(x).cpu().numpy().astype(np.uint32)
            return self.model.encode(x, sample=False).float().cpu().numpy().astype(self.dtype)


def encode_store(data, out, encoder: str, shards: int = 1, shard_rank: int | None = None, batch_size: int = 64,
                 image_size: int | None = None, crop_ratio: float | None = None, image_key: str | None = None,
                 action_key: str = "action", hz: float | None = None, stride: int = 1, name: str | None = None,
                 dtype: str = "float16", allow_pickle: bool = False, progress: bool = True, log=print) -> Path:
    """Encode an episode store into HMA's layout: shards ``OUT.shards/shard<r>_of_<N>``, then (unless one
    ``shard_rank`` is asked for) merged into ``out``. Each shard resumes where a killed run stopped."""
    import torch
    from tqdm.auto import tqdm

    from videoaction.config import DatasetConfig
    from videoaction.data.store import EpisodeStore
    from videoaction.data.transforms import transform_frames
    from videoaction.train.encode import shard_ranges

    out = Path(out)
    source = EpisodeStore.open(data)
    enc = FrameEncoder(encoder, allow_pickle=allow_pickle, dtype=dtype)
    dcfg = DatasetConfig(image_key=image_key or enc.defaults.get("image_key", "img"),
                         image_size=image_size or enc.defaults.get("image_size", 64),
                         crop_ratio=crop_ratio if crop_ratio is not None else enc.defaults.get("crop_ratio", 1.0))
    for key in (dcfg.image_key, action_key):
        if key not in source.keys:
            raise TokenDataError(f"{data}: no key {key!r} (keys: {source.keys})")
    if dcfg.image_size % enc.model.stride:
        raise TokenDataError(f"image size {dcfg.image_size} is not a multiple of the encoder stride "
                             f"{enc.model.stride}")
    layout = enc.layout(dcfg.image_size)
    action_dim = int(source.spec(action_key)[0][0])
    hz = float(hz if hz is not None else source.attrs.get("hz", source.attrs.get("fps", 10.0)))
    name = name or Path(data).stem
    ranges = shard_ranges(source.n_episodes, shards)
    n = len(ranges)
    if shard_rank is not None and not 0 <= shard_rank < n:
        raise TokenDataError(f"--shard-rank {shard_rank} outside [0, {n}) ({source.n_episodes} episodes)")
    shard_dir = out.parent / f"{out.name}.shards"
    todo = [shard_rank] if shard_rank is not None else list(range(n))
    total = sum(int(source.episode_ends[b - 1] - (source.episode_ends[a - 1] if a else 0))
                for a, b in (ranges[r] for r in todo))
    with tqdm(total=total, unit="frame", desc="encode", disable=not progress) as bar:
        for r in todo:
            a, b = ranges[r]
            job = {"format": "hma", "name": name, "source": str(Path(data).resolve()), "encoder": enc.info,
                   "encoder_type": enc.encoder_type, "grid": list(layout.frame_shape[-2:]), "dtype": layout.dtype,
                   "frame_shape": list(layout.frame_shape), "vocab_size": layout.vocab_size, "hz": hz,
                   "stride": int(stride), "image_size": dcfg.image_size, "crop_ratio": dcfg.crop_ratio,
                   "image_key": dcfg.image_key, "action_key": action_key,
                   "action_layout": {"keys": [action_key], "dims": [action_dim]},
                   "shard": {"rank": r, "of": n, "episodes": [a, b]}}
            writer = TokenWriter(shard_dir / shard_name(r, n), layout, action_dim, job)
            if writer.complete:
                continue
            for ep in range(a + writer.episodes_done, b):
                d = source.get_episode(ep, [dcfg.image_key, action_key])
                frames = d[dcfg.image_key]

                def batches(frames=frames):
                    for s in range(0, len(frames), batch_size):
                        yield enc(transform_frames(frames[s: s + batch_size], dcfg, None))
                        bar.update(min(batch_size, len(frames) - s))

                writer.add_episode(batches(), d[action_key])
            writer.finish(hma_metadata(layout, action_dim, writer.progress["num_images"], name, hz,
                                       str(enc.info["path"]), enc.encoder_type))
    if shard_rank is not None:
        log(f"shard {shard_rank} of {n} complete: {shard_dir / shard_name(shard_rank, n)}")
        return shard_dir / shard_name(shard_rank, n)
    return merge_shards(find_shards(shard_dir, n), out, log=log)


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videoaction merge-shards",
                                description="join the complete shards of `videoaction encode --format hma` "
                                            "(missing or incomplete ones are reported and skipped)")
    p.add_argument("shards_dir", help="directory holding shard<r>_of_<N>/ (default of encode: OUT.shards)")
    p.add_argument("--out", required=True, help="merged dataset directory")
    p.add_argument("--num-shards", type=int, help="N (default: read from the shard directory names)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    merge_shards(find_shards(args.shards_dir, args.num_shards), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
