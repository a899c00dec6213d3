"""`videoaction bench`: VPP's per-stage latency rows beside UVA and DP-C."""

from __future__ import annotations

import json

from videoaction.benchmarks.cli import main
from videoaction.models.vpp.latency import STAGES


def test_bench_vpp_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--sections", "vpp", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["latency"]
    assert [(r["model"], r["preset"], r["sampler"], r["steps"]) for r in rows] == [("vpp", "vpp-tiny", "ddim", 10)]
    stages = rows[0]["stages_ms"]
    assert list(stages) == list(STAGES) and all(v > 0 for v in stages.values())
    assert rows[0]["p50_ms"] >= sum(stages.values()) - 0.05  # the total covers every stage
    assert "stages: encode" in capsys.readouterr().out
