"""Typed configs (strict round trip, overrides) and the `videoaction` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from videoaction.cli import COMMANDS, main
from videoaction.config import ConfigError, RunConfig, from_dict, parse_overrides, to_dict

from tests.test_store import write_store


@dataclass
class TinyModel:
    width: int = 64
    depth: int = 2
    dropout: float = 0.1


@dataclass
class TinyRun(RunConfig):
    model: TinyModel = field(default_factory=TinyModel)


def test_overrides_and_round_trip():
    cfg = TinyRun(family="tiny", steps=5)
    new = parse_overrides(cfg, ["--steps", "7", "--save-every", "3", "--model.width", "9", "--resume",
                                "--optim.betas", "0.8", "0.9", "--dataset.frames.stride", "2"])
    assert (new.steps, new.save_every, new.model.width, new.resume) == (7, 3, 9, True)
    assert new.optim.betas == (0.8, 0.9) and new.dataset.frames.stride == 2
    assert cfg.steps == 5  # the preset instance is not mutated
    data = json.loads(json.dumps(to_dict(new)))
    assert from_dict(TinyRun, data) == new


def test_unknown_and_mistyped_keys_are_named(capsys):
    cfg = TinyRun(family="tiny")
    with pytest.raises(SystemExit):
        parse_overrides(cfg, ["--model.widht", "9"])
    assert "--model.widht" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"config\.model: unknown key\(s\) \['widht'\]"):
        from_dict(TinyRun, {"model": {"widht": 3}})
    with pytest.raises(ConfigError, match=r"config\.steps: expected int"):
        from_dict(TinyRun, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"config\.model\.dropout"):
        from_dict(TinyRun, {"model": {"dropout": "high"}})


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("data", "demos", "encode", "train", "eval", "serve", "bench", "quickstart", "convert"):
        assert name in COMMANDS and f"  {name}" in out


def test_data_info_command(tmp_path):
    write_store(tmp_path / "s.zarr", [5, 7])
    res = subprocess.run([sys.executable, "-m", "videoaction.cli", "data", "info", str(tmp_path / "s.zarr"), "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(res.stdout)
    assert info["episodes"] == 2 and info["steps"] == 12
    assert info["data"]["img"]["shape"] == [12, 16, 16, 3] and info["data"]["img"]["dtype"] == "uint8"
    assert info["episode_length"] == {"min": 5, "mean": 6.0, "max": 7}
    assert info["meta"]["success"]["true_fraction"] == 0.5
    bad = subprocess.run([sys.executable, "-m", "videoaction.cli", "data", "info", str(tmp_path / "missing")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "no dataset store" in bad.stderr and "Traceback" not in bad.stderr


def test_train_init_flag_reaches_the_run_config():
    """`--init DIR` (stage 2) is a run-config field: the train parser must not read it as an abbreviation of its own
    `--init-mar` / `--init-partial` flags."""
    from videoaction.train.cli import build_parser, resolve_config

    args, rest = build_parser().parse_known_args(["--preset", "dp-tiny", "--init", "runs/stage1", "--steps", "3"])
    assert args.init_mar is None and not args.init_partial
    cfg = resolve_config(args, rest)
    assert cfg.init == "runs/stage1" and cfg.steps == 3
