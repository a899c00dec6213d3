"""mp4 writing (PyAV, H.264, crf 22, fps 10 as Diffusion Policy's runner), frame grids and PNG output."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from videoaction.errors import VideoActionError
from videoaction.utils.io import atomic_path


def _check_frames(frames, name: str = "frames") -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8 or f.shape[0] == 0:
        raise VideoActionError(f"{name}: expected uint8 (T >= 1, H, W, 3), found {f.dtype} {f.shape}")
    return f


def _pad_even(f: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad by edge replication."""
    ph, pw = f.shape[1] % 2, f.shape[2] % 2
    return np.pad(f, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") if (ph or pw) else f


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) by an integer factor (small sim renders look blurry otherwise)."""
    if factor <= 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def write_mp4(path, frames, fps: int = 10, crf: int = 22, codec: str = "libx264") -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264 mp4 (yuv420p, browser-playable) atomically."""
    import av

    f = _pad_even(_check_frames(frames))
    path = Path(path)
    with atomic_path(path, suffix=".mp4") as tmp, av.open(tmp, mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height = f.shape[2], f.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in f:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path) -> np.ndarray:
    """Decode an mp4 to uint8 (T, H, W, 3)."""
    import av

    with av.open(str(path)) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    if not frames:
        raise VideoActionError(f"{path}: no video frames")
    return np.stack(frames)


def save_png(path, image) -> Path:
    """Write a uint8 (H, W, 3) image as PNG atomically."""
    from PIL import Image

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise VideoActionError(f"save_png {path}: expected uint8 (H, W, 3), found {img.dtype} {img.shape}")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, value: int = 255) -> np.ndarray:
    """Tile images (H, W, 3) given as rows of columns into one image with ``pad`` pixels between tiles.

    All tiles must share H and W. Returns uint8 (R*H + (R+1)*pad, C*W + (C+1)*pad, 3).
    """
    if not rows or not rows[0]:
        raise VideoActionError("image_grid: no images")
    h, w = np.asarray(rows[0][0]).shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * h + (len(rows) + 1) * pad, n_cols * w + (n_cols + 1) * pad, 3), value, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            img = np.asarray(img)
            if img.shape[:2] != (h, w):
                raise VideoActionError(f"image_grid: tile ({i}, {j}) has shape {img.shape}, expected ({h}, {w}, 3)")
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = img
    return out


def video_grid(videos: Sequence[np.ndarray], n_cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile equally-sized videos (T, H, W, 3) into one video; shorter videos hold their last frame."""
    vids = [_check_frames(v, f"video {i}") for i, v in enumerate(videos)]
    t = max(v.shape[0] for v in vids)
    vids = [np.concatenate([v, np.repeat(v[-1:], t - v.shape[0], 0)]) if v.shape[0] < t else v for v in vids]
    n_cols = n_cols or int(np.ceil(np.sqrt(len(vids))))
    blank = np.full_like(vids[0][0], 255)
    frames = []
    for k in range(t):
        tiles = [v[k] for v in vids]
        rows = [tiles[i:i + n_cols] for i in range(0, len(tiles), n_cols)]
        rows[-1] = rows[-1] + [blank] * (n_cols - len(rows[-1]))
        frames.append(image_grid(rows, pad=pad))
    return np.stack(frames)


def prediction_strip(history: np.ndarray, real: np.ndarray, preds: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """One PNG-able image: top row = history then real future; next rows = history then each prediction.

    history (Th, H, W, 3), real (Tf, H, W, 3), each pred (Tf, H, W, 3), all uint8.
    """
    blank = np.full_like(history[0], 255)
    rows = [list(history) + [blank] + list(real)]
    rows += [list(history) + [blank] + list(p) for p in preds]
    return image_grid(rows, pad=pad)
