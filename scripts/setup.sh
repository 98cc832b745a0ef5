#!/usr/bin/env bash
# Idempotent set-up, sourced by scripts/run.sh and scripts/test.sh: a virtual environment
# in .venv with torch (TORCH_SPEC, default torch==2.13.0; an existing torch in the venv is
# kept), the dev tools, and the extension built in place against that torch
# (--no-build-isolation, so pip never downloads another torch), and Fashion-MNIST for the
# paper's experiment (Debian's dataset-fashion-mnist; skipped with HADAMARD_KERNELS_NO_DATA=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$VPY" -m pip install -q -r requirements-dev.txt
"$VPY" -m pip install -q --no-build-isolation -e .
if [ "${HADAMARD_KERNELS_NO_DATA:-0}" != "1" ]; then
  bash scripts/install_data.sh
fi
