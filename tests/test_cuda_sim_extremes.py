"""The CUDA classifier kernels at the ends of the accumulator's range, run on the CPU by the
harness in tests/cuda_sim/ (issue 10, item 2).

||x|| must not overflow (float32 rows near 3e38, where even H @ x overflows) or underflow
(subnormal rows, 1e-40; normal rows whose squares underflow, 1e-25) where the true result is
finite; likewise 6e4 in float16, 3e38 in bfloat16 and 1e300 in float64. Forward and backward
(grad_x and the per-row dL/dalpha), for each kind of kernel: one thread per row, one warp per
row, several warps per row, and the two-pass path (M = 2^16, C < N and C > N). Every launch
mixes an extreme random row, an extreme constant row, an ordinary row and an all-zero row, so
that rows of one warp or block disagree about rescaling. Ordinary rows are bit-identical to
the same rows scaled by a power of two into the extreme range (the rescale is exact).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import RTOL, dtype_id, rel_err

from cuda_sim import harness as H
from hadamard_kernels import reference as R

SCHEDULES = ["random:1", "ahead:1"]

# (N, C): M = 4 (one thread per row in float32 / float16), 512 (one warp per row in float32),
# 2^11 and 2^13 (several warps per row, several rows per block at 2^11), two passes at 2^16.
SIZES = [(3, 4), (300, 10), (2048, 1000), (8000, 10), (1 << 16, 1000), (40000, 1 << 16)]

# (dtype, magnitude, eps, alpha): alpha keeps the true outputs and gradients in the normal
# range of the dtype, so that they are finite and comparable.
EXTREMES = [
    (torch.float32, 3e38, 1e-12, 1e6),  # the squares and H @ x overflow
    (torch.float32, 1e-40, 1e-12, 1.0),  # subnormal x, norm clamped to eps
    (torch.float32, 1e-40, 2.94e-39, 1e-3),  # subnormal x, the smallest eps: clamped only for small N
    (torch.float32, 1e-25, 1e-30, 1e-12),  # normal x whose squares underflow
    (torch.float16, 6e4, 1e-12, 1e3),
    (torch.bfloat16, 3e38, 1e-12, 1e6),
    (torch.float64, 1e300, 1e-12, 1.0),
]

TWO_PASS = {(torch.float32, 3e38), (torch.float32, 1e-40), (torch.float16, 6e4), (torch.float64, 1e300)}


def extreme_id(v) -> str:
    return dtype_id(v) if isinstance(v, torch.dtype) else f"{v:g}"


def single_pass(n: int, c: int, dtype: torch.dtype) -> bool:
    return (max(n, c) - 1).bit_length() <= (14 if dtype == torch.float64 else 15)


def cases():
    out = []
    for ext in EXTREMES:
        for n, c in SIZES:
            if single_pass(n, c, ext[0]) or (ext[0], ext[1]) in TWO_PASS and ext[3] != 1e-3:
                out.append(pytest.param(*ext, n, c, id=f"{dtype_id(ext[0])}-{ext[1]:g}-eps{ext[2]:g}-N{n}-C{c}"))
    return out


@pytest.fixture(scope="module")
def runner():
    return H.build()


def extreme_rows(dtype: torch.dtype, magnitude: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """4 rows: |x| in [magnitude / 2, magnitude] with random signs, an ordinary row, every
    entry = magnitude, zeros."""
    x = torch.empty(4, n, dtype=torch.float64)
    mag = torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    sign = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    x[0] = mag * sign * magnitude
    x[1] = torch.randn(n, generator=gen, dtype=torch.float64)
    x[2] = magnitude
    x[3] = 0
    return x.to(dtype)


def reference(x: torch.Tensor, c: int, alpha: float, bias, eps: float, g=None, normalize=True):
    """(y or grad_x, contrib) in float64, row by row on x * 2^s with max|x * 2^s| in [1, 2)
    (y(x) = y(x * 2^s) with eps * 2^s, dL/dx scales by 2^s), so that the float64 reference
    itself neither overflows nor underflows at 1e300."""
    outs, contribs = [], []
    for r in range(x.shape[0]):
        xr = x[r : r + 1].double()
        amax = xr.abs().max().item()
        s = -math.floor(math.log2(amax)) if amax > 0 and normalize else 0
        xs = (xr * 2.0**s).requires_grad_(g is not None)
        y = R.hadamard_classifier_reference(xs, c, alpha, None if bias is None or g is not None else bias.double(),
                                            normalize=normalize, eps=eps * 2.0**s)  # fmt: skip
        if g is None:
            outs.append(y.detach())
            continue
        gr = g[r : r + 1].double()
        (gx,) = torch.autograd.grad(y, xs, gr)
        outs.append(gx * 2.0**s)
        x_hat = F.normalize(xs.detach(), dim=-1, eps=eps * 2.0**s) if normalize else xs.detach()
        contribs.append((gr * R.hadamard_transform_reference(x_hat, c)).sum(-1))
    return torch.cat(outs), (torch.cat(contribs) if contribs else None)


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """As tests/test_cuda_sim.py's compare, with both divided by a power of two near max|ref|
    first (the norms of 1e-300 gradients would underflow float64)."""
    rounded = ref.to(dtype).double()
    finite = torch.isfinite(rounded)
    assert torch.equal(out.double()[~finite], rounded[~finite]), f"{what}: overflowed entries differ"
    got = out.double()[finite]
    assert torch.isfinite(got).all(), f"{what}: NaN or inf where the result is finite"
    want = ref[finite]
    m = want.abs().max().item() if want.numel() else 0.0
    k = 2.0 ** -math.floor(math.log2(m)) if m > 0 else 1.0
    err = rel_err(got * k, want * k)
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3g} > {RTOL[dtype]:g}"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("dtype,magnitude,eps,alpha,n,c", cases())
def test_forward_extreme_magnitudes(runner, dtype, magnitude, eps, alpha, n, c):
    gen = torch.Generator().manual_seed(n * 7 + c)
    x = extreme_rows(dtype, magnitude, n, gen)
    bias = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    res = H.run("forward", x=H.View.of(x), rows=x.shape[0], n_in=n, n_out=c, schedules=SCHEDULES, alpha=alpha,
                bias=bias, eps=eps, runner=runner)  # fmt: skip
    ref, _ = reference(x, c, alpha, bias, eps)
    assert torch.equal(res.y[3], bias), "an all-zero row gives exactly the bias"
    for r in range(3):
        compare(res.y[r], ref[r], dtype, f"y row {r}")


@pytest.mark.parametrize("dtype,magnitude,eps,alpha,n,c", cases())
def test_backward_extreme_magnitudes(runner, dtype, magnitude, eps, alpha, n, c):
    gen = torch.Generator().manual_seed(n * 11 + c)
    x = extreme_rows(dtype, magnitude, n, gen)
    g = torch.randn(x.shape[0], c, generator=gen, dtype=torch.float64).to(dtype)
    res = H.run("backward", x=H.View.of(x), g=H.View.of(g), rows=x.shape[0], n_in=n, n_out=c, schedules=SCHEDULES,
                alpha=alpha, eps=eps, runner=runner)  # fmt: skip
    gx, contrib = reference(x, c, alpha, None, eps, g=g)
    for r in range(3):  # the zero row's grad_x, alpha / eps * u, may overflow: not compared
        compare(res.y[r], gx[r], dtype, f"grad_x row {r}")
    compare(res.contrib, contrib, acc_dtype(dtype), "dL/dalpha per row")


# 2^j moves an ordinary row into the range that needs the rescale (float16's range is too
# narrow for that: its float32 accumulator never needs it).
SHIFTS = {torch.float32: (100, -100), torch.bfloat16: (100, -100), torch.float64: (900, -900)}
SHIFT_CASES = [pytest.param(d, j, n, c, id=f"{dtype_id(d)}-2^{j}-N{n}-C{c}")
               for d, js in SHIFTS.items() for j in js for n, c in SIZES
               if single_pass(n, c, d) or (n, c) == SIZES[-2]]  # fmt: skip


@pytest.mark.parametrize("dtype,j,n,c", SHIFT_CASES)
def test_rescale_is_exact(runner, dtype, j, n, c):
    """y(x * 2^j, eps * 2^j) == y(x, eps), grad_x(x * 2^j) == grad_x(x) * 2^-j and dL/dalpha
    alike, bit for bit: the rescaled path computes exactly what the fast path does on ordinary
    rows."""
    gen = torch.Generator().manual_seed(n + c + j)
    x = torch.randn(3, n, generator=gen, dtype=torch.float64)
    g = torch.randn(3, c, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    xs = [(x.to(dtype), 1e-12), ((x * 2.0**j).to(dtype), 1e-12 * 2.0**j)]
    kw = dict(rows=3, n_in=n, n_out=c, schedules=SCHEDULES[:1], alpha=0.75, runner=runner)
    fw = [H.run("forward", x=H.View.of(t), bias=bias, eps=eps, **kw).y for t, eps in xs]
    bw = [H.run("backward", x=H.View.of(t), g=H.View.of(g), eps=eps, **kw) for t, eps in xs]
    assert torch.equal(fw[0], fw[1])
    assert torch.equal(bw[0].y.double(), bw[1].y.double() * 2.0**j)
    assert torch.equal(bw[0].contrib, bw[1].contrib)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("n,c", SIZES[:3] + SIZES[4:5], ids=lambda v: str(v))
def test_zero_row_smallest_eps(runner, dtype, n, c):
    """An all-zero row gives exactly the bias and dL/dalpha = 0 with the smallest eps the Python
    op allows (1 / eps just finite in float32, alpha / eps not); the other rows are unaffected."""
    eps = 2.94e-39
    gen = torch.Generator().manual_seed(n + c)
    x = torch.randn(3, n, generator=gen, dtype=torch.float64).to(dtype)
    x[1] = 0
    bias = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(3, c, generator=gen, dtype=torch.float64).to(dtype)
    kw = dict(x=H.View.of(x), rows=3, n_in=n, n_out=c, schedules=SCHEDULES, alpha=2.5, eps=eps, runner=runner)
    y = H.run("forward", bias=bias, **kw).y
    assert torch.equal(y[1], bias)
    ref, _ = reference(x, c, 2.5, bias, eps)
    compare(y[[0, 2]], ref[[0, 2]], dtype, "y")
    res = H.run("backward", g=H.View.of(g), **kw)
    gx, contrib = reference(x, c, 2.5, None, eps, g=g)
    compare(res.y[[0, 2]], gx[[0, 2]], dtype, "grad_x")
    assert res.contrib[1].item() == 0
    compare(res.contrib, contrib, acc_dtype(dtype), "dL/dalpha per row")


@pytest.mark.parametrize("n,c", SIZES[:3] + SIZES[4:5], ids=lambda v: str(v))
def test_no_normalisation_unchanged(runner, n, c):
    """normalize=False: y = alpha * H x + b and its gradients, no norm and no rescale (large
    inputs with a small alpha stay finite, as the formula says)."""
    dtype = torch.float32
    gen = torch.Generator().manual_seed(n * 3 + c)
    x = (torch.randn(3, n, generator=gen, dtype=torch.float64) * 1e30).to(dtype)
    bias = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(3, c, generator=gen, dtype=torch.float64).to(dtype)
    kw = dict(x=H.View.of(x), rows=3, n_in=n, n_out=c, schedules=SCHEDULES, alpha=1e-30, normalize=False,
              runner=runner)  # fmt: skip
    y = H.run("forward", bias=bias, **kw).y
    compare(y, reference(x, c, 1e-30, bias, 1e-12, normalize=False)[0], dtype, "y")
    res = H.run("backward", g=H.View.of(g), **kw)
    gx, contrib = reference(x, c, 1e-30, None, 1e-12, g=g, normalize=False)
    compare(res.y, gx, dtype, "grad_x")
    compare(res.contrib, contrib, torch.float32, "dL/dalpha per row")
