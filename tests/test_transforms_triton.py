"""The "triton" backend of the K * 2^k transforms (transforms.py) and its ops
``hadamard_transform_kn_triton(_)`` (triton_kernels.py), against the float64 dense Kronecker
formula and the reference. Without a GPU the kernel runs in the Triton interpreter (conftest
sets TRITON_INTERPRET=1), which is slow: sizes stay small and each case is one call."""

import pytest
import torch
from conftest import DTYPES, RTOL, dtype_id, make_input, rel_err

import hadamard_kernels as hk
from hadamard_kernels import orders, transforms
from hadamard_kernels import reference as R

pytest.importorskip("triton")

pytestmark = pytest.mark.triton

ops = torch.ops.hadamard_kernels
PEERS = {12: hk.hadamard_transform_12N, 20: hk.hadamard_transform_20N, 28: hk.hadamard_transform_28N,
         40: hk.hadamard_transform_40N}  # fmt: skip
FAMILY_ORDERS = [("rotation", k) for k in orders.ORDERS] + [("fht", k) for k in orders.FHT_ORDERS]


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> str:
    if "triton" not in hk.available_backends(request.param):
        pytest.skip(f"no triton backend on {request.param} (CPU needs TRITON_INTERPRET=1)")
    return request.param


def dense(K: int, p: int, family: str = "rotation", device="cpu") -> torch.Tensor:
    """H_K kron H_p in float64 (H_1 = [[1]]): the formula of docs/orders.md as a matrix."""
    h_k = orders.hadamard_k(K, family=family) if K > 1 else torch.ones(1, 1, dtype=torch.float64)
    return torch.kron(h_k, R.hadamard_matrix(p)).to(device)


def dense_kn(x, K, p, scale, family="rotation", pre=None, post=None, hk_matrix=None):
    """scale * post . [(H_K kron H_p) @ pad(pre . x, K p)][:n] in float64, densely."""
    n = x.shape[-1]
    xd = x.double() * (1 if pre is None else pre.double())
    if hk_matrix is None:
        mat = dense(K, p, family, x.device)
    else:
        mat = torch.kron(hk_matrix.double().contiguous(), R.hadamard_matrix(p)).to(x.device)
    y = torch.nn.functional.pad(xd, (0, K * p - n)) @ mat.T
    return scale * y[..., :n] * (1 if post is None else post.double())


# ---------------------------------------------------------------------------------------
# Forward against the dense formula: every order, both families, the peers' padding


@pytest.mark.parametrize("fam", FAMILY_ORDERS + [("rotation", 1)], ids=lambda v: f"{v[0]}{v[1]}")
def test_every_order_matches_dense(device, fam):
    family, K = fam
    p = {12: 16, 20: 4, 28: 1, 40: 8, 36: 2, 60: 1, 172: 2, 1: 512}.get(K, 1)  # pow2 1 .. 512
    x = torch.randn(1 if K > 100 else 2, K * p, device=device)  # float32, exact to fp32 rounding
    y = hk.hadamard_transform_order(x, 0.3, K=K, family=family, backend="triton")
    assert y.dtype == torch.float32 and y.is_contiguous()
    assert rel_err(y, 0.3 * x.double() @ dense(K, p, family, device).T) <= RTOL[torch.float32]


@pytest.mark.parametrize("K", orders.FHT_ORDERS, ids=lambda k: f"K{k}")
def test_peer_padding_rule(device, K):
    # n = K and 2K are padded to 4K (the peer's quirk), non-multiples to K * next_pow2.
    for n in (1, K, 2 * K, 3 * K + 5, 8 * K, 40 * K + 7):
        x = torch.randn(2, n, dtype=torch.float64, device=device)
        y = PEERS[K](x, 0.25, backend="triton")
        M = orders.fht_padded_size(n, K)
        assert rel_err(y, dense_kn(x, K, M // K, 0.25, "fht")) <= RTOL[torch.float64], n


@pytest.mark.parametrize("n,K,p", [(5, 1, 8), (16, 1, 16), (50, 12, 8), (97, 20, 8), (3, 40, 1), (100, 60, 2)])
def test_op_padding_and_general_diagonals(device, n, K, p):
    """The op takes any diagonals (the public API passes signs) and any n <= K * pow2, with H_K
    row-major or as a transposed view (as the backward passes H_K^T)."""
    x = torch.randn(2, n, dtype=torch.float64, device=device)
    pre, post = torch.randn(n, dtype=torch.float64, device=device), torch.randn(n, dtype=torch.float64, device=device)
    h = orders.hadamard_k(K, torch.int8).to(device) if K > 1 else None
    for a, b in ((None, None), (pre, None), (None, post), (pre, post)):
        y = ops.hadamard_transform_kn_triton(x, h, p, 0.7, a, b)
        assert rel_err(y, dense_kn(x, K, p, 0.7, pre=a, post=b)) <= RTOL[torch.float64]
    if h is not None:
        y = ops.hadamard_transform_kn_triton(x, h.mT, p, 0.7, pre, post)
        assert rel_err(y, dense_kn(x, K, p, 0.7, pre=pre, post=post, hk_matrix=h.mT.cpu())) <= RTOL[torch.float64]


@pytest.mark.parametrize("transpose", [False, True], ids=["fwd", "transpose"])
@pytest.mark.parametrize("fam", [("rotation", 20), ("rotation", 44), ("fht", 28), ("rotation", 1)],
                         ids=lambda v: f"{v[0]}{v[1]}")  # fmt: skip
def test_signs_transpose_scale(device, fam, transpose):
    family, K = fam
    p = 8
    n = K * p
    x = torch.randn(2, n, dtype=torch.float64, device=device)
    d = hk.random_signs(n, seed=7, dtype=torch.float64, device=device)
    y = hk.hadamard_transform_order(x, 0.2, K=K, family=family, signs=d, transpose=transpose, backend="triton")
    mat = dense(K, p, family, device) @ torch.diag(d)  # H D
    assert rel_err(y, 0.2 * x @ (mat if transpose else mat.T)) <= RTOL[torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dtypes(device, dtype):
    # 7 rows: programs of several rows (n = 12 * 16: 4 rows each) with a partial last one.
    for n, K in ((12 * 16, None), (20 * 16, None), (100, 1)):
        x = torch.randn(7, n, dtype=dtype, device=device)
        d = hk.random_signs(n, seed=3, dtype=dtype, device=device)
        if K == 1:  # fwht_ of a non-power of two: padded to 128
            y = hk.fwht_(x.clone(), n**-0.5, backend="triton")
            ref = R.fwht_reference(x.double(), n**-0.5)
        else:
            y = hk.hadamard_transform_order(x, n**-0.5, signs=d, backend="triton")
            ref = R.hadamard_transform_order_reference(x.double(), n**-0.5, signs=d.double())
        assert y.dtype == dtype and y.shape == x.shape
        assert rel_err(y, ref) <= RTOL[dtype], n


@pytest.mark.parametrize("layout", ["sliced", "transposed", "expanded", "repeated"])
def test_noncontiguous_input(device, layout):
    x = make_input((3, 2, 28 * 8), torch.float32, layout, device)
    y = hk.hadamard_transform_28N(x, 0.5, backend="triton")
    assert y.is_contiguous()
    assert rel_err(y, R.hadamard_transform_kn_reference(x.double(), 28, 0.5)) <= RTOL[torch.float32]


@pytest.mark.parametrize("lead", [(), (0,), (2, 0, 4), (3, 5)], ids=lambda s: f"lead{list(s)}")
def test_batch_shapes(device, lead):
    x = torch.randn(*lead, 12 * 4, dtype=torch.float64, device=device)
    y = hk.hadamard_transform_order(x, 2.0, backend="triton")
    assert y.shape == x.shape
    if x.numel():
        assert rel_err(y, R.hadamard_transform_order_reference(x, 2.0)) <= RTOL[torch.float64]


def test_matches_cpu_backend_and_is_deterministic(device):
    x = torch.randn(3, 40 * 16, device=device)
    d = hk.random_signs(40 * 16, seed=1, device=device)
    a = hk.hadamard_transform_order(x, 0.1, signs=d, backend="triton")
    assert torch.equal(a, hk.hadamard_transform_order(x, 0.1, signs=d, backend="triton"))
    c = hk.hadamard_transform_order(x.cpu(), 0.1, signs=d.cpu(), backend="cpu")
    assert torch.allclose(a.cpu(), c, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# In place


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=dtype_id)
def test_inplace(device, dtype):
    for fn, n in (("fwht_", 3), ("fwht_", 256), ("order_", 28 * 16), ("order_", 60 * 2)):
        x = torch.randn(3, n, dtype=dtype, device=device)
        d = hk.random_signs(n, seed=9, dtype=dtype, device=device)
        x0 = x.clone()
        ptr, version = x.data_ptr(), x._version
        if fn == "fwht_":
            out = hk.fwht_(x, 0.5, backend="triton")
            want = R.fwht_reference(x0.double(), 0.5)
        else:
            out = hk.hadamard_transform_order_(x, 0.1, signs=d, transpose=n == 120, backend="triton")
            want = R.hadamard_transform_order_reference(x0.double(), 0.1, signs=d.double(), transpose=n == 120)
        assert out is x and x.data_ptr() == ptr and x._version > version
        assert rel_err(x, want) <= RTOL[dtype], (fn, n)


def test_inplace_view_of_larger_tensor(device):
    base = torch.randn(6, 20 * 4, dtype=torch.float64, device=device)
    before = base.clone()
    hk.hadamard_transform_order_(base[2:4], backend="triton")
    assert torch.equal(base[:2], before[:2]) and torch.equal(base[4:], before[4:])
    assert rel_err(base[2:4], R.hadamard_transform_order_reference(before[2:4])) <= RTOL[torch.float64]


@pytest.mark.parametrize("layout", ["sliced", "transposed", "expanded"])
def test_inplace_refuses_noncontiguous(device, layout):
    x = make_input((4, 24), torch.float32, layout, device)
    before = x.clone()
    with pytest.raises(ValueError, match="must be contiguous"):
        hk.hadamard_transform_order_(x, backend="triton")
    with pytest.raises(ValueError, match="must be contiguous and without overlapping"):
        ops.hadamard_transform_kn_triton_(x, orders.hadamard_k(12, torch.int8).to(device), 2, 1.0, None, None)
    assert torch.equal(x, before)


def test_inplace_autograd(device):
    n = 20 * 8
    d = hk.random_signs(n, seed=1, dtype=torch.float64, device=device)
    # A leaf that requires grad is refused, as by torch's in-place ops; under no_grad it is not.
    leaf = torch.randn(3, n, dtype=torch.float64, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        hk.hadamard_transform_order_(leaf, backend="triton")
    with torch.no_grad():
        hk.fwht_(leaf, backend="triton")
    # A non-leaf's history is rebased onto the transform: the gradient is the transposed one.
    g = torch.randn(3, n, dtype=torch.float64, device=device)
    for fn, ref in (
        (lambda t: hk.hadamard_transform_order_(t * 2.0, 0.3, signs=d, backend="triton"),
         lambda t: R.hadamard_transform_order_reference(t * 2.0, 0.3, signs=d)),
        (lambda t: hk.fwht_(t * 2.0, 0.3, backend="triton"), lambda t: R.fwht_reference(t * 2.0, 0.3)),
    ):  # fmt: skip
        x = leaf.detach().requires_grad_()
        (gx,) = torch.autograd.grad(fn(x), x, g)
        xr = leaf.detach().requires_grad_()
        (want,) = torch.autograd.grad(ref(xr), xr, g)
        assert rel_err(gx, want) <= RTOL[torch.float64]
    # A view of a non-leaf: torch rebases the base's history (CopySlices).
    a = torch.randn(4, 12 * 4, dtype=torch.float64, device=device, requires_grad=True)
    base = a * 1.0
    hk.hadamard_transform_order_(base[1:3], 0.5, backend="triton")
    g = torch.randn(4, 48, dtype=torch.float64, device=device)
    (ga,) = torch.autograd.grad(base, a, g)
    want = g.clone()
    want[1:3] = R.hadamard_transform_order_reference(g[1:3], 0.5, transpose=True)
    assert rel_err(ga, want) <= RTOL[torch.float64]
    # A tensor saved before the call makes backward raise (x's version moved).
    x = leaf.detach().requires_grad_() * 1.0
    y = x * x
    hk.fwht_(x, backend="triton")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_inplace_op_refuses_autograd(device):
    # torch.library gives a mutating op no autograd formula: the op refuses rather than let
    # autograd take it for the identity.
    h = orders.hadamard_k(20, torch.int8).to(device)
    y = torch.randn(3, 40, device=device, requires_grad=True) * 1.0
    with pytest.raises(RuntimeError, match="has no autograd formula"):
        ops.hadamard_transform_kn_triton_(y, h, 2, 1.0, None, None)
    with torch.no_grad():
        ops.hadamard_transform_kn_triton_(y, h, 2, 1.0, None, None)


# ---------------------------------------------------------------------------------------
# Gradients


# fast_mode (random projections of the Jacobians): the full check costs ~100 s in the interpreter.
@pytest.mark.parametrize("K,family,n", [(20, "rotation", 40)])
def test_gradcheck_nonsymmetric(device, K, family, n):
    x = torch.randn(1, n, dtype=torch.float64, device=device, requires_grad=True)
    d = hk.random_signs(n, seed=4, dtype=torch.float64, device=device)
    for transpose in (False, True):
        kw = dict(K=K, family=family, signs=d, transpose=transpose, backend="triton")
        f = lambda t: hk.hadamard_transform_order(t, 0.3, **kw)  # noqa: B023,E731
        assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)
        # The gradient is the transposed transform (H_K is not symmetric: not the forward).
        g = torch.randn(1, n, dtype=torch.float64, device=device)
        (gx,) = torch.autograd.grad(f(x), x, g)
        back = hk.hadamard_transform_order(g, 0.3, **{**kw, "transpose": not transpose})
        assert rel_err(gx, back) <= RTOL[torch.float64]
        assert rel_err(gx, f(g)) > 0.1


def test_peer_grad_and_padded_gradcheck(device):
    x = torch.randn(2, 47, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(2, 47, dtype=torch.float64, device=device)
    (gx,) = torch.autograd.grad(hk.hadamard_transform_40N(x, 0.5, backend="triton"), x, g)
    xr = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(R.hadamard_transform_kn_reference(xr, 40, 0.5), xr, g)
    assert rel_err(gx, want) <= RTOL[torch.float64]
    h = orders.hadamard_k(12, torch.int8).to(device)
    pre, post = torch.randn(21, dtype=torch.float64, device=device), torch.randn(21, dtype=torch.float64, device=device)
    x = torch.randn(2, 21, dtype=torch.float64, device=device, requires_grad=True)
    f = lambda t: ops.hadamard_transform_kn_triton(t, h, 2, 0.4, pre, post)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


def test_signs_requiring_grad_are_refused(device):
    x = torch.randn(2, 24, device=device, requires_grad=True)
    d = torch.ones(24, device=device, requires_grad=True)
    with pytest.raises(ValueError, match="signs are constants"):
        hk.hadamard_transform_order(x, signs=d, backend="triton")
    with pytest.raises(RuntimeError, match="sign vectors are constants"):
        ops.hadamard_transform_kn_triton(x, orders.hadamard_k(12, torch.int8).to(device), 2, 1.0, d, None)


# ---------------------------------------------------------------------------------------
# Backend choice, limits and errors


def test_backend_choice(device, monkeypatch):
    x = torch.randn(2, 48, device=device)
    assert transforms._resolve("auto", x, "f") == ("cpu" if device == "cpu" else "cuda" if "CUDA" in
                                                   transforms._KN_DEVICES else "triton")  # fmt: skip
    assert transforms._resolve("triton", x, "f") == "triton"
    assert transforms._backends(torch.device("meta")) == ("reference",)
    # "cuda" is offered where the extension has the CUDA kernel of the kn ops, and only there.
    # (the filter is ops._backends_with_kernels, which asks ops.available_backends)
    monkeypatch.setattr(hk.ops, "available_backends", lambda dev: ("cuda", "triton", "reference"))
    for keys, want in ((frozenset({"CPU"}), ("triton", "reference")),
                       (frozenset({"CPU", "CUDA"}), ("cuda", "triton", "reference"))):  # fmt: skip
        monkeypatch.setattr(transforms, "_KN_DEVICES", keys)
        assert transforms._backends(torch.device("cuda")) == want


def test_size_limits_name_the_alternatives(device):
    # A row must fit in one program: max(16, next_pow2(chunks)) * max(16, pow2) <= 2^15.
    with pytest.raises(ValueError, match=r"16 x 4096 = 65536 values per row, more than 32768 \(2\^15\).*backend='cpu'"):
        hk.hadamard_transform_order(torch.randn(1, 12 * 4096, device=device), backend="triton")
    with pytest.raises(ValueError, match=r"1 x 65536 = 65536 values per row"):
        hk.fwht_(torch.randn(1, 2**15 + 1, device=device), backend="triton")
    # the largest blocks still run: 256 x 128 (K = 172) and 2^15 (fwht_)
    for n, call in ((172 * 128, lambda t: hk.hadamard_transform_order(t, backend="triton")),
                    (2**15, lambda t: hk.fwht_(t.clone(), backend="triton"))):  # fmt: skip
        x = torch.randn(1, n, device=device)
        ref = R.hadamard_transform_order_reference(x.double()) if n != 2**15 else R.fwht_reference(x.double())
        assert rel_err(call(x), ref) <= RTOL[torch.float32]


H12 = orders.hadamard_k(12, torch.int8)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.randn(2, 24), H12.float(), 2, 1.0, None, None), TypeError, "hk must be an int8"),
        ((torch.randn(2, 24), H12[:11], 2, 1.0, None, None), ValueError, "hk must be a square"),
        ((torch.randn(2, 24), torch.ones(257, 257, dtype=torch.int8), 1, 1.0, None, None), ValueError, "<= 256"),
        ((torch.randn(2, 25), H12, 2, 1.0, None, None), ValueError, r"more than K \* pow2"),
        ((torch.randn(2, 24), H12, 3, 1.0, None, None), ValueError, "pow2 must be a power of two"),
        ((torch.randn(2, 24), H12, 2, 1.0, torch.ones(23), None), ValueError, "pre_signs must have shape"),
        ((torch.randn(2, 24), H12, 2, 1.0, None, torch.ones(24, dtype=torch.int32)), TypeError, "post_signs must be"),
        ((torch.ones(2, 24, dtype=torch.int32), H12, 2, 1.0, None, None), TypeError, "x must be float32"),
        ((torch.randn(2, 24, dtype=torch.float64), H12, 2, 1e-300, None, None), ValueError, "scale=1e-300"),
    ],
)
def test_op_errors(device, args, exc, match):
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(exc, match=match):
        ops.hadamard_transform_kn_triton(*args)


def test_public_errors(device):
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available"):
        hk.hadamard_transform_order(torch.randn(48, device="meta"), backend="cpu")
    with pytest.raises(ValueError, match="hk is on meta"):
        ops.hadamard_transform_kn_triton(torch.randn(2, 24, device=device), H12.to("meta"), 2, 1.0, None, None)


# ---------------------------------------------------------------------------------------
# torch.library registration and torch.compile


def test_opcheck(device):
    h = orders.hadamard_k(20, torch.int8).to(device)
    x = torch.randn(3, 2, 33, dtype=torch.float64, device=device)
    pre = torch.randn(33, dtype=torch.float64, device=device)
    post = hk.random_signs(33, seed=1, dtype=torch.float64, device=device)
    torch.library.opcheck(ops.hadamard_transform_kn_triton, (x.requires_grad_(), h, 2, 0.5, pre, post))
    torch.library.opcheck(ops.hadamard_transform_kn_triton, (x.detach(), None, 64, 0.5, None, None))
    torch.library.opcheck(ops.hadamard_transform_kn_triton_, (x.detach().clone(), h.mT, 2, 0.5, pre, None))


@pytest.mark.slow
def test_compile_fullgraph(device):
    n = 28 * 16
    d = hk.random_signs(n, seed=0, device=device)

    def f(x):
        y = hk.hadamard_transform_order(x.relu(), n**-0.5, signs=d, backend="triton")
        z = hk.hadamard_transform_order_(y * 2.0, 0.5, transpose=True, backend="triton")  # grad: out of place + copy_
        return hk.fwht_(z[..., :256].detach().contiguous(), backend="triton").sum(-1) + z.square().sum(-1)

    x = torch.randn(4, n, device=device, requires_grad=True)
    xc = x.detach().clone().requires_grad_()
    g = torch.randn(4, device=device)
    (gx,) = torch.autograd.grad(f(x), x, g)
    yc = torch.compile(f, fullgraph=True)(xc)
    (gxc,) = torch.autograd.grad(yc, xc, g)
    assert rel_err(yc, f(x)) <= RTOL[torch.float32]
    assert rel_err(gxc, gx) <= RTOL[torch.float32]
