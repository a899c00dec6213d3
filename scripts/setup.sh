#!/usr/bin/env bash
# Set up videoaction in ./.venv: PyTorch (a CPU build on machines without an NVIDIA GPU), the package with its
# simulator and test extras, and the system libraries MuJoCo needs to render without a display.
#
#   bash scripts/setup.sh            # package + simulators
#   bash scripts/setup.sh --dev      # + test tools and a headless browser for the report test
#   bash scripts/setup.sh --libero   # + the LIBERO benchmark (libero:libero_10 ...; ~2 GB of scene assets)
#   bash scripts/setup.sh --robosuite  # + robosuite 1.5.2 for ToolHang (robomimic:tool_hang)
#
# --libero and --robosuite exclude each other (robosuite 1.4 vs 1.5): use two environments, e.g. a copy of the
# checkout per simulator, or VIDEOACTION_VENV=.venv-toolhang (the environment's folder, default .venv).
#
# Environment: PYTHON (interpreter, default python3), TORCH_VERSION (default 2.13.0), TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu to force CPU wheels where the default index would serve CUDA ones).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0; LIBERO=0; ROBOSUITE=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --libero) LIBERO=1 ;;
    --robosuite) ROBOSUITE=1 ;;
    *) echo "setup.sh: unknown option $arg (use --dev, --libero, --robosuite)" >&2; exit 2 ;;
  esac
done
if [ "$LIBERO" = 1 ] && [ "$ROBOSUITE" = 1 ]; then
  echo "setup.sh: --libero (robosuite 1.4) and --robosuite (1.5) need separate environments; see docs/evaluation.md" >&2
  exit 2
fi

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
"$PYTHON" - <<'PY' || { echo "setup.sh: Python >= 3.10 is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

VENV=${VIDEOACTION_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. PyTorch first, so that the package's `torch>=2.4` requirement never pulls CUDA wheels on a CPU machine.
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "==> installing torch==$TORCH_VERSION (NVIDIA GPU found)"
    $PY -m pip install -q "torch==$TORCH_VERSION"
  else
    echo "==> installing torch==$TORCH_VERSION (CPU build; no NVIDIA GPU found)"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      $PY -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
    else
      $PY -m pip install -q "torch==$TORCH_VERSION"
    fi
    if $PY -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
      echo "setup.sh: note: a CUDA build of torch was installed on a machine without a GPU; set" \
           "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the small CPU build" >&2
    fi
  fi
fi

# 2. The package.
EXTRAS="sim"
[ "$DEV" = 1 ] && EXTRAS="sim,lang,dev"  # lang: the CLIP text-encoder tests load a tiny local CLIP
[ "$LIBERO" = 1 ] && EXTRAS="$EXTRAS,libero"
[ "$ROBOSUITE" = 1 ] && EXTRAS="$EXTRAS,robosuite"
echo "==> installing videoaction[$EXTRAS]"
$PY -m pip install -q -e ".[$EXTRAS]"
if [ "$ROBOSUITE" = 1 ]; then  # after its requirements, without mink==0.0.5 (pins numpy<2; ToolHang never uses it)
  echo "==> installing robosuite==1.5.2 (--no-deps; its other requirements come with the 'robosuite' extra)"
  $PY -m pip install -q --no-deps "robosuite==1.5.2"
fi

# 3. System libraries: OSMesa for MuJoCo (Metaworld) rendering on CPU; Chromium for the report test.
need_apt=()
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then need_apt+=(libosmesa6); fi
if [ "$DEV" = 1 ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup.sh: warning: missing system packages: ${need_apt[*]}." >&2
    echo "  Install them with:  sudo apt-get install ${need_apt[*]}" >&2
    echo "  (OSMesa lets MuJoCo render on a CPU with MUJOCO_GL=osmesa; on a GPU use MUJOCO_GL=egl instead.)" >&2
  fi
fi

$PY -c "import videoaction, torch; print(f'==> videoaction {videoaction.__version__} ready (torch {torch.__version__})')"
