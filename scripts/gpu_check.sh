#!/usr/bin/env bash
# Everything that needs a GPU, in one command: run it first whenever a machine with an NVIDIA
# GPU is at hand, and commit its results folder.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]
#
# RESULTS_DIR defaults to $OUT, else gpu-results/<UTC date-time>/ (git-ignored). Steps, each
# logged to RESULTS_DIR/<step>.log; a failing step does not stop the others:
#   1. build   the extension for the local GPU (TORCH_CUDA_ARCH_LIST from its compute
#              capability, HADAMARD_KERNELS_CUDA=1, pip install --no-build-isolation -e .)
#   2. tests   pytest -m "cuda or triton" (the CUDA and Triton tests, on the GPU)
#   3. memcheck, racecheck, synccheck: compute-sanitizer on scripts/sanitize_cuda.py
#   4. peer    pip install fast-hadamard-transform into the venv (the CUDA peer of the sweep;
#              if it does not install, the sweep runs without it and the summary says so)
#   5. sweep   benchmarks/sweep.py --device cuda, JSON/Markdown/PNG into RESULTS_DIR
#   6. triton-resources  scripts/triton_resources.py --set full (static sm_90 table, for
#              comparison with the committed one)
# Prints a summary and exits non-zero if any step failed. Uses .venv/ (scripts/setup.sh makes
# it; HADAMARD_KERNELS_NO_DATA=1 is set for it here) or $PYTHON.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RESULTS=${1:-${OUT:-gpu-results/$(date -u +%Y%m%d-%H%M%S)}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
SUMMARY="$RESULTS/summary.txt"
: >"$SUMMARY"
FAILED=0

note() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }

# step NAME COMMAND...: run COMMAND with its output in RESULTS/NAME.log and record the
# outcome; with OPTIONAL=1 a failure is reported but does not fail the run.
step() {
  local name=$1 start=$SECONDS rc
  shift
  echo "gpu_check: [$name] $*"
  "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    note "[$name] ok ($((SECONDS - start)) s)"
  elif [ "${OPTIONAL:-0}" = 1 ]; then
    note "[$name] not available (status $rc), see $name.log"
  else
    note "[$name] FAILED with status $rc ($((SECONDS - start)) s), see $name.log"
    FAILED=1
  fi
  return $rc
}

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
note "python: $PY"

# No GPU: say so clearly and stop before the steps (each of them would fail for that reason).
if ! CAP=$("$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")' 2>"$RESULTS/gpu.log"); then
  note "no usable CUDA GPU here ($(tail -n 1 "$RESULTS/gpu.log")); torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)."
  note "nothing was run; this script needs a machine with an NVIDIA GPU and a CUDA build of torch."
  exit 2
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty)"
  "$PY" -c 'import torch, sys; print("python:", sys.version.split()[0]); print("torch:", torch.__version__, "cuda", torch.version.cuda); print("gpu:", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())'
  "$PY" -c 'import triton; print("triton:", triton.__version__)' 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -n 1
} >"$RESULTS/environment.txt"
note "GPU with compute capability $CAP; environment in environment.txt"

step build env TORCH_CUDA_ARCH_LIST="$CAP" HADAMARD_KERNELS_CUDA=1 \
  "$PY" -m pip install --no-build-isolation -e .

step tests "$PY" -m pytest -m "cuda or triton" -q -rs --junitxml="$RESULTS/tests.xml"

if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck; do
    step "$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" scripts/sanitize_cuda.py
  done
else
  note "[sanitizer] FAILED: compute-sanitizer is not on PATH (it ships with the CUDA toolkit)"
  FAILED=1
fi

# The peer is optional: if it does not install, the sweep runs without it and says so.
if OPTIONAL=1 step peer "$PY" -m pip install --no-build-isolation fast-hadamard-transform; then
  note "peer: fast-hadamard-transform $("$PY" -c 'import importlib.metadata as m; print(m.version("fast-hadamard-transform"))')"
else
  note "peer: fast-hadamard-transform did not install: not measured"
fi

step sweep "$PY" benchmarks/sweep.py --device cuda --out "$RESULTS"

step triton-resources "$PY" scripts/triton_resources.py --set full --jobs "$(nproc)" \
  --out "$RESULTS/triton-resources-sm90"

echo
echo "gpu_check: summary (also in $SUMMARY):"
cat "$SUMMARY"
if [ "$FAILED" -ne 0 ]; then
  echo "gpu_check: some steps FAILED; logs in $RESULTS"
  exit 1
fi
echo "gpu_check: all steps passed; results in $RESULTS"
