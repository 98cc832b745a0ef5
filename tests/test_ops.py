"""hadamard_kernels.ops: fwht and hadamard_classifier (every CPU backend) and the
torch.ops.hadamard_kernels custom ops, against the float64 reference."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import DTYPES, LAYOUTS, RTOL, dtype_id, make_input, rel_err

import hadamard_kernels as hk
from hadamard_kernels import reference as R

ops = torch.ops.hadamard_kernels

BACKENDS = ["cpu", "reference", "auto"]
POW2 = [2**k for k in range(16)]
NON_POW2 = [3, 5, 17, 100, 1000, 5000, 20000]
SIZES = sorted(POW2 + NON_POW2)

# (N, C): C < N, C = N, C > N (the paper's caveat: N = 8, C = 10 and N = 3, C = 1000),
# non-powers of two on either side, and both sides of a 2^15 transform.
CASES = [
    (1, 1), (2, 1), (1, 7), (3, 1000), (8, 10), (16, 16), (17, 5), (64, 10), (100, 100),
    (128, 1000), (512, 10), (1000, 10), (2048, 4096), (5000, 20000), (32768, 10), (10, 32768),
]  # fmt: skip
SMALL_CASES = [(1, 1), (8, 10), (3, 17), (16, 16), (16, 4), (100, 10), (12, 20)]


def nc_id(case) -> str:
    return f"N{case[0]}-C{case[1]}"


def rows_for(n: int) -> int:
    """Few rows for big transforms, so the whole sweep stays fast."""
    return 4 if n <= 1024 else 2


def check_output(out: torch.Tensor, x: torch.Tensor, last: int) -> None:
    assert out.shape == (*x.shape[:-1], last)
    assert out.dtype == x.dtype and out.device == x.device
    assert out.is_contiguous()


def scale_for(dtype: torch.dtype, value: float = 0.7) -> torch.Tensor:
    """A learned-scale tensor as a module would hold it: float64 for float64 x, else float32."""
    return torch.tensor(value, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


# ---------------------------------------------------------------------------------------
# fwht forward


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht_matches_reference(backend, n, dtype):
    x = torch.randn(rows_for(n), n, dtype=dtype)
    x0 = x.clone()
    out = hk.fwht(x, 0.25, backend=backend)
    check_output(out, x, n)
    assert torch.equal(x, x0)
    assert rel_err(out, R.fwht_reference(x.double(), 0.25)) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("n", [1, 3, 16, 100, 1024, 4096], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht_layouts(backend, layout, n, dtype):
    x = make_input((3, 5, n), dtype, layout)
    x0 = x.clone()
    out = hk.fwht(x, backend=backend)
    check_output(out, x, n)
    assert torch.equal(x, x0)
    assert rel_err(out, R.fwht_reference(x.double())) <= RTOL[dtype]


@pytest.mark.parametrize("lead", [(), (0,), (3, 5), (2, 0, 4)], ids=lambda s: f"lead{list(s)}")
@pytest.mark.parametrize("n", [1, 8, 100], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht_batch_shapes(backend, lead, n):
    x = torch.randn(*lead, n)
    out = hk.fwht(x, 0.5, backend=backend)
    check_output(out, x, n)
    assert rel_err(out, R.fwht_reference(x.double(), 0.5)) <= RTOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht_zero_features(backend):
    x = torch.randn(3, 0)
    check_output(hk.fwht(x, backend=backend), x, 0)


def test_fwht_many_rows_parallel():
    # Enough rows that the CPU kernel splits them between threads.
    x = torch.randn(3000, 64)
    assert rel_err(hk.fwht(x, backend="cpu"), R.fwht_reference(x.double())) <= RTOL[torch.float32]


def test_fwht_max_size():
    x = torch.randn(1, hk.MAX_FEATURES)
    out = hk.fwht(x, hk.MAX_FEATURES**-0.5, backend="cpu")
    assert rel_err(out, R.fwht_reference(x.double(), hk.MAX_FEATURES**-0.5)) <= RTOL[torch.float32]


def test_fwht_on_device(device):
    x = torch.randn(4, 1000, device=device)
    out = hk.fwht(x, 0.5)
    check_output(out, x, 1000)
    assert rel_err(out.cpu(), R.fwht_reference(x.cpu().double(), 0.5)) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# The general transform op: H_M[:out, :in] @ x


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "n,out",
    [(1, 1), (1, 9), (9, 1), (5, 3), (3, 5), (16, 4), (4, 16), (100, 10), (10, 100), (1000, 5000), (5000, 1000)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "transposed"])
def test_transform_op_in_out(layout, n, out, dtype):
    x = make_input((3, n), dtype, layout)
    x0 = x.clone()
    y = ops.hadamard_transform(x, out, 0.5)
    check_output(y, x, out)
    assert torch.equal(x, x0)
    assert rel_err(y, R.hadamard_transform_reference(x.double(), out, 0.5)) <= RTOL[dtype]


def test_transform_op_zero_in_features():
    y = ops.hadamard_transform(torch.randn(3, 0), 4, 1.0)
    assert torch.equal(y, torch.zeros(3, 4))


# ---------------------------------------------------------------------------------------
# hadamard_classifier forward


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=nc_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_matches_reference(backend, case, dtype):
    n, c = case
    x = torch.randn(rows_for(max(n, c)), n, dtype=dtype)
    scale, bias = scale_for(dtype), torch.randn(c)
    inputs = [t.clone() for t in (x, scale, bias)]
    y = hk.hadamard_classifier(x, c, scale, bias, backend=backend)
    check_output(y, x, c)
    assert all(torch.equal(a, b) for a, b in zip((x, scale, bias), inputs))
    ref = R.hadamard_classifier_reference(x.double(), c, scale.double(), bias.to(dtype).double())
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SMALL_CASES + [(2048, 4096), (10, 32768)], ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_classifier_variants(bias, normalize, case, dtype):
    n, c = case
    x = torch.randn(rows_for(max(n, c)), n, dtype=dtype)
    scale, b = scale_for(dtype, 1.5), torch.randn(c, dtype=dtype) if bias else None
    y = hk.hadamard_classifier(x, c, scale, b, normalize=normalize, backend="cpu")
    check_output(y, x, c)
    ref = R.hadamard_classifier_reference(
        x.double(), c, scale.double(), b.double() if bias else None, normalize=normalize
    )
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", [(1, 1), (3, 1000), (16, 16), (100, 10), (1000, 4096)], ids=nc_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_layouts(backend, layout, case, dtype):
    n, c = case
    x = make_input((2, 3, n), dtype, layout)
    x0 = x.clone()
    bias = torch.randn(c, dtype=dtype)
    y = hk.hadamard_classifier(x, c, scale_for(dtype), bias, backend=backend)
    check_output(y, x, c)
    assert torch.equal(x, x0)
    ref = R.hadamard_classifier_reference(x.double(), c, 0.7, bias.double())
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("scale_shape", [(), (1,), (1, 1)], ids=lambda s: f"scale{list(s)}")
@pytest.mark.parametrize("lead", [(), (0,), (3, 5), (2, 0, 4)], ids=lambda s: f"lead{list(s)}")
@pytest.mark.parametrize("case", [(8, 10), (100, 3)], ids=nc_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_batch_shapes(backend, case, lead, scale_shape):
    n, c = case
    x = torch.randn(*lead, n)
    bias = torch.randn(c)
    y = hk.hadamard_classifier(x, c, torch.full(scale_shape, 0.7), bias, backend=backend)
    check_output(y, x, c)
    assert rel_err(y, R.hadamard_classifier_reference(x.double(), c, 0.7, bias.double())) <= RTOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_classifier_python_float_scale_is_exact(dtype):
    # A Python float scale must not be rounded below the precision of x.
    x = torch.randn(4, 16, dtype=dtype)
    y = hk.hadamard_classifier(x, 10, 0.1, backend="cpu")
    ref = R.hadamard_classifier_reference(x.double(), 10, 0.1)
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_zero_row_forward(backend):
    x = torch.randn(3, 8)
    x[1] = 0
    bias = torch.randn(10)
    y = hk.hadamard_classifier(x, 10, torch.tensor(2.0), bias, backend=backend)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1], bias)


# Magnitudes whose squares leave the accumulator's range: 3e38 overflows float32 when
# squared, 1e-40 (subnormal) underflows, 6e4 is near float16's largest value.
EXTREMES = [(3e38, torch.float32), (1e-40, torch.float32), (6e4, torch.float16)]


@pytest.mark.parametrize("case", [(16, 4), (16, 16), (100, 10), (8, 20)], ids=nc_id)
@pytest.mark.parametrize("value,dtype", EXTREMES, ids=lambda v: v if isinstance(v, float) else dtype_id(v))
@pytest.mark.parametrize("backend", ["cpu"])
def test_classifier_extreme_magnitudes(backend, value, dtype, case):
    n, c = case
    x = (value * (0.5 + 0.5 * torch.rand(3, n)) * torch.randn(3, n).sign()).to(dtype)
    x[2] = value  # a constant row: every square at the extreme
    scale, bias = scale_for(dtype), torch.randn(c, dtype=scale_for(dtype).dtype)
    y = hk.hadamard_classifier(x, c, scale, bias.to(dtype), backend=backend)
    ref = R.hadamard_classifier_reference(x.double(), c, scale.double(), bias.to(dtype).double())
    assert torch.isfinite(y).all() and rel_err(y, ref) <= RTOL[dtype]
    g = upstream_grad(x, c)
    got, want = classifier_grads(x, c, scale, bias, g, backend=backend)
    for gv, wv in zip(got, want):
        assert torch.isfinite(gv).all() and rel_err(gv, wv) <= RTOL[dtype]


def test_classifier_issue_overflow_example():
    y = hk.hadamard_classifier(torch.full((1, 16), 3e38), 4, 1.0, backend="cpu")
    assert rel_err(y, R.hadamard_classifier_reference(torch.full((1, 16), 3e38, dtype=torch.float64), 4, 1.0)) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_direct_op_zero_row_with_tiny_eps(dtype):
    # Below the Python op's bound on eps: the C++ kernel still gives the bias, not 0 * inf.
    x = torch.randn(3, 8, dtype=dtype)
    x[1] = 0
    bias = torch.randn(10, dtype=dtype)
    y = ops.classifier_forward(x, torch.tensor(2.0), bias, 10, True, 1e-300)
    assert torch.equal(y[1], bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_smallest_eps(backend):
    # The smallest eps allowed for float32 x: 1 / eps is still finite in float32.
    x = torch.randn(3, 8)
    x[1] = 0
    bias = torch.randn(10)
    y = hk.hadamard_classifier(x, 10, 2.0, bias, eps=2.94e-39, backend=backend)
    assert torch.equal(y[1], bias)
    ref = R.hadamard_classifier_reference(x.double(), 10, 2.0, bias.double())
    assert rel_err(y, ref) <= RTOL[torch.float32]


def test_classifier_bias_cast_to_x_dtype():
    x = torch.randn(4, 16, dtype=torch.float16)
    bias = torch.randn(10, dtype=torch.float64)
    y = hk.hadamard_classifier(x, 10, 0.5, bias, backend="cpu")
    assert y.dtype == torch.float16
    ref = R.hadamard_classifier_reference(x.double(), 10, 0.5, bias.half().double())
    assert rel_err(y, ref) <= RTOL[torch.float16]


def test_classifier_many_rows_parallel():
    x = torch.randn(3000, 100)
    bias = torch.randn(10)
    y = hk.hadamard_classifier(x, 10, 0.5, bias, backend="cpu")
    assert rel_err(y, R.hadamard_classifier_reference(x.double(), 10, 0.5, bias.double())) <= RTOL[torch.float32]


def test_classifier_on_device(device):
    x = torch.randn(4, 100, device=device, requires_grad=True)
    scale = torch.tensor(0.7, device=device, requires_grad=True)
    bias = torch.randn(10, device=device, requires_grad=True)
    y = hk.hadamard_classifier(x, 10, scale, bias)
    check_output(y, x, 10)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, scale, bias), g)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (x, scale, bias)]
    ref = R.hadamard_classifier_reference(leaves[0], 10, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves, g.cpu().double())
    assert rel_err(y.detach().cpu(), ref.detach()) <= RTOL[torch.float32]
    for got, want in zip(grads, ref_grads):
        assert rel_err(got.cpu(), want) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# Gradients against the reference's autograd


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [1, 3, 16, 100, 1024, 5000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht_grad_matches_reference(backend, n, dtype):
    x = make_input((3, n), dtype, "sliced").requires_grad_()
    g = torch.randn(3, n, dtype=dtype)
    g0 = g.clone()
    (gx,) = torch.autograd.grad(hk.fwht(x, 0.3, backend=backend), x, g)
    assert torch.equal(g, g0)
    assert gx.shape == x.shape and gx.dtype == dtype
    xr = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(R.fwht_reference(xr, 0.3), xr, g.double())
    assert rel_err(gx, ref) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("n,out", [(5, 3), (3, 5), (16, 4), (4, 16), (100, 1000), (1000, 100)], ids=lambda v: str(v))
def test_transform_op_grad_matches_reference(n, out, dtype):
    x = torch.randn(3, n, dtype=dtype, requires_grad=True)
    g = torch.randn(3, out, dtype=dtype)
    (gx,) = torch.autograd.grad(ops.hadamard_transform(x, out, 0.5), x, g)
    xr = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(R.hadamard_transform_reference(xr, out, 0.5), xr, g.double())
    assert rel_err(gx, ref) <= RTOL[dtype]


def classifier_grads(x, c, scale, bias, g, *, normalize=True, eps=1e-12, backend="cpu"):
    """(grad_x, grad_scale, grad_bias or None) of the op and of the float64 reference."""
    leaves = [x.detach().clone().requires_grad_(), scale.detach().clone().requires_grad_()]
    if bias is not None:
        leaves.append(bias.detach().clone().requires_grad_())
    b = leaves[2] if bias is not None else None
    y = hk.hadamard_classifier(leaves[0], c, leaves[1], b, normalize=normalize, eps=eps, backend=backend)
    got = torch.autograd.grad(y, leaves, g)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_b = ref_leaves[2] if bias is not None else None
    ref_y = R.hadamard_classifier_reference(ref_leaves[0], c, ref_leaves[1], ref_b, normalize=normalize, eps=eps)
    want = torch.autograd.grad(ref_y, ref_leaves, g.double())
    return got, want


def upstream_grad(x: torch.Tensor, c: int, normalize: bool = True) -> torch.Tensor:
    """dL/dy for the classifier tests: noise plus the sign of the logits, so that
    dL/dscale = sum(g * logits) does not cancel to a tiny, ill-conditioned sum."""
    logits = R.hadamard_classifier_reference(x.double(), c, 1.0, normalize=normalize)
    return (0.5 * torch.randn(logits.shape, dtype=torch.float64) + logits.sign()).to(x.dtype)


# The reference backend computes in the input's dtype (half types in float32 with half
# intermediates), i.e. it is PyTorch's own accuracy, not the kernels' standard: its half
# gradients are not held to RTOL. Its float32/float64 runs check the dispatch.
GRAD_BACKEND_DTYPES = [
    (b, d) for b in BACKENDS for d in DTYPES if b != "reference" or d in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("case", SMALL_CASES + [(3, 1000), (512, 10), (2048, 4096)], ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("backend,dtype", GRAD_BACKEND_DTYPES, ids=lambda v: v if isinstance(v, str) else dtype_id(v))
def test_classifier_grad_matches_reference(backend, dtype, bias, normalize, case):
    n, c = case
    x = make_input((2, 3, n), dtype, "sliced")
    scale = scale_for(dtype)
    b = torch.randn(c, dtype=scale.dtype) if bias else None
    g = upstream_grad(x, c, normalize)
    g0 = g.clone()
    got, want = classifier_grads(x, c, scale, b, g, normalize=normalize, backend=backend)
    assert torch.equal(g, g0)
    assert len(got) == (3 if bias else 2)
    for leaf, gv in zip((x, scale, b), got):
        assert gv.shape == leaf.shape and gv.dtype == leaf.dtype
    if n == 1 and normalize:
        # x_hat = sign(x) is constant: the exact dL/dx is 0 and only rounding noise is left,
        # which is measured against the O(1) size of the unprojected gradient alpha * H^T g.
        assert got[0].abs().max() <= RTOL[dtype]
    else:
        assert rel_err(got[0], want[0]) <= RTOL[dtype]
    for gv, wv in zip(got[1:], want[1:]):
        assert rel_err(gv, wv) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_grad_zero_row(backend, dtype):
    # Row 1 has norm 0 < eps: x_hat = x / eps there, a linear map with a finite gradient.
    x = torch.randn(3, 8, dtype=dtype)
    x[1] = 0
    g = upstream_grad(x, 10)
    got, want = classifier_grads(x, 10, scale_for(dtype), torch.randn(10, dtype=dtype), g, backend=backend)
    assert all(torch.isfinite(t).all() for t in got)
    for row in range(3):
        assert rel_err(got[0][row], want[0][row]) <= RTOL[dtype]
    for gv, wv in zip(got[1:], want[1:]):
        assert rel_err(gv, wv) <= RTOL[dtype]


def test_classifier_grad_expanded_upstream():
    # y.sum().backward() sends a stride-0 gradient into the backward op.
    x = torch.randn(3, 5, 12, requires_grad=True)
    scale, bias = torch.tensor(0.7, requires_grad=True), torch.randn(20, requires_grad=True)
    hk.hadamard_classifier(x, 20, scale, bias, backend="cpu").sum().backward()
    leaves = [t.detach().double().requires_grad_() for t in (x, scale, bias)]
    R.hadamard_classifier_reference(leaves[0], 20, leaves[1], leaves[2]).sum().backward()
    for got, ref in zip((x, scale, bias), leaves):
        assert rel_err(got.grad, ref.grad) <= RTOL[torch.float32]


def test_classifier_grad_many_rows():
    # Many rows exercise the chunked reduction of dL/dscale.
    x = torch.randn(5000, 24)
    g = upstream_grad(x, 7)
    got, want = classifier_grads(x, 7, torch.tensor(0.7), torch.randn(7), g)
    for gv, wv in zip(got, want):
        assert rel_err(gv, wv) <= RTOL[torch.float32]


@pytest.mark.parametrize(
    "scale", [torch.tensor([0.7]), torch.tensor(0.7, dtype=torch.float16), torch.tensor(0.7, dtype=torch.float64)],
    ids=["shape1", "float16", "float64"],
)
def test_classifier_grad_scale_keeps_shape_and_dtype(scale):
    x = torch.randn(4, 16)
    g = upstream_grad(x, 10)
    got, want = classifier_grads(x, 10, scale, None, g)
    assert got[1].shape == scale.shape and got[1].dtype == scale.dtype
    assert rel_err(got[1], want[1]) <= RTOL[torch.float16 if scale.dtype == torch.float16 else torch.float32]


def test_classifier_grad_bias_other_dtype():
    x = torch.randn(4, 16, dtype=torch.float64)
    bias = torch.randn(10, dtype=torch.float32, requires_grad=True)
    g = torch.randn(4, 10, dtype=torch.float64)
    y = hk.hadamard_classifier(x, 10, 0.5, bias, backend="cpu")
    (gb,) = torch.autograd.grad(y, bias, g)
    assert gb.dtype == torch.float32
    assert rel_err(gb, g.sum(0)) <= RTOL[torch.float32]


@pytest.mark.parametrize("n", [1, 5, 8, 12], ids=lambda n: f"n{n}")
def test_fwht_gradcheck(n):
    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hk.fwht(t, 0.3, backend="cpu"), (x,))
    assert torch.autograd.gradgradcheck(lambda t: hk.fwht(t, 0.3, backend="cpu"), (x,))


@pytest.mark.parametrize("n,out", [(5, 12), (12, 5), (16, 3)], ids=lambda v: str(v))
def test_transform_op_gradcheck(n, out):
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.hadamard_transform(t, out, 0.5), (x,))


@pytest.mark.parametrize("case", [(8, 10), (3, 7), (16, 4), (5, 5), (1, 3)], ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_classifier_gradcheck(bias, normalize, case):
    n, c = case
    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    inputs = (x, scale) + ((torch.randn(c, dtype=torch.float64, requires_grad=True),) if bias else ())

    def f(x, scale, b=None):
        return hk.hadamard_classifier(x, c, scale, b, normalize=normalize, backend="cpu")

    assert torch.autograd.gradcheck(f, inputs)


def test_classifier_gradcheck_clamped_norm():
    # Row 1 has norm ~0.01 < eps = 1: its finite differences stay in the clamped branch.
    x = torch.randn(3, 8, dtype=torch.float64)
    x[1] *= 0.01 / x[1].norm()
    x.requires_grad_()
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: hk.hadamard_classifier(x, 10, s, eps=1.0, backend="cpu"), (x, scale))


# ---------------------------------------------------------------------------------------
# Second derivatives: every backend of the CPU, the Triton one under its interpreter

CPU_BACKENDS = list(hk.available_backends("cpu"))


@pytest.mark.parametrize("case", [(8, 10), (16, 4), (5, 5)], ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classifier_gradgradcheck(backend, normalize, case):
    n, c = case
    x = torch.randn(2, 3, n, dtype=torch.float64)
    x[1, 0] *= 0.1 / x[1, 0].norm()  # one row in the clamped branch (eps = 0.5 below)
    inputs = (
        x.requires_grad_(),
        torch.tensor(0.7, dtype=torch.float64, requires_grad=True),
        torch.randn(c, dtype=torch.float64, requires_grad=True),
    )

    def f(x, scale, b):
        return hk.hadamard_classifier(x, c, scale, b, normalize=normalize, eps=0.5, backend=backend)

    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classifier_double_backward_matches_reference(backend, dtype):
    # The gradient of a gradient norm (a gradient penalty), as the issue's user computed it.
    x = torch.randn(3, 12, dtype=dtype, requires_grad=True)
    scale = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    (gx,) = torch.autograd.grad(hk.hadamard_classifier(x, 5, scale, backend=backend).pow(2).sum(), x, create_graph=True)
    got = torch.autograd.grad(gx.pow(2).sum(), (x, scale))
    xr, sr = (t.detach().double().requires_grad_() for t in (x, scale))
    (gr,) = torch.autograd.grad(R.hadamard_classifier_reference(xr, 5, sr).pow(2).sum(), xr, create_graph=True)
    want = torch.autograd.grad(gr.pow(2).sum(), (xr, sr))
    for gv, wv in zip(got, want):
        assert gv.dtype == dtype and wv.abs().max() > 0
        assert rel_err(gv, wv) <= RTOL[dtype]


def test_classifier_backward_op_is_not_silently_differentiated():
    # The fused backward op has no second derivative of its own: differentiating it must
    # raise, never return torch's fallback of zero gradients.
    x = torch.randn(3, 8, requires_grad=True)
    g = torch.randn(3, 5)
    grad_x, _, _ = ops.classifier_backward(g, x, torch.tensor(0.7), True, 1e-12)
    with pytest.raises(RuntimeError, match="classifier_backward is not differentiable"):
        grad_x.sum().backward()


# ---------------------------------------------------------------------------------------
# torch.library.opcheck: schema, fake kernel, autograd registration, AOT dispatch


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("n,out", [(16, 16), (12, 12), (12, 20), (20, 3)], ids=lambda v: str(v))
def test_opcheck_hadamard_transform(n, out, requires_grad):
    x = torch.randn(3, 5, n, dtype=torch.float64, requires_grad=requires_grad)
    torch.library.opcheck(ops.hadamard_transform, (x, out, 0.5))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_opcheck_classifier_forward(normalize, bias, requires_grad):
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=requires_grad)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=requires_grad)
    b = torch.randn(20, dtype=torch.float64, requires_grad=requires_grad) if bias else None
    torch.library.opcheck(ops.classifier_forward, (x, scale, b, 20, normalize, 1e-12))


@pytest.mark.parametrize("n,c", [(12, 20), (20, 3)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
def test_opcheck_classifier_backward(n, c, dtype):
    g = torch.randn(3, 5, c, dtype=dtype)
    x = torch.randn(3, 5, n, dtype=dtype)
    torch.library.opcheck(ops.classifier_backward, (g, x, torch.tensor(0.7), True, 1e-12))


def test_meta_tensors_give_shapes():
    x = torch.empty(3, 5, 12, device="meta")
    assert hk.fwht(x).shape == (3, 5, 12) and hk.fwht(x).device.type == "meta"
    assert ops.hadamard_transform(x, 20, 1.0).shape == (3, 5, 20)
    y = ops.classifier_forward(x, torch.empty((), device="meta"), None, 7, True, 1e-12)
    assert y.shape == (3, 5, 7) and y.device.type == "meta"


# ---------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): no graph breaks, same results as eager


@pytest.mark.slow
def test_compile_fwht_forward_backward():
    def f(x):
        return hk.fwht(x.relu(), 0.5).square().sum(-1)

    x = torch.randn(4, 100, requires_grad=True)
    xc = x.detach().clone().requires_grad_()
    g = torch.randn(4)
    y = f(x)
    (gx,) = torch.autograd.grad(y, x, g)
    yc = torch.compile(f, fullgraph=True)(xc)
    (gxc,) = torch.autograd.grad(yc, xc, g)
    assert rel_err(yc, y) <= RTOL[torch.float32]
    assert rel_err(gxc, gx) <= RTOL[torch.float32]


@pytest.mark.slow
def test_compile_classifier_dynamic_batch():
    def f(x, scale, bias):
        return hk.hadamard_classifier(x, 10, scale, bias).softmax(-1)

    scale, bias = torch.tensor(0.7), torch.randn(10)
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (3, 7):
        x = torch.randn(rows, 24)
        assert rel_err(compiled(x, scale, bias), f(x, scale, bias)) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# Properties


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("n", POW2, ids=lambda n: f"n{n}")
def test_fwht_involution(n, dtype):
    x = torch.randn(2, n, dtype=dtype)
    assert rel_err(hk.fwht(hk.fwht(x, backend="cpu"), backend="cpu"), n * x) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("n", POW2, ids=lambda n: f"n{n}")
def test_fwht_orthonormal_scale_preserves_norm(n, dtype):
    x = torch.randn(3, n, dtype=dtype)
    out = hk.fwht(x, n**-0.5, backend="cpu")
    assert rel_err(out.norm(dim=-1), x.norm(dim=-1)) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [64, 100, 4096], ids=lambda n: f"n{n}")
def test_fwht_deterministic(n, dtype):
    x = torch.randn(257, n, dtype=dtype)
    assert torch.equal(hk.fwht(x, 0.5, backend="cpu"), hk.fwht(x, 0.5, backend="cpu"))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", [(100, 10), (16, 1000)], ids=nc_id)
def test_classifier_deterministic(case, dtype):
    n, c = case
    x = torch.randn(1000, n, dtype=dtype)
    g = torch.randn(1000, c, dtype=dtype)
    scale, bias = scale_for(dtype), torch.randn(c)
    runs = [classifier_grads(x, c, scale, bias, g)[0] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    y = [hk.hadamard_classifier(x, c, scale, bias, backend="cpu") for _ in range(2)]
    assert torch.equal(y[0], y[1])


def test_deterministic_across_thread_counts():
    # dL/dscale is reduced over a fixed chunking of the rows, not per thread.
    x = torch.randn(1000, 100)
    g = upstream_grad(x, 10)
    bias = torch.randn(10)
    threads = torch.get_num_threads()
    runs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            runs.append(classifier_grads(x, 10, torch.tensor(0.7), bias, g)[0])
            runs[-1] += (hk.fwht(x[:, :64], backend="cpu"), hk.hadamard_classifier(x, 10, 0.7, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert len(runs[0]) == 5
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("n", [1, 16, 100, 4096], ids=lambda n: f"n{n}")
def test_backends_agree_fwht(n):
    x = make_input((6, n), torch.float32, "transposed")
    assert rel_err(hk.fwht(x, backend="cpu"), hk.fwht(x, backend="reference")) <= RTOL[torch.float32]


@pytest.mark.parametrize("case", [(8, 10), (100, 10), (3, 1000)], ids=nc_id)
def test_backends_agree_classifier(case):
    n, c = case
    x, scale, bias = torch.randn(6, n), torch.tensor(1.3), torch.randn(c)
    outs = [hk.hadamard_classifier(x, c, scale, bias, backend=b) for b in ("cpu", "reference")]
    assert rel_err(outs[0], outs[1]) <= RTOL[torch.float32]


def test_auto_is_first_available():
    backends = hk.available_backends("cpu")
    assert backends[0] == "cpu" and backends[-1] == "reference"
    x = torch.randn(3, 100)
    assert torch.equal(hk.fwht(x), hk.fwht(x, backend=backends[0]))


# ---------------------------------------------------------------------------------------
# Bad input


BAD_DTYPES = [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=dtype_id)
def test_fwht_bad_dtype(dtype):
    with pytest.raises(TypeError, match=r"fwht: x must be float32.*got torch\." + dtype_id(dtype)):
        hk.fwht(torch.ones(2, 4, dtype=dtype))


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=dtype_id)
def test_classifier_bad_dtype(dtype):
    with pytest.raises(TypeError, match=r"hadamard_classifier: x must be float32"):
        hk.hadamard_classifier(torch.ones(2, 4, dtype=dtype), 3, 1.0)


@pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, None], ids=["list", "float", "none"])
def test_non_tensor_x(bad):
    with pytest.raises(TypeError, match="fwht: x must be a torch.Tensor"):
        hk.fwht(bad)
    with pytest.raises(TypeError, match="hadamard_classifier: x must be a torch.Tensor"):
        hk.hadamard_classifier(bad, 3, 1.0)


def test_zero_dim_input():
    with pytest.raises(ValueError, match="fwht: x must have at least 1 dimension"):
        hk.fwht(torch.tensor(1.0))
    with pytest.raises(ValueError, match="hadamard_classifier: x must have at least 1 dimension"):
        hk.hadamard_classifier(torch.tensor(1.0), 3, 1.0)


def test_fwht_bad_scale():
    with pytest.raises(TypeError, match="fwht: scale must be a real number, got Tensor"):
        hk.fwht(torch.randn(2, 4), torch.tensor(2.0))


def test_classifier_zero_features():
    with pytest.raises(ValueError, match=r"at least one feature, got shape \(3, 0\)"):
        hk.hadamard_classifier(torch.randn(3, 0), 3, 1.0)


@pytest.mark.parametrize("c", [0, -3])
def test_classifier_num_classes_below_one(c):
    with pytest.raises(ValueError, match=f"num_classes must be >= 1, got {c}"):
        hk.hadamard_classifier(torch.randn(2, 4), c, 1.0)


@pytest.mark.parametrize("c", [2.0, True, "3", None], ids=["float", "bool", "str", "none"])
def test_classifier_num_classes_not_int(c):
    with pytest.raises(TypeError, match="num_classes must be an int"):
        hk.hadamard_classifier(torch.randn(2, 4), c, 1.0)


@pytest.mark.parametrize("scale", [torch.tensor([1.0, 2.0]), torch.ones(1, 2), torch.ones(0)], ids=["2", "1x2", "0"])
def test_classifier_scale_wrong_size(scale):
    with pytest.raises(ValueError, match="scale must be a 0-d or 1-element tensor"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, scale)


@pytest.mark.parametrize(
    "scale,match",
    [(torch.tensor(1), "scale must be a floating-point tensor"), ("1.0", "scale must be a tensor or a real"),
     (True, "scale must be a tensor or a real")],
    ids=["int", "str", "bool"],
)  # fmt: skip
def test_classifier_scale_wrong_type(scale, match):
    with pytest.raises(TypeError, match=match):
        hk.hadamard_classifier(torch.randn(2, 4), 3, scale)


@pytest.mark.parametrize("shape", [(2,), (4,), (3, 1), ()], ids=lambda s: f"bias{list(s)}")
def test_classifier_bias_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"bias must have shape \(num_classes,\) = \(3,\)"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, 1.0, torch.randn(shape))


def test_classifier_bias_wrong_type():
    with pytest.raises(TypeError, match="bias must be a floating-point tensor, got torch.int64"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, 1.0, torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="bias must be a tensor or None, got list"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, 1.0, [0.0, 0.0, 0.0])


def test_classifier_device_mismatch_meta():
    # Without a GPU, the meta device stands in for "another device".
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        hk.hadamard_classifier(x, 3, 1.0, torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="scale is on meta but x is on cpu"):
        hk.hadamard_classifier(x, 3, torch.empty((), device="meta"))


@pytest.mark.cuda
def test_classifier_device_mismatch_cuda(cuda_device):
    x = torch.randn(2, 4, device=cuda_device)
    with pytest.raises(ValueError, match="scale is on cpu"):
        hk.hadamard_classifier(x, 3, torch.tensor(1.0))
    with pytest.raises(ValueError, match="bias is on cpu"):
        hk.hadamard_classifier(x, 3, 1.0, torch.randn(3))


@pytest.mark.parametrize("eps", [0.0, -1e-12, float("nan")], ids=["zero", "negative", "nan"])
def test_classifier_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, 1.0, eps=eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_classifier_eps_below_accumulator_range(dtype, backend):
    # 1 / eps must be finite in the float32 accumulator of these dtypes.
    match = r"hadamard_classifier: eps must be >= 2\.94e-39 .*float32 accumulator.*got eps=1e-40"
    with pytest.raises(ValueError, match=match):
        hk.hadamard_classifier(torch.randn(2, 4, dtype=dtype), 3, 1.0, eps=1e-40, backend=backend)


def test_classifier_tiny_eps_float64():
    # float64 accumulates in float64: eps = 1e-40 is fine there.
    x = torch.randn(3, 8, dtype=torch.float64)
    x[1] = 0
    y = hk.hadamard_classifier(x, 10, 2.0, eps=1e-40, backend="cpu")
    assert torch.equal(y[1], torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"eps must be >= 5\.56e-309"):
        hk.hadamard_classifier(x, 10, 2.0, eps=1e-310, backend="cpu")


def test_sizes_over_maximum():
    too_big = torch.empty(1, hk.MAX_FEATURES + 1)
    with pytest.raises(ValueError, match=r"fwht: transform size .* = 2097152 exceeds the supported maximum 1048576"):
        hk.fwht(too_big)
    with pytest.raises(ValueError, match="hadamard_classifier: transform size .* exceeds the supported maximum"):
        hk.hadamard_classifier(too_big, 10, 1.0)
    with pytest.raises(ValueError, match="hadamard_classifier: transform size .* exceeds the supported maximum"):
        hk.hadamard_classifier(torch.randn(2, 4), hk.MAX_FEATURES + 1, 1.0)


@pytest.mark.parametrize("backend", ["gpu", "CPU", "", None], ids=["gpu", "CPU", "empty", "none"])
def test_bad_backend_name(backend):
    with pytest.raises(ValueError, match="fwht: backend must be 'auto' or one of"):
        hk.fwht(torch.randn(2, 4), backend=backend)
    with pytest.raises(ValueError, match="hadamard_classifier: backend must be 'auto' or one of"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, 1.0, backend=backend)


@pytest.mark.parametrize("backend", [b for b in hk.BACKENDS if b not in hk.available_backends("cpu")])
def test_unavailable_backend_on_cpu(backend):
    with pytest.raises(RuntimeError, match=f"fwht: backend '{backend}' is not available for a tensor on cpu"):
        hk.fwht(torch.randn(2, 4), backend=backend)
    with pytest.raises(RuntimeError, match=f"backend '{backend}' is not available for a tensor on cpu"):
        hk.hadamard_classifier(torch.randn(2, 4), 3, 1.0, backend=backend)


@pytest.mark.cuda
def test_cpu_backend_on_cuda_tensor(cuda_device):
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available"):
        hk.fwht(torch.randn(2, 4, device=cuda_device), backend="cpu")


# The ops called directly, bypassing the Python checks, must still refuse bad input.
X, S, EPS = torch.ones(3, 4), torch.tensor(1.0), 1e-12
tr, fwd, bwd = ops.hadamard_transform, ops.classifier_forward, ops.classifier_backward

DIRECT_OP_ERRORS = {
    "transform-int": (TypeError, "must be float32", lambda: tr(X.long(), 4, 1.0)),
    "transform-complex": (TypeError, "must be float32", lambda: tr(X.cfloat(), 4, 1.0)),
    "transform-bool": (TypeError, "must be float32", lambda: tr(X.bool(), 4, 1.0)),
    "transform-0d": (ValueError, "at least 1 dimension", lambda: tr(S, 4, 1.0)),
    "transform-out-negative": (ValueError, "feature sizes must be >= 0", lambda: tr(X, -1, 1.0)),
    "transform-too-big": (ValueError, "exceeds the supported maximum", lambda: tr(X, 2**20 + 1, 1.0)),
    "forward-int": (TypeError, "must be float32", lambda: fwd(X.int(), S, None, 4, True, EPS)),
    "forward-0d": (ValueError, "at least 1 dimension", lambda: fwd(S, S, None, 4, True, EPS)),
    "forward-classes": (ValueError, "num_classes must be >= 1", lambda: fwd(X, S, None, 0, True, EPS)),
    "forward-no-features": (ValueError, "at least one feature", lambda: fwd(X[:, :0], S, None, 4, True, EPS)),
    "forward-eps": (ValueError, "eps must be > 0", lambda: fwd(X, S, None, 4, True, 0.0)),
    "forward-scale-size": (ValueError, "scale must have exactly one", lambda: fwd(X, X[0], None, 4, True, EPS)),
    "forward-scale-int": (TypeError, "scale must be a floating-point", lambda: fwd(X, S.long(), None, 4, True, EPS)),
    "forward-bias-shape": (ValueError, "bias must have shape", lambda: fwd(X, S, X[0, :3], 4, True, EPS)),
    "forward-bias-dtype": (TypeError, "bias dtype", lambda: fwd(X, S, X[0].double(), 4, True, EPS)),
    "forward-too-big": (ValueError, "exceeds the supported maximum", lambda: fwd(X, S, None, 2**20 + 1, True, EPS)),
    "backward-shape": (ValueError, "does not match x shape", lambda: bwd(X[:2], X, S, True, EPS)),
    "backward-dtype": (TypeError, "grad_y dtype", lambda: bwd(X.double(), X, S, True, EPS)),
    "backward-eps": (ValueError, "eps must be > 0", lambda: bwd(X, X, S, True, -1.0)),
    "backward-scale-size": (ValueError, "scale must have exactly one", lambda: bwd(X, X, X[0], True, EPS)),
}


@pytest.mark.parametrize("name", list(DIRECT_OP_ERRORS))
def test_direct_op_errors(name):
    exc, match, call = DIRECT_OP_ERRORS[name]
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("op", ["transform", "forward"])
def test_direct_op_rejects_float8(op):
    x = torch.randn(3, 4).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="must be float32"):
        if op == "transform":
            tr(x, 4, 1.0)
        else:
            fwd(x, S, None, 4, True, EPS)


# ---------------------------------------------------------------------------------------
# The eager fast path (ops._FAST_OPS): after a first successful call the op is called
# without the Python checks; every bad input must still raise the full path's error.


def _warm_fast_path():
    hk.fwht(torch.randn(2, 8))
    hk.fwht_(torch.randn(2, 8))
    hk.hadamard_classifier(torch.randn(2, 8), 3, torch.tensor(0.5), torch.zeros(3))
    assert ("fwht", "auto", torch.device("cpu")) in hk.ops._FAST_OPS
    assert ("hadamard_classifier", "auto", torch.device("cpu")) in hk.ops._FAST_OPS
    assert ("fwht_", "auto", torch.device("cpu")) in hk.ops._FAST_OPS


FAST_PATH_ERRORS = {
    "fwht-dtype": (TypeError, r"fwht: x must be float32", lambda: hk.fwht(torch.ones(2, 4, dtype=torch.int32))),
    "fwht-0d": (ValueError, "fwht: x must have at least 1 dimension", lambda: hk.fwht(torch.tensor(1.0))),
    "fwht-list": (TypeError, "fwht: x must be a torch.Tensor", lambda: hk.fwht([1.0, 2.0])),
    "fwht-bool-scale": (TypeError, "fwht: scale must be a real number", lambda: hk.fwht(torch.ones(4), True)),
    "fwht-size": (ValueError, "fwht: transform size", lambda: hk.fwht(torch.empty(1, 2**20 + 1))),
    "fwht-backend": (ValueError, "fwht: backend must be", lambda: hk.fwht(torch.ones(4), backend="nonsense")),
    "fwht_-dtype": (TypeError, r"fwht_: x must be float32", lambda: hk.fwht_(torch.ones(2, 4, dtype=torch.int32))),
    "fwht_-0d": (ValueError, "fwht_: x must have at least 1 dimension", lambda: hk.fwht_(torch.tensor(1.0))),
    "fwht_-list": (TypeError, "fwht_: x must be a torch.Tensor", lambda: hk.fwht_([1.0, 2.0])),
    "fwht_-bool-scale": (TypeError, "fwht_: scale must be a real number", lambda: hk.fwht_(torch.ones(4), True)),
    "fwht_-size": (ValueError, "fwht_: transform size", lambda: hk.fwht_(torch.empty(1, 2**20 + 1))),
    "fwht_-strided": (ValueError, "fwht_: x must be contiguous", lambda: hk.fwht_(torch.ones(4, 8).T)),
    "fwht_-expanded": (ValueError, "fwht_: x must be contiguous", lambda: hk.fwht_(torch.ones(1, 8).expand(3, 8))),
    "fwht_-backend": (ValueError, "fwht_: backend must be", lambda: hk.fwht_(torch.ones(4), backend="nonsense")),
    "fwht_-leaf": (RuntimeError, "a leaf Variable that requires grad",
                   lambda: hk.fwht_(torch.ones(4, requires_grad=True))),
    "clf-dtype": (TypeError, "hadamard_classifier: x must be float32",
                  lambda: hk.hadamard_classifier(torch.ones(2, 4, dtype=torch.int64), 3, torch.tensor(1.0))),
    "clf-bool-classes": (TypeError, "num_classes must be an int",
                         lambda: hk.hadamard_classifier(torch.ones(2, 4), True, torch.tensor(1.0))),
    "clf-classes": (ValueError, "num_classes must be >= 1",
                    lambda: hk.hadamard_classifier(torch.ones(2, 4), 0, torch.tensor(1.0))),
    "clf-scale-shape": (ValueError, "scale must be a 0-d or 1-element tensor",
                        lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.ones(2))),
    "clf-scale-meta": (ValueError, "scale is on meta but x is on cpu",
                       lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.empty((), device="meta"))),
    "clf-bias-meta": (ValueError, "bias is on meta but x is on cpu",
                      lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.tensor(1.0),
                                                     torch.empty(3, device="meta"))),
    "clf-bias-shape": (ValueError, r"bias must have shape \(num_classes,\)",
                       lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.tensor(1.0), torch.zeros(4))),
    "clf-bias-list": (TypeError, "bias must be a tensor or None",
                      lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.tensor(1.0), [0.0] * 3)),
    "clf-eps-zero": (ValueError, "eps must be > 0",
                     lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.tensor(1.0), eps=0.0)),
    "clf-eps-tiny": (ValueError, r"eps must be >= 2\.94e-39",
                     lambda: hk.hadamard_classifier(torch.ones(2, 4), 3, torch.tensor(1.0), eps=1e-40)),
}


@pytest.mark.parametrize("name", list(FAST_PATH_ERRORS))
def test_fast_path_keeps_the_named_errors(name):
    _warm_fast_path()
    exc, match, call = FAST_PATH_ERRORS[name]
    with pytest.raises(exc, match=match):
        call()


def test_fast_path_casts_bias_and_takes_float_scale():
    # What the full path accepts beyond the op's signature must still work after warm-up.
    _warm_fast_path()
    x = torch.randn(3, 8, dtype=torch.float64)
    bias = torch.randn(5)  # float32 bias, float64 x: cast by the full path
    want = R.hadamard_classifier_reference(x, 5, torch.tensor(0.5, dtype=torch.float64), bias.double())
    assert rel_err(hk.hadamard_classifier(x, 5, 0.5, bias), want) <= RTOL[torch.float64]
    assert rel_err(hk.fwht(x, 2), R.fwht_reference(x, 2.0)) <= RTOL[torch.float64]
    for n in (1, 5, 8):  # fwht_'s fast path computes next_pow2(n) itself: odd sizes pad
        x = torch.randn(3, n, dtype=torch.float64)
        assert rel_err(hk.fwht_(x.clone(), 0.5), R.fwht_reference(x, 0.5)) <= RTOL[torch.float64]


def test_autograd_builds_a_node_only_when_needed():
    # C++ autograd (csrc/autograd.cpp): no graph node without grad, one with it, and the
    # node's gradients are those of the reference.
    x = torch.randn(4, 8, dtype=torch.float64)
    scale = torch.tensor(0.7, dtype=torch.float64)
    for fn in (lambda t, s: hk.fwht(t, 0.5), lambda t, s: hk.hadamard_classifier(t, 5, s)):
        assert fn(x, scale).grad_fn is None
        xg, sg = x.detach().requires_grad_(), scale.detach().requires_grad_()
        with torch.no_grad():
            assert fn(xg, sg).grad_fn is None
        with torch.inference_mode():
            assert not fn(x, scale).requires_grad
        y = fn(xg, sg)
        assert y.grad_fn is not None and y.requires_grad
    # Only the scale requires grad: a node all the same, with the reference's gradient.
    s = scale.detach().requires_grad_()
    g, = torch.autograd.grad(hk.hadamard_classifier(x, 5, s).sum(), s)
    s_ref = scale.detach().requires_grad_()
    g_ref, = torch.autograd.grad(R.hadamard_classifier_reference(x, 5, s_ref).sum(), s_ref)
    assert rel_err(g, g_ref) <= RTOL[torch.float64]


# ---------------------------------------------------------------------------------------
# Import cost (measured, not timed here: see README): torch._dynamo alone about doubles it


def test_import_does_not_import_dynamo():
    # A fresh process without a GPU or the Triton interpreter: the case of a CPU user.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    code = "import sys, hadamard_kernels; print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
