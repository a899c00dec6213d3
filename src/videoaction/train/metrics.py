"""``DIR/metrics.jsonl`` (one JSON record per logged step) plus optional TensorBoard / Weights & Biases.

Records hold at least ``step`` and ``loss``; the trainer adds the loss terms, ``lr``, ``samples_per_s``,
``grad_norm``, ``ema_decay``, ``epoch`` and, with several ranks, per-rank values under ``ranks``. Evaluation
results are separate records with ``"kind": "eval"``. A resumed run first drops records past its checkpoint, so
the file always reads as one uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from videoaction.errors import VideoActionError

METRICS_FILE = "metrics.jsonl"
REPORTERS = ("none", "tensorboard", "wandb")


def read_metrics(path, kind: str | None = "train") -> list[dict]:
    """Records of a metrics file (``kind=None``: all of them)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [rec for rec in _records(path) if kind is None or rec.get("kind", "train") == kind]


def _records(path: Path) -> list[dict]:
    """Parsed lines; a torn last line (the writer was killed mid-write) is skipped."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    return value


class MetricsLogger:
    """Writes records on the main process only; other ranks hold a no-op logger."""

    def __init__(self, run_dir, active: bool, report_to: str = "none", config: dict | None = None,
                 resume_step: int | None = None):
        self.active = active
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = self._wandb = None
        if report_to not in REPORTERS:
            raise VideoActionError(f"--report-to {report_to!r}: expected one of {REPORTERS}")
        if not active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            keep = [json.dumps(rec) for rec in _records(self.path) if rec.get("step", 0) <= resume_step]
            from videoaction.utils.io import atomic_write_bytes

            atomic_write_bytes(self.path, "".join(line + "\n" for line in keep).encode())
        elif resume_step is None and self.path.is_file():
            self.path.unlink()
        self._file = open(self.path, "a")
        if report_to == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None:
                raise VideoActionError("--report-to tensorboard: the tensorboard package is not installed "
                                       "(pip install tensorboard)")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        elif report_to == "wandb":
            if importlib.util.find_spec("wandb") is None:
                raise VideoActionError("--report-to wandb: the wandb package is not installed (pip install wandb)")
            import wandb

            self._wandb = wandb.init(project="videoaction", dir=str(run_dir), config=config or {},
                                     resume="allow", name=Path(run_dir).name)

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        prefix = "eval/" if record.get("kind") == "eval" else "train/"
        scalars = {prefix + k: v for k, v in record.items()
                   if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
