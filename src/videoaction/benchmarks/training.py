"""Training throughput: samples/s of the training step for the tiny preset of each family, UVA with and without
the latent cache (same run, same data), data-loader samples/s and peak memory.

The trainers are the real ones (``videoaction.train.trainer.Trainer``: loader, forward, backward, clipping, AdamW,
scheduler, EMA) on a synthetic 96 px store (``train.synthetic``), preset models unchanged. Their steps run
interleaved, the order alternating each round, so the load of a shared machine hits every configuration alike;
samples/s = batch / median step time after warm-up. On a CPU the steps use one thread and ``samples_per_cpu_s``
(batch / median process CPU time per step) is reported too: it barely moves with the load of other processes, so
its ratios are the ones to quote from a busy machine. The UVA "latent cache" row trains from a store written by
``videoaction encode`` (the encoder never runs); it carries ``speedup_vs_images`` (wall) and
``speedup_vs_images_cpu_time``. On a CPU ``peak_mem_mb`` is the process's peak RSS (cumulative); on CUDA the peak
allocated memory during that model's steps.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _trainer(preset: str, data: Path, out: Path, batch: int, extra: list[str]):
    """A set-up :class:`Trainer` (data, model, optimizer, EMA, loader) of ``preset`` on ``data``."""
    from videoaction.config import get_preset, parse_overrides
    from videoaction.train.trainer import Trainer, TrainOptions

    cfg = parse_overrides(get_preset(preset), ["--data", str(data), "--out", str(out), "--steps", "1000",
                                               "--optim.batch-size", str(batch), *extra])
    trainer = Trainer(cfg, TrainOptions(progress=False, log=lambda m: None, val_batches=0))
    trainer._setup()
    trainer.model.train()
    return trainer


def _interleaved_steps(trainers: dict, steps: int, warmup: int) -> dict[str, dict]:
    """Training steps of every trainer in turn (order alternating each round), so that the load of a shared
    machine hits all of them alike; per-step seconds (loader + forward + backward + optimizer + EMA)."""
    cuda = torch.cuda.is_available()
    iters = {k: iter(t.loader) for k, t in trainers.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    peak: dict[str, float] = {k: 0.0 for k in trainers}
    names = list(trainers)
    for i in range(steps):
        for k in (names if i % 2 == 0 else names[::-1]):
            t = trainers[k]
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0, c0 = time.perf_counter(), time.process_time()
            t._train_step(iters[k], {})
            if t.ema is not None:
                t.ema.update(t.policy)
            if cuda:
                torch.cuda.synchronize()
                peak[k] = max(peak[k], torch.cuda.max_memory_allocated() / 2**20)
            t.step += 1
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    if not cuda:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = {k: rss for k in trainers}
    return {k: {"step_s": times[k], "cpu_s": cpu[k], "peak_mem_mb": round(peak[k], 1)} for k in trainers}


def _loader_speed(data: Path, preset: str, batch: int, n_batches: int, image_size: int) -> tuple[float, float]:
    """(samples/s wall, samples per CPU second) of the training loader (no workers) over ``n_batches``."""
    from videoaction.config import get_preset
    from videoaction.data.dataset import SequenceDataset
    from videoaction.train.loader import BatchOrder, make_loader

    cfg = get_preset(preset).dataset
    cfg.image_size = image_size
    ds = SequenceDataset(data, cfg, split="train", seed=0)
    it = iter(make_loader(ds, BatchOrder(len(ds), batch, seed=0)))
    next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        next(it)
    n = batch * n_batches
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def run(quick: bool = True) -> list[dict]:
    from videoaction.data.store import EpisodeStore
    from videoaction.nn.tokenizer import SmallAutoencoder, save_tokenizer
    from videoaction.train.encode import encode_store
    from videoaction.train.synthetic import make_store

    steps, warmup, batch = (10, 2, 8) if quick else (30, 5, 32)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        store = make_store(root / "store.zarr", n_episodes=6 if quick else 20, length=60, image_size=96)
        # uva-tiny's tokenizer architecture (stride 16, 16 channels, default widths) with fixed untrained
        # weights: throughput does not depend on the weights, and stage 0 is not part of this measurement
        torch.manual_seed(0)
        tok = Path(save_tokenizer(SmallAutoencoder(16, 16, (), True, 1.0), root / "tok",
                                  extra={"image_size": 64, "image_key": "img"}))
        t0 = time.perf_counter()
        latents = encode_store(store, root / "latents.zarr", str(tok), progress=False, log=lambda m: None)
        encode_s = time.perf_counter() - t0
        n_frames = EpisodeStore.open(store).n_steps
        trainers = {
            "uva-images": _trainer("uva-tiny", store, root / "uva_img", batch, ["--model.tokenizer.path", str(tok)]),
            "uva-latents": _trainer("uva-tiny", latents, root / "uva_lat", batch, []),
            "dp-images": _trainer("dp-tiny", store, root / "dp", batch, []),
        }
        device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = torch.get_num_threads()
        if device == "cpu":
            torch.set_num_threads(1)  # one thread: CPU time per step is then a load-independent measure
        try:
            timed = _interleaved_steps(trainers, steps, warmup)
            loader = {src: _loader_speed(path, "uva-tiny", batch, 5 if quick else 20, 64)
                      for src, path in (("images", store), ("latents", latents))}
        finally:
            torch.set_num_threads(threads)
        for key, t in trainers.items():
            dt = np.asarray(timed[key]["step_s"])
            records.append({"model": t.cfg.family, "preset": t.cfg.preset, "latent_cache": key == "uva-latents",
                            "samples_per_s": float(batch / np.median(dt)),
                            "samples_per_s_p10": float(batch / np.percentile(dt, 90)),
                            "samples_per_s_p90": float(batch / np.percentile(dt, 10)),
                            "samples_per_cpu_s": float(batch / np.median(timed[key]["cpu_s"])),
                            "threads": 1 if device == "cpu" else threads,
                            "batch_size": batch, "timed_steps": len(dt), "warmup_steps": warmup, "device": device,
                            "peak_mem_mb": timed[key]["peak_mem_mb"],
                            "peak_mem_kind": "cuda allocated" if device == "cuda" else "process RSS (cumulative)"})
        records[1]["speedup_vs_images"] = records[1]["samples_per_s"] / records[0]["samples_per_s"]
        records[1]["speedup_vs_images_cpu_time"] = records[1]["samples_per_cpu_s"] / records[0]["samples_per_cpu_s"]
        records[1]["encode_frames_per_s"] = n_frames / encode_s
        for source, (wall, per_cpu) in loader.items():
            records.append({"model": "data", "preset": "uva-tiny", "latent_cache": source == "latents",
                            "samples_per_s": wall, "samples_per_cpu_s": per_cpu, "batch_size": batch,
                            "num_workers": 0, "threads": 1 if device == "cpu" else threads})
    return records


if __name__ == "__main__":
    import json

    for rec in run(quick=True):
        print(json.dumps(rec))
