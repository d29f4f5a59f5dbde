#!/usr/bin/env bash
# Create .venv (or $VENV) and install sam_histo with its test and benchmark extras.
# Order matters (docs/DESIGN.md section 5): torch first, then sam2 without build isolation and without
# its optional CUDA extension, then the project itself. Safe to re-run: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_() { "$VENV/bin/python" -m pip "$@"; }
pip_ install -q --upgrade pip setuptools wheel
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing $TORCH"
  pip_ install -q $TORCH
fi
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  echo "[setup] installing sam2 (no build isolation, no CUDA extension)"
  SAM2_BUILD_CUDA=0 pip_ install -q --no-build-isolation "sam2==1.1.0"
fi
echo "[setup] installing sam_histo[dev,bench]"
pip_ install -q -e ".[dev,bench]"
echo "[setup] ready: $VENV/bin/sam-histo"
