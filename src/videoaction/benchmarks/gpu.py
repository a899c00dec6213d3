"""`videoaction bench --gpu`: paper-size UVA and DP-C on one GPU, in one run of at most 8 minutes of device time.

Weights are random (nothing is downloaded; timing does not depend on the values) and the output says so.
Sections, each started only if its time estimate fits the remaining budget (else recorded as skipped, with why):

* ``uva_policy``: uva-base at 256 px (kl16 tokenizer, MAR-B transformer), batch 1 and 8, bf16 autocast, SDPA
  (flash where the GPU has it). Components (kl16 encode of the 4 history frames, transformer pass, action head with
  16 / 100 DDPM steps) and the whole policy call (``predict_action``), eager; then the core frames -> actions
  (encode + transformer + head loop) captured as one CUDA graph and replayed per call.
* ``uva_video``: the video path, transformer + video head over the 4 x 256 future tokens, 16 steps (num_iter 1).
* ``dp_policy``: dp-base (ResNet-18 + U-Net), DDPM-100 and DDIM-16, batch 1 and 8, bf16, eager (its diffusers
  scheduler loop is not graphed).
* ``training``: samples/s of the real trainer, bf16: uva-base from images (kl16 every step) and from the latent
  cache (eager, and with ``optim.compile``), a reference-like row (fp16, kl16 every step), dp-base; batch
  ``train_batch``.
* ``compiled``: ``torch.compile`` of the transformer blocks, kl16 encoder and head MLP, eager calls and under a
  CUDA graph; in a child process with its own hard time limit (compilation time varies most).

Timing: CUDA events after warm-up (``timing.measure_latency``), p50 / p90 ms. Without CUDA the same code runs tiny
presets for a few iterations (the test path) and every CUDA-only variant is recorded as skipped with the reason.
Writes ``OUT`` (JSON) and ``OUT`` with ``.md`` (tables), the JSON again after every section.

Expected device time on an H100/H200-class GPU (``GpuPlan.estimates_s``; one H200 measured 42 / 3 / 71 / 54 / 92 s
before the compiled training row was added): interpreter start ~15 s; uva_policy ~50 s (uva-base build, 2 batch
sizes x 6 eager measurements x 25 calls, 4 CUDA-graph captures); uva_video ~10 s; training ~160 s (four uva-base
trainers, one compiling, and one dp-base, kl16 latent cache of 240 frames, 11 interleaved steps each at batch 32);
dp_policy ~55 s (eager DDPM-100 is the slowest loop); compiled: what is left (>= 120 s to start, the child is
stopped at the budget). Budget 400 s, hard stop 440 s in ``benchmarks/gpu.sh``: under 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from videoaction.benchmarks.timing import machine_info, measure_latency
from videoaction.utils.io import atomic_path, atomic_write_json

RANDOM_WEIGHTS_NOTE = ("random weights (nothing downloaded): latency and throughput do not depend on the weight "
                       "values; action / video quality is not measured here")


@dataclass
class GpuPlan:
    """What one run measures. ``estimates_s``: expected seconds per section on an H100/H200-class GPU (model
    construction included); a section starts only if its estimate fits the time left."""

    uva: str = "uva-base"
    dp: str = "dp-base"
    image_size: int = 256  # model input (kl16 at 256 px -> 16 x 16 tokens per frame)
    obs_size: int = 96  # raw camera frames (PushT), resized to image_size inside the policy call
    batches: tuple[int, ...] = (1, 8)
    action_steps: tuple[int, ...] = (16, 100)
    video_steps: int = 16
    dp_steps: tuple[tuple[str, int], ...] = (("ddpm", 100), ("ddim", 16))
    iters: int = 20
    warmup: int = 5
    train_batch: int = 32
    train_steps: int = 8
    train_warmup: int = 3
    budget_s: float = 400.0  # whole run; benchmarks/gpu.sh adds a hard `timeout` a little above it
    graphs: bool = True
    compile: bool = True
    estimates_s: dict = field(default_factory=lambda: {
        "uva_policy": 50.0, "uva_video": 10.0, "dp_policy": 55.0, "training": 160.0, "compiled": 120.0})


# the test path (no CUDA): tiny presets, few iterations; CUDA-only variants are skipped with the reason
CPU_PLAN = GpuPlan(uva="uva-tiny", dp="dp-tiny", image_size=64, obs_size=64, batches=(1, 2), action_steps=(4, 8),
                   video_steps=4, dp_steps=(("ddpm", 4), ("ddim", 2)), iters=2, warmup=1, train_batch=2,
                   train_steps=2, train_warmup=1, budget_s=240.0, graphs=False, compile=False,
                   estimates_s={"uva_policy": 5.0, "uva_video": 2.0, "dp_policy": 3.0, "training": 20.0,
                                "compiled": 1.0})


class Budget:
    """Seconds left of the run; ``fits(estimate)`` before starting a section or variant."""

    def __init__(self, total_s: float):
        self.t0, self.total = time.perf_counter(), float(total_s)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.total - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


# ------------------------------------------------------------------------------------------ models
def _uva(plan: GpuPlan, device: torch.device):
    from videoaction.config import get_preset
    from videoaction.models.uva.policy import UVAPolicy

    cfg = get_preset(plan.uva)
    cfg.dataset.image_size, cfg.model.obs_image_size = plan.image_size, plan.obs_size
    torch.manual_seed(0)
    return UVAPolicy(cfg, allow_random_tokenizer=True).to(device).eval()


def _dp(plan: GpuPlan, device: torch.device):
    from videoaction.config import get_preset
    from videoaction.models.dp.policy import DiffusionPolicy

    cfg = get_preset(plan.dp)
    torch.manual_seed(0)
    return DiffusionPolicy(cfg).to(device).eval()


def _autocast(device: torch.device, cache: bool = True):
    """bf16 autocast on CUDA; on a CPU the fallback path stays in float32 (numbers are only a smoke test there).
    ``cache=False`` inside CUDA-graph captures (the cast weights are then re-cast by captured kernels, not taken
    from autocast's per-context cache)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def sdpa_backend(device: torch.device) -> str:
    """Which fused attention kernel the transformer's SDPA gets (bf16, head dim 64): checked by a tiny call."""
    if device.type != "cuda":
        return "cpu (flash attention kernel for CPU)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 12, 64, 64, device=device, dtype=torch.bfloat16)
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return name
        except RuntimeError:
            continue
    return "math"


def _time(fn: Callable, plan: GpuPlan, device: torch.device) -> dict:
    with torch.inference_mode(), _autocast(device):
        return measure_latency(fn, iters=plan.iters, warmup=plan.warmup, device=device)


def cuda_graph(fn: Callable[[], object], device: torch.device, warmup: int = 3):
    """Capture ``fn`` (reading static input tensors it closes over) as one CUDA graph; returns ``replay``.

    Warm-up runs on a side stream first (allocator, cuDNN / cuBLAS plans, cached step tensors), as PyTorch's CUDA
    graph recipe requires. Random draws use the default CUDA generator, which graphs support."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _row(section: str, model: str, preset: str, what: str, batch: int, mode: str, stats: dict, **extra) -> dict:
    return {"section": section, "model": model, "preset": preset, "what": what, "batch": batch, "mode": mode,
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}, **extra}


def _skip(section: str, what: str, reason: str, **extra) -> dict:
    return {"section": section, "what": what, "skipped": reason, **extra}


# ------------------------------------------------------------------------------------------ sections
def uva_policy(plan: GpuPlan, device: torch.device, budget: Budget, policy=None) -> list[dict]:
    """Components, end-to-end policy call, and the CUDA-graphed core, per batch size."""
    policy = policy if policy is not None else _uva(plan, device)
    rows, p = [], plan.uva
    n_obs, hist = policy.n_obs_steps, policy.history_positions
    head = policy.model.diffactloss
    for b in plan.batches:
        obs = {"image": torch.randint(0, 256, (b, n_obs, plan.obs_size, plan.obs_size, 3), dtype=torch.uint8,
                                      device=device)}
        frames = obs["image"][:, hist].contiguous()  # (B, 4, H, W, 3) the history frames
        with torch.inference_mode(), _autocast(device):
            lat = policy.encode_frames(policy.preprocess(frames))
            z = policy._forward({"history": lat})
        rows.append(_row("uva_policy", "uva", p, "kl16 encode (4 history frames)", b, "eager",
                         _time(lambda: policy.encode_frames(policy.preprocess(frames)), plan, device)))
        rows.append(_row("uva_policy", "uva", p, "transformer (policy_model pass)", b, "eager",
                         _time(lambda: policy._forward({"history": lat}), plan, device)))
        for k in plan.action_steps:
            rows.append(_row("uva_policy", "uva", p, f"action head (aggregate + ddpm-{k})", b, "eager", _time(
                lambda: head.sample(head.aggregate(z).reshape(-1, head.width), temperature=0.95, num_steps=k,
                                    sampler="ddpm"), plan, device), steps=k))
            rows.append(_row("uva_policy", "uva", p, f"policy call (predict_action), ddpm-{k}", b, "eager",
                             _time(lambda: policy.predict_action(obs, sampler="ddpm", num_steps=k), plan, device),
                             steps=k))
        rows += _graphed_core(plan, device, budget, policy, frames, "eager kernels")
    return rows


def _core(policy, frames: torch.Tensor, k: int, device: torch.device) -> Callable[[], torch.Tensor]:
    """frames (B, 4, H, W, 3) uint8 -> un-normalised actions: encode + transformer + action head loop."""
    def fn():
        with torch.inference_mode(), _autocast(device, cache=False):
            lat = policy.encode_frames(policy.preprocess(frames))
            a = policy.sample_actions({"history": lat}, sampler="ddpm", num_steps=k, temperature=0.95)
            return policy.normalizer.unnormalize("action", a)
    return fn


def _graphed_core(plan: GpuPlan, device: torch.device, budget: Budget, policy, frames: torch.Tensor,
                  kernels: str) -> list[dict]:
    rows, b = [], frames.shape[0]
    for k in plan.action_steps:
        what = f"policy core as one CUDA graph (encode + transformer + ddpm-{k}), {kernels}"
        if device.type != "cuda" or not plan.graphs:
            rows.append(_skip("uva_policy", what, "CUDA graphs need a CUDA device" if device.type != "cuda"
                              else "graphs off in this plan", batch=b, steps=k))
            continue
        if not budget.fits(10.0):
            rows.append(_skip("uva_policy", what, f"time budget ({budget.left():.0f} s left)", batch=b, steps=k))
            continue
        static = frames.clone()
        try:
            replay = cuda_graph(_core(policy, static, k, device), device)
        except Exception as exc:  # capture can fail on a torch / driver combination: recorded, never faked
            rows.append(_skip("uva_policy", what, f"capture failed: {type(exc).__name__}: {exc}"[:300],
                              batch=b, steps=k))
            continue

        def call():
            static.copy_(frames)  # a new observation lands in the graph's input buffer
            replay()
        rows.append(_row("uva_policy", "uva", plan.uva, what, b, "cuda-graph",
                         measure_latency(call, iters=plan.iters, warmup=plan.warmup, device=device), steps=k))
    return rows


def uva_video(plan: GpuPlan, device: torch.device, budget: Budget, policy=None) -> list[dict]:
    policy = policy if policy is not None else _uva(plan, device)
    rows = []
    for b in plan.batches:
        frames = torch.randint(0, 256, (b, policy.model.n_history, plan.obs_size, plan.obs_size, 3),
                               dtype=torch.uint8, device=device)
        with torch.inference_mode(), _autocast(device):
            lat = policy.encode_frames(policy.preprocess(frames))
        k = plan.video_steps
        rows.append(_row("uva_video", "uva", plan.uva, f"video path: transformer + video head ddpm-{k} over "
                         f"{policy.model.n_tokens} tokens (num_iter 1, no decode)", b, "eager", _time(
                             lambda: policy.sample_video({"history": lat}, None, num_iter=1, num_steps=k,
                                                         sampler="ddpm"), plan, device), steps=k))
    return rows


def dp_policy(plan: GpuPlan, device: torch.device, budget: Budget) -> list[dict]:
    policy = _dp(plan, device)
    rows, m = [], policy.mcfg
    for b in plan.batches:
        obs = {"image": torch.randint(0, 256, (b, m.n_obs_steps, m.obs_image_size, m.obs_image_size, 3),
                                      dtype=torch.uint8, device=device),
               "state": torch.randn(b, m.n_obs_steps, m.state_dim, device=device)}
        for sampler, k in plan.dp_steps:
            rows.append(_row("dp_policy", "dp", plan.dp, f"policy call (predict_action), {sampler}-{k}", b, "eager",
                             _time(lambda: policy.predict_action(obs, sampler=sampler, num_steps=k), plan, device),
                             steps=k, sampler=sampler))
    return rows


def training(plan: GpuPlan, device: torch.device, budget: Budget) -> list[dict]:
    """Samples/s of the real trainer (interleaved steps); uva from images and from its latent cache."""
    from videoaction.benchmarks.training import _interleaved_steps, _trainer
    from videoaction.nn.tokenizer import KL16Autoencoder, SmallAutoencoder, save_tokenizer
    from videoaction.train.synthetic import make_store

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_train_") as tmp:
        root = Path(tmp)
        store = make_store(root / "store.zarr", n_episodes=4, length=60, image_size=plan.obs_size)
        torch.manual_seed(0)
        kl16 = plan.uva.startswith("uva-base")
        tok = save_tokenizer(KL16Autoencoder() if kl16 else SmallAutoencoder(16, 16, (), True, 1.0), root / "tok",
                             extra={"image_size": plan.image_size, "image_key": "img"})
        uva_extra = ["--model.tokenizer.path", str(tok), "--dataset.image-size", str(plan.image_size)]
        specs = {  # name -> (preset, extra overrides, latent cache)
            "uva, images (tokenizer every step), bf16": (plan.uva, [*uva_extra, "--optim.mixed-precision", "bf16"],
                                                         "off"),
            "uva, latent cache, bf16": (plan.uva, [*uva_extra, "--optim.mixed-precision", "bf16"], "auto"),
            "uva, latent cache, bf16, compiled": (plan.uva, [*uva_extra, "--optim.mixed-precision", "bf16",
                                                          "--optim.compile"], "auto"),
            "uva, reference-like (images, fp16)": (plan.uva, [*uva_extra, "--optim.mixed-precision", "fp16"], "off"),
            "dp, images, bf16": (plan.dp, ["--optim.mixed-precision", "bf16"], "off"),
        }
        if device.type != "cuda":  # fp16 autocast is a CUDA recipe; compiling on a CPU takes minutes for no gain
            specs.pop("uva, reference-like (images, fp16)")
            rows.append(_skip("training", "uva, reference-like (images, fp16)", "fp16 mixed precision needs CUDA"))
            specs.pop("uva, latent cache, bf16, compiled")
            rows.append(_skip("training", "uva, latent cache, bf16, compiled", "torch.compile is measured on the GPU "
                              "only (CUDA device needed)"))
        trainers, setup_s = {}, {}
        for i, (name, (preset, extra, cache)) in enumerate(specs.items()):
            t0 = time.perf_counter()
            trainers[name] = _trainer(preset, store, root / f"run{i}", plan.train_batch, extra, latent_cache=cache)
            setup_s[name] = time.perf_counter() - t0
        timed = _interleaved_steps(trainers, plan.train_steps + plan.train_warmup, plan.train_warmup)
        for name, t in trainers.items():
            dt = np.asarray(timed[name]["step_s"])
            rows.append({"section": "training", "what": name, "model": t.cfg.family, "preset": t.cfg.preset,
                         "batch": plan.train_batch, "samples_per_s": round(float(plan.train_batch / np.median(dt)), 2),
                         "step_ms_p50": round(float(1e3 * np.median(dt)), 2), "timed_steps": len(dt),
                         "mixed_precision": t.cfg.optim.mixed_precision,
                         "latent_cache": bool(t.dataset.use_latents), "setup_s": round(setup_s[name], 1),
                         "peak_mem_mb": timed[name]["peak_mem_mb"]})
    by = {r["what"]: r for r in rows if "samples_per_s" in r}
    cache, images = by.get("uva, latent cache, bf16"), by.get("uva, images (tokenizer every step), bf16")
    ref = by.get("uva, reference-like (images, fp16)")
    if cache and images:
        cache["speedup_vs_images"] = round(cache["samples_per_s"] / images["samples_per_s"], 2)
    for row in (cache, by.get("uva, latent cache, bf16, compiled")):
        if row and ref:
            row["speedup_vs_reference_like"] = round(row["samples_per_s"] / ref["samples_per_s"], 2)
    return rows


def compiled(plan: GpuPlan, device: torch.device, budget: Budget) -> list[dict]:
    """``torch.compile`` variants in a child process that is stopped at its time limit."""
    what = "torch.compile (transformer blocks, kl16 encoder, head MLP)"
    if device.type != "cuda" or not plan.compile:
        return [_skip("compiled", what, "torch.compile is measured on the GPU only (CUDA device needed)"
                      if device.type != "cuda" else "compile off in this plan")]
    limit = budget.left() - 15.0  # keep time to write the report
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_compile_") as tmp:
        out = Path(tmp) / "rows.json"
        proc = ctx.Process(target=_compiled_child, args=(dataclasses.asdict(plan), str(device), str(out), limit))
        proc.start()
        proc.join(limit)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        rows = json.loads(out.read_text()) if out.is_file() else []
    if not any("p50_ms" in r for r in rows):
        rows.append(_skip("compiled", what, f"no compiled measurement within {limit:.0f} s (exit code "
                          f"{proc.exitcode})"))
    return rows


def _compiled_child(plan_dict: dict, device_name: str, out: str, limit_s: float) -> None:
    """Child process: compile, then measure eager calls and the CUDA-graphed core; rows written after each."""
    plan, device, budget = GpuPlan(**plan_dict), torch.device(device_name), Budget(limit_s)
    plan.batches, plan.action_steps = tuple(plan.batches), tuple(plan.action_steps)
    rows: list[dict] = []

    def flush():
        with atomic_path(Path(out)) as tmp:
            Path(tmp).write_text(json.dumps(rows))

    try:
        policy = _uva(plan, device)
        net = policy.model
        for blk in [*net.encoder_blocks, *net.decoder_blocks]:
            blk.compile(dynamic=False)
        policy.tokenizer.encoder.compile(dynamic=False)
        for head in (net.diffactloss.net, net.diffloss.net):
            head.forward_embedded = torch.compile(head.forward_embedded, dynamic=False)
        for b in plan.batches:
            obs = {"image": torch.randint(0, 256, (b, policy.n_obs_steps, plan.obs_size, plan.obs_size, 3),
                                          dtype=torch.uint8, device=device)}
            for k in plan.action_steps:
                t0 = time.perf_counter()
                with torch.inference_mode(), _autocast(device):
                    policy.predict_action(obs, sampler="ddpm", num_steps=k)  # compiles on first use
                compile_s = time.perf_counter() - t0
                rows.append(_row("compiled", "uva", plan.uva, f"policy call (predict_action), ddpm-{k}, compiled",
                                 b, "compiled", _time(lambda: policy.predict_action(obs, sampler="ddpm", num_steps=k),
                                                      plan, device), steps=k, first_call_s=round(compile_s, 1)))
                flush()
            frames = obs["image"][:, policy.history_positions].contiguous()
            rows += [dict(r, section="compiled") for r in
                     _graphed_core(plan, device, budget, policy, frames, "compiled kernels")]
            flush()
    except Exception as exc:
        rows.append(_skip("compiled", "torch.compile", f"{type(exc).__name__}: {exc}"[:300],
                          trace=traceback.format_exc(limit=3)[-600:]))
        flush()


# in order of priority: a section that does not fit the time left is skipped, the later ones may still fit
SECTIONS: dict[str, Callable] = {"uva_policy": uva_policy, "uva_video": uva_video, "training": training,
                                 "dp_policy": dp_policy, "compiled": compiled}


def run_gpu(out: Path, plan: GpuPlan | None = None, sections: tuple[str, ...] | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Run the sections that fit the budget; write ``out`` (JSON) and ``out.with_suffix('.md')``; return the report."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    plan = plan or (GpuPlan() if cuda else CPU_PLAN)
    budget = Budget(plan.budget_s)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    report: dict = {"device": device.type, "machine": machine_info(), "plan": dataclasses.asdict(plan),
                    "weights": RANDOM_WEIGHTS_NOTE, "precision": "bf16 autocast" if cuda else "float32 (CPU fallback)",
                    "attention": sdpa_backend(device), "timing": "CUDA events after warm-up" if cuda else
                    "perf_counter after warm-up (CPU fallback: a smoke test, not a GPU number)",
                    "rows": [], "sections": {}}
    shared: dict = {}
    for name in sections or tuple(SECTIONS):
        est = plan.estimates_s[name]
        if not budget.fits(est):
            report["sections"][name] = {"status": "skipped", "reason": f"estimate {est:.0f} s > {budget.left():.0f} s "
                                        f"left of the {plan.budget_s:.0f} s budget"}
            log(f"--- {name}: skipped (time budget)")
            continue
        t0 = time.perf_counter()
        log(f"--- {name} (estimate {est:.0f} s, {budget.left():.0f} s left)")
        try:
            kwargs = {}
            if name in ("uva_policy", "uva_video"):  # one uva-base for both sections
                kwargs["policy"] = shared["uva"] = shared.get("uva") or _uva(plan, device)
            rows = SECTIONS[name](plan, device, budget, **kwargs)
            status = {"status": "ok"}
        except Exception as exc:  # one failing section must not cost the others their device time
            rows, status = [], {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:400],
                                "trace": traceback.format_exc(limit=4)[-800:]}
        if name == "uva_video":
            shared.pop("uva", None)  # free the GPU memory before training builds its own models
            if cuda:
                torch.cuda.empty_cache()
        status["seconds"] = round(time.perf_counter() - t0, 1)
        report["sections"][name] = status
        report["rows"] += rows
        log(f"    {status['status']} in {status['seconds']} s")
        atomic_write_json(out, report)  # partial results survive a hard timeout
    report["elapsed_s"] = round(budget.elapsed(), 1)
    atomic_write_json(out, report)
    md = out.with_suffix(".md")
    with atomic_path(md) as tmp:
        Path(tmp).write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """The report as markdown tables (latency rows, training rows, skipped variants)."""
    lines = [f"# bench --gpu ({report['machine'].get('gpu', report['device'])})", "",
             f"- weights: {report['weights']}", f"- precision: {report['precision']}; attention: "
             f"{report['attention']}; timing: {report['timing']}", f"- elapsed: {report.get('elapsed_s')} s", "",
             "| section | model | what | batch | mode | p50 ms | p90 ms |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "p50_ms" in r:
            lines.append(f"| {r['section']} | {r['preset']} | {r['what']} | {r['batch']} | {r['mode']} | "
                         f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} |")
    lines += ["", "| training | batch | precision | latent cache | samples/s | step ms | peak MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "samples_per_s" in r:
            extra = "".join(f" ({k} {r[k]}x)" for k in ("speedup_vs_images", "speedup_vs_reference_like") if k in r)
            lines.append(f"| {r['what']} | {r['batch']} | {r['mixed_precision']} | {r['latent_cache']} | "
                         f"{r['samples_per_s']}{extra} | {r['step_ms_p50']} | {r['peak_mem_mb']} |")
    skipped = [r for r in report["rows"] if "skipped" in r]
    skipped += [{"section": k, "what": "(whole section)", "skipped": v.get("reason")}
                for k, v in report["sections"].items() if v["status"] != "ok"]
    if skipped:
        lines += ["", "| not measured | why |", "|---|---|"]
        lines += [f"| {r['section']}: {r['what']} | {r['skipped']} |" for r in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videoaction bench --gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (tables go beside it, .md)")
    p.add_argument("--budget-s", type=float, help="time budget of the whole run in seconds (default 400 on CUDA)")
    p.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    plan = GpuPlan() if torch.cuda.is_available() else CPU_PLAN
    if args.budget_s:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    report = run_gpu(Path(args.out), plan, tuple(args.sections) if args.sections else None)
    print(markdown(report))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
