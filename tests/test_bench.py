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
    assert models == {"uva", "dp", "vpp"}  # VPP's per-stage rows join the latency table
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


def test_evaluate_curve_headline_is_last_best_beside_it(tmp_path):
    """Every checkpoint on the curve seeds; last (headline) and best re-evaluated on all seeds; resumable."""
    from videoaction.eval.curves import check_monotone, evaluate_curve

    quality = {"a": 0.2, "b": 0.9, "c": 0.5}  # checkpoint -> score the fake simulator gives it
    calls = []

    def fake_eval(ckpt, env, seeds, out_dir, **kw):
        calls.append((ckpt, tuple(seeds)))
        res = {"metrics": {"dp_score": quality[ckpt] + 0.01 * len(seeds), "n_episodes": len(seeds)}, "seeds": seeds}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(res))
        return res

    curve = [{"index": i + 1, "minutes": m, "wall_s": 70.0 * m, "step": 100 * (i + 1), "checkpoint": c}
             for i, (m, c) in enumerate([(1.0, "a"), (2.0, "b"), (3.0, "c")])]
    check_monotone(curve)
    seeds = list(range(100, 110))
    ev = evaluate_curve(curve, "pusht", seeds, 3, lambda r: r["metrics"]["dp_score"], tmp_path, evaluate=fake_eval)
    assert [p["seeds"] for p in ev["points"]] == [3, 3, 3]
    assert ev["headline"] == "last" and ev["last"]["checkpoint"] == "c" and ev["last"]["seeds"] == 10
    assert ev["last"]["score"] == pytest.approx(0.5 + 0.1)  # the full-seed evaluation, not the curve point
    assert ev["best"]["checkpoint"] == "b" and ev["best"]["score"] == pytest.approx(0.9 + 0.1)
    assert sorted(calls) == sorted([("a", tuple(seeds[:3])), ("b", tuple(seeds[:3])), ("c", tuple(seeds[:3])),
                                    ("c", tuple(seeds)), ("b", tuple(seeds))])
    calls.clear()
    again = evaluate_curve(curve, "pusht", seeds, 3, lambda r: r["metrics"]["dp_score"], tmp_path, evaluate=fake_eval)
    assert calls == [] and again["last"]["score"] == ev["last"]["score"]  # resumed from results.json
    with pytest.raises(Exception, match="out of order"):
        check_monotone([curve[1], curve[0]])


@pytest.mark.sim
def test_bench_targets_quick_trains_side_by_side_and_evaluates(tmp_path, capsys):
    """`bench --targets --quick`: demos, shared stage 0, UVA / UVA-action / DP-C on PushT and UVA on Metaworld trained
    side by side for equal budgets with curve checkpoints, closed-loop evaluation next to floors on the same seeds."""
    from videoaction.envs.metaworld import ensure_headless_gl
    from videoaction.eval.curves import check_monotone, read_curve

    ensure_headless_gl()  # before importorskip imports mujoco
    pytest.importorskip("gym_pusht")
    pytest.importorskip("metaworld")
    out = tmp_path / "targets.json"
    assert main(["--targets", "--quick", "--out", str(out), "--threads", "1"]) == 0
    summary = json.loads(out.read_text())
    root = tmp_path / "targets"
    pusht, mw = summary["envs"]["pusht"], summary["envs"]["metaworld"]
    assert [r["model"] for r in pusht["models"]] == ["uva-tiny-pusht", "uva-tiny-action", "dp-tiny"]
    assert set(pusht["floors"]) == {"random", "mean-action"} and set(mw["floors"]) == {"random"}
    budget = summary["budget_minutes"]
    for env, r in (("pusht", pusht), ("metaworld", mw)):
        for row in r["models"]:
            assert row["budget_minutes"] == pytest.approx(budget) and row["steps"] > 0  # equal budgets
            curve = read_curve(root / env / "runs" / row["model"])
            check_monotone(curve)
            assert [p["step"] for p in row["curve"]] == [p["step"] for p in curve] and len(curve) == 2
            ev_dir = root / env / "eval" / row["model"] / f"step_{curve[-1]['step']:07d}" / f"seeds_{len(r['seeds'])}"
            last = json.loads((ev_dir / "results.json").read_text())  # headline = the last checkpoint's evaluation
            assert row["score"] == pytest.approx(last["metrics"][r["score"]]) and row["steps"] == curve[-1]["step"]
            assert [int(s) for s in last["seeds"]] == r["seeds"]
        for name in r["floors"]:  # floors on exactly the models' seeds
            floor = json.loads((root / env / "eval" / "floors" / name / "results.json").read_text())
            assert [int(s) for s in floor["seeds"]] == r["seeds"]
            assert r["floors"][name]["score"] == pytest.approx(floor["metrics"][r["score"]])
    cfgs = {m: json.loads((root / "pusht" / "runs" / m / "config.json").read_text()) for m in
            ("uva-tiny-pusht", "uva-tiny-action")}
    assert cfgs["uva-tiny-action"]["model"]["task_modes"] == ["policy_model"]
    assert cfgs["uva-tiny-pusht"]["model"]["tokenizer"]["path"] == cfgs["uva-tiny-action"]["model"]["tokenizer"]["path"]
    mcfg = json.loads((root / "metaworld" / "runs" / "uva-tiny-metaworld" / "config.json").read_text())
    assert mcfg["model"]["language"] and mcfg["model"]["state_dim"] == 4 and mcfg["model"]["action_dim"] == 4
    assert set(mw["models"][0]["per_task"]) == {"drawer-open", "reach"}
    assert pusht["targets"]["uva_ge_dp"] == (pusht["models"][0]["score"] >= pusht["models"][2]["score"])
    html = (root / "pusht" / "report" / "report.html").read_text()
    assert "learning_curves.png" in html and (root / "pusht" / "report" / "learning_curves.png").is_file()
    assert "headline = last checkpoint" in html and "<video" in html
    assert "headline = last checkpoint" in capsys.readouterr().out


def test_target_presets_follow_the_observation_protocol_and_the_ablation_changes_one_thing():
    import importlib

    from videoaction.config import PRESET_MODULES, get_preset, to_dict

    uva, action = to_dict(get_preset("uva-tiny-pusht")), to_dict(get_preset("uva-tiny-action"))
    diff = {k for k in uva if uva[k] != action[k]} | {f"model.{k}" for k in uva["model"]
                                                      if uva["model"][k] != action["model"][k]}
    assert diff == {"preset", "model", "model.task_modes"} and action["model"]["task_modes"] == ["policy_model"]
    for name in ("uva-tiny-pusht", "dp-tiny"):  # PushT: image + agent_pos
        cfg = get_preset(name)
        assert cfg.dataset.state_dims == 2 and cfg.model.state_dim == 2
    assert get_preset("uva-tiny-pusht").model.use_state and not get_preset("uva-tiny-pusht-image-only").model.use_state
    assert get_preset("dp-tiny-image-only").model.state_dim == 0
    mw = get_preset("uva-tiny-metaworld")
    assert mw.dataset.state_dims == 4 and mw.model.language and mw.dataset.language_key == "language"
    names = [n for mod in PRESET_MODULES for n in importlib.import_module(mod).PRESETS]
    for name in names:  # the full Metaworld state (object and goal poses) only where the name says so
        cfg = get_preset(name)
        if getattr(cfg.model, "use_state", False) and cfg.dataset.language_key and cfg.dataset.state_dims is None:
            assert "privileged_state" in name, name
    assert "uva-tiny-metaworld-privileged_state" in names


def test_targets_models_replace_an_environments_presets_and_refuse_unknown_ones():
    from videoaction.benchmarks.targets import TargetSizes, _envs, targets_models
    from videoaction.config import get_preset
    from videoaction.errors import VideoActionError

    fields = targets_models(["metaworld=uva-tiny-metaworld,uva-tiny-fast-metaworld"])
    assert fields == {"metaworld_models": ("uva-tiny-metaworld", "uva-tiny-fast-metaworld")}
    envs = {e.name: e for e in _envs(TargetSizes(**fields))}
    assert envs["metaworld"].models == ("uva-tiny-metaworld", "uva-tiny-fast-metaworld")
    assert envs["pusht"].models == TargetSizes().pusht_models
    fast, base = get_preset("uva-tiny-fast-metaworld"), get_preset("uva-tiny-metaworld")
    assert (fast.model.width, base.model.width) == (128, 256)  # the one difference that matters: width
    assert fast.model.state_dim == base.model.state_dim == 4 and fast.model.language and fast.dataset.language_key
    assert targets_models(["families=vpp-tiny-video>vpp-tiny"]) == {"families_models": ("vpp-tiny-video>vpp-tiny",)}
    for bad in ("metaworld", "mw=uva-tiny", "metaworld=", "pusht=uva-tiny-nonexistent", "families=vpp-tiny>nope"):
        with pytest.raises(VideoActionError, match="targets-models"):
            targets_models([bad])


@pytest.mark.sim
def test_bench_targets_families_trains_a_two_stage_vpp_beside_uva_and_dp_on_one_budget(tmp_path):
    """`--targets-envs families`: UVA, VPP (stage 1, then stage 2 initialised from it) and DP-C on one Metaworld task;
    VPP's two stages share its budget and its curve minutes count from the start of stage 1."""
    from videoaction.envs.metaworld import ensure_headless_gl
    from videoaction.eval.curves import read_curve

    ensure_headless_gl()
    pytest.importorskip("metaworld")
    out = tmp_path / "targets.json"
    assert main(["--targets", "--quick", "--targets-envs", "families", "--out", str(out), "--threads", "1"]) == 0
    fam = json.loads(out.read_text())["envs"]["families"]
    root = tmp_path / "targets" / "families"
    assert [r["model"] for r in fam["models"]] == ["uva-tiny-metaworld", "vpp-tiny-video>vpp-tiny", "dp-tiny-metaworld"]
    assert set(fam["floors"]) == {"random"} and fam["env"] == "metaworld:drawer-open"
    assert "uva_success_rate_ge_0.5" in fam["targets"]  # one task: the headline is that task's success
    video, policy = read_curve(root / "runs" / "vpp-tiny-video"), read_curve(root / "runs" / "vpp-tiny")
    assert len(video) == 1 and len(policy) == 2 and video[-1]["step"] > 0
    cfg = json.loads((root / "runs" / "vpp-tiny" / "config.json").read_text())
    assert cfg["init"] == video[-1]["checkpoint"] and cfg["model"]["stage"] == "policy"
    vpp = fam["models"][1]
    budget = json.loads(out.read_text())["budget_minutes"]
    assert vpp["budget_minutes"] == pytest.approx(budget)  # stage 1's half counted in the curve's minutes
    assert vpp["curve"][0]["minutes"] == pytest.approx(budget * 0.75)
    assert (root / "eval" / "vpp-tiny").is_dir()
    dp = json.loads((root / "runs" / "dp-tiny-metaworld" / "config.json").read_text())
    assert dp["model"]["state_dim"] == 4
