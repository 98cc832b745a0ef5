"""Tests of hadamard_kernels/triton_kernels.py: the "triton" backend and ``fwht_block``.

Without a GPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1),
which is slow, so CPU sizes stay small; CUDA adds large and odd sizes. Interpreter-green is
not GPU-green, so ``test_compiled_mode`` also compiles every kernel to cubin
for sm_80 and sm_90 in a subprocess (no GPU needed, Triton ships ptxas).
"""

import functools
import importlib.util
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import hadamard_kernels as hk  # noqa: E402
from hadamard_kernels import reference  # noqa: E402
from hadamard_kernels import triton_kernels as tk  # noqa: E402
from hadamard_kernels.triton_kernels import fwht_block  # noqa: E402

from conftest import DEVICES, DTYPES, RTOL, rel_err  # noqa: E402

pytestmark = pytest.mark.triton

ROOT = pathlib.Path(__file__).resolve().parents[1]
ops = torch.ops.hadamard_kernels


@triton.jit
def _runtime_loop_kernel(out_ptr, n):
    acc = 0
    for _ in range(0, n, 1):
        acc += 1
    tl.store(out_ptr, acc)


@functools.cache
def _interpreter_runs_runtime_loops() -> bool:
    """Triton 3.6's interpreter cannot run ``range(0, n)`` with a runtime n under NumPy 2.4
    (it calls int() on a 1-element array; later Triton fixed it). Compiled kernels are
    unaffected; without this the CPU tests would fail for the environment's sake."""
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _runtime_loop_kernel[(1,)](out, 3)
    except Exception:  # noqa: BLE001  (InterpreterError wrapping a TypeError)
        return False
    return out.item() == 3


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Devices where the triton backend runs (CPU only under the interpreter)."""
    if "triton" not in hk.available_backends(request.param):
        pytest.skip(f"no triton backend on {request.param} (CPU needs TRITON_INTERPRET=1)")
    if request.param == "cpu" and not _interpreter_runs_runtime_loops():
        pytest.skip(f"the interpreter of Triton {triton.__version__} cannot run loops with runtime bounds")
    return request.param


def sizes(device: str, small: list[int], large: list[int]) -> list[int]:
    return small + (large if device == "cuda" else [])


def poison(device: str) -> None:
    """Fill the CUDA caching allocator with NaN so that unwritten outputs show."""
    if device == "cuda":
        torch.full((64 << 20,), float("nan"), device=device)  # freed at once, blocks reused


def tol(dtype: torch.dtype) -> float:
    return RTOL[dtype]


LAYOUTS = ["contiguous", "sliced", "transposed"]


def make_rows(shape: tuple, n: int, dtype: torch.dtype, device: str, layout: str) -> torch.Tensor:
    """Random (*shape, n) input, contiguous, sliced from a wider tensor, or transposed."""
    if layout == "contiguous":
        return torch.randn(*shape, n, dtype=dtype, device=device)
    if layout == "sliced":
        off = 3
        return torch.randn(*shape, off + n + 64, dtype=dtype, device=device)[..., off : off + n]
    return torch.randn(n, *shape, dtype=dtype, device=device).movedim(0, -1)


# ---------------------------------------------------------------------------------------
# fwht


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fwht_matches_reference(device, dtype, layout):
    for n in sizes(device, [1, 2, 3, 16, 100, 256], [1024, 4096, 12345, 2**15]):
        x = make_rows((6,), n, dtype, device, layout)
        scale = n**-0.5
        poison(device)
        y = hk.fwht(x, scale, backend="triton")
        assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
        ref = reference.fwht_reference(x.double(), scale)
        assert rel_err(y, ref) < tol(dtype), f"n={n}"


@pytest.mark.parametrize("shape", [(), (3, 5), (0,), (2, 0)], ids=lambda s: f"batch{s}")
def test_fwht_batch_shapes(device, shape):
    x = torch.randn(*shape, 48, device=device)
    y = hk.fwht(x, 0.5, backend="triton")
    assert y.shape == x.shape
    if x.numel():
        assert rel_err(y, reference.fwht_reference(x.double(), 0.5)) < 1e-5


def test_fwht_properties(device):
    n = 64
    x = torch.randn(10, n, device=device)
    y = hk.fwht(x, backend="triton")
    assert rel_err(hk.fwht(y, backend="triton"), n * x) < 1e-6  # H H = n I
    z = hk.fwht(x, n**-0.5, backend="triton")
    assert torch.allclose(z.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)  # orthonormal
    assert torch.equal(hk.fwht(x, backend="triton"), y)  # deterministic


@pytest.mark.parametrize("in_features,out_features", [(5, 5), (5, 12), (12, 5), (16, 1), (1, 33)])
def test_transform_op_truncations(device, in_features, out_features):
    x = torch.randn(7, in_features, dtype=torch.float64, device=device)
    y = ops.hadamard_transform_triton(x, out_features, 0.25)
    ref = reference.hadamard_transform_reference(x, out_features, 0.25)
    assert rel_err(y, ref) < 1e-12


def test_transform_matches_cpu_backend(device):
    x = torch.randn(9, 200, device=device)
    assert torch.allclose(
        hk.fwht(x, 0.1, backend="triton").cpu(), hk.fwht(x.cpu(), 0.1, backend="cpu"), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fwht_backward(device, dtype):
    for n in sizes(device, [3, 64], [5000]):
        x = make_rows((4,), n, dtype, device, "sliced").requires_grad_()
        g = torch.randn(4, n, dtype=dtype, device=device)
        hk.fwht(x, 0.3, backend="triton").backward(g)
        x64 = x.detach().double().requires_grad_()
        reference.fwht_reference(x64, 0.3).backward(g.double())
        assert rel_err(x.grad, x64.grad) < tol(dtype)


def test_transform_gradcheck(device):
    for n, out in [(5, 5), (6, 11), (11, 3)]:
        x = torch.randn(3, n, dtype=torch.float64, device=device, requires_grad=True)
        fn = lambda t: ops.hadamard_transform_triton(t, out, 0.7)  # noqa: B023,E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


# ---------------------------------------------------------------------------------------
# The fixed classifier

SHAPES = [(8, 10), (10, 8), (32, 1), (100, 7), (3, 64), (256, 100)]  # (N, C): C > N included


def classifier_reference_grads(x, scale, bias, g, num_classes, normalize, eps):
    leaves = [t.detach().double().requires_grad_() for t in (x, scale, bias)]
    y = reference.hadamard_classifier_reference(
        leaves[0], num_classes, leaves[1], leaves[2], normalize=normalize, eps=eps
    )
    y.backward(g.double())
    return y.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_classifier_forward_backward(device, dtype, normalize):
    large = [(4096, 1000), (1000, 10000), (2**15, 10)]
    for n, c in SHAPES + (large if device == "cuda" else []):
        x = make_rows((5,), n, dtype, device, "sliced").requires_grad_()
        scale = torch.tensor(1.7, dtype=dtype, device=device, requires_grad=True)
        bias = torch.randn(c, dtype=dtype, device=device, requires_grad=True)
        g = torch.randn(5, c, dtype=dtype, device=device)
        poison(device)
        y = hk.hadamard_classifier(x, c, scale, bias, normalize=normalize, backend="triton")
        assert y.shape == (5, c) and y.dtype == dtype
        y.backward(g)
        ref, (gx, gs, gb) = classifier_reference_grads(x, scale, bias, g, c, normalize, 1e-12)
        t = tol(dtype)
        assert rel_err(y, ref) < t, f"N={n} C={c}"
        assert rel_err(x.grad, gx) < t, f"N={n} C={c}"
        assert rel_err(scale.grad, gs) < t, f"N={n} C={c}"
        assert rel_err(bias.grad, gb) < t, f"N={n} C={c}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_classifier_layouts_and_batches(device, layout):
    for shape in [(), (2, 3), (0,)]:
        x = make_rows(shape, 20, torch.float32, device, layout).requires_grad_()
        scale = torch.tensor([2.0], device=device, requires_grad=True)
        y = hk.hadamard_classifier(x, 30, scale, backend="triton")
        assert y.shape == (*shape, 30)
        ref = reference.hadamard_classifier_reference(x.detach().double(), 30, 2.0)
        if x.numel():
            assert rel_err(y, ref) < 1e-5
        y.sum().backward()
        assert x.grad.shape == x.shape and scale.grad.shape == (1,)
        if not x.numel():
            assert scale.grad.item() == 0


def test_classifier_backward_op_direct(device):
    """Non-contiguous grad_y, float32 scale with bf16 x, bias gradient in float32."""
    x = torch.randn(6, 24, dtype=torch.bfloat16, device=device)
    g = torch.randn(40, 6, dtype=torch.bfloat16, device=device).t()  # (6, 40), strided
    scale = torch.tensor(0.9, device=device)
    gx, gs, gb = ops.classifier_backward_triton(g, x, scale, True, 1e-12)
    assert gx.is_contiguous() and gx.dtype == torch.bfloat16
    assert gs.dtype == torch.float32 and gs.shape == () and gb.dtype == torch.float32
    _, (rx, rs, rb) = classifier_reference_grads(x, scale, torch.zeros(40), g, 40, True, 1e-12)
    assert rel_err(gx, rx) < 1e-2 and rel_err(gs, rs) < 1e-5 and rel_err(gb, rb) < 1e-5


def test_classifier_matches_cpu_backend_and_is_deterministic(device):
    x = torch.randn(33, 50, device=device, requires_grad=True)
    scale = torch.tensor(3.0, device=device, requires_grad=True)
    g = torch.randn(33, 17, device=device)
    runs = []
    for _ in range(2):
        y = hk.hadamard_classifier(x, 17, scale, backend="triton")
        runs.append((y, *torch.autograd.grad(y, (x, scale), g)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    xc = x.detach().cpu().requires_grad_()
    sc = scale.detach().cpu().requires_grad_()
    yc = hk.hadamard_classifier(xc, 17, sc, backend="cpu")
    expected = (yc, *torch.autograd.grad(yc, (xc, sc), g.cpu()))
    for got, exp in zip(runs[0], expected):  # dL/dscale sums terms of both signs: atol
        assert torch.allclose(got.cpu(), exp, rtol=1e-5, atol=1e-4)


def test_classifier_norm_clamp(device):
    """Rows with ||x|| < eps take the clamped branch, forward and backward (float64)."""
    x = torch.randn(4, 12, dtype=torch.float64, device=device)
    x[1] *= 1e-9
    x[3] *= 1e-7
    scale = torch.tensor(1.3, dtype=torch.float64, device=device)
    bias = torch.randn(9, dtype=torch.float64, device=device)
    g = torch.randn(4, 9, dtype=torch.float64, device=device)
    eps = 1e-6
    xg, sg, bg = (t.clone().requires_grad_() for t in (x, scale, bias))
    y = hk.hadamard_classifier(xg, 9, sg, bg, eps=eps, backend="triton")
    y.backward(g)
    ref, grads = classifier_reference_grads(x, scale, bias, g, 9, True, eps)
    assert rel_err(y, ref) < 1e-12
    for got, exp in zip((xg.grad, sg.grad, bg.grad), grads):
        assert rel_err(got, exp) < 1e-12


# (dtype, magnitude of x, eps, scale): the norm or the fold overflows or underflows the
# accumulator unless the kernel rescales; scale keeps the true outputs and gradients in
# the normal range of the dtype, so they are finite and comparable.
EXTREMES = [
    (torch.float32, 3e38, 1e-12, 1e6),  # sum of squares and fold overflow
    (torch.bfloat16, 3e38, 1e-12, 1e6),
    (torch.float32, 1e-40, 1e-12, 1.0),  # subnormal x, norm clamped to eps
    (torch.float32, 1e-40, 1e-42, 1e-3),  # subnormal x and eps, norm not clamped
    (torch.float32, 1e-25, 1e-30, 1e-12),  # squares underflow, x normal
    (torch.float16, 6e4, 1e-12, 1e3),
    (torch.float64, 1e300, 1e-12, 1.0),  # float64 overflow: compared by scale invariance
]


def rel_err_scaled(out: torch.Tensor, ref: torch.Tensor) -> float:
    """rel_err of both divided by max|ref| (a power of two), so that the squares in the norms
    neither overflow nor underflow float64 for extreme values."""
    m = 2.0 ** math.floor(math.log2(ref.abs().max().item()))
    return rel_err(out.double() / m, ref / m)


def extreme_rows(dtype, magnitude, n, device):
    """Rows of |x| in [magnitude / 2, magnitude] with random signs (no storage overflow)."""
    mag = torch.rand(3, n, dtype=torch.float64) * 0.5 + 0.5
    sign = torch.randint(0, 2, (3, n), dtype=torch.float64) * 2 - 1
    return (mag * sign * magnitude).to(dtype).to(device)


# The interpreter computes with NumPy, which warns about the overflow the kernel then redoes.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("n,c", [(16, 4), (64, 4), (5, 13)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype,magnitude,eps,scale", EXTREMES, ids=lambda v: str(v).replace("torch.", ""))
def test_classifier_extreme_magnitudes(device, dtype, magnitude, eps, scale, n, c):
    """The norm neither overflows nor underflows where the true result is finite, forward
    and backward (issue 10, item 2), with and without folding (N > C)."""
    x = extreme_rows(dtype, magnitude, n, device)
    s = torch.tensor(scale, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    bias = torch.randn(c, dtype=dtype, device=device)
    g = torch.randn(3, c, dtype=dtype, device=device)
    xg, sg, bg = (t.clone().requires_grad_() for t in (x, s, bias))
    y = ops.classifier_forward_triton(xg, sg, bg, c, True, eps)
    y.backward(g)
    # Reference in float64; for float64 extremes on x scaled by a power of two into the
    # normal range: y(x) = y(x * 2^k) when the norm is not clamped, dL/dx scales by 2^k.
    k = -1000 if dtype == torch.float64 and magnitude > 1 else 0
    x_ref = x.double() * 2.0**k
    ref, (gx, gs, gb) = classifier_reference_grads(x_ref, s, bias, g, c, True, eps * 2.0**k)
    gx = gx * 2.0**k
    for got, exp, what in [(y, ref, "y"), (xg.grad, gx, "dx"), (sg.grad, gs, "dscale"), (bg.grad, gb, "dbias")]:
        assert torch.isfinite(exp).all() and torch.isfinite(exp.to(dtype)).all(), what  # the case is valid
        assert torch.isfinite(got).all(), what
        assert rel_err_scaled(got, exp) < tol(dtype), what


# NumPy (the interpreter) warns about what tl.where then discards (0 / 0 in the zero row's
# unused branch) and about the zero row's alpha / eps overflowing float32, as intended.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("eps", [1e-40, 1e-46], ids=lambda e: f"eps{e}")
def test_classifier_zero_row_tiny_eps(device, dtype, eps):
    """An all-zero row gives the bias and dL/dscale stays finite even when 1/eps overflows
    the float32 accumulator (eps = 1e-40 is subnormal there, 1e-46 rounds to 0); the other
    rows are unaffected. (float64 kernels refuse eps below ~1e-30: test_direct_op_errors.)"""
    x = torch.randn(3, 24, dtype=dtype, device=device)
    x[1] = 0
    scale = torch.tensor(1.5, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    bias = torch.randn(10, dtype=dtype, device=device)
    g = torch.randn(3, 10, dtype=dtype, device=device)
    xg, sg, bg = (t.clone().requires_grad_() for t in (x, scale, bias))
    y = ops.classifier_forward_triton(xg, sg, bg, 10, True, eps)
    assert torch.equal(y[1], bias), "an all-zero row gives the bias"
    y.backward(g)
    ref, (gx, gs, gb) = classifier_reference_grads(x, scale, bias, g, 10, True, 1e-12)  # rows 0, 2
    assert rel_err(y, ref) < tol(dtype)
    assert rel_err(xg.grad[[0, 2]], gx[[0, 2]]) < tol(dtype)  # row 1: alpha / eps * u (may overflow)
    assert torch.isfinite(sg.grad).all() and rel_err(sg.grad, gs) < tol(dtype)
    assert rel_err(bg.grad, gb) < tol(dtype)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("n,c", [(6, 4), (5, 13)], ids=lambda v: str(v))
def test_classifier_gradcheck(device, normalize, n, c):
    x = torch.randn(3, n, dtype=torch.float64, device=device)
    x[2] *= 1e-3  # one row in the clamped regime (||x|| < eps = 0.1, also after perturbation)
    x.requires_grad_()
    scale = torch.tensor(0.8, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, s, b: ops.classifier_forward_triton(x, s, b, c, normalize, 0.1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, scale, bias))


# ---------------------------------------------------------------------------------------
# torch.library registration and torch.compile


def test_opcheck(device):
    x = torch.randn(3, 10, device=device)
    scale = torch.tensor(1.5, device=device)
    bias = torch.randn(12, device=device)
    g = torch.randn(3, 12, device=device)
    cases = [
        (ops.hadamard_transform_triton, (x.requires_grad_(), 7, 0.5)),
        (ops.classifier_forward_triton, (x, scale.requires_grad_(), bias, 12, True, 1e-12)),
        (ops.classifier_forward_triton, (x, scale, None, 12, False, 1e-12)),
        (ops.classifier_backward_triton, (g, x.detach(), scale.detach(), True, 1e-12)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(device):
    def model(x, scale, bias):
        h = hk.fwht(x, 0.25, backend="triton")
        return hk.hadamard_classifier(torch.relu(h), 10, scale, bias, backend="triton").square().sum()

    x = torch.randn(4, 32, device=device, requires_grad=True)
    scale = torch.tensor(2.0, device=device, requires_grad=True)
    bias = torch.randn(10, device=device, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, scale, bias)
    grads = torch.autograd.grad(out, (x, scale, bias))
    eager = model(x, scale, bias)
    expected = torch.autograd.grad(eager, (x, scale, bias))
    assert torch.allclose(out, eager, rtol=1e-5)
    for got, exp in zip(grads, expected):
        assert torch.allclose(got, exp, rtol=1e-4, atol=1e-6)


def test_backend_availability_is_a_compile_time_constant(device, monkeypatch):
    # _backend_available carries the mark of torch.compiler.assume_constant_result, set
    # without that function's import of torch._dynamo; the mark must still mean the same.
    import torch._dynamo

    probe = torch._dynamo.assume_constant_result(lambda: None)
    assert probe._dynamo_marked_constant is True
    assert tk._backend_available._dynamo_marked_constant is True
    # A fresh availability cache: the first query happens while tracing.
    monkeypatch.setattr(hk.ops, "_AVAILABLE", {})
    compiled = torch.compile(lambda t: hk.fwht(t, 0.5, backend="triton"), fullgraph=True)
    x = torch.randn(3, 16, device=device)
    assert rel_err(compiled(x), reference.fwht_reference(x, 0.5)) <= RTOL[torch.float32]


def test_import_with_triton_does_not_import_dynamo():
    # Where the Triton backend registers itself (here: the interpreter), importing the
    # package must still not pull in torch._dynamo (about 2x the import time of torch).
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = ("import sys, hadamard_kernels; assert 'hadamard_kernels.triton_kernels' in sys.modules; "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------
# Limits, errors, backend registration


def test_size_limit_names_the_alternatives(device):
    too_big = tk.MAX_TRITON_FEATURES + 1
    with pytest.raises(ValueError, match=r"= 65536 exceeds 32768 \(2\^15\).*backend='cuda' or backend='cpu'"):
        hk.fwht(torch.randn(1, too_big, device=device), backend="triton")
    with pytest.raises(ValueError, match=r"exceeds 32768"):
        hk.hadamard_classifier(torch.randn(1, too_big, device=device), too_big, 1.0, backend="triton")
    with pytest.raises(ValueError, match=r"exceeds 32768"):
        ops.hadamard_transform_triton(torch.randn(1, too_big, device=device), too_big + 5, 1.0)


def test_long_sides_fold_and_repeat(device):
    """Only min(in, out) is bounded: the longer side is folded or repeated in chunks."""
    for n_in, n_out in [(5000, 10), (10, 5000), (40000, 3), (3, 40000), (4100, 4097)]:
        x = torch.randn(n_in, 2, dtype=torch.float64, device=device).t()  # strided rows
        y = ops.hadamard_transform_triton(x, n_out, 0.5)
        assert rel_err(y, reference.hadamard_transform_reference(x, n_out, 0.5)) < 1e-12
    for n, c in [(40000, 10), (10, 40000), (4097, 4100)]:
        x = torch.randn(3, n, dtype=torch.float64, device=device, requires_grad=True)
        scale = torch.tensor(1.1, dtype=torch.float64, device=device, requires_grad=True)
        bias = torch.randn(c, dtype=torch.float64, device=device, requires_grad=True)
        g = torch.randn(3, c, dtype=torch.float64, device=device)
        y = hk.hadamard_classifier(x, c, scale, bias, backend="triton")
        grads = torch.autograd.grad(y, (x, scale, bias), g)
        ref, ref_grads = classifier_reference_grads(x, scale, bias, g, c, True, 1e-12)
        assert rel_err(y, ref) < 1e-12, (n, c)
        for got, exp in zip(grads, ref_grads):
            assert rel_err(got, exp) < 1e-12, (n, c)


def test_direct_op_errors(device):
    x = torch.randn(2, 8, device=device)
    scale = torch.tensor(1.0, device=device)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.hadamard_transform_triton(x.int(), 8, 1.0)
    with pytest.raises(TypeError, match="bias dtype"):
        bias64 = torch.zeros(4, dtype=torch.float64, device=device)
        ops.classifier_forward_triton(x, scale, bias64, 4, True, 1e-12)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.classifier_forward_triton(x, scale, torch.zeros(5, device=device), 4, True, 1e-12)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ops.classifier_forward_triton(x, scale, None, 0, True, 1e-12)
    with pytest.raises(ValueError, match="scale must have one element"):
        ops.classifier_forward_triton(x, torch.ones(2, device=device), None, 4, True, 1e-12)
    with pytest.raises(ValueError, match="grad_y shape"):
        ops.classifier_backward_triton(torch.randn(3, 4, device=device), x, scale, True, 1e-12)
    with pytest.raises(ValueError, match="eps=1e-300"):  # fp64 scalars travel as two fp32
        ops.classifier_forward_triton(x.double(), scale, None, 4, True, 1e-300)


def test_backend_predicate():
    assert not tk._backend_available(torch.device("meta"))
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    assert ("triton" in hk.available_backends("cpu")) == (interpreting and tk._INTERPRETED)
    if torch.cuda.is_available():
        assert "triton" in hk.available_backends("cuda")


def test_block_config_table():
    # (BLOCK_T, IN_CHUNK, OUT_CHUNK, ROWS, num_warps)
    assert tk.block_config(1, 1, torch.float32) == (16, 16, 16, 64, 4)
    assert tk.block_config(256, 256, torch.float32) == (256, 256, 256, 4, 4)
    assert tk.block_config(256, 256, torch.float64) == (256, 256, 256, 4, 4)
    assert tk.block_config(512, 10, torch.float32, 2) == (16, 512, 16, 1, 4)
    assert tk.block_config(10, 512, torch.float32, 2) == (16, 16, 512, 1, 4)
    assert tk.block_config(2**20, 16, torch.float32) == (16, 1024, 16, 1, 4)
    assert tk.block_config(4096, 4096, torch.float32) == (4096, 4096, 4096, 1, 16)
    assert tk.block_config(2**15, 2**15, torch.bfloat16) == (2**15, 2**15, 2**15, 1, 32)
    for k in range(16):
        for dtype in DTYPES:
            block_t, a, b, rows, warps = tk.block_config(2**k, 2**k, dtype)
            assert block_t == a == b == max(16, 2**k) and (rows * block_t <= 1024 or rows == 1)
            assert warps in (4, 8, 16, 32)


# ---------------------------------------------------------------------------------------
# fwht_block inside a user kernel


@triton.jit
def _one_vector_kernel(x_ptr, y_ptr, M: tl.constexpr):
    c = tl.arange(0, M)
    x = tl.load(x_ptr + c)
    y = fwht_block(x[None, :])  # a single vector as a [1, M] block
    tl.store(y_ptr + c[None, :], y)


def load_example():
    path = ROOT / "examples" / "triton_fused_rotation.py"
    spec = importlib.util.spec_from_file_location("triton_fused_rotation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fwht_block_single_vector(device):
    for m in [2, 16, 128]:
        x = torch.randn(m, dtype=torch.float64, device=device)
        y = torch.empty_like(x)
        _one_vector_kernel[(1,)](x, y, M=m)
        assert rel_err(y, reference.fwht_reference(x)) < 1e-12


def test_example_fused_rotation_int8(device):
    example = load_example()
    for n in sizes(device, [2, 64, 256], [4096]):
        x = torch.randn(37, n, device=device)
        x[:, 1] *= 30  # an outlier channel
        q, s = example.rotate_quantize_int8(x)
        q_ref, s_ref = example.rotate_quantize_int8_reference(x)
        assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == (37,)
        assert torch.allclose(s, s_ref, rtol=1e-5)
        # Codes agree except where float32 rounding lands a value on the other side of .5.
        assert (q.int() - q_ref.int()).abs().max() <= 1
        assert (q == q_ref).float().mean() > 0.99
        h = reference.hadamard_matrix(n, dtype=torch.float32, device=device) * n**-0.5
        assert rel_err((q.float() * s[:, None]) @ h, x) < 0.01  # dequantised and rotated back


# ---------------------------------------------------------------------------------------
# Compilation for real GPUs (the interpreter accepts kernels the compiler rejects)

_COMPILE_SCRIPT = textwrap.dedent(
    """
    import sys, importlib.util
    import triton, triton.language as tl, torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from hadamard_kernels import triton_kernels as tk

    spec = importlib.util.spec_from_file_location("ex", sys.argv[1])
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)

    def build(fn, sig, consts, warps, cap):
        sig = {name: ("constexpr" if name in consts else ty) for name, ty in sig.items()}
        # Pointers and integers divisible by 16, as Triton specialises them at launch.
        attrs = {(i,): [["tt.divisibility", 16]] for i, v in enumerate(sig.values())
                 if v != "constexpr" and not v.startswith("fp")}
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        out = triton.compile(src, target=GPUTarget("cuda", cap, 32), options={"num_warps": warps})
        assert out.asm["cubin"] and out.metadata.shared <= 160 * 1024, out.metadata.shared

    TY = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16"}

    def classifier(cap, dtype, n_in, n_out, normalize, etf):
        # The two classifier kernels with unit column strides (Triton specialises an argument
        # equal to 1 as a constant), the forward with bias where it normalises.
        t, acc = TY[dtype], tk._acc(dtype)
        part = "*fp64" if dtype == torch.float64 else "*fp32"
        block_t, a, b, rows, warps = tk.block_config(n_in, n_out, dtype, 2)
        build(tk._classifier_forward_kernel, {
            "x_ptr": f"*{t}", "scale_ptr": "*fp32", "bias_ptr": f"*{t}", "y_ptr": f"*{t}",
            "eps_hi": "fp32", "eps_lo": "fp32", "etf_hi": "fp32", "etf_lo": "fp32", "inv_c_hi": "fp32",
            "inv_c_lo": "fp32", "rows": "i32", "in_features": "i32", "num_classes": "i32",
            "x_row_stride": "i32", "x_col_stride": "",
            "bias_stride": "", "y_row_stride": "i32", "NORMALIZE": "", "HAS_BIAS": "", "ETF": "",
            "ACC": "", "ROWS": "", "BLOCK_T": "", "IN_CHUNK": "", "OUT_CHUNK": ""},
            {"x_col_stride": 1, "bias_stride": 1, "NORMALIZE": normalize, "HAS_BIAS": normalize,
             "ETF": etf, "ACC": acc, "ROWS": rows, "BLOCK_T": block_t, "IN_CHUNK": a, "OUT_CHUNK": b},
            warps, cap)
        block_t, a, b, rows, warps = tk.block_config(n_out, n_in, dtype, 2)
        build(tk._classifier_backward_kernel, {
            "g_ptr": f"*{t}", "x_ptr": f"*{t}", "scale_ptr": "*fp32", "gx_ptr": f"*{t}",
            "partial_ptr": part, "eps_hi": "fp32", "eps_lo": "fp32", "etf_hi": "fp32",
            "etf_lo": "fp32", "inv_c_hi": "fp32", "inv_c_lo": "fp32", "rows": "i32",
            "in_features": "i32", "num_classes": "i32",
            "g_row_stride": "i32", "g_col_stride": "", "x_row_stride": "i32", "x_col_stride": "",
            "gx_row_stride": "i32", "NORMALIZE": "", "ETF": "", "ACC": "", "ROWS": "",
            "BLOCK_T": "", "G_CHUNK": "", "X_CHUNK": ""},
            {"g_col_stride": 1, "x_col_stride": 1, "NORMALIZE": normalize, "ETF": etf, "ACC": acc,
             "ROWS": rows, "BLOCK_T": block_t, "G_CHUNK": a, "X_CHUNK": b}, warps, cap)

    CASES = [  # (sm, dtype, in, out): plain transforms, folds, repeats, the largest blocks
        (90, torch.float32, 2, 2), (90, torch.bfloat16, 256, 256), (90, torch.float64, 1024, 1024),
        (90, torch.bfloat16, 2**15, 2**15), (80, torch.float32, 2**15, 2**15),
        (90, torch.float32, 512, 10), (80, torch.bfloat16, 10, 512), (90, torch.float32, 2**20, 16),
    ]
    for cap, dtype, n_in, n_out in CASES:
        t, acc = TY[dtype], tk._acc(dtype)
        block_t, a, b, rows, warps = tk.block_config(n_in, n_out, dtype)
        # Transform with general strides.
        build(tk._transform_kernel, {
            "x_ptr": f"*{t}", "out_ptr": f"*{t}", "scale_hi": "fp32", "scale_lo": "fp32",
            "rows": "i32", "in_features": "i32", "out_features": "i32", "x_row_stride": "i32",
            "x_col_stride": "i32", "out_row_stride": "i32", "ACC": "", "ROWS": "",
            "BLOCK_T": "", "IN_CHUNK": "", "OUT_CHUNK": ""},
            {"ACC": acc, "ROWS": rows, "BLOCK_T": block_t, "IN_CHUNK": a, "OUT_CHUNK": b},
            warps, cap)
        for normalize in (True, False):
            classifier(cap, dtype, n_in, n_out, normalize, False)
    # (sm, dtype, N, C, normalize) with the simplex ETF head: many rows a program, a fold, a
    # block of 1024 in float64; its largest blocks are in scripts/triton_resources.py's CI set.
    for cap, dtype, n, c, normalize in [(90, torch.float32, 2, 2, True), (80, torch.bfloat16, 512, 10, False),
                                        (90, torch.float64, 1024, 1000, True)]:
        classifier(cap, dtype, n, c, normalize, True)
    # (sm, dtype, K, pow2, quant, group_size) of the K * 2^k kernel; quant > 0: its quantising
    # epilogue (hadamard_quantize_triton: 1 int8, 2 float8_e4m3fn, 3 float8_e5m2; no post signs).
    KN_CASES = [(80, torch.float32, 20, 256, 0, 0), (90, torch.bfloat16, 172, 64, 0, 0),
                (80, torch.float64, 1, 16, 0, 0), (80, torch.float32, 20, 256, 2, 0),
                (90, torch.bfloat16, 12, 64, 1, 32), (80, torch.bfloat16, 28, 32, 3, 128),
                (90, torch.float64, 1, 1024, 2, 64)]
    for cap, dtype, K, pow2, quant, group in KN_CASES:
        t, acc = TY[dtype], tk._acc(dtype)
        kb, p, rows, warps = tk.kn_config(K * pow2, K, pow2)
        _, gs, gm = tk._quant_groups(K * pow2, K, pow2, group)
        # Unit strides of x's entries, H_K's rows (column-major) and the signs, as launched.
        build(tk._transform_kn_kernel, {
            "x_ptr": f"*{t}", "out_ptr": "*i8" if quant else f"*{t}", "hk_ptr": "*i8", "pre_ptr": f"*{t}",
            "post_ptr": f"*{t}", "scale_hi": "fp32", "scale_lo": "fp32", "rows": "i32", "n": "i32",
            "pow2": "i32", "x_row_stride": "i32", "x_col_stride": "", "out_row_stride": "i32",
            "hk_row_stride": "", "hk_col_stride": "i32", "pre_stride": "", "post_stride": "",
            "scales_ptr": "*fp32", "groups": "i32", "HAS_HK": "", "HAS_PRE": "", "HAS_POST": "", "ACC": "",
            "ROWS": "", "KB": "", "P": "", "QUANT": "", "GS": "", "GM": ""},
            {"x_col_stride": 1, "hk_row_stride": 1, "pre_stride": 1, "post_stride": 1, "HAS_HK": K > 1,
             "HAS_PRE": True, "HAS_POST": not quant, "ACC": acc, "ROWS": rows, "KB": kb, "P": p,
             "QUANT": quant, "GS": gs, "GM": gm}, warps, cap)
    build(ex.rotate_quantize_int8_kernel, {
        "x_ptr": "*bf16", "q_ptr": "*i8", "s_ptr": "*fp32", "rows": "i32", "n": "i32",
        "x_row_stride": "i32", "inv_sqrt_n": "fp32", "ROWS": "", "BLOCK": ""},
        {"ROWS": 16, "BLOCK": 256}, 4, 90)
    print("compiled")

    # Compiled (not interpreted) kernels refuse CPU tensors with a clear message.
    if not torch.cuda.is_available():
        import hadamard_kernels as hk
        assert "triton" not in hk.available_backends("cpu")
        try:
            torch.ops.hadamard_kernels.hadamard_transform_triton(torch.randn(2, 4), 4, 1.0)
        except RuntimeError as e:
            assert "TRITON_INTERPRET=1" in str(e), e
        else:
            raise AssertionError("no error for a CPU tensor")
    """
)


@pytest.mark.skipif(
    not (pathlib.Path(triton.__file__).parent / "backends" / "nvidia").is_dir(),
    reason="this Triton has no NVIDIA backend",
)
def test_compiled_mode():
    """Outside the interpreter: every kernel compiles to cubin for sm_80 / sm_90 (no GPU
    needed), and CPU tensors are refused with a clear message."""
    env = dict(os.environ, TRITON_INTERPRET="0")  # compile, and keep the example from interpreting
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silences a Triton 3.9 warning; the default anyway
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, str(ROOT / "examples" / "triton_fused_rotation.py")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
