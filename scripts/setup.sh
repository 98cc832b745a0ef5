#!/usr/bin/env bash
# Idempotent set-up, run by scripts/run.sh and scripts/test.sh: a virtual environment
# in .venv with the build tools (setuptools>=64, wheel: a fresh Python 3.11 venv has
# setuptools 65 without wheel, and an editable --no-build-isolation build then fails with
# "invalid command 'bdist_wheel'"), torch (TORCH_SPEC, default torch==2.13.0; an existing
# torch in the venv is kept), the dev tools, the extension built in place against that
# torch (--no-build-isolation, so pip never downloads another torch), and Fashion-MNIST for
# the paper's experiment (Debian's dataset-fashion-mnist; skipped with
# HADAMARD_KERNELS_NO_DATA=1). Each step says what it does; the times are those of the
# project's 2-core machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VPY=.venv/bin/python
START=$SECONDS

say() { echo "setup: $*"; }

if [ ! -x "$VPY" ]; then
  say "creating .venv with $("$PYTHON" --version 2>&1) (a few seconds)"
  "$PYTHON" -m venv .venv
else
  say "using the existing .venv ($("$VPY" --version 2>&1))"
fi

say "installing the build tools setuptools>=64 and wheel (seconds)"
"$VPY" -m pip install -q "setuptools>=64" wheel

if "$VPY" -c "import torch" 2>/dev/null; then
  say "keeping the installed torch $("$VPY" -c 'import torch; print(torch.__version__)')"
else
  say "installing ${TORCH_SPEC:-torch==2.13.0} (about 1-2 min from a local wheel, 3-6 min downloading from PyPI)"
  "$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi

say "installing the test and benchmark tools of requirements-dev.txt (about 1 min the first time)"
"$VPY" -m pip install -q -r requirements-dev.txt

say "building the C++ extension: pip install --no-build-isolation -e . (about 1.5 min on 2 cores)"
"$VPY" -m pip install -q --no-build-isolation -e .

if [ "${HADAMARD_KERNELS_NO_DATA:-0}" != "1" ]; then
  say "checking Fashion-MNIST for examples/ (scripts/install_data.sh; HADAMARD_KERNELS_NO_DATA=1 skips it)"
  bash scripts/install_data.sh
fi
say "done in $((SECONDS - START)) s"
