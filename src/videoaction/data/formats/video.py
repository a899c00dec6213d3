"""mp4 encode / decode with PyAV for the LeRobot format (frame i of an episode sits at ``from_timestamp + i / fps``)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from videoaction.data.formats.base import FormatError

DEFAULT_VCODEC = "libsvtav1"  # LeRobot's default; "h264" encodes faster on a CPU
DEFAULT_PIX_FMT = "yuv420p"
DEFAULT_GOP = 2  # LeRobot's default: a key frame every 2 frames keeps random access cheap
DEFAULT_CRF = 30


def encode_video(frames: np.ndarray, path: str | Path, fps: int, vcodec: str = DEFAULT_VCODEC,
                 pix_fmt: str = DEFAULT_PIX_FMT, g: int | None = DEFAULT_GOP, crf: int | None = DEFAULT_CRF) -> dict:
    """Write (T, H, W, 3) uint8 frames to ``path``; frame i gets pts i in time base 1/fps. Returns the feature's
    ``info`` block (``video.height`` ...) as LeRobot writes it."""
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its config and warnings per file otherwise
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FormatError(path, "video frames must be (T, H, W, 3) uint8", found=f"{frames.shape} {frames.dtype}")
    options = {}
    if g is not None:
        options["g"] = str(g)
    if crf is not None:
        options["crf"] = str(crf)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(vcodec, rate=int(fps), options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.time_base = Fraction(1, int(fps))
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        codec_name = stream.codec_context.name
    return {
        "video.height": int(frames.shape[1]),
        "video.width": int(frames.shape[2]),
        "video.codec": {"libsvtav1": "av1", "libx264": "h264", "h264": "h264", "libx265": "hevc",
                        "hevc": "hevc"}.get(vcodec, codec_name),
        "video.pix_fmt": pix_fmt,
        "video.is_depth_map": False,
        "video.fps": int(fps),
        "video.channels": 3,
        "video.g": g,
        "video.crf": crf,
        "has_audio": False,
    }


def decode_video(path: str | Path, start_s: float, n_frames: int, fps: float, key: str = "") -> np.ndarray:
    """``n_frames`` consecutive frames starting at timestamp ``start_s``: (n, H, W, 3) uint8."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "video file missing", key=key or None)
    half = 0.5 / fps
    out = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start_s > half:
                container.seek(int(max(start_s - half, 0) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time or 0.0)
                if t < start_s - half:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == n_frames:
                    break
    except av.error.FFmpegError as exc:
        raise FormatError(path, f"could not decode video ({exc}); the file may be truncated", key=key or None) from None
    if len(out) < n_frames:
        raise FormatError(path, "video has fewer frames than the episode (truncated file?)", key=key or None,
                          expected=f"{n_frames} frames from t={start_s:.3f}s", found=f"{len(out)} frames")
    return np.stack(out)


def video_duration(path: str | Path) -> float:
    """Duration of the first video stream in seconds (what a following file's frames are offset by)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration / av.time_base)


def concat_videos(inputs: list[Path], output: Path) -> None:
    """Join mp4 files of one codec / size / rate into ``output`` without re-encoding (ffmpeg's concat demuxer:
    file k's frames are shifted by the durations of files 0..k-1)."""
    import tempfile

    import av

    with tempfile.NamedTemporaryFile("w", suffix=".ffconcat", delete=False) as listing:
        listing.write("ffconcat version 1.0\n")
        for p in inputs:
            listing.write(f"file '{Path(p).resolve()}'\n")
    try:
        with av.open(listing.name, mode="r", format="concat", options={"safe": "0"}) as src, \
                av.open(str(output), mode="w", format="mp4", options={"movflags": "faststart"}) as dst:
            in_stream = src.streams.video[0]
            out_stream = dst.add_stream_from_template(template=in_stream, opaque=True)
            out_stream.time_base = in_stream.time_base
            for packet in src.demux(in_stream):
                if packet.dts is None:
                    continue
                packet.stream = out_stream
                dst.mux(packet)
    finally:
        os.unlink(listing.name)
