"""The CUDA kernels (csrc/cuda/): fwht / hadamard_transform and the fused classifier forward
and backward on a GPU, against the float64 reference. Every test is marked ``cuda`` and is
skipped without a GPU (conftest.py)."""

import pytest
import torch
from conftest import DTYPES, LAYOUTS, RTOL, dtype_id, make_input, rel_err

import hadamard_kernels as hk
from hadamard_kernels import orders
from hadamard_kernels import reference as R

pytestmark = pytest.mark.cuda

ops = torch.ops.hadamard_kernels
DEV = "cuda"

# Every power of two up to 2^20: one pass up to 2^15 (2^14 in float64), two passes above.
POW2 = [2**k for k in range(21)]
NON_POW2 = [3, 5, 17, 100, 1000, 5000, 20000, 2**15 + 1, 2**20 - 3]
SIZES = sorted(POW2 + NON_POW2)
ROWS = [1, 3, 65537]

# (N, C) of the classifier: C < N, C = N, C > N, non-powers of two, one and two passes.
CASES = [
    (1, 1), (3, 1000), (8, 10), (16, 16), (17, 5), (100, 100), (512, 1000), (1000, 10),
    (2048, 4096), (4096, 4096), (32768, 10), (10, 32768), (5000, 40000), (65536, 100),
]  # fmt: skip


def nc_id(case) -> str:
    return f"N{case[0]}-C{case[1]}"


def rows_for(n: int, rows: int) -> int:
    """Keep every case under ~64M entries."""
    return max(1, min(rows, (1 << 26) // max(n, 1)))


def poison_allocator(nbytes: int) -> None:
    """Leave NaN in the caching allocator's free blocks, so that outputs allocated next
    (at::empty inside the ops) start out as NaN: an entry the kernel fails to write shows."""
    blocks = [torch.full((max(nbytes, 512) // 4 + 1024,), float("nan"), device=DEV) for _ in range(4)]
    del blocks


def scale_for(dtype: torch.dtype, value: float = 0.7) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=DEV)


# ---------------------------------------------------------------------------------------
# fwht / hadamard_transform


def test_cuda_backend_is_available_and_auto():
    assert hk.available_backends(DEV)[0] == "cuda"
    x = torch.randn(3, 64, device=DEV)
    assert torch.equal(hk.fwht(x), hk.fwht(x, backend="cuda"))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"rows{r}")
def test_fwht_matches_reference(rows, n, dtype):
    rows = rows_for(n, rows)
    x = torch.randn(rows, n, dtype=dtype, device=DEV)
    x0 = x.clone()
    poison_allocator(x.numel() * x.element_size())
    out = hk.fwht(x, 0.25, backend="cuda")
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(x, x0)
    assert not out.isnan().any()
    assert rel_err(out, R.fwht_reference(x.double(), 0.25)) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 8, 100, 1024, 4096, 32768, 2**17], ids=lambda n: f"n{n}")
def test_fwht_layouts(layout, n, dtype):
    x = make_input((3, 5, n), dtype, layout, DEV)
    out = hk.fwht(x, backend="cuda")
    assert out.is_contiguous()
    assert rel_err(out, R.fwht_reference(x.double())) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "n,out", [(3, 8), (8, 3), (100, 1000), (1000, 100), (5, 32768), (32768, 5), (70000, 10), (10, 70000)]
)
def test_transform_op_in_out(n, out, dtype):
    x = make_input((7, n), dtype, "sliced", DEV)
    poison_allocator(7 * out * x.element_size())
    y = ops.hadamard_transform(x, out, 0.5)
    assert y.shape == (7, out) and not y.isnan().any()
    assert rel_err(y, R.hadamard_transform_reference(x.double(), out, 0.5)) <= RTOL[dtype]


def test_transform_edge_shapes():
    assert ops.hadamard_transform(torch.randn(0, 16, device=DEV), 16, 1.0).shape == (0, 16)
    assert ops.hadamard_transform(torch.randn(4, 16, device=DEV), 0, 1.0).shape == (4, 0)
    assert torch.equal(ops.hadamard_transform(torch.randn(3, 0, device=DEV), 4, 1.0), torch.zeros(3, 4, device=DEV))


@pytest.mark.parametrize("n", [256, 32768, 2**20], ids=lambda n: f"n{n}")
def test_fwht_properties(n):
    x = torch.randn(2, n, device=DEV, dtype=torch.float64)
    y = hk.fwht(x, n**-0.5, backend="cuda")
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    assert torch.allclose(hk.fwht(y, n**-0.5, backend="cuda"), x, rtol=1e-10, atol=1e-12)
    assert torch.equal(y, hk.fwht(x, n**-0.5, backend="cuda"))  # two runs identical


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [7, 512, 20000], ids=lambda n: f"n{n}")
def test_fwht_agrees_with_cpu(n, dtype):
    x = torch.randn(5, n, dtype=dtype)
    cpu = hk.fwht(x, 0.3, backend="cpu")
    gpu = hk.fwht(x.to(DEV), 0.3, backend="cuda").cpu()
    assert rel_err(gpu, cpu) <= 2 * RTOL[dtype]


def test_fwht_other_stream_and_device_guard():
    x = torch.randn(64, 1024, device=DEV)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = hk.fwht(x, backend="cuda")
    s.synchronize()
    assert rel_err(y, R.fwht_reference(x.double())) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# classifier forward


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=nc_id)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_classifier_matches_reference(normalize, bias, case, dtype):
    n, c = case
    rows = rows_for(max(n, c), 37)
    x = torch.randn(rows, n, dtype=dtype, device=DEV)
    scale = scale_for(dtype)
    b = torch.randn(c, dtype=dtype, device=DEV) if bias else None
    poison_allocator(rows * c * x.element_size())
    y = hk.hadamard_classifier(x, c, scale, b, normalize=normalize, backend="cuda")
    assert y.shape == (rows, c) and y.dtype == dtype and not y.isnan().any()
    ref = R.hadamard_classifier_reference(
        x.double(), c, scale.double(), None if b is None else b.double(), normalize=normalize
    )
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(8, 10), (512, 1000), (2048, 100)], ids=nc_id)
def test_classifier_layouts_and_rows(case, layout, rows):
    n, c = case
    x = make_input((rows, n), torch.float32, layout, DEV)
    scale = torch.tensor([0.5], device=DEV, dtype=torch.float16)  # 1-element, other dtype
    b = torch.randn(c, device=DEV)
    y = hk.hadamard_classifier(x, c, scale, b, backend="cuda")
    ref = R.hadamard_classifier_reference(x.double(), c, scale.double(), b.double())
    assert rel_err(y, ref) <= RTOL[torch.float32]


def test_classifier_clamped_norm_and_empty():
    x = torch.zeros(4, 16, device=DEV)
    x[1] = 1e-20
    y = hk.hadamard_classifier(x, 10, torch.tensor(2.0, device=DEV), backend="cuda")
    ref = R.hadamard_classifier_reference(x.double(), 10, 2.0)
    assert torch.allclose(y.double(), ref)
    assert hk.hadamard_classifier(torch.randn(0, 16, device=DEV), 10, 1.0, backend="cuda").shape == (0, 10)


def test_classifier_scale_read_on_device_without_sync():
    """The scale is read by the kernel (no .item()): a captured CUDA graph replays with a new
    scale value."""
    x = torch.randn(8, 256, device=DEV)
    scale = torch.tensor(1.0, device=DEV)
    hk.hadamard_classifier(x, 100, scale, backend="cuda")  # warm-up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = hk.hadamard_classifier(x, 100, scale, backend="cuda")
    scale.fill_(3.0)
    g.replay()
    ref = R.hadamard_classifier_reference(x.double(), 100, 3.0)
    assert rel_err(y, ref) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [1, 5, 256, 32768, 2**17], ids=lambda n: f"n{n}")
def test_fwht_grad_matches_reference(n, dtype):
    x = torch.randn(3, n, dtype=dtype, device=DEV, requires_grad=True)
    g = torch.randn(3, n, dtype=dtype, device=DEV)
    (gx,) = torch.autograd.grad(hk.fwht(x, 0.5, backend="cuda"), x, g)
    xr = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(R.fwht_reference(xr, 0.5), xr, g.double())
    assert rel_err(gx, ref) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_classifier_grad_matches_reference(normalize, case, dtype):
    n, c = case
    rows = rows_for(max(n, c), 9)
    x = make_input((rows, n), dtype, "sliced", DEV).requires_grad_()
    scale = scale_for(dtype).requires_grad_()
    b = torch.randn(c, dtype=dtype, device=DEV, requires_grad=True)
    g = torch.randn(rows, c, dtype=dtype, device=DEV)
    poison_allocator(rows * max(n, c) * 8)
    y = hk.hadamard_classifier(x, c, scale, b, normalize=normalize, backend="cuda")
    grads = torch.autograd.grad(y, (x, scale, b), g)
    leaves = [t.detach().double().requires_grad_() for t in (x, scale, b)]
    ref_y = R.hadamard_classifier_reference(*leaves[:1], c, leaves[1], leaves[2], normalize=normalize)
    refs = torch.autograd.grad(ref_y, leaves, g.double())
    for got, ref, leaf in zip(grads, refs, (x, scale, b)):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        assert not got.isnan().any()
        assert rel_err(got, ref) <= RTOL[dtype]


def test_classifier_backward_op_outputs_and_determinism():
    g = torch.randn(1000, 100, device=DEV)
    x = torch.randn(1000, 512, device=DEV)
    scale = torch.tensor([0.7], device=DEV, dtype=torch.float64)
    out1 = ops.classifier_backward(g, x, scale, True, 1e-12)
    out2 = ops.classifier_backward(g, x, scale, True, 1e-12)
    gx, gs, gb = out1
    assert gx.shape == x.shape and gx.dtype == x.dtype and gx.is_contiguous()
    assert gs.shape == scale.shape and gs.dtype == scale.dtype
    assert gb.shape == (100,) and gb.dtype == torch.float32
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    cpu = ops.classifier_backward(g.cpu(), x.cpu(), scale.cpu(), True, 1e-12)
    for a, b in zip(out1, cpu):
        assert rel_err(a.cpu(), b) <= 1e-5


@pytest.mark.parametrize("n", [1, 6, 64, 2**15, 2**16], ids=lambda n: f"n{n}")
def test_fwht_gradcheck(n):
    x = torch.randn(2, n, dtype=torch.float64, device=DEV, requires_grad=True)
    # fast_mode: a few random directions instead of the n x n Jacobian.
    assert torch.autograd.gradcheck(lambda t: hk.fwht(t, 0.5, backend="cuda"), (x,), fast_mode=True)


@pytest.mark.parametrize("case", [(8, 10), (12, 20), (100, 10), (16, 16)], ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_classifier_gradcheck(normalize, case):
    n, c = case
    x = torch.randn(3, n, dtype=torch.float64, device=DEV, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, device=DEV, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, device=DEV, requires_grad=True)
    fn = lambda x, s, b: hk.hadamard_classifier(x, c, s, b, normalize=normalize, backend="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, scale, b))


# ---------------------------------------------------------------------------------------
# opcheck and torch.compile on CUDA tensors


@pytest.mark.parametrize("n,out", [(16, 16), (5, 12), (40000, 100)])
def test_opcheck_hadamard_transform(n, out):
    x = torch.randn(3, n, device=DEV, requires_grad=True)
    torch.library.opcheck(ops.hadamard_transform, (x, out, 0.5))


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_opcheck_classifier(normalize, bias):
    x = torch.randn(4, 24, device=DEV, requires_grad=True)
    scale = torch.tensor(0.7, device=DEV, requires_grad=True)
    b = torch.randn(20, device=DEV, requires_grad=True) if bias else None
    torch.library.opcheck(ops.classifier_forward, (x, scale, b, 20, normalize, 1e-12))
    g = torch.randn(4, 20, device=DEV)
    torch.library.opcheck(ops.classifier_backward, (g, x.detach(), scale.detach(), normalize, 1e-12))


@pytest.mark.slow
def test_compile_fullgraph_forward_backward():
    x = torch.randn(16, 512, device=DEV, requires_grad=True)
    scale = torch.tensor(0.7, device=DEV, requires_grad=True)
    b = torch.randn(100, device=DEV, requires_grad=True)

    def f(x, s, b):
        return hk.hadamard_classifier(hk.fwht(x, 512**-0.5), 100, s, b).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    got = torch.autograd.grad(compiled(x, scale, b), (x, scale, b))
    want = torch.autograd.grad(f(x, scale, b), (x, scale, b))
    for a, w in zip(got, want):
        assert rel_err(a, w) <= 1e-5


# ---------------------------------------------------------------------------------------
# The simplex ETF head (etf=True): W = f (I - 11^T / C) H_N[:C, :N], f = sqrt(C / ((C-1) N))

# (N, C): N a power of two, 2 <= C <= N; every kind of tile, one pass and two (2^15 in
# float64, 2^16 and up), C = 2, C = N, C within and across the two-pass chunks.
ETF_CASES = [
    (2, 2), (4, 3), (16, 16), (64, 37), (512, 10), (2048, 1000), (8192, 8192), (32768, 7), (65536, 1000),
    (65536, 3 * 4096 + 5), (65536, 65536), (2**20, 2**19 + 7),
]  # fmt: skip


def etf_reference(x, c, scale, bias=None, normalize=True, eps=1e-12):
    """``R.hadamard_classifier_reference(..., etf=True)`` without its dense N x N matrix
    (checked against it in test_etf_reference_twin): scale * f * (t - mean(t)) + bias,
    t = H_N[:C, :N] @ x_hat. Differentiable."""
    n = x.shape[-1]
    x_hat = torch.nn.functional.normalize(x, dim=-1, eps=eps) if normalize else x
    t = R.hadamard_transform_reference(x_hat, c)
    y = scale * (c / ((c - 1) * n)) ** 0.5 * (t - t.mean(-1, keepdim=True))
    return y if bias is None else y + bias


def test_etf_reference_twin():
    x = torch.randn(3, 256, dtype=torch.float64, device=DEV)
    b = torch.randn(100, dtype=torch.float64, device=DEV)
    dense = R.hadamard_classifier_reference(x, 100, 0.7, b, etf=True)
    assert rel_err(etf_reference(x, 100, 0.7, b), dense) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ETF_CASES, ids=nc_id)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_classifier_etf_matches_reference_and_cpu(normalize, bias, case, dtype):
    n, c = case
    rows = rows_for(n, 37)
    x = torch.randn(rows, n, dtype=dtype, device=DEV)
    x[rows // 2] = 0  # a zero row: the bias
    scale = scale_for(dtype)
    b = torch.randn(c, dtype=dtype, device=DEV) if bias else None
    poison_allocator(rows * c * x.element_size())
    y = hk.hadamard_classifier(x, c, scale, b, normalize=normalize, etf=True, backend="cuda")
    assert y.shape == (rows, c) and y.dtype == dtype and not y.isnan().any()
    ref = etf_reference(x.double(), c, scale.double(), None if b is None else b.double(), normalize)
    assert rel_err(y, ref) <= RTOL[dtype]
    cpu = ops.classifier_forward(x.cpu(), scale.cpu(), None if b is None else b.cpu(), c, normalize, 1e-12, True)
    assert rel_err(y.cpu(), cpu) <= 2 * RTOL[dtype]  # both within RTOL of the reference


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ETF_CASES, ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_classifier_etf_grad_matches_reference_and_cpu(normalize, case, dtype):
    n, c = case
    rows = rows_for(n, 9)
    x = make_input((rows, n), dtype, "sliced", DEV).requires_grad_()
    scale = scale_for(dtype).requires_grad_()
    b = torch.randn(c, dtype=dtype, device=DEV, requires_grad=True)
    g = torch.randn(rows, c, dtype=dtype, device=DEV)
    poison_allocator(rows * n * 8)
    y = hk.hadamard_classifier(x, c, scale, b, normalize=normalize, etf=True, backend="cuda")
    grads = torch.autograd.grad(y, (x, scale, b), g)
    leaves = [t.detach().double().requires_grad_() for t in (x, scale, b)]
    refs = torch.autograd.grad(etf_reference(leaves[0], c, leaves[1], leaves[2], normalize), leaves, g.double())
    for got, ref, leaf in zip(grads, refs, (x, scale, b)):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        assert not got.isnan().any()
        assert rel_err(got, ref) <= RTOL[dtype]
    cpu = ops.classifier_backward(g.cpu(), x.detach().cpu(), scale.detach().cpu(), normalize, 1e-12, True)
    got = ops.classifier_backward(g, x.detach(), scale.detach(), normalize, 1e-12, True)
    for a, w in zip(got, cpu):
        assert rel_err(a.cpu(), w) <= 2 * RTOL[dtype]


@pytest.mark.parametrize("case", [(8, 3), (16, 16), (64, 2)], ids=nc_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_classifier_etf_gradcheck_and_opcheck(normalize, case):
    n, c = case
    x = torch.randn(3, n, dtype=torch.float64, device=DEV, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, device=DEV, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, device=DEV, requires_grad=True)
    fn = lambda x, s, b: hk.hadamard_classifier(x, c, s, b, normalize=normalize, etf=True, backend="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, scale, b))
    torch.library.opcheck(ops.classifier_forward, (x.float(), scale.float(), b.float(), c, normalize, 1e-12, True))
    g = torch.randn(3, c, device=DEV)
    torch.library.opcheck(ops.classifier_backward, (g, x.detach().float(), scale.detach().float(), normalize, 1e-12,
                                                    True))  # fmt: skip


def test_classifier_etf_errors_on_cuda():
    x = torch.randn(2, 12, device=DEV)
    with pytest.raises(ValueError, match="simplex ETF"):
        ops.classifier_forward(x, torch.tensor(1.0, device=DEV), None, 4, True, 1e-12, True)  # N = 12
    with pytest.raises(ValueError, match="simplex ETF"):
        hk.hadamard_classifier(x[:, :8], 9, 1.0, etf=True, backend="cuda")  # C > N


# ---------------------------------------------------------------------------------------
# Bad input reaches the CUDA op with the same errors as on CPU


def test_errors_on_cuda():
    x = torch.randn(2, 8, device=DEV)
    with pytest.raises(ValueError, match="scale"):
        ops.classifier_forward(x, torch.tensor([1.0, 2.0], device=DEV), None, 4, True, 1e-12)
    with pytest.raises(ValueError, match="bias"):
        ops.classifier_forward(x, torch.tensor(1.0, device=DEV), torch.randn(3, device=DEV), 4, True, 1e-12)
    with pytest.raises(ValueError, match="exceeds"):
        ops.hadamard_transform(x, 2**20 + 1, 1.0)
    with pytest.raises(TypeError, match="float32"):
        ops.hadamard_transform(x.int(), 8, 1.0)
    with pytest.raises(ValueError, match="is on"):
        ops.classifier_forward(x, torch.tensor(1.0), None, 4, True, 1e-12)


# ---------------------------------------------------------------------------------------
# hadamard_transform_kn(_): the K * 2^k transforms (csrc/cuda/orders.cuh, one pass where the
# row fits in shared memory; the composed multi-pass path of ops_cuda.cu otherwise)

# (K, pow2, n): K = 1 (hk None) and K > 1, n = K * pow2 and padded n < K * pow2.
KN_ONE_PASS = [
    (1, 1024, 1000), (1, 2**15, 2**15), (12, 1, 12), (12, 4, 45), (12, 1024, 12 * 1024), (20, 256, 5120),
    (28, 512, 14336), (36, 64, 2000), (40, 1024, 40960), (60, 128, 60 * 128 - 7), (172, 64, 11008),
    (172, 256, 44032), (12, 4096, 3 * 4096 + 1),
]  # fmt: skip
# Composed (several passes): rows over 227 KB of accumulators, pow2 beyond the row tiles, K = 1
# with signs beyond 2^15, and the plain K = 1 transform over 2^15 (fwht.cuh's two passes).
KN_COMPOSED = [(40, 2048, 81920), (12, 2**16, 12 * 2**16 - 3), (1, 2**17, 2**17 - 5), (156, 1024, 156 * 1024)]


def kn_reference(x, hk, pow2, scale, pre, post):
    """scale * post . [(H_K kron H_pow2) @ pad(pre . x, K * pow2)][:n] in float64 over the last
    dim, from its definition Y = H_K X H_pow2 on the (K, pow2) view of the padded row."""
    n = x.shape[-1]
    K = 1 if hk is None else hk.shape[0]
    w = x.double() * (1 if pre is None else pre.double())
    w = torch.nn.functional.pad(w, (0, K * pow2 - n)).reshape(*x.shape[:-1], K, pow2)
    h_k = torch.ones(1, 1, dtype=torch.float64, device=x.device) if hk is None else hk.double()
    y = (h_k @ R.fwht_reference(w)).reshape(*x.shape[:-1], K * pow2)[..., :n]
    return scale * y * (1 if post is None else post.double())


def kn_args(K, n, dtype, signs, transpose=False):
    hk_ = None if K == 1 else orders.hadamard_k(K, torch.int8, DEV)
    if hk_ is not None and transpose:
        hk_ = hk_.T.contiguous()
    sign = lambda: (torch.randint(0, 2, (n,), device=DEV) * 2 - 1).to(dtype)  # noqa: E731
    return hk_, (sign() if signs else None), (sign() if signs else None)


def kn_id(case) -> str:
    return f"K{case[0]}-p{case[1]}-n{case[2]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("signs", [False, True], ids=["nosigns", "signs"])
@pytest.mark.parametrize("case", KN_ONE_PASS + KN_COMPOSED, ids=kn_id)
def test_kn_matches_reference(case, signs, dtype):
    K, pow2, n = case
    rows = rows_for(n, 37)
    x = torch.randn(rows, n, dtype=dtype, device=DEV)
    x0 = x.clone()
    hk_, pre, post = kn_args(K, n, dtype, signs, transpose=n % 2 == 1)
    poison_allocator(x.numel() * 8)
    y = ops.hadamard_transform_kn(x, hk_, pow2, 0.3, pre, post)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous() and torch.equal(x, x0)
    assert not y.isnan().any()
    ref = kn_reference(x, hk_, pow2, 0.3, pre, post)
    assert rel_err(y, ref) <= RTOL[dtype]
    # In place: the same values, written into x.
    ops.hadamard_transform_kn_(x, hk_, pow2, 0.3, pre, post)
    assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(20, 64, 1280), (12, 16, 190), (1, 512, 500)], ids=kn_id)
def test_kn_layouts_and_agrees_with_cpu(case, layout, dtype):
    K, pow2, n = case
    x = make_input((3, 5, n), dtype, layout, DEV)
    hk_, pre, post = kn_args(K, n, dtype, signs=True)
    y = ops.hadamard_transform_kn(x, hk_, pow2, 0.5, pre, post)
    assert y.is_contiguous() and rel_err(y, kn_reference(x, hk_, pow2, 0.5, pre, post)) <= RTOL[dtype]
    cpu = ops.hadamard_transform_kn(x.cpu(), None if hk_ is None else hk_.cpu(), pow2, 0.5,
                                    pre.cpu(), post.cpu())  # fmt: skip
    assert rel_err(y.cpu(), cpu) <= 2 * RTOL[dtype]


def test_kn_edge_shapes_and_determinism():
    hk_ = orders.hadamard_k(12, torch.int8, DEV)
    assert ops.hadamard_transform_kn(torch.randn(0, 48, device=DEV), hk_, 4, 1.0, None, None).shape == (0, 48)
    assert ops.hadamard_transform_kn(torch.randn(3, 0, device=DEV), hk_, 4, 1.0, None, None).shape == (3, 0)
    x = torch.randn(1000, 11008, device=DEV)
    h172 = orders.hadamard_k(172, torch.int8, DEV)
    assert torch.equal(ops.hadamard_transform_kn(x, h172, 64, 1.0, None, None),
                       ops.hadamard_transform_kn(x, h172, 64, 1.0, None, None))  # fmt: skip


def test_kn_inplace_refuses_non_contiguous():
    x = torch.randn(4, 96, device=DEV)[:, :48]
    with pytest.raises(ValueError, match="contiguous"):
        ops.hadamard_transform_kn_(x, orders.hadamard_k(12, torch.int8, DEV), 4, 1.0, None, None)


def test_kn_errors_on_cuda():
    x = torch.randn(2, 48, device=DEV)
    hk_ = orders.hadamard_k(12, torch.int8, DEV)
    with pytest.raises(ValueError, match="more than K"):
        ops.hadamard_transform_kn(x, hk_, 2, 1.0, None, None)
    with pytest.raises(ValueError, match="is on"):
        ops.hadamard_transform_kn(x, hk_.cpu(), 4, 1.0, None, None)
    with pytest.raises(ValueError, match="pre_signs"):
        ops.hadamard_transform_kn(x, hk_, 4, 1.0, torch.ones(47, device=DEV), None)
    with pytest.raises(TypeError, match="int8"):
        ops.hadamard_transform_kn(x, hk_.float(), 4, 1.0, None, None)


@pytest.mark.parametrize("case", [(12, 4, 45), (20, 8, 160), (1, 64, 60), (40, 2048, 81920)], ids=kn_id)
def test_kn_grad_and_gradcheck(case):
    """The backward is the op with H_K^T and the signs swapped (csrc/autograd.cpp): against the
    reference's autograd, and gradcheck in float64 (one case on the composed path)."""
    K, pow2, n = case
    hk_, pre, post = kn_args(K, n, torch.float64, signs=True)
    x = torch.randn(2, n, dtype=torch.float64, device=DEV, requires_grad=True)
    g = torch.randn(2, n, dtype=torch.float64, device=DEV)
    (gx,) = torch.autograd.grad(ops.hadamard_transform_kn(x, hk_, pow2, 0.7, pre, post), x, g)
    xr = x.detach().requires_grad_()
    (ref,) = torch.autograd.grad(kn_reference(xr, hk_, pow2, 0.7, pre, post), xr, g)
    assert rel_err(gx, ref) <= RTOL[torch.float64]
    fn = lambda t: ops.hadamard_transform_kn(t, hk_, pow2, 0.7, pre, post)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=n > 1000)


@pytest.mark.parametrize("case", [(12, 4, 45), (1, 64, 64)], ids=kn_id)
def test_opcheck_kn(case):
    K, pow2, n = case
    hk_, pre, post = kn_args(K, n, torch.float32, signs=True)
    x = torch.randn(3, n, device=DEV, requires_grad=True)
    torch.library.opcheck(ops.hadamard_transform_kn, (x, hk_, pow2, 0.5, pre, post))
    torch.library.opcheck(ops.hadamard_transform_kn_, (x.detach().clone(), hk_, pow2, 0.5, pre, post))


# ---------------------------------------------------------------------------------------
# hadamard_quantize: the fused rotate-and-quantise op (csrc/cuda/quantize.cuh, one pass where
# the row fits in shared memory; the composed path of ops_cuda.cu otherwise), against the CPU
# op (tests/test_quantize.py holds it to the float64 reference). Integer inputs and
# power-of-two scales make the transform exact, so codes and scales must be bit-equal whatever
# order the two kernels add in; NaN codes compare as NaN (the sign of a NaN is the hardware's).

QCODES = [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2]
# (K, pow2, n, group; 0: the row): one pass (K = 1 up to 2^15, K > 1 up to 40 * 2^10 and
# 172 * 256), then composed (rows over 227 KB, pow2 beyond the tiles, K = 1 beyond 2^15).
Q_ONE_PASS = [
    (1, 1, 1, 0), (1, 64, 60, 12), (1, 1024, 1024, 32), (1, 2**15, 2**15, 0), (12, 4, 45, 9), (12, 64, 768, 3),
    (20, 256, 5120, 128), (28, 512, 14336, 64), (40, 1024, 40960, 0), (172, 64, 11008, 43), (172, 256, 44032, 128),
]  # fmt: skip
Q_COMPOSED = [(40, 2048, 81920, 128), (12, 2**16, 12 * 2**16, 0), (1, 2**17, 2**17, 32)]


def q_id(case) -> str:
    return f"K{case[0]}-p{case[1]}-n{case[2]}-g{case[3] or 'row'}"


def qbits(q: torch.Tensor) -> torch.Tensor:
    """The codes' bytes; float8 NaN codes (either sign) as 0x7f."""
    b = q.view(torch.uint8).clone()
    if q.dtype != torch.int8:
        b[q.float().isnan()] = 0x7F
    return b


def assert_quantize_equal(q, s, qc, sc):
    assert q.shape == qc.shape and q.dtype == qc.dtype and s.shape == sc.shape and s.dtype == torch.float32
    assert torch.equal(qbits(q.cpu()), qbits(qc))
    assert torch.equal(s.cpu().view(torch.int32), sc.view(torch.int32))


@pytest.mark.parametrize("code", QCODES, ids=dtype_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("signs", [False, True], ids=["nosigns", "signs"])
@pytest.mark.parametrize("case", Q_ONE_PASS + Q_COMPOSED, ids=q_id)
def test_quantize_bit_equal_to_cpu(case, signs, dtype, code):
    K, pow2, n, g = case
    rows = rows_for(n, 37)
    x = torch.randint(-8, 9, (rows, n), device=DEV).to(dtype)
    hk_, pre, _ = kn_args(K, n, dtype, signs)
    poison_allocator(x.numel() * 8)
    q, s = ops.hadamard_quantize(x, hk_, pow2, 0.25, pre, code, g)
    assert q.is_contiguous() and q.shape == x.shape and s.shape == (rows, n // (g or n))
    qc, sc = ops.hadamard_quantize(x.cpu(), None if hk_ is None else hk_.cpu(), pow2, 0.25,
                                   None if pre is None else pre.cpu(), code, g)  # fmt: skip
    assert_quantize_equal(q, s, qc, sc)


@pytest.mark.parametrize("code", QCODES, ids=dtype_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", [(1, 1024, 1024, 32), (28, 32, 896, 64), (20, 16, 320, 0), (172, 64, 11008, 128)],
                         ids=q_id)  # fmt: skip
def test_quantize_random_inputs(case, dtype, code):
    """Random inputs: the transform rounds differently from the CPU kernel's, so scales agree
    to the accumulator's rounding and codes are the float64 transform's except near a boundary."""
    from test_quantize import acc_of, assert_codes_match

    K, pow2, n, g = case
    x = torch.randn(5, n, dtype=dtype, device=DEV)
    hk_ = None if K == 1 else orders.hadamard_k(K, torch.int8, DEV)
    q, s = ops.hadamard_quantize(x, hk_, pow2, 1.0, None, code, g)
    qc, sc = ops.hadamard_quantize(x.cpu(), None if hk_ is None else hk_.cpu(), pow2, 1.0, None, code, g)
    tol = RTOL[acc_of(dtype)]
    assert ((s.cpu().double() - sc.double()).abs() <= tol * sc.double().abs()).all()
    near = assert_codes_match(q.cpu(), s.cpu(), x.cpu(), code, g or None, K=None if K == 1 else K)
    assert near <= max(8, x.numel() // 50)
    assert int((qbits(q.cpu()) != qbits(qc)).sum()) <= max(8, x.numel() // 50)


@pytest.mark.parametrize("code", QCODES, ids=dtype_id)
def test_quantize_zeros_inf_nan(code):
    x = torch.randint(-8, 9, (6, 12 * 64), device=DEV).float()
    x[0] = 0.0
    x[1, 5] = float("inf")
    x[2, 7] = float("nan")
    x[3] = 0.0
    x[3, 1] = 2.0**-149  # amax / qmax underflows: scale 0, codes 0
    x[4, 3] = -float("inf")
    hk_ = orders.hadamard_k(12, torch.int8, DEV)
    q, s = ops.hadamard_quantize(x, hk_, 64, 1.0, None, code, 32)
    qc, sc = ops.hadamard_quantize(x.cpu(), hk_.cpu(), 64, 1.0, None, code, 32)
    assert_quantize_equal(q, s, qc, sc)
    assert (s[[0, 3]] == 0).all() and (q[[0, 3]].view(torch.uint8) == 0).all()
    assert torch.isinf(s[[1, 4]]).all() and torch.isnan(s[2]).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(20, 64, 1280, 64), (1, 512, 500, 0)], ids=q_id)
def test_quantize_layouts(case, layout):
    K, pow2, n, g = case
    x = make_input((3, 5, n), torch.float32, layout, DEV)
    (x if x._base is None else x._base).mul_(8).round_()  # integers (exact), in the layout
    hk_, pre, _ = kn_args(K, n, torch.float32, signs=True)
    q, s = ops.hadamard_quantize(x, hk_, pow2, 0.5, pre, torch.float8_e4m3fn, g)
    assert q.shape == x.shape and q.is_contiguous() and s.shape == (3, 5, n // (g or n))
    qc, sc = ops.hadamard_quantize(x.cpu(), None if hk_ is None else hk_.cpu(), pow2, 0.5, pre.cpu(),
                                   torch.float8_e4m3fn, g)  # fmt: skip
    assert_quantize_equal(q, s, qc, sc)
    q0, s0 = ops.hadamard_quantize(torch.empty(0, 4, n, device=DEV), hk_, pow2, 0.5, pre, torch.int8, g)
    assert q0.shape == (0, 4, n) and s0.shape == (0, 4, n // (g or n))


def test_fwht_quantize_backend_cuda():
    """fwht_quantize picks the CUDA kernel on a GPU ("auto") and agrees with the CPU backend."""
    from hadamard_kernels import quantize

    assert quantize._backends(torch.device(DEV))[0] == "cuda"
    x = torch.randint(-8, 9, (7, 11008), device=DEV).to(torch.bfloat16)
    d = hk.random_signs(11008, seed=3, device=DEV)
    for code in QCODES:
        q, s = hk.fwht_quantize(x, 2.0**-7, dtype=code, group_size=128, signs=d, backend="cuda")
        qa, sa = hk.fwht_quantize(x, 2.0**-7, dtype=code, group_size=128, signs=d)
        qc, sc = hk.fwht_quantize(x.cpu(), 2.0**-7, dtype=code, group_size=128, signs=d.cpu(), backend="cpu")
        assert_quantize_equal(q, s, qc, sc)
        assert_quantize_equal(qa, sa, qc, sc)
    q, s = hk.fwht_quantize(x.float(), dtype=torch.int8, backend="cuda")
    assert s.shape == (7, 1) and hk.dequantize(q, s).shape == x.shape


def test_quantize_errors_and_opcheck_on_cuda():
    x = torch.randn(2, 48, device=DEV)
    hk_ = orders.hadamard_k(12, torch.int8, DEV)
    with pytest.raises(ValueError, match="does not divide"):
        ops.hadamard_quantize(x, hk_, 4, 1.0, None, torch.int8, 5)
    with pytest.raises(TypeError, match="dtype must be int8"):
        ops.hadamard_quantize(x, hk_, 4, 1.0, None, torch.float16, 0)
    with pytest.raises(ValueError, match="is on"):
        ops.hadamard_quantize(x, hk_.cpu(), 4, 1.0, None, torch.int8, 0)
    torch.library.opcheck(ops.hadamard_quantize, (x, hk_, 4, 0.5, None, torch.float8_e4m3fn, 16))
