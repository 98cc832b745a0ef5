"""Shared test configuration: devices, dtypes, tolerances, error measure.

TRITON_INTERPRET must be set before any @triton.jit kernel is decorated, i.e. before
hadamard_kernels is imported: without a GPU the Triton kernels run in the interpreter.
"""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import hadamard_kernels  # noqa: E402,F401

#: Relative-error bounds ||out - ref|| / ||ref|| against the float64 reference (DESIGN.md).
#: Half types: 1e-2 (storage rounding of inputs and outputs, fp32 accumulation).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are empty or zero)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    return num / denom if denom > 0 else num


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed(request) -> None:
    """A fresh but reproducible seed per test (derived from its id)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
