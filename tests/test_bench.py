"""`videoaction bench --quick`: every section runs in one process and the JSON has every documented field."""

from __future__ import annotations

import json

import pytest

from videoaction.benchmarks.cli import main, ratios


def test_bench_quick_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"latency", "training", "data", "machine", "ratios"}
    assert "errors" not in report, report.get("errors")
    models = {r["model"] for r in report["latency"]}
    assert models == {"uva", "dp"}
    for row in report["latency"]:
        assert {"model", "preset", "sampler", "steps", "p50_ms", "p90_ms"} <= set(row)
        assert 0 < row["p50_ms"] <= row["p90_ms"] * 1.0001
    training = {(r["model"], r["latent_cache"]) for r in report["training"]}
    assert training >= {("uva", False), ("uva", True), ("dp", False)}
    assert all(r["samples_per_s"] > 0 for r in report["training"])
    assert report["data"]["loader"] and report["data"]["demos"]["demos"][0]["success_rate"] > 0
    assert any(r["comparison"].startswith("UVA ddpm-100 / DP-C ddpm-100") for r in report["ratios"])
    assert "action-chunk latency" in capsys.readouterr().out


def test_ratios_pair_equal_steps_and_few_step_against_ddpm100():
    rows = [{"model": "uva", "preset": "uva-tiny", "sampler": "ddpm", "steps": 100, "p50_ms": 20.0},
            {"model": "uva", "preset": "uva-tiny", "sampler": "dpm", "steps": 4, "p50_ms": 5.0},
            {"model": "dp", "preset": "dp-tiny", "sampler": "ddpm", "steps": 100, "p50_ms": 100.0}]
    got = {r["comparison"]: r["ratio_p50"] for r in ratios(rows)}
    assert got == {"UVA ddpm-100 / DP-C ddpm-100": 0.2, "UVA dpm-4 / DP-C ddpm-100": 0.05}


@pytest.mark.sim
def test_bench_targets_quick_trains_and_evaluates_both_envs(tmp_path, capsys):
    """`bench --targets --quick`: demos, UVA-tiny training (PushT; Metaworld with task embedding + 39-d state),
    simulator evaluation next to the baselines, a report per env, and the headline JSON."""
    from videoaction.envs.metaworld import ensure_headless_gl

    ensure_headless_gl()  # before importorskip imports mujoco
    pytest.importorskip("gym_pusht")
    pytest.importorskip("metaworld")
    out = tmp_path / "targets.json"
    assert main(["--targets", "--quick", "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads(out.read_text())
    pusht, mw = summary["envs"]["pusht"], summary["envs"]["metaworld"]
    assert 0.0 <= pusht["metrics"]["dp_score"] <= 1.0 and set(pusht["baselines"]) == {"random", "mean-action"}
    assert pusht["steps"] > 0 and pusht["met"] == (pusht["metrics"]["dp_score"] >= 0.5)
    assert set(mw["metrics"]["per_task"]) == {f"metaworld:{t}" for t in ("button-press-topdown", "drawer-open",
                                                                            "reach")}
    assert set(mw["baselines"]) == {"random"} and set(mw["baselines"]["random"]["per_task"]) == set(
        mw["metrics"]["per_task"])
    cfg = json.loads((tmp_path / "targets" / "metaworld" / "run" / "config.json").read_text())
    assert cfg["model"]["language"] and cfg["model"]["use_state"] and cfg["model"]["state_dim"] == 39
    assert cfg["model"]["action_dim"] == 4 and len(cfg["model"]["text"]["vocabulary"]) == 3
    for r in (pusht, mw):
        assert (tmp_path / "targets" / r["report"].split("/targets/")[-1]).is_file()
    assert "target not met" in capsys.readouterr().out or pusht["met"]
