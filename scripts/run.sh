#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the demo and the benchmark sweep on whatever device
# exists (CUDA if visible, else CPU); extra arguments go to benchmarks/sweep.py.
# The CPU FWHT packages from PyPI are installed, when they install, to be measured alongside.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q fht-cpu || echo "run.sh: fht-cpu did not install; not measured"
.venv/bin/python -m pip install -q pybind11 setuptools wheel \
  && .venv/bin/python -m pip install -q --no-build-isolation ffht-unofficial \
  || echo "run.sh: ffht-unofficial did not install; not measured"
.venv/bin/python examples/demo.py
# One thread, as the README's tables (comparable ratios on a shared machine); `--threads 0`
# after it gives torch's default.
exec .venv/bin/python benchmarks/sweep.py --threads 1 "$@"
