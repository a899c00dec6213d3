"""Training throughput: samples/s of the training step for the tiny preset of each family, UVA with and without
the latent cache (same run, same data), data-loader samples/s and peak memory.

The trainers are the real ones (``videoaction.train.trainer.Trainer``: loader, forward, backward, clipping, fused
AdamW, scheduler, EMA) on a synthetic 96 px store (``train.synthetic``), preset models unchanged. Their steps run
interleaved, the order alternating each round, so the load of a shared machine hits every configuration alike;
samples/s = batch / median step time after warm-up. On a CPU the steps use one thread and ``samples_per_cpu_s``
(batch / median process CPU time per step) is reported too: it barely moves with the load of other processes, so
its ratios are the ones to quote from a busy machine (``training_ratios``). Rows:

* uva-tiny from images (``latent_cache`` False: the tokenizer encodes 8 frames per sample every step), uva-tiny from
  a latent store written by ``videoaction encode`` (the trainer's default for a frozen tokenizer), dp-tiny, and
  uva-tiny-fast (uva-tiny at width 128) from the latent store;
* the same uva (latents) and dp rows under bf16 autocast, where the hardware has bf16 matrix instructions
  (``mixed_precision`` "bf16");
* full runs (``paper_like``): uva-tiny's transformer on kl16 latents at 256 px (``setting`` "paper-like", batch 1),
  from images vs from the latent cache.

The latent rows carry ``speedup_vs_images`` (wall) and ``speedup_vs_images_cpu_time``. On a CPU ``peak_mem_mb`` is
the process's peak RSS (cumulative); on CUDA the peak allocated memory during that model's steps.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _trainer(preset: str, data: Path, out: Path, batch: int, extra: list[str], latent_cache: str = "off"):
    """A set-up :class:`Trainer` (data, model, optimizer, EMA, loader) of ``preset`` on ``data``; ``latent_cache``
    as ``TrainOptions.latent_cache`` ("off": a UVA trains from the images, its tokenizer running every step)."""
    from videoaction.config import get_preset, parse_overrides
    from videoaction.train.trainer import Trainer, TrainOptions

    cfg = parse_overrides(get_preset(preset), ["--data", str(data), "--out", str(out), "--steps", "1000",
                                               "--optim.batch-size", str(batch), *extra])
    trainer = Trainer(cfg, TrainOptions(progress=False, log=lambda m: None, val_batches=0, latent_cache=latent_cache))
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


def _records(trainers: dict, timed: dict, batch: int, device: str, threads: int, **extra) -> list[dict]:
    from videoaction.train.optim import optimizer_kind

    out = []
    for key, t in trainers.items():
        dt = np.asarray(timed[key]["step_s"])
        out.append({"model": t.cfg.family, "preset": t.cfg.preset, "latent_cache": bool(t.dataset.use_latents),
                    "samples_per_s": float(batch / np.median(dt)),
                    "samples_per_s_p10": float(batch / np.percentile(dt, 90)),
                    "samples_per_s_p90": float(batch / np.percentile(dt, 10)),
                    "samples_per_cpu_s": float(batch / np.median(timed[key]["cpu_s"])),
                    "threads": 1 if device == "cpu" else threads, "optimizer": optimizer_kind(t.optimizer),
                    "mixed_precision": t.cfg.optim.mixed_precision,
                    "batch_size": batch, "timed_steps": len(dt), "device": device,
                    "peak_mem_mb": timed[key]["peak_mem_mb"],
                    "peak_mem_kind": "cuda allocated" if device == "cuda" else "process RSS (cumulative)", **extra})
    images, latents = out[0], out[1]  # callers pass (images, latents, ...) in this order
    latents["speedup_vs_images"] = latents["samples_per_s"] / images["samples_per_s"]
    latents["speedup_vs_images_cpu_time"] = latents["samples_per_cpu_s"] / images["samples_per_cpu_s"]
    return out


def _paper_like(root: Path, quick: bool, device: str, threads: int) -> list[dict]:
    """uva-tiny's transformer on kl16 latents at 256 px (the paper's tokenizer and resolution; random kl16 weights,
    16 x 16 tokens per frame), batch 1: training from images (kl16 encodes 8 frames per sample every step) vs
    from the latent cache. Full runs only: kl16 encodes ~2 s per 256 px frame on one CPU thread."""
    from videoaction.nn.tokenizer import KL16Autoencoder, save_tokenizer
    from videoaction.train.encode import encode_store
    from videoaction.train.synthetic import make_store

    store = make_store(root / "paper.zarr", n_episodes=1, length=26, image_size=96)
    torch.manual_seed(0)
    tok = save_tokenizer(KL16Autoencoder(), root / "kl16", extra={"image_size": 256, "image_key": "img"})
    latents = encode_store(store, root / "paper_latents.zarr", str(tok), progress=False, log=lambda m: None)
    extra = ["--model.tokenizer.kind", "kl16", "--model.tokenizer.latent-channels", "16",
             "--model.tokenizer.stride", "16", "--model.tokenizer.scale", "0.2325", "--dataset.image-size", "256"]
    trainers = {"images": _trainer("uva-tiny", store, root / "paper_img", 1, [*extra, "--model.tokenizer.path",
                                                                                str(tok)]),
                "latents": _trainer("uva-tiny", latents, root / "paper_lat", 1, extra)}
    timed = _interleaved_steps(trainers, 3, 1)
    return _records(trainers, timed, 1, device, threads, tokenizer="kl16", image_size=256, setting="paper-like")


def training_ratios(rows: list[dict]) -> list[dict]:
    """The issue's targets from one run's rows (CPU time where measured on a CPU): uva-tiny trained the default way
    (latent cache) vs dp-tiny, and the latent cache vs images (uva-tiny; paper-like kl16 at 256 px)."""
    cpu = any(r.get("device") == "cpu" for r in rows)
    key = "samples_per_cpu_s" if cpu else "samples_per_s"
    out = []
    for precision in ("no", "bf16"):
        plain = [r for r in rows if r.get("setting") is None and "samples_per_s" in r
                 and r.get("mixed_precision", "no") == precision]
        dp = next((r for r in plain if r["model"] == "dp"), None)
        for uva in (r for r in plain if r["model"] == "uva" and r["latent_cache"] and dp):  # uva-tiny, -fast
            out.append({"comparison": f"{uva['preset']} (latent cache) / dp-tiny"
                                      f"{', both bf16' if precision == 'bf16' else ''}, {key}",
                        "ratio": uva[key] / dp[key], "target": 1.0})
    for r in rows:
        if "speedup_vs_images" in r:
            setting = "paper-like kl16 256 px" if r.get("setting") else "uva-tiny"
            out.append({"comparison": f"latent cache / images ({setting}), {key}", "target": 2.0 if r.get("setting")
                        else None, "ratio": r["speedup_vs_images_cpu_time" if cpu else "speedup_vs_images"]})
    return out


def run(quick: bool = True, paper_like: bool | None = None) -> list[dict]:
    from videoaction.data.store import EpisodeStore
    from videoaction.nn.tokenizer import SmallAutoencoder, save_tokenizer
    from videoaction.train.encode import encode_store
    from videoaction.train.synthetic import make_store

    steps, warmup, batch = (10, 2, 8) if quick else (30, 5, 32)
    paper_like = (not quick) if paper_like is None else paper_like
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
            "uva-fast-latents": _trainer("uva-tiny-fast", latents, root / "uva_fast", batch, []),
        }
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" or torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            bf16 = ["--optim.mixed-precision", "bf16"]  # where the hardware has bf16 matrix instructions
            trainers["uva-latents-bf16"] = _trainer("uva-tiny", latents, root / "uva_lat16", batch, bf16)
            trainers["dp-images-bf16"] = _trainer("dp-tiny", store, root / "dp16", batch, bf16)
        threads = torch.get_num_threads()
        if device == "cpu":
            torch.set_num_threads(1)  # one thread: CPU time per step is then a load-independent measure
        try:
            timed = _interleaved_steps(trainers, steps, warmup)
            loader = {src: _loader_speed(path, "uva-tiny", batch, 5 if quick else 20, 64)
                      for src, path in (("images", store), ("latents", latents))}
            records += _records(trainers, timed, batch, device, threads, warmup_steps=warmup)
            records[1]["encode_frames_per_s"] = n_frames / encode_s
            if paper_like:
                records += _paper_like(root, quick, device, threads)
        finally:
            torch.set_num_threads(threads)
        for source, (wall, per_cpu) in loader.items():
            records.append({"model": "data", "preset": "uva-tiny", "latent_cache": source == "latents",
                            "samples_per_s": wall, "samples_per_cpu_s": per_cpu, "batch_size": batch,
                            "num_workers": 0, "threads": 1 if device == "cpu" else threads})
    return records


if __name__ == "__main__":
    import json

    for rec in run(quick=True):
        print(json.dumps(rec))
