"""hadamard_kernels.transforms: transforms of order K * 2^k (peer drop-ins and the general
entry), randomised, transposed and in place, and the ops hadamard_transform_kn(_), against
the float64 reference and the dense Kronecker formula."""

import pytest
import torch
from conftest import DTYPES, LAYOUTS, RTOL, dtype_id, make_input, rel_err

import hadamard_kernels as hk
from hadamard_kernels import orders
from hadamard_kernels import reference as R

ops = torch.ops.hadamard_kernels

BACKENDS = ["cpu", "reference", "auto"]
PEERS = {12: hk.hadamard_transform_12N, 20: hk.hadamard_transform_20N, 28: hk.hadamard_transform_28N,
         40: hk.hadamard_transform_40N}  # fmt: skip
FAMILY_ORDERS = [("rotation", k) for k in orders.ORDERS] + [("fht", k) for k in orders.FHT_ORDERS]


def fam_id(v) -> str:
    return f"{v[0]}{v[1]}"


def dense(K: int, p: int, family: str = "rotation") -> torch.Tensor:
    """H_K kron H_p in float64: the formula of docs/orders.md written out as a matrix."""
    return torch.kron(orders.hadamard_k(K, family=family), R.hadamard_matrix(p))


def dense_kn(x, K, p, scale, family="rotation", pre=None, post=None):
    """scale * post . [(H_K kron H_p) @ pad(pre . x, K p)][:n] in float64, densely."""
    n = x.shape[-1]
    xd = x.double() * (1 if pre is None else pre.double())
    y = torch.nn.functional.pad(xd, (0, K * p - n)) @ dense(K, p, family).T
    return scale * y[..., :n] * (1 if post is None else post.double())


def order_split(n: int):
    return orders.split_order(n)


# ---------------------------------------------------------------------------------------
# Forward: every order of both families, against the dense formula


@pytest.mark.parametrize("p", [1, 2, 8, 64], ids=lambda p: f"p{p}")
@pytest.mark.parametrize("fam", FAMILY_ORDERS, ids=fam_id)
def test_order_matches_dense(fam, p):
    family, K = fam
    x = torch.randn(3, K * p, dtype=torch.float64)
    y = hk.hadamard_transform_order(x, 0.3, K=K, family=family, backend="cpu")
    assert rel_err(y, 0.3 * x @ dense(K, p, family).T) <= RTOL[torch.float64]


@pytest.mark.parametrize("n", [12 * 1024, 28 * 512, 172 * 64, 5120, 4096, 40 * 256, 1], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_order_picks_split_and_matches_reference(backend, n):
    x = torch.randn(2, n, dtype=torch.float64)
    y = hk.hadamard_transform_order(x, backend=backend)
    assert rel_err(y, R.hadamard_transform_order_reference(x)) <= RTOL[torch.float64]


def test_order_explicit_k20_for_40n_is_quip_split():
    x = torch.randn(2, 40 * 8, dtype=torch.float64)
    y20 = hk.hadamard_transform_order(x, K=20)
    assert rel_err(y20, x @ dense(20, 16).T) <= RTOL[torch.float64]
    assert rel_err(y20, hk.hadamard_transform_order(x)) > 0.1  # the default split is 40 * 8


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [12 * 16, 20 * 256, 172 * 64, 156 * 2, 36 * 1024], ids=lambda n: f"n{n}")
def test_order_dtypes(n, dtype):
    x = torch.randn(4, n, dtype=dtype)
    y = hk.hadamard_transform_order(x, n**-0.5)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    ref = R.hadamard_transform_order_reference(x.double(), n**-0.5)
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [12, 20 * 4, 28 * 32, 60 * 16], ids=lambda n: f"n{n}")
def test_order_layouts(n, layout):
    x = make_input((3, 5, n), torch.float32, layout)
    y = hk.hadamard_transform_order(x, 0.5, family="rotation")
    assert y.is_contiguous()
    assert rel_err(y, R.hadamard_transform_order_reference(x.double(), 0.5)) <= RTOL[torch.float32]


@pytest.mark.parametrize("lead", [(), (0,), (1,), (3, 5), (2, 0, 4), (1000,)], ids=lambda s: f"lead{list(s)}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_order_batch_shapes(backend, lead):
    x = torch.randn(*lead, 44 * 4, dtype=torch.float64)
    y = hk.hadamard_transform_order(x, 2.0, backend=backend)
    assert y.shape == x.shape
    if x.numel():
        assert rel_err(y, R.hadamard_transform_order_reference(x, 2.0)) <= RTOL[torch.float64]


def test_two_runs_identical_and_backends_agree():
    x = torch.randn(64, 108 * 32)
    a, b = hk.hadamard_transform_order(x), hk.hadamard_transform_order(x)
    assert torch.equal(a, b)
    assert rel_err(a, hk.hadamard_transform_order(x, backend="reference")) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# The peer's four functions: its matrices and padding rule


def peer_sizes(K: int) -> list[int]:
    """n = 1, below K, K and 2K (padded to 4K), non-multiples, exact multiples, the peer's max."""
    return [1, K - 1, K, K + 1, 2 * K, 3 * K + 5, 4 * K, 4 * K + 1, 8 * K, 100 * K + 7, 1024 * K]


@pytest.mark.parametrize("K", orders.FHT_ORDERS, ids=lambda k: f"K{k}")
def test_peer_padding_rule(K):
    for n in peer_sizes(K):
        x = torch.randn(2, n, dtype=torch.float64)
        y = PEERS[K](x, 0.25)
        M = orders.fht_padded_size(n, K)
        assert rel_err(y, dense_kn(x, K, M // K, 0.25, "fht")) <= RTOL[torch.float64], n
        assert rel_err(y, R.hadamard_transform_kn_reference(x, K, 0.25)) <= RTOL[torch.float64], n


@pytest.mark.parametrize("K", orders.FHT_ORDERS, ids=lambda k: f"K{k}")
def test_peer_n_equals_k_is_padded_not_exact(K):
    # The peer pads n = K and 2K to 4K: not the exact H_K transform (docs/orders.md).
    x = torch.randn(3, K, dtype=torch.float64)
    y = PEERS[K](x)
    assert rel_err(y, dense_kn(x, K, 4, 1.0, "fht")) <= RTOL[torch.float64]
    assert rel_err(y, x @ orders.hadamard_k(K, family="fht").T) > 0.1


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("K", orders.FHT_ORDERS, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_peer_dtypes(backend, K, dtype):
    for n in (K * 64, 5 * K + 3):
        x = torch.randn(3, n, dtype=dtype)
        y = PEERS[K](x, n**-0.5, backend=backend)
        assert y.dtype == dtype and y.shape == x.shape
        assert rel_err(y, R.hadamard_transform_kn_reference(x.double(), K, n**-0.5)) <= RTOL[dtype]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_peer_layouts(layout):
    x = make_input((4, 3, 20 * 8 + 3), torch.float32, layout)
    y = hk.hadamard_transform_20N(x, 0.5)
    assert rel_err(y, R.hadamard_transform_kn_reference(x.double(), 20, 0.5)) <= RTOL[torch.float32]


# ---------------------------------------------------------------------------------------
# The op itself: padding with signs on both sides (the general schema)


@pytest.mark.parametrize("n,K,p", [(5, 1, 8), (16, 1, 16), (50, 12, 8), (97, 20, 8), (28 * 4, 28, 4), (3, 40, 1)])
def test_op_padding_and_signs_match_dense(n, K, p):
    x = torch.randn(3, n, dtype=torch.float64)
    pre, post = hk.random_signs(n, seed=1, dtype=torch.float64), hk.random_signs(n, seed=2, dtype=torch.float64)
    h = orders.hadamard_k(K, torch.int8, family="rotation") if K > 1 else None
    for a, b in ((None, None), (pre, None), (None, post), (pre, post)):
        y = ops.hadamard_transform_kn(x, h, p, 0.7, a, b)
        assert rel_err(y, dense_kn(x, K, p, 0.7, pre=a, post=b)) <= RTOL[torch.float64]


# The K-point products of csrc/cpu/orders.h: the four-Russians one (K % 4 == 0, chunks of
# whole cache lines: p >= 16 floats / 8 doubles), the plain one (shorter chunks) and, on whole
# rows of chunks of whole vectors, the Paley II one (csrc/cpu/paley.h: the rotation family's
# H_28 and H_36), with partial groups of 4 chunks (n < K p), a last vector cut short, and
# every dtype.
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "n,K,p",
    [(12 * 64, 12, 64), (5 * 32 + 3, 12, 32), (20 * 16 - 1, 20, 16), (172 * 16, 172, 16), (97 * 16 + 5, 172, 16),
     (40 * 8 + 1, 40, 16), (1, 12, 64), (28 * 8, 28, 8), (28 * 32, 28, 32), (28 * 16 - 3, 28, 16),
     (36 * 16, 36, 16), (36 * 4, 36, 4)],
)  # fmt: skip
def test_op_k_point_products_match_dense(n, K, p, dtype):
    x = torch.randn(4, n, dtype=dtype)
    pre, post = hk.random_signs(n, seed=4, dtype=dtype), hk.random_signs(n, seed=5, dtype=dtype)
    h = orders.hadamard_k(K, torch.int8, family="rotation")
    for a, b in ((None, None), (pre, post)):
        y = ops.hadamard_transform_kn(x, h, p, 0.7, a, b)
        assert y.dtype == dtype
        assert rel_err(y, dense_kn(x, K, p, 0.7, pre=a, post=b)) <= RTOL[dtype]


# K = 12 takes the product of a Williamson-type matrix W equivalent to H_12 (csrc/cpu/order12.h:
# H = signed permutations of W, found by a search and folded into the chunks). Any Hadamard
# matrix of order 12 has such a map, found anew for each matrix; a +-1 matrix that is not
# Hadamard has none and takes the four-Russians product.
def _signed_equivalent(h: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = h.shape[0]
    rows, cols = torch.randperm(k, generator=g), torch.randperm(k, generator=g)
    d1, d2 = (torch.randint(0, 2, (k, 1), generator=g) * 2 - 1 for _ in range(2))
    return (d1 * h[rows][:, cols] * d2.T).to(torch.int8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("p", [8, 16, 64], ids=lambda p: f"p{p}")
@pytest.mark.parametrize("seed", range(4))
def test_op_order12_equivalents_match_dense(seed, p, dtype):
    family = ("rotation", "fht")[seed % 2]
    h = _signed_equivalent(orders.hadamard_k(12, torch.int64, family=family), seed)
    x = torch.randn(3, 12 * p, dtype=dtype)
    pre, post = hk.random_signs(12 * p, seed=6, dtype=dtype), hk.random_signs(12 * p, seed=7, dtype=dtype)
    for a, b in ((None, None), (pre, None), (None, post)):
        y = ops.hadamard_transform_kn(x, h, p, 0.7, a, b)
        want = 0.7 * (x.double() * (1 if a is None else a.double())) @ torch.kron(h.double(), R.hadamard_matrix(p)).T
        assert rel_err(y, want * (1 if b is None else b.double())) <= RTOL[dtype]


def test_op_order12_non_hadamard_matrix_takes_the_general_product():
    h = orders.hadamard_k(12, torch.int8).clone()
    h[3, 5] = -h[3, 5]  # still +-1, no longer Hadamard: no Williamson map exists
    x = torch.randn(2, 12 * 64, dtype=torch.float64)
    y = ops.hadamard_transform_kn(x, h, 64, 1.0, None, None)
    assert rel_err(y, x @ torch.kron(h.double(), R.hadamard_matrix(64)).T) <= RTOL[torch.float64]


# H_28 and H_36 of the rotation family take the Paley II product (csrc/cpu/paley.h) only when hk is
# exactly that matrix: a signed permutation of it (still Hadamard) takes the four-Russians one,
# and so does the transpose of the fht family's (Williamson) H_28.
@pytest.mark.parametrize("K", [28, 36])
def test_op_paley_matrix_variants_take_the_general_product(K):
    h = orders.hadamard_k(K, torch.int64)
    x = torch.randn(3, K * 16, dtype=torch.float64)
    variants = [h, _signed_equivalent(h, K).long()]
    if K == 28:
        variants.append(orders.hadamard_k(K, torch.int64, family="fht").T)
    for hv in (v.contiguous() for v in variants):
        y = ops.hadamard_transform_kn(x, hv.to(torch.int8), 16, 0.5, None, None)
        assert rel_err(y, 0.5 * x @ torch.kron(hv.double(), R.hadamard_matrix(16)).T) <= RTOL[torch.float64]


@pytest.mark.parametrize("K,p", [(12, 64), (20, 16), (28, 512), (36, 16), (12, 2)], ids=lambda v: str(v))
def test_op_one_infinite_input_gives_infinite_outputs(K, p):
    # Every output is a sum in which each input enters once (no inf - inf): a single inf at
    # column j gives scale * H[:, j] * inf, as the dense product does, on every K-point
    # product (order 12's Williamson form, four Russians, Paley II for 28 and 36, the plain
    # one for short chunks).
    h = orders.hadamard_k(K, torch.int8)
    dense_m = torch.kron(h.double(), R.hadamard_matrix(p))
    cols = torch.randint(0, K * p, (4,)).tolist()
    x = torch.randn(4, K * p)
    x[torch.arange(4), cols] = torch.tensor([float("inf"), float("-inf"), float("inf"), float("-inf")])
    y = ops.hadamard_transform_kn(x, h, p, 0.5, None, None)
    for r, j in enumerate(cols):
        assert torch.equal(y[r].double(), x[r, j].double() * dense_m[:, j]), f"row {r}"


def test_op_general_diagonals():
    # The op takes any diagonal, not only +-1 (the public API passes signs).
    x = torch.randn(2, 24, dtype=torch.float64)
    pre, post = torch.randn(24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    y = ops.hadamard_transform_kn(x, orders.hadamard_k(12, torch.int8), 2, 1.5, pre, post)
    assert rel_err(y, dense_kn(x, 12, 2, 1.5, pre=pre, post=post)) <= RTOL[torch.float64]


# ---------------------------------------------------------------------------------------
# Randomised transform, transpose, inverse


@pytest.mark.parametrize("transpose", [False, True], ids=["fwd", "transpose"])
@pytest.mark.parametrize("fam", [("rotation", 20), ("rotation", 172), ("fht", 28), ("rotation", 1)], ids=fam_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_signs_and_transpose_match_dense(backend, fam, transpose):
    family, K = fam
    p = 16
    n = K * p
    x = torch.randn(3, n, dtype=torch.float64)
    d = hk.random_signs(n, seed=7, dtype=torch.float64)
    y = hk.hadamard_transform_order(x, 0.2, K=K, family=family, signs=d, transpose=transpose, backend=backend)
    mat = dense(K, p, family) @ torch.diag(d)  # H D
    want = 0.2 * x @ (mat if transpose else mat.T)  # rows: (H D x)^T = x^T D H^T; transpose: x^T H D
    assert rel_err(y, want) <= RTOL[torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [12 * 64, 140 * 8, 1024], ids=lambda n: f"n{n}")
def test_signs_dtypes_against_reference(n, dtype):
    x = torch.randn(5, n, dtype=dtype)
    d = hk.random_signs(n, seed=3, dtype=dtype)
    y = hk.hadamard_transform_order(x, n**-0.5, signs=d)
    ref = R.hadamard_transform_order_reference(x.double(), n**-0.5, signs=d.double())
    assert rel_err(y, ref) <= RTOL[dtype]


@pytest.mark.parametrize("family,n", [("rotation", 28 * 64), ("rotation", 11008), ("fht", 40 * 32), ("rotation", 512)])
def test_inverse_round_trip(family, n):
    x = torch.randn(4, n, dtype=torch.float64)
    d = hk.random_signs(n, seed=11, dtype=torch.float64)
    s = 0.37
    y = hk.hadamard_transform_order(x, s, family=family, signs=d)
    back = hk.hadamard_transform_order(y, 1 / (n * s), family=family, signs=d, transpose=True)
    assert rel_err(back, x) <= RTOL[torch.float64]
    # without the transpose it is not the inverse (H_K is not symmetric here)
    if n != 512:
        wrong = hk.hadamard_transform_order(y, 1 / (n * s), family=family, signs=d)
        assert rel_err(wrong, x) > 0.1


def test_orthonormal_rotation_example():
    # The docstring's example: Q = H D / sqrt(n) is orthogonal.
    n = 5120
    x = torch.randn(8, n, dtype=torch.float64)
    d = hk.random_signs(n, seed=0, dtype=torch.float64)
    y = hk.hadamard_transform_order(x, n**-0.5, signs=d)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    assert rel_err(hk.hadamard_transform_order(y, n**-0.5, signs=d, transpose=True), x) <= RTOL[torch.float64]


def test_random_signs():
    a = hk.random_signs(1000, seed=5)
    assert a.shape == (1000,) and a.dtype == torch.float32
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a, hk.random_signs(1000, seed=5))
    assert not torch.equal(a, hk.random_signs(1000, seed=6))
    assert 400 < int((a > 0).sum()) < 600
    assert torch.equal(hk.random_signs(1000, seed=5, dtype=torch.bfloat16).float(), a)
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(5)
    b = hk.random_signs(1000, generator=g, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not used
    assert not torch.equal(b.float(), hk.random_signs(1000, generator=g))  # the generator advanced
    assert hk.random_signs(0, seed=1).shape == (0,)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"n": -1}, ValueError, "n must be an int >= 0"),
        ({"n": 4, "seed": 1, "generator": torch.Generator()}, ValueError, "not both"),
        ({"n": 4, "dtype": torch.int32}, TypeError, "dtype must be"),
    ],
)
def test_random_signs_errors(kwargs, exc, match):
    n = kwargs.pop("n")
    with pytest.raises(exc, match=match):
        hk.random_signs(n, **kwargs)


# ---------------------------------------------------------------------------------------
# Gradients: the transpose, against autograd through the dense reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("K", orders.FHT_ORDERS, ids=lambda k: f"K{k}")
def test_peer_grad_matches_reference(K, dtype):
    for n in (K, 3 * K + 1, 16 * K):
        x = torch.randn(3, n, dtype=dtype, requires_grad=True)
        g = torch.randn(3, n, dtype=dtype)
        (gx,) = torch.autograd.grad(PEERS[K](x, 0.3), x, g)
        xr = x.detach().double().requires_grad_()
        (want,) = torch.autograd.grad(R.hadamard_transform_kn_reference(xr, K, 0.3), xr, g.double())
        assert gx.dtype == dtype
        assert rel_err(gx, want) <= RTOL[dtype]
        # The peer's backward (the forward applied to g) is right only for symmetric H_K. (For
        # n = K only the leading (K/4) x (K/4) block of H_K is used, which is symmetric in
        # the Williamson matrices: compare on the full transform.)
        peer_backward = R.hadamard_transform_kn_reference(g.double(), K, 0.3)
        if K in orders.SYMMETRIC["fht"]:
            assert rel_err(peer_backward, want) <= RTOL[torch.float64]
        elif n == 16 * K:
            assert rel_err(peer_backward, want) > 0.1


@pytest.mark.parametrize("transpose", [False, True], ids=["fwd", "transpose"])
@pytest.mark.parametrize("signs", [False, True], ids=["nosigns", "signs"])
@pytest.mark.parametrize("fam", [("rotation", 12), ("rotation", 40), ("rotation", 52), ("fht", 20)], ids=fam_id)
def test_order_grad_matches_reference(fam, signs, transpose):
    family, K = fam
    n = K * 32
    d = hk.random_signs(n, seed=2, dtype=torch.float64) if signs else None
    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, n, dtype=torch.float64)
    kw = dict(K=K, family=family, signs=d, transpose=transpose)
    (gx,) = torch.autograd.grad(hk.hadamard_transform_order(x, 0.6, **kw), x, g)
    xr = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(R.hadamard_transform_order_reference(xr, 0.6, **kw), xr, g)
    assert rel_err(gx, want) <= RTOL[torch.float64]


@pytest.mark.parametrize(
    "K,family,n", [(20, "rotation", 40), (40, "rotation", 80), (28, "fht", 28), (20, "fht", 20), (12, "fht", 24)]
)
def test_gradcheck_nonsymmetric(K, family, n):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    d = hk.random_signs(n, seed=4, dtype=torch.float64)
    for transpose in (False, True):
        kw = dict(K=K, family=family, signs=d, transpose=transpose)
        f = lambda t: hk.hadamard_transform_order(t, 0.3, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("K,n", [(20, 7), (28, 28), (40, 90)])
def test_gradcheck_peer_padded(K, n):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: PEERS[K](t, 0.5), (x,))
    assert torch.autograd.gradgradcheck(lambda t: PEERS[K](t, 0.5), (x,))


def test_op_gradcheck_padding_with_both_signs():
    n, K, p = 21, 12, 2
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    pre, post = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    h = orders.hadamard_k(K, torch.int8)
    f = lambda t: ops.hadamard_transform_kn(t, h, p, 0.4, pre, post)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_signs_requiring_grad_are_refused():
    x = torch.randn(2, 24, requires_grad=True)
    d = torch.ones(24, requires_grad=True)
    with pytest.raises(ValueError, match="signs are constants"):
        hk.hadamard_transform_order(x, signs=d)
    with pytest.raises(RuntimeError, match="sign vectors are constants"):
        ops.hadamard_transform_kn(x, orders.hadamard_k(12, torch.int8), 2, 1.0, d, None)


# ---------------------------------------------------------------------------------------
# In place: fwht_ and hadamard_transform_order_


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [1, 3, 8, 16, 32, 64, 100, 1024, 5000], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht_inplace(backend, n, dtype):
    x = torch.randn(3, 2, n, dtype=dtype)
    x0 = x.clone()
    ptr, version = x.data_ptr(), x._version
    out = hk.fwht_(x, 0.5, backend=backend)
    assert out is x and x.data_ptr() == ptr and x._version > version
    assert rel_err(x, R.fwht_reference(x0.double(), 0.5)) <= RTOL[dtype]


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("n", [4, 8, 16, 64, 128, 256, 512, 2048], ids=lambda n: f"n{n}")
def test_fwht_short_rows_batched(n, dtype, offset):
    # Short contiguous rows are swept several at a time (cpu::fwht_rows: one first sweep over
    # all rows of a task up to 16 vectors a row, blocks of 8 KB of rows beyond), aligned and
    # misaligned (a view one element into its storage: in place, rows over 16 vectors then
    # take the row kernel's buffer), in place and out of place, over enough rows for several
    # parallel tasks.
    rows = max(64, 80000 // n)
    x = torch.randn(rows * n + offset, dtype=dtype)[offset:].view(rows, n)
    want = R.fwht_reference(x.double(), 0.25)
    assert rel_err(hk.fwht(x, 0.25), want) <= RTOL[dtype]
    assert rel_err(hk.fwht_(x, 0.25), want) <= RTOL[dtype]


@pytest.mark.parametrize("lead", [(0,), (1,), (), (300,)], ids=lambda s: f"lead{list(s)}")
def test_fwht_inplace_batch_shapes(lead):
    x = torch.randn(*lead, 64)
    x0 = x.clone()
    assert hk.fwht_(x) is x
    assert torch.equal(x, hk.fwht(x0)) or rel_err(x, hk.fwht(x0)) <= RTOL[torch.float32]


def test_fwht_inplace_view_of_larger_tensor():
    # A contiguous view (rows 2..4 of a bigger tensor): only those rows change.
    base = torch.randn(6, 32, dtype=torch.float64)
    before = base.clone()
    hk.fwht_(base[2:4])
    assert torch.equal(base[:2], before[:2]) and torch.equal(base[4:], before[4:])
    assert rel_err(base[2:4], R.fwht_reference(before[2:4])) <= RTOL[torch.float64]


@pytest.mark.parametrize("transpose", [False, True], ids=["fwd", "transpose"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_order_inplace(backend, dtype, transpose):
    n = 28 * 16
    x = torch.randn(5, n, dtype=dtype)
    d = hk.random_signs(n, seed=9, dtype=dtype)
    want = R.hadamard_transform_order_reference(x.double(), 0.1, signs=d.double(), transpose=transpose)
    out = hk.hadamard_transform_order_(x, 0.1, signs=d, transpose=transpose, backend=backend)
    assert out is x
    assert rel_err(x, want) <= RTOL[dtype]


@pytest.mark.parametrize("layout", ["sliced", "transposed", "expanded", "repeated"])
@pytest.mark.parametrize("fn", [hk.fwht_, hk.hadamard_transform_order_], ids=["fwht_", "order_"])
def test_inplace_refuses_noncontiguous_or_overlapping(fn, layout):
    x = make_input((4, 3, 24), torch.float32, layout)
    before = x.clone()
    with pytest.raises(ValueError, match="must be contiguous"):
        fn(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("make", [
    lambda: torch.randn(24).expand(3, 24),
    lambda: torch.randn(24, 3).t(),
    lambda: torch.randn(3, 48)[:, ::2],
], ids=["expanded", "transposed", "strided"])  # fmt: skip
def test_inplace_op_refuses_noncontiguous(make):
    x = make()
    with pytest.raises(ValueError, match="must be contiguous and without overlapping"):
        ops.hadamard_transform_kn_(x, orders.hadamard_k(12, torch.int8), 2, 1.0, None, None)


def test_inplace_autograd_leaf_refused():
    x = torch.randn(3, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        hk.fwht_(x)
    with torch.no_grad():
        hk.fwht_(x)  # allowed, as for torch's in-place ops


@pytest.mark.parametrize("fn", ["fwht_", "order_"])
def test_inplace_autograd_nonleaf_gradient(fn):
    n = 20 * 8
    d = hk.random_signs(n, seed=1, dtype=torch.float64)
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, n, dtype=torch.float64)
    if fn == "fwht_":
        y = hk.fwht_(x * 2.0, 0.3)
        ref = lambda t: R.fwht_reference(t * 2.0, 0.3)  # noqa: E731
    else:
        y = hk.hadamard_transform_order_(x * 2.0, 0.3, signs=d)
        ref = lambda t: R.hadamard_transform_order_reference(t * 2.0, 0.3, signs=d)  # noqa: E731
    (gx,) = torch.autograd.grad(y, x, g)
    xr = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(ref(xr), xr, g)
    assert rel_err(gx, want) <= RTOL[torch.float64]


def test_inplace_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 40, dtype=torch.float64, requires_grad=True)
    d = hk.random_signs(40, seed=3, dtype=torch.float64)

    def f(t):
        return hk.hadamard_transform_order_(t.clone(), 0.7, K=40, signs=d)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_inplace_detects_modified_saved_tensor():
    # x is saved by the multiplication; transforming it in place must make backward raise.
    a = torch.randn(3, 16, requires_grad=True)
    x = a * 1.0
    y = x * x
    hk.fwht_(x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    # the same without autograd recording on x: the version still moves
    b = torch.randn(3, 16)
    v = b._version
    hk.fwht_(b)
    assert b._version > v


def test_inplace_on_view_of_grad_tensor():
    # A view of a non-leaf: torch rebases the base's history (CopySlices).
    a = torch.randn(4, 12 * 4, dtype=torch.float64, requires_grad=True)
    base = a * 1.0
    hk.hadamard_transform_order_(base[1:3], 0.5)
    g = torch.randn(4, 48, dtype=torch.float64)
    (ga,) = torch.autograd.grad(base, a, g)
    want = g.clone()
    want[1:3] = R.hadamard_transform_order_reference(g[1:3], 0.5, transpose=True)
    assert rel_err(ga, want) <= RTOL[torch.float64]


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: hk.hadamard_transform_order(torch.randn(3, 100)), ValueError, r"hadamard_transform_order: n=100"),
        (lambda: hk.hadamard_transform_order(torch.randn(96), K=20), ValueError, r"K=20 does not split n=96"),
        (lambda: hk.hadamard_transform_order(torch.randn(96), K=12.0), TypeError, "K must be an int"),
        (lambda: hk.hadamard_transform_order(torch.randn(36 * 4), family="fht"), ValueError, "family 'fht' has only"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), family="quip"), ValueError, "family must be one of"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), signs=torch.ones(47)), ValueError, r"shape \(n,\)"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), signs=torch.ones(48, dtype=torch.int8)), TypeError,
         "signs must be float32"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), signs=[1] * 48), TypeError, "signs must be a tensor"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), "1"), TypeError, "scale must be a real number"),
        (lambda: hk.hadamard_transform_order(torch.ones(48, dtype=torch.int32)), TypeError, "must be float32"),
        (lambda: hk.hadamard_transform_order(torch.tensor(1.0)), ValueError, "at least 1 dimension"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), backend="cuda"), RuntimeError,
         "backend 'cuda' is not available for the K \\* 2\\^k transforms of a tensor on cpu"),
        (lambda: hk.hadamard_transform_order(torch.randn(48, device="meta"), backend="triton"), RuntimeError,
         "backend 'triton' is not available"),
        (lambda: hk.hadamard_transform_order(torch.randn(48), backend="gpu"), ValueError, "backend must be"),
        (lambda: hk.hadamard_transform_order(torch.randn(12 * 2**21)), ValueError, "exceeds the supported maximum"),
        (lambda: hk.hadamard_transform_12N(torch.randn(12 * 2**20 + 1)), ValueError, "exceeds the supported maximum"),
        (lambda: hk.hadamard_transform_28N(torch.ones(28, dtype=torch.int64)), TypeError, "hadamard_transform_28N"),
        (lambda: hk.hadamard_transform_40N(torch.randn(40), backend="cuda"), RuntimeError, "'cuda' is not available"),
        (lambda: hk.fwht_(torch.randn(2**20 + 1)), ValueError, "fwht_: transform size"),
        (lambda: hk.fwht_(torch.randn(8, device="meta"), backend="triton"), RuntimeError, "'triton' is not available"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


H12 = orders.hadamard_k(12, torch.int8)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.randn(2, 24), H12.float(), 2, 1.0, None, None), TypeError, "hk must be an int8"),
        ((torch.randn(2, 24), H12[:11], 2, 1.0, None, None), ValueError, "hk must be a square"),
        ((torch.randn(2, 24), H12 * 2, 2, 1.0, None, None), ValueError, r"entries \+1 or -1, found 2"),
        ((torch.randn(2, 25), H12, 2, 1.0, None, None), ValueError, "more than K \\* pow2"),
        ((torch.randn(2, 24), H12, 3, 1.0, None, None), ValueError, "pow2 must be a power of two"),
        ((torch.randn(2, 24), None, 2**21, 1.0, None, None), ValueError, "pow2 must be a power of two"),
        ((torch.randn(2, 24), H12, 2, 1.0, torch.ones(23), None), ValueError, "pre_signs must have shape"),
        ((torch.randn(2, 24), H12, 2, 1.0, None, torch.ones(24, dtype=torch.int32)), TypeError, "post_signs must be"),
        ((torch.ones(2, 24, dtype=torch.int32), H12, 2, 1.0, None, None), TypeError, "x must be float32"),
    ],
)
def test_op_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        ops.hadamard_transform_kn(*args)


# ---------------------------------------------------------------------------------------
# opcheck and torch.compile


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("K,p,n,signs", [(12, 4, 48, False), (20, 2, 33, True), (1, 16, 10, True), (40, 1, 40, False)])
def test_opcheck_transform_kn(K, p, n, signs, requires_grad):
    x = torch.randn(3, 2, n, dtype=torch.float64, requires_grad=requires_grad)
    h = orders.hadamard_k(K, torch.int8, family="rotation") if K > 1 else None
    pre = torch.randn(n, dtype=torch.float64) if signs else None
    post = hk.random_signs(n, seed=1, dtype=torch.float64) if signs else None
    torch.library.opcheck(ops.hadamard_transform_kn, (x, h, p, 0.5, pre, post))


@pytest.mark.parametrize("K,p,n,signs", [(12, 4, 48, False), (20, 2, 33, True), (1, 16, 10, True)])
def test_opcheck_transform_kn_inplace(K, p, n, signs):
    x = torch.randn(3, 2, n, dtype=torch.float32)
    h = orders.hadamard_k(K, torch.int8) if K > 1 else None
    pre = hk.random_signs(n, seed=1) if signs else None
    torch.library.opcheck(ops.hadamard_transform_kn_, (x, h, p, 0.5, pre, None))


@pytest.mark.slow
def test_compile_order_forward_backward():
    n = 28 * 16
    d = hk.random_signs(n, seed=0)

    def f(x):
        return hk.hadamard_transform_order(x.relu(), n**-0.5, signs=d).square().sum(-1)

    x = torch.randn(4, n, requires_grad=True)
    xc = x.detach().clone().requires_grad_()
    g = torch.randn(4)
    (gx,) = torch.autograd.grad(f(x), x, g)
    yc = torch.compile(f, fullgraph=True)(xc)
    (gxc,) = torch.autograd.grad(yc, xc, g)
    assert rel_err(yc, f(x)) <= RTOL[torch.float32]
    assert rel_err(gxc, gx) <= RTOL[torch.float32]


@pytest.mark.slow
def test_compile_peer_and_inplace():
    def f(x):
        y = hk.hadamard_transform_20N(x, 0.5)
        return hk.fwht_(y * 2.0)

    x = torch.randn(3, 20 * 8 + 1)
    assert rel_err(torch.compile(f, fullgraph=True)(x), f(x)) <= RTOL[torch.float32]


@pytest.mark.slow
def test_compile_inplace_with_grad():
    def f(x):
        y = x * 2.0
        hk.hadamard_transform_order_(y, 0.5)
        return y.square().sum(-1)

    x = torch.randn(3, 12 * 8, requires_grad=True)
    xc = x.detach().clone().requires_grad_()
    g = torch.randn(3)
    (gx,) = torch.autograd.grad(f(x), x, g)
    yc = torch.compile(f, fullgraph=True)(xc)
    (gxc,) = torch.autograd.grad(yc, xc, g)
    assert rel_err(yc, f(x)) <= RTOL[torch.float32]
    assert rel_err(gxc, gx) <= RTOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_fwht_inplace_any_alignment(dtype, offset):
    # fwht_ of a power-of-two row goes straight through fwht_row when x's rows are
    # vector-aligned (float32/float64), through the scratch row otherwise: both exact.
    rows, n = 5, 256
    storage = torch.randn(offset + rows * n + 16, dtype=dtype)
    x = storage[offset : offset + rows * n].view(rows, n)
    assert x.is_contiguous() and (x.data_ptr() % 64 == 0) == (offset == 0)
    want = R.fwht_reference(x.double(), 0.5)
    got = hk.fwht_(x, 0.5)
    assert got is x
    assert rel_err(x, want) <= RTOL[dtype]
