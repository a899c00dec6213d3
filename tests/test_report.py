"""The HTML report: structure, media files beside it, and a real headless-browser load (Debian chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from videoaction.eval.report import html_table, read_metrics_jsonl, write_report
from videoaction.eval.video import prediction_strip, save_png, write_mp4

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _fake_results(tmp_path):
    """Results shaped like evaluate_policy's, with one real mp4, plus video results with one real PNG grid."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    write_mp4(tmp_path / "out" / "videos" / "pusht_seed100000.mp4", frames)
    eps = [{"seed": 100000 + i, "task": "pusht", "success": i == 0, "steps": 10 + i, "sum_reward": 1.0,
            "max_reward": 0.5, "max_coverage": [0.97, 0.3][i], "final_coverage": 0.2,
            "video": "videos/pusht_seed100000.mp4" if i == 0 else None} for i in range(2)]
    results = {"env": "pusht", "policy": "uva policy", "name": "uva-tiny",
               "metrics": {"success_rate": 0.5, "dp_score": 0.65789, "n_episodes": 2, "mean_max_coverage": 0.635},
               "metric_definitions": {"dp_score": "mean of max clip(cov/0.95)"},
               "metric_labels": {"dp_score": "DP score", "success_rate": "success rate",
                                 "mean_max_coverage": "mean max coverage"},
               "episode_columns": {"max_coverage": "max coverage", "final_coverage": "final coverage"},
               "observation": {"keys": ["image", "state"], "state_dims": 2, "privileged_state": False},
               "tasks": {"pusht": {"metrics": {"success_rate": 0.5, "dp_score": 0.65789}, "episodes": eps}},
               "seeds": [100000, 100001], "versions": {"gym-pusht": "0.1.8"}, "protocol": {"n_envs": 2}}
    baseline = {"env": "pusht", "metrics": {"success_rate": 0.0, "dp_score": 0.1, "n_episodes": 2}}
    strip = prediction_strip(frames[:2], frames[2:4], [frames[3:5]])
    save_png(tmp_path / "out" / "video_grids" / "w0.png", strip)
    video = {"data": "demo.zarr", "table": [{"metric": "PSNR (dB) ↑", "model": 21.5, "baseline": 19.0,
                                            "baseline is": "copy last frame"}],
             "grids": [{"path": "video_grids/w0.png", "caption": "episode 3"}], "notes": ["FVD not computed"]}
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(0, 100, 10):
            f.write(json.dumps({"step": s, "loss": 1.0 / (1 + s), "lr": 1e-4}) + "\n")
        f.write('{"step": 100, "loss"')  # a truncated last line (killed run) is skipped
    (run / "config.json").write_text(json.dumps({"family": "uva", "preset": "uva-tiny", "steps": 100}))
    return results, baseline, video, run


def test_report_structure(tmp_path):
    results, baseline, video, run = _fake_results(tmp_path)
    assert len(read_metrics_jsonl(run / "metrics.jsonl")) == 10
    path = write_report(tmp_path / "out", results, run_dir=run, baselines={"random": baseline}, video_results=video,
                        extra_sections=[("Notes <b>", "<p id='x'>extra</p>"), {"title": "T", "table": [{"a": 1}]}])
    text = path.read_text()
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    for needle in ("uva-tiny", "random", "0.6579", "DP score", "success rate", "video_grids/w0.png",
                   "videos/pusht_seed100000.mp4", "curves_0.png", "&quot;preset&quot;: &quot;uva-tiny&quot;",
                   "gym-pusht", "Notes &lt;b&gt;", "<p id='x'>extra</p>", "FVD not computed"):
        assert needle in text, needle
    assert (tmp_path / "out" / "curves_0.png").stat().st_size > 1000
    assert "<script src" not in text and "http://" not in text and "https://" not in text  # self-contained


def test_report_copies_media_from_elsewhere(tmp_path):
    results, _, _, _ = _fake_results(tmp_path)
    path = write_report(tmp_path / "elsewhere", results, media_root=tmp_path / "out")
    assert (tmp_path / "elsewhere" / "videos" / "pusht_seed100000.mp4").is_file()
    assert "<video" in path.read_text()


def test_html_table_escapes():
    t = html_table([{"name": "<script>", "v": 1.5, "ok": True}])
    assert "&lt;script&gt;" in t and "<script>" not in t and "1.5000" in t and "yes" in t


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(tmp_path):
    results, baseline, video, run = _fake_results(tmp_path)
    path = write_report(tmp_path / "out", results, run_dir=run, baselines={"random": baseline}, video_results=video)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000",
           "--dump-dom", path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, proc.stderr[-2000:]
    assert len(re.findall(r"<table", dom)) >= 3  # headline, per-episode, video metrics
    assert 'class="headline"' in dom and "uva-tiny" in dom
    assert len(re.findall(r"<video", dom)) == 1 and len(re.findall(r"<img", dom)) == 2  # grid + curves
    # the page's own check: every image and video actually decoded in the browser
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images-loaded="2/2"' in body, body
    assert 'data-videos-loaded="1/1"' in body, body


def test_report_several_environments(tmp_path):
    results, baseline, _, _ = _fake_results(tmp_path)
    mw = {"env": "metaworld:reach,drawer-open", "name": "uva-tiny",
          "metrics": {"success_rate": 0.25, "n_episodes": 4},
          "tasks": {t: {"metrics": {"success_rate": v}, "episodes": [
              {"seed": 100000, "success": v > 0, "steps": 7, "max_reward": 1.0, "max_coverage": None}]}
              for t, v in (("metaworld:reach", 0.5), ("metaworld:drawer-open", 0.0))}}
    text = write_report(tmp_path / "out", [results, mw], baselines={"random": baseline}).read_text()
    rows = re.findall(r"<tr><td class='l'>([^<]+)</td><td class='l'>([^<]+)</td>", text)
    assert rows[:3] == [("uva-tiny", "pusht"), ("random", "pusht"), ("uva-tiny", "metaworld:reach,drawer-open")]
    assert "metaworld:drawer-open" in text and "uva-tiny — per task" in text


def test_report_columns_come_from_the_results_labels(tmp_path):
    """Headline / episode columns are the environment's labels (from its EnvSpec via the results); results without
    labels show every scalar metric by name; a privileged-state run is marked in the headline."""
    results, baseline, _, _ = _fake_results(tmp_path)
    text = write_report(tmp_path / "a", results).read_text()
    head = re.findall(r"<th class='[^']*'>([^<]+)</th>", text)
    assert head[:6] == ["policy", "env", "episodes", "DP score", "success rate", "mean max coverage"]
    assert "max coverage" in head and "final coverage" in head and "privileged state" not in text
    assert "&quot;state_dims&quot;: 2" in text  # the observation record is in the protocol section
    toy = {"env": "toy", "name": "m", "metrics": {"success_rate": 0.5, "n_episodes": 2, "mean_height": 1.25},
           "observation": {"keys": ["image", "state"], "state_dims": 9, "privileged_state": True},
           "tasks": {"toy": {"metrics": {"success_rate": 0.5}, "episodes": [
               {"seed": 1, "success": True, "steps": 3, "max_reward": 1.0, "max_coverage": 0.9}]}}}
    text = write_report(tmp_path / "b", toy).read_text()
    head = re.findall(r"<th class='[^']*'>([^<]+)</th>", text)
    assert head[:6] == ["policy", "env", "episodes", "success rate", "mean height", "observation"]
    assert "privileged state" in text and "1.2500" in text
    assert "max coverage" not in head  # an episode key the environment did not declare is not a column
