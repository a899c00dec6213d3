"""`videoaction bench --gpu`: the CPU-fallback path runs end to end and writes every field; the time budget skips
sections with a reason; CUDA-only variants are reported as skipped on a CPU, and measured on a GPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from videoaction.benchmarks.gpu import CPU_PLAN, GpuPlan, markdown, run_gpu

SMALL = dataclasses.replace(CPU_PLAN, batches=(1,), action_steps=(2,), video_steps=2, dp_steps=(("ddim", 2),),
                            iters=1, warmup=1, train_steps=1, train_warmup=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-fallback path runs only without CUDA")
def test_cpu_fallback_measures_every_section_and_skips_cuda_only_variants(tmp_path):
    out = tmp_path / "gpu.json"
    report = run_gpu(out, SMALL, log=lambda m: None)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))  # the file is the returned report
    assert report["device"] == "cpu" and "random weights" in report["weights"]
    assert {k: v["status"] for k, v in report["sections"].items()} == dict.fromkeys(
        ("uva_policy", "uva_video", "dp_policy", "training", "compiled"), "ok")
    timed = [r for r in report["rows"] if "p50_ms" in r]
    whats = {(r["section"], r["what"]) for r in timed}
    assert ("uva_policy", "transformer (policy_model pass)") in whats
    assert ("uva_policy", "policy call (predict_action), ddpm-2") in whats
    assert ("dp_policy", "policy call (predict_action), ddim-2") in whats
    assert any(s == "uva_video" for s, _ in whats)
    for r in timed:
        assert r["batch"] == 1 and 0 < r["p50_ms"] <= r["p90_ms"] * 1.0001 and r["iters"] == 1
    skipped = {r["what"]: r["skipped"] for r in report["rows"] if "skipped" in r}
    graph = [w for w in skipped if "CUDA graph" in w]
    assert graph and all("CUDA" in skipped[w] for w in graph)  # never faked on a CPU
    assert "CUDA" in skipped["torch.compile (transformer blocks, kl16 encoder, head MLP)"]
    train = {r["what"]: r for r in report["rows"] if "samples_per_s" in r}
    assert set(train) == {"uva, images (tokenizer every step), bf16", "uva, latent cache, bf16", "dp, images, bf16"}
    assert train["uva, latent cache, bf16"]["latent_cache"] is True
    assert train["uva, images (tokenizer every step), bf16"]["latent_cache"] is False
    assert train["uva, latent cache, bf16"]["speedup_vs_images"] > 0
    assert all(r["samples_per_s"] > 0 and r["mixed_precision"] == "bf16" for r in train.values())
    md = out.with_suffix(".md").read_text()
    assert "| uva_policy | uva-tiny | transformer (policy_model pass) | 1 | eager |" in md
    assert "CUDA graphs need a CUDA device" in md and "uva, latent cache, bf16" in md


def test_sections_over_the_time_budget_are_skipped_with_the_reason(tmp_path):
    plan = dataclasses.replace(SMALL, budget_s=5.0, estimates_s={k: 60.0 for k in CPU_PLAN.estimates_s})
    report = run_gpu(tmp_path / "gpu.json", plan, sections=("uva_policy", "training"), log=lambda m: None)
    assert report["rows"] == []
    for name in ("uva_policy", "training"):
        assert report["sections"][name]["status"] == "skipped"
        assert "estimate 60 s" in report["sections"][name]["reason"]
    assert "uva_policy: (whole section)" in (tmp_path / "gpu.md").read_text()


def test_default_plan_fits_one_eight_minute_device_run():
    plan = GpuPlan()
    assert plan.budget_s <= 450 and sum(plan.estimates_s.values()) <= plan.budget_s
    assert plan.uva == "uva-base" and plan.image_size == 256 and plan.batches == (1, 8)
    assert plan.action_steps == (16, 100) and plan.video_steps == 16 and plan.dp == "dp-base"
    script = (Path(__file__).parents[1] / "benchmarks" / "gpu.sh").read_text()
    assert "timeout" in script and "--budget-s" in script


def test_markdown_lists_failed_sections():
    report = {"machine": {}, "device": "cpu", "weights": "random", "precision": "fp32", "attention": "math",
              "timing": "t", "rows": [], "sections": {"training": {"status": "error", "reason": "boom"}}}
    assert "| training: (whole section) | boom |" in markdown(report)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only: CUDA graphs and bf16 autocast on a GPU")
def test_cuda_graph_core_is_measured_on_a_gpu(tmp_path):
    plan = dataclasses.replace(SMALL, graphs=True)
    report = run_gpu(tmp_path / "gpu.json", plan, sections=("uva_policy",), log=lambda m: None)
    rows = [r for r in report["rows"] if r.get("mode") == "cuda-graph"]
    assert rows and all(r["p50_ms"] > 0 for r in rows)
