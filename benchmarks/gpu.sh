#!/usr/bin/env bash
# One device run of `videoaction bench --gpu`: paper-size UVA (uva-base, kl16 at 256 px) and DP-C (dp-base) on one
# GPU, within 8 minutes of device time. Writes OUT_DIR/gpu.json and OUT_DIR/gpu.md (default: $OUT, else bench_gpu).
#
#   bash benchmarks/gpu.sh [OUT_DIR]
#
# Needs a Python with this package's dependencies and a CUDA build of torch (nothing is downloaded: weights are
# random, which does not change timing). The benchmark keeps its own budget (400 s, each section started only if
# its estimate fits); `timeout` is the hard stop above it. Partial results are written after every section.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-bench_gpu}}"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-400}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "diffusers", "accelerate", "zarr", "safetensors", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench --gpu: missing Python packages {missing} (install the project's dependencies first)")
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU fallback: tiny presets)'}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout --signal=INT --kill-after=20 $((BUDGET_S + 40)) \
  "$PY" -m videoaction.benchmarks.gpu --out "$OUT_DIR/gpu.json" --budget-s "$BUDGET_S"
