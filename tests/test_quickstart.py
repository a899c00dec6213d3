"""The quickstart end to end at toy size: demos -> stage 0 + training -> closed loop next to floors -> video eval ->
report; and its verdict rule."""

from __future__ import annotations

import json

import pytest

from videoaction.errors import VideoActionError
from videoaction.quickstart import ACT_FACTOR, ACT_MARGIN, SMOKE, TASKS, QuickstartSizes, acts, closed_loop_summary


def test_acts_needs_three_times_the_best_floor_and_a_margin():
    assert acts(0.6, {"random": 0.0, "mean-action": 0.2})
    assert not acts(0.55, {"random": 0.0, "mean-action": 0.2})  # 2.75 x the best floor
    assert not acts(0.15, {"random": 0.0, "mean-action": 0.0})  # 3 x 0, but not clearly above
    assert acts(0.2, {"random": 0.0, "mean-action": 0.0})
    assert not acts(0.5, {"random": 0.168, "mean-action": 0.151})  # PushT: 2.98 x random
    assert (ACT_FACTOR, ACT_MARGIN) == (3.0, 0.2)


def test_closed_loop_summary_refuses_floors_on_other_seeds():
    res = lambda seeds, s: {"seeds": seeds, "metrics": {"success_rate": s}}  # noqa: E731
    tk = TASKS["drawer-open"]
    with pytest.raises(VideoActionError, match="different seeds"):
        closed_loop_summary(tk, {"uva-tiny": res([1, 2], 1.0), "random": res([1, 3], 0.0)}, "ckpt")
    c = closed_loop_summary(tk, {"uva-tiny": res([1, 2], 0.5), "random": res([1, 2], 0.0),
                                 "mean-action": res([1, 2], 0.0)}, "ckpt")
    assert c["acts"] and c["scores"] == {"uva-tiny": 0.5, "random": 0.0, "mean-action": 0.0}


@pytest.mark.sim
def test_quickstart_smoke(tmp_path, capsys):
    from videoaction.envs.metaworld import ensure_headless_gl
    from videoaction.quickstart import run

    ensure_headless_gl()
    pytest.importorskip("metaworld")
    summary = run(tmp_path, QuickstartSizes(**vars(SMOKE)), smoke=True)
    assert json.loads((tmp_path / "summary.json").read_text())["report"] == summary["report"]
    assert summary["task"] == "drawer-open" and summary["training"]["steps"] == SMOKE.steps
    assert summary["training"]["last_loss"] < summary["training"]["first_loss"]
    c = summary["closed_loop"]
    files = {name: json.loads((tmp_path / "eval" / d / "results.json").read_text())
             for name, d in (("uva-tiny", "uva"), ("random", "random"), ("mean-action", "mean-action"))}
    for name, res in files.items():  # the stored numbers are the evaluations' own, on the same seeds
        assert [int(s) for s in res["seeds"]] == c["seeds"] and len(c["seeds"]) == SMOKE.eval_episodes
        assert c["scores"][name] == res["metrics"]["success_rate"]
    assert files["uva-tiny"]["protocol"]["max_steps"] == SMOKE.max_steps
    floors = {k: v for k, v in c["scores"].items() if k != "uva-tiny"}
    assert c["acts"] == (c["scores"]["uva-tiny"] >= 3 * max(floors.values()) - 1e-9
                         and c["scores"]["uva-tiny"] >= max(floors.values()) + 0.2 - 1e-9)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["use_state"] and cfg["model"]["state_dim"] == 4  # image + 4-d proprio, not the 39-d state
    out = capsys.readouterr().out
    assert "the same 2 seeds" in out and "floor" in out and "learned?" in out
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<video" in html and "random" in html and "mean-action" in html and "Does the policy act?" in html
