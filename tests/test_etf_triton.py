"""The simplex ETF head (issue 13) in the "triton" backend: ``classifier_forward_triton`` and
``classifier_backward_triton`` with ``etf=True`` (triton_kernels.py: the centring over the C
classes fused into the classifier kernels' epilogue and prologue), against the float64
reference ``hadamard_classifier_reference(..., etf=True)``, whose weight is the dense
``simplex_etf_matrix``. Without a GPU the kernels run in the Triton interpreter (conftest sets
TRITON_INTERPRET=1), which is slow: sizes stay small and each case is one call."""

import math

import pytest
import torch
from conftest import DTYPES, RTOL, dtype_id, rel_err

import hadamard_kernels as hk
from hadamard_kernels import reference

pytest.importorskip("triton")
tk = pytest.importorskip("hadamard_kernels.triton_kernels")

pytestmark = pytest.mark.triton

ops = torch.ops.hadamard_kernels

# (N, C): C = 2 and C = N; N below the 16-column block (zero padding); many rows a program; N
# folded onto the butterfly in one load and in several; C not a power of two; a block of 1024,
# more than one program's budget of 512 values a row (8 warps). test_shapes_take_every_path.
SHAPES = [(2, 2), (8, 3), (16, 16), (64, 10), (1024, 5), (1024, 600)]


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> str:
    if "triton" not in hk.available_backends(request.param):
        pytest.skip(f"no triton backend on {request.param} (CPU needs TRITON_INTERPRET=1)")
    return request.param


def reference_grads(x, scale, bias, g, num_classes, normalize, eps=1e-12):
    """The float64 reference's logits and (dL/dx, dL/dscale, dL/dbias) by autograd."""
    leaves = [t.detach().double().requires_grad_() for t in (x, scale, bias)]
    y = reference.hadamard_classifier_reference(
        leaves[0], num_classes, leaves[1], leaves[2], normalize=normalize, eps=eps, etf=True
    )
    y.backward(g.double())
    return y.detach(), [t.grad for t in leaves]


def test_shapes_take_every_path():
    """SHAPES cover the chunkings of block_config (forward: N folded onto BLOCK_T in chunks of
    IN_CHUNK; backward: u repeated over N in chunks of X_CHUNK) that the ETF sizes reach; C <=
    N gives C <= BLOCK_T, so the C classes are one chunk (OUT_CHUNK = G_CHUNK = BLOCK_T)."""
    seen = set()
    for n, c in SHAPES:
        block_t, in_chunk, out_chunk, rows, warps = tk.block_config(n, c, torch.float32, 2)
        assert out_chunk == block_t >= c and tk.block_config(c, n, torch.float32, 2)[1] == block_t
        seen.add("padded" if n < block_t else "folded" if in_chunk > block_t else "square")
        seen.add("several loads" if n > in_chunk else "one load")
        seen.add("rows" if rows > 1 else "one row")
        seen.add("wide" if warps > 4 else "4 warps")
        seen.add("all classes" if c == block_t else "masked classes")
    assert seen == {"padded", "folded", "square", "several loads", "one load", "rows", "one row", "wide",
                    "4 warps", "all classes", "masked classes"}  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_forward_backward_match_reference(device, dtype, normalize):
    """Logits and the three gradients, every shape, rows sliced from a wider tensor, one row
    all zero (its logits are the bias: the centring of zero is zero)."""
    t = RTOL[dtype]
    for n, c in SHAPES:
        x = torch.randn(6, n + 67, dtype=dtype, device=device)[:, 3 : 3 + n]
        x[3] = 0
        x.requires_grad_()
        scale = torch.tensor(1.7, dtype=dtype, device=device, requires_grad=True)
        bias = torch.randn(c, dtype=dtype, device=device, requires_grad=True)
        g = torch.randn(6, c, dtype=dtype, device=device)
        y = hk.hadamard_classifier(x, c, scale, bias, normalize=normalize, etf=True, backend="triton")
        assert y.shape == (6, c) and y.dtype == dtype
        assert torch.equal(y[3], bias.detach()), f"N={n} C={c}: a zero row gives the bias"
        gx, gs, gb = torch.autograd.grad(y, (x, scale, bias), g)
        ref, (rx, rs, rb) = reference_grads(x, scale, bias, g, c, normalize)
        rows = [0, 1, 2, 4, 5]
        assert rel_err(y, ref) < t, f"N={n} C={c}"
        assert rel_err(gx[rows], rx[rows]) < t, f"N={n} C={c}"
        if dtype != torch.float16:  # the zero row's alpha f u / eps overflows float16
            assert rel_err(gx[3], rx[3]) < t, f"N={n} C={c}: the zero row (clamped norm)"
        assert rel_err(gs, rs) < t, f"N={n} C={c}"
        assert rel_err(gb, rb) < t, f"N={n} C={c}"


def test_weight_is_the_simplex_etf(device):
    """The head's weight read off the identity (y = W x without normalisation): the dense
    simplex ETF, unit rows with pairwise cosine -1 / (C - 1)."""
    for n, c in [(8, 3), (16, 16)]:
        eye = torch.eye(n, dtype=torch.float64, device=device)
        w = hk.hadamard_classifier(eye, c, 1.0, normalize=False, etf=True, backend="triton").T
        assert rel_err(w, reference.simplex_etf_matrix(n, c, device=device)) < 1e-14
        gram = w @ w.T
        expected = torch.full((c, c), -1 / (c - 1), dtype=torch.float64, device=device).fill_diagonal_(1)
        assert torch.allclose(gram, expected, atol=1e-14)


def test_matches_cpu_backend_and_is_deterministic(device):
    x = torch.randn(33, 64, device=device, requires_grad=True)
    scale = torch.tensor(3.0, device=device, requires_grad=True)
    g = torch.randn(33, 10, device=device)
    runs = []
    for _ in range(2):
        y = hk.hadamard_classifier(x, 10, scale, etf=True, backend="triton")
        runs.append((y, *torch.autograd.grad(y, (x, scale), g)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    xc, sc = (t.detach().cpu().requires_grad_() for t in (x, scale))
    yc = hk.hadamard_classifier(xc, 10, sc, etf=True, backend="cpu")
    expected = (yc, *torch.autograd.grad(yc, (xc, sc), g.cpu()))
    for got, exp in zip(runs[0], expected):  # dL/dscale sums terms of both signs: atol
        assert torch.allclose(got.cpu(), exp, rtol=1e-5, atol=1e-5)


# The interpreter computes with NumPy, which warns about the overflow the kernel then redoes.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("magnitude", [3e38, 1e-25], ids=["overflow", "underflow"])
def test_rescaled_rows(device, magnitude):
    """float32 rows whose sum of squares over- or underflows are redone as x * 2^shift: the
    centring then acts on the rescaled block, forward and backward."""
    x = (torch.rand(3, 64, dtype=torch.float64) * 0.5 + 0.5) * (torch.randint(0, 2, (3, 64)) * 2 - 1)
    x = (x * magnitude).float().to(device).requires_grad_()
    scale = torch.tensor(2.5, device=device, requires_grad=True)
    g = torch.randn(3, 10, device=device)
    y = ops.classifier_forward_triton(x, scale, None, 10, True, 1e-30, True)
    gx, gs = torch.autograd.grad(y, (x, scale), g)
    # Reference on x / magnitude (the logits are scale invariant; dL/dx scales by 1 / magnitude).
    ref, (rx, rs, _) = reference_grads(x / magnitude, scale, torch.zeros(10), g, 10, True, 1e-30)
    assert rel_err(y, ref) < RTOL[torch.float32]
    assert rel_err(gx.double() * magnitude, rx) < RTOL[torch.float32]
    assert rel_err(gs, rs) < RTOL[torch.float32]


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_gradcheck(device, normalize):
    """First derivatives by the Triton backward kernel, second by the differentiable formula
    (ops.classifier_grads_differentiable), in float64, with one row in the clamped regime."""
    x = torch.randn(3, 4, dtype=torch.float64, device=device)
    x[2] *= 1e-3  # ||x|| < eps = 0.1, also after perturbation
    x.requires_grad_()
    scale = torch.tensor(0.8, dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, s, b):
        return hk.hadamard_classifier(x, 3, s, b, normalize=normalize, eps=0.1, etf=True, backend="triton")

    assert torch.autograd.gradcheck(fn, (x, scale, bias))
    assert torch.autograd.gradgradcheck(fn, (x, scale, bias))


def test_opcheck(device):
    x = torch.randn(3, 16, device=device)
    scale = torch.tensor(1.5, device=device)
    bias = torch.randn(5, device=device)
    g = torch.randn(3, 5, device=device)
    cases = [
        (ops.classifier_forward_triton, (x.requires_grad_(), scale.requires_grad_(), bias, 5, True, 1e-12, True)),
        (ops.classifier_forward_triton, (x.detach(), scale.detach(), None, 5, False, 1e-12, True)),
        (ops.classifier_backward_triton, (g, x.detach(), scale.detach(), True, 1e-12, True)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(device):
    def model(x, scale, bias):
        return hk.hadamard_classifier(torch.relu(x), 10, scale, bias, etf=True, backend="triton").square().sum()

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


@pytest.mark.parametrize("n,c", [(12, 4), (8, 1), (8, 9)], ids=["N12", "C1", "C_over_N"])
def test_size_errors(device, n, c):
    """N a power of two and 2 <= C <= N, in the public function, both ops and their fake
    kernels (meta tensors)."""
    match = rf"the simplex ETF head needs in_features N a power of two and 2 <= num_classes <= N.*N={n}, num_classes={c}"
    scale = torch.tensor(1.0, device=device)
    with pytest.raises(ValueError, match=match):
        hk.hadamard_classifier(torch.randn(2, n, device=device), c, scale, etf=True, backend="triton")
    for dev in (device, "meta"):
        x = torch.randn(2, n, device=dev)
        s = scale.to(dev)
        with pytest.raises(ValueError, match="classifier_forward_triton: " + match):
            ops.classifier_forward_triton(x, s, None, c, True, 1e-12, True)
        with pytest.raises(ValueError, match="classifier_backward_triton: " + match):
            ops.classifier_backward_triton(torch.randn(2, c, device=dev), x, s, True, 1e-12, True)
    # Without etf the same sizes are the fixed classifier's (C > N and any N allowed).
    y = ops.classifier_forward_triton(torch.randn(2, n, device=device), scale, None, c, True, 1e-12, False)
    assert y.shape == (2, c) and math.isfinite(y.abs().sum().item())
