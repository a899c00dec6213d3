"""The quickstart end to end at toy size: demos -> stage 0 + training -> simulator eval -> video eval -> report."""

from __future__ import annotations

import json

from videoaction.quickstart import SMOKE, QuickstartSizes, run


def test_quickstart_smoke(tmp_path, capsys):
    summary = run(tmp_path, QuickstartSizes(**vars(SMOKE)), smoke=True)
    assert (tmp_path / "report" / "report.html").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["report"] == summary["report"]
    assert summary["demonstrations"]["episodes"] == SMOKE.episodes
    assert summary["training"]["steps"] == SMOKE.steps
    assert summary["training"]["last_loss"] < summary["training"]["first_loss"]
    for name in ("uva-tiny", "random", "mean-action"):
        assert 0.0 <= summary["pusht"][name]["dp_score"] <= 1.0
    assert {"psnr", "psnr_copy_last", "ssim"} <= set(summary["video"])
    rows = {r["key"]: r for r in summary["held_out"]}
    assert set(rows) == {"psnr", "ssim", "policy_mse_norm", "inverse_dynamics_mse_norm"}
    psnr = rows["psnr"]
    assert psnr["learned"] == (psnr["model"] > psnr["baseline"]) and psnr["baseline_is"] == "copy last frame"
    pol = rows["policy_mse_norm"]
    assert pol["learned"] == (pol["model"] < pol["baseline"]) and pol["baseline_is"] == "mean action"
    out = capsys.readouterr().out
    assert "learned?" in out and "policy action MSE" in out and "PushT DP score" in out
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<video" in html and "random" in html and "mean-action" in html
