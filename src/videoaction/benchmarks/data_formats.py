"""Dataset-format benchmark: conversion speed (frames/s) per format, and the memory of a lazy UMI mixture loader.

Each format gets a synthetic dataset in its published layout (:mod:`videoaction.data.formats.samples`), converted
to a native store (``--to store``); the store is also written as LeRobot v3.0 (AV1 and H.264) and read back.
The UMI loader test mixes two ``.zarr.zip`` datasets with weights 3:1 and iterates a ``SequenceDataset`` through a
2-worker DataLoader, sampling the resident memory (RSS) of the main process and its workers.
``python -m videoaction.benchmarks.data_formats [--quick] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _convert(src, dst, **kw) -> dict:
    from videoaction.data.formats.convert import convert

    return convert(src, dst, progress=False, **kw)


def conversion_speeds(root: Path, episodes: int, length: int, size: int) -> list[dict]:
    from videoaction.data.formats import samples
    from videoaction.data.store import EpisodeStore
    from videoaction.train.synthetic import make_store

    rows = []

    def record(fmt, direction, summary, image):
        rows.append({"format": fmt, "direction": direction, "frames": summary["frames"],
                     "frames_per_s": round(summary["frames_per_s"], 1), "image": image})

    lengths = [length] * episodes
    store = make_store(root / "store.zarr", n_episodes=episodes, length=length, image_size=size)
    EpisodeStore.open(store, mode="a").update_attrs({"fps": 10})
    for codec in ("libsvtav1", "h264"):
        out = root / f"lerobot_{codec}"
        record("lerobot v3.0", f"store -> lerobot ({codec})",
               _convert(store, out, to="lerobot", target_options={"vcodec": codec}), f"{size}px video")
    record("lerobot v3.0", "lerobot -> store", _convert(root / "lerobot_libsvtav1", root / "from_lr.zarr"),
           f"{size}px video")
    out = root / "lerobot_v21"
    _convert(store, out, to="lerobot", target_options={"version": "v2.1", "vcodec": "h264"})
    record("lerobot v2.1", "lerobot -> store", _convert(out, root / "from_v21.zarr"), f"{size}px video")
    h5 = samples.write_robomimic(root / "image_abs.hdf5", lengths=lengths, size=size)
    record("robomimic", "hdf5 -> store", _convert(h5, root / "rm.zarr", action_rot6d=True), f"{size}px raw")
    lib = samples.write_robomimic(root / "KITCHEN_demo.hdf5", lengths=lengths, size=size, libero=True,
                                  image_key="agentview_rgb")
    record("libero", "hdf5 -> store", _convert(lib, root / "lib.zarr", absolute_actions=True), f"{size}px raw")
    umi, _, _ = samples.write_umi(root / "umi.zarr.zip", lengths=lengths, size=size)
    record("umi", "zarr.zip -> store", _convert(umi, root / "umi.zarr"), f"{size}px JPEG-XL")
    starts = np.arange(episodes) * length
    calvin = samples.write_calvin(root / "calvin", ranges=tuple((int(s), int(s) + length - 1) for s in starts),
                                  size=size)
    record("calvin", "npz -> store", _convert(calvin, root / "calvin.zarr", allow_pickle=True), f"{size}px raw")
    rlds, _ = samples.write_rlds(root / "rlds", lengths=lengths, shards=2, size=size)
    record("rlds", "tfrecord -> store", _convert(rlds, root / "rlds.zarr"), f"{size}px JPEG")
    return rows


class _MemorySampler:
    """Peak memory of this process and its children (loader workers), sampled every 50 ms.

    RSS counts pages a forked worker shares with its parent (torch's libraries, ...) once per process, so the
    summed RSS overstates the machine's memory use; PSS splits each shared page among its sharers and sums right.
    """

    def __init__(self):
        import psutil

        self.proc, self._stop = psutil.Process(), threading.Event()
        self.peak = {"rss_total": 0, "pss_total": 0, "rss_main": 0, "pss_workers_max": 0}
        self.series: list[int] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                full = [p.memory_full_info() for p in procs]
            except psutil.Error:
                continue
            now = {"rss_total": sum(f.rss for f in full), "pss_total": sum(f.pss for f in full),
                   "rss_main": full[0].rss, "pss_workers_max": max([f.pss for f in full[1:]] or [0])}
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            self.series.append(now["pss_total"])
            time.sleep(0.05)

    def halves(self) -> tuple[float, float]:
        """Peak summed PSS in the first and the second half of the run (equal when memory stays flat)."""
        n = len(self.series) // 2
        return (max(self.series[:n] or [0]), max(self.series[n:] or [0]))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def umi_mixture_memory(root: Path, episodes: int, length: int, size: int, batches: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    from videoaction.config import DatasetConfig, FrameConfig
    from videoaction.data.dataset import SequenceDataset
    from videoaction.data.formats import samples
    from videoaction.data.formats.umi import mixture_weights
    from videoaction.data.store import EpisodeStore

    torch.set_num_threads(1)
    paths = [samples.write_umi(root / f"d{i}.zarr.zip", lengths=[length] * episodes, size=size, seed=i)[0]
             for i in range(2)]
    mix = root / "mix.json"
    mix.write_text(json.dumps({"datasets": [{"path": str(paths[0]), "weight": 3}, {"path": str(paths[1]), "weight": 1}]}))
    store = EpisodeStore.open(mix)
    cfg = DatasetConfig(image_key="camera0_rgb", state_key="state", state_dims=None, horizon=32, pad_before=1,
                        pad_after=7, frames=FrameConfig(n_history=4, n_future=4, offset=3, stride=4),
                        image_size=size, val_ratio=0.05)
    ds = SequenceDataset(store, cfg, split="train")
    weights = torch.as_tensor(mixture_weights(store, ds.sampler))
    sampler = WeightedRandomSampler(weights, num_samples=batches * 16, replacement=True,
                                    generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=2, persistent_workers=False)
    decoded = store.n_steps * size * size * 3
    t0 = time.perf_counter()
    with _MemorySampler() as mem:
        n = sum(1 for _ in loader)
    return {"datasets": 2, "weights": [3, 1], "workers": 2, "batches": n, "batch_size": 16,
            "frames_total": int(store.n_steps), "image": f"{size}px JPEG-XL",
            "decoded_frames_mb": round(decoded / 2**20, 1),
            "zip_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1), "frames_in_ram": ds.frames is not None,
            **{f"peak_{k}_mb": round(v / 2**20, 1) for k, v in mem.peak.items()},
            "peak_pss_total_first_half_mb": round(mem.halves()[0] / 2**20, 1),
            "peak_pss_total_second_half_mb": round(mem.halves()[1] / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def run(quick: bool = False) -> dict:
    episodes, length, size = (4, 50, 96) if quick else (20, 100, 96)
    with tempfile.TemporaryDirectory() as tmp:
        rows = conversion_speeds(Path(tmp) / "conv", episodes, length, size)
    with tempfile.TemporaryDirectory() as tmp:
        mem = umi_mixture_memory(Path(tmp), episodes=4 if quick else 10, length=100 if quick else 150,
                                 size=96 if quick else 224, batches=10 if quick else 40)
    return {"conversion": rows, "umi_mixture_loader": mem}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")
    result = run(quick=args.quick)
    print(f"{'format':<14}{'direction':<30}{'frames':>8}{'frames/s':>10}  image")
    for r in result["conversion"]:
        print(f"{r['format']:<14}{r['direction']:<30}{r['frames']:>8}{r['frames_per_s']:>10.0f}  {r['image']}")
    m = result["umi_mixture_loader"]
    print(f"UMI mixture loader ({m['datasets']} datasets, {m['workers']} workers, {m['frames_total']} frames "
          f"{m['image']}, decoded {m['decoded_frames_mb']} MB, zips {m['zip_mb']} MB): peak PSS "
          f"{m['peak_pss_total_mb']} MB for all processes (largest worker {m['peak_pss_workers_max_mb']} MB; "
          f"summed RSS {m['peak_rss_total_mb']} MB; first / second half {m['peak_pss_total_first_half_mb']} / "
          f"{m['peak_pss_total_second_half_mb']} MB), frames in RAM: {m['frames_in_ram']}")
    if args.out:
        from videoaction.utils.io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
