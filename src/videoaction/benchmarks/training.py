"""Training throughput: samples/s of the real training loop for the tiny preset of each family, UVA with and
without the latent cache (same run, same data), data-loader samples/s and peak memory.

Each measurement is ``videoaction.train.train`` on a synthetic 96 px store (``train.synthetic``) with the preset's
model unchanged; samples/s is the median over logged steps after warm-up (data loading, forward, backward,
optimizer and EMA included). The UVA "latent cache" row trains from a store written by ``videoaction encode``
(the encoder never runs); its record carries ``speedup_vs_images``. On a CPU ``peak_mem_mb`` is the process's
peak RSS so far (cumulative); on CUDA it is the peak allocated memory of that measurement.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_speed(preset: str, data: Path, out: Path, steps: int, batch: int, warmup: int, extra: list[str]) -> dict:
    from videoaction.config import get_preset, parse_overrides
    from videoaction.train.metrics import read_metrics
    from videoaction.train.trainer import TrainOptions, train

    cfg = parse_overrides(get_preset(preset), ["--data", str(data), "--out", str(out), "--steps", str(steps),
                                               "--log-every", "1", "--save-every", str(10 * steps),
                                               "--optim.batch-size", str(batch), *extra])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, TrainOptions(progress=False, log=lambda m: None, val_batches=0))
    wall = time.perf_counter() - t0
    rates = [r["samples_per_s"] for r in read_metrics(out)][warmup:]
    return {"model": cfg.family, "preset": preset, "samples_per_s": float(np.median(rates)),
            "samples_per_s_p10": float(np.percentile(rates, 10)), "samples_per_s_p90": float(np.percentile(rates, 90)),
            "batch_size": batch, "steps": steps, "warmup_steps": warmup, "wall_s": round(wall, 1),
            "device": device, "peak_mem_mb": round(_peak_mem_mb(device), 1)}


def _loader_speed(data: Path, preset: str, batch: int, n_batches: int, image_size: int) -> float:
    from videoaction.config import get_preset
    from videoaction.data.dataset import SequenceDataset
    from videoaction.train.loader import BatchOrder, make_loader

    cfg = get_preset(preset).dataset
    cfg.image_size = image_size
    ds = SequenceDataset(data, cfg, split="train", seed=0)
    it = iter(make_loader(ds, BatchOrder(len(ds), batch, seed=0)))
    next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return batch * n_batches / (time.perf_counter() - t0)


def run(quick: bool = True) -> list[dict]:
    from videoaction.data.store import EpisodeStore
    from videoaction.nn.tokenizer import SmallAutoencoder, save_tokenizer
    from videoaction.train.encode import encode_store
    from videoaction.train.synthetic import make_store

    steps, warmup, batch = (8, 3, 8) if quick else (30, 5, 32)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        store = make_store(root / "store.zarr", n_episodes=6 if quick else 20, length=60, image_size=96)
        # uva-tiny's tokenizer architecture (stride 8, 8 channels, widths 32/64/128) with fixed untrained
        # weights: throughput does not depend on the weights, and stage 0 is not part of this measurement
        torch.manual_seed(0)
        tok = Path(save_tokenizer(SmallAutoencoder(8, 8, (32, 64, 128), True, 1.0), root / "tok",
                                  extra={"image_size": 64, "image_key": "img"}))
        t0 = time.perf_counter()
        latents = encode_store(store, root / "latents.zarr", str(tok), progress=False, log=lambda m: None)
        encode_s = time.perf_counter() - t0
        n_frames = EpisodeStore.open(store).n_steps
        uva_extra = ["--model.tokenizer.path", str(tok)]
        images = _train_speed("uva-tiny", store, root / "uva_img", steps, batch, warmup, uva_extra)
        images["latent_cache"] = False
        cached = _train_speed("uva-tiny", latents, root / "uva_lat", steps, batch, warmup, [])
        cached["latent_cache"] = True
        cached["speedup_vs_images"] = cached["samples_per_s"] / images["samples_per_s"]
        cached["encode_frames_per_s"] = n_frames / encode_s
        records += [images, cached]
        dp = _train_speed("dp-tiny", store, root / "dp", steps, batch, warmup, [])
        dp["latent_cache"] = False
        records.append(dp)
        n_batches = 5 if quick else 20
        for source, path in (("images", store), ("latents", latents)):
            records.append({"model": "data-loader", "preset": "uva-tiny", "latent_cache": source == "latents",
                            "samples_per_s": _loader_speed(path, "uva-tiny", batch, n_batches, 64),
                            "batch_size": batch, "num_workers": 0})
    return records


if __name__ == "__main__":
    import json

    for rec in run(quick=True):
        print(json.dumps(rec))
