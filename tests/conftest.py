"""Shared test configuration: devices, dtypes, tolerances, error measure, input layouts.

The standards these tests hold the code to are in docs/DESIGN.md.

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

#: Relative-error bounds ||out - ref|| / ||ref|| against the float64 reference (docs/DESIGN.md,
#: "Correctness standard").
#: Half types: 1e-2 (storage rounding of inputs and outputs, fp32 accumulation).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: Memory layouts of an input of shape (*lead, n), see make_input.
LAYOUTS = ["contiguous", "sliced", "transposed", "expanded", "repeated"]


def dtype_id(dtype: torch.dtype) -> str:
    """Readable parametrisation id: torch.float16 -> "float16"."""
    return str(dtype).removeprefix("torch.")


def make_input(shape, dtype=torch.float32, layout="contiguous", device="cpu") -> torch.Tensor:
    """Fresh random (never zero) input of ``shape`` = (*lead, n) in one of LAYOUTS.

    contiguous: plain randn; sliced: columns off..off+n of a wider tensor (unaligned start,
    row stride n + 67, as causal-conv1d tests do); transposed: the features dimension has
    the largest stride; expanded: one row broadcast over the batch (stride 0 rows);
    repeated: one value per row broadcast over the features (stride 0 features).
    """
    *lead, n = shape
    kw = {"dtype": dtype, "device": device}
    if layout == "contiguous":
        x = torch.randn(*lead, n, **kw)
    elif layout == "sliced":
        off = 3
        x = torch.randn(*lead, off + n + 64, **kw)[..., off : off + n]
    elif layout == "transposed":
        x = torch.randn(n, *lead, **kw).movedim(0, -1)
    elif layout == "expanded":
        x = torch.randn(n, **kw).expand(*lead, n)
    elif layout == "repeated":
        x = torch.randn(*lead, 1, **kw).expand(*lead, n)
    else:
        raise ValueError(f"make_input: unknown layout {layout!r}")
    assert x.shape == (*lead, n)
    return x


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are empty or zero)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    return num / denom if denom > 0 else num


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def cuda_device() -> str:
    """A CUDA device for tests marked ``cuda`` (skipped without one by the hook below)."""
    if len(DEVICES) < 2:
        pytest.skip("needs a CUDA device")
    return DEVICES[1]


@pytest.fixture(autouse=True)
def _seed(request) -> None:
    """A fresh but reproducible seed per test (derived from its id)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # The marker, not item.keywords: keywords also hold parametrisation ids such as
        # backend="cuda", whose CPU-side error tests must run without a GPU.
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def mutant_runner(tmp_path_factory):
    """The CPU-run CUDA harness's runner (float32 only) built from a copy of the kernels with
    every mutation of test_cuda_sim.MUTATIONS in it, each switched on by HK_SIM_MUTANT=id:
    one build for the harness's mutant tests (test_cuda_sim*.py)."""
    from cuda_sim import harness as H
    from test_cuda_sim import MUTATIONS

    return H.build_mutants(MUTATIONS, tmp_path_factory.mktemp("mutants"))
