"""The matrices H_K (hadamard_kernels/orders.py) and the K * 2^k reference transforms built on them
(hadamard_kernels/reference.py), checked exactly in integers and against dense Kronecker products in
float64."""

import hashlib

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from conftest import RTOL, dtype_id, rel_err

from hadamard_kernels import orders as O
from hadamard_kernels import reference as R

ALL = [("rotation", k) for k in O.ORDERS] + [("fht", k) for k in O.FHT_ORDERS]

#: SHA-256 of each matrix written as Sloane's files are: one row per line, '+' for 1, '-' for -1,
#: each line ending in '\n'. Computed from the matrices the libraries ship (QuaRot's and
#: SpinQuant's get_had{K}, fast-hadamard-transform's csrc/fast_hadamard_transform_special.h) and,
#: where a copy was at hand, equal to the digest of Sloane's file itself (had.12, had.20.will,
#: had.28.will, had.52.will, had.140.pal, had.156.will, had.172.will). docs/orders.md has the table.
DIGESTS = {
    ("rotation", 12): "969dbb40d02b6325ae7cd3ba721153e270282b9cb4ec71ad50be5434d64fa462",
    ("rotation", 20): "bd3febfd6d637142de8eb0a95b38d2d937b8d638bbcb583e58d7a5120db05901",
    ("rotation", 28): "8b24c14f53d2d823bdb26f91298574eaa3c7a7be1f8dc958ce3023171f095eb5",
    ("rotation", 36): "31180207ac6916ae73fb94e9d1b59c2151dd3e68226b87d609c13466e1fc405d",
    ("rotation", 40): "d53d1b6efa05eaf2d9fa0f589274eb4cd23d747d2d3d8aae9b1677e7ce7061da",
    ("rotation", 44): "537abf889a1d9416cec210a6c1a315462a02a35f03b8df676b3bd6a4b42b32a2",
    ("rotation", 52): "b09945ddadc1d9ccf7a871bc350808ed6551e2de13523a15099457b432c89512",
    ("rotation", 60): "eb568e43184ab1933e335a769ed01c130ef99eac3a08f420e256e508758a873c",
    ("rotation", 108): "bcc8faf141eba6d59f26a0159b27c80f3d8e0f0bf87816f93d90977135fbde2a",
    ("rotation", 140): "4d87e06ea4df3e910ca688d47cca8d799fc4bb196ac021ee6e15b22a06baefe1",
    ("rotation", 156): "4d2f4179cd753e6438a96c6d1c51bae8b9abca7f02ab662a7ab8b66a6e4b5543",
    ("rotation", 172): "f235a78cccb5a6ce1acc4208275dda1ef0040e05788b05c97a43feaa3555e862",
    ("fht", 12): "402b641618fb00ede370e951618e532133ef616c95696f2e8f8cf57ed07597d0",
    ("fht", 20): "34822da355777eb508e7bd38cf855a0ec964428f6572cd160421820185c10138",
    ("fht", 28): "70f6ddeee69365097964236477424ac52713f60d0ad7be4402b5d86a6feb650f",
    ("fht", 40): "d53d1b6efa05eaf2d9fa0f589274eb4cd23d747d2d3d8aae9b1677e7ce7061da",
}

#: Paley I matrices (had.*.pal, had.12) are skew-type: H + H^T = 2I.
PALEY_I = {("rotation", k) for k in (12, 20, 44, 60, 108, 140)}


def fam_id(v) -> str:
    return f"{v[0]}{v[1]}" if isinstance(v, tuple) else str(v)


def sylvester(m: int) -> torch.Tensor:
    return torch.from_numpy(scipy.linalg.hadamard(m)).double()


def dense_kron(h_k: torch.Tensor, m: int) -> torch.Tensor:
    """The (K*m, K*m) matrix H_K kron H_m, built densely."""
    return torch.kron(h_k.double().contiguous(), sylvester(m))


@pytest.mark.parametrize("fam_k", ALL, ids=fam_id)
def test_entries_and_orthogonality_exact(fam_k):
    family, k = fam_k
    h = O.hadamard_k(k, dtype=torch.int64, family=family)
    assert h.shape == (k, k)
    assert torch.equal(h.abs(), torch.ones_like(h))
    assert torch.equal(h @ h.T, k * torch.eye(k, dtype=torch.int64))


@pytest.mark.parametrize("fam_k", ALL, ids=fam_id)
def test_symmetry_is_recorded(fam_k):
    family, k = fam_k
    h = O.hadamard_k(k, dtype=torch.int64, family=family)
    assert torch.equal(h, h.T) == (k in O.SYMMETRIC[family])
    if fam_k in PALEY_I:
        assert torch.equal(h + h.T, 2 * torch.eye(k, dtype=torch.int64))


@pytest.mark.parametrize("fam_k", ALL, ids=fam_id)
def test_matrix_is_the_libraries_bit_for_bit(fam_k):
    h = O.hadamard_k(fam_k[1], dtype=torch.int64, family=fam_k[0])
    text = "".join("".join("+" if v > 0 else "-" for v in row) + "\n" for row in h.tolist())
    assert hashlib.sha256(text.encode()).hexdigest() == DIGESTS[fam_k]


def test_families_differ_where_the_libraries_do():
    for k in (12, 20, 28):
        assert not torch.equal(O.hadamard_k(k, family="rotation"), O.hadamard_k(k, family="fht"))
    assert torch.equal(O.hadamard_k(40, family="rotation"), O.hadamard_k(40, family="fht"))
    # had.40.tpal = H_2 kron had.20.pal
    assert torch.equal(O.hadamard_k(40), torch.kron(sylvester(2), O.hadamard_k(20)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.int8], ids=dtype_id)
def test_hadamard_k_dtype_device_and_fresh_copy(dtype, device):
    h = O.hadamard_k(12, dtype=dtype, device=device)
    assert h.dtype == dtype and h.device.type == torch.device(device).type
    h.zero_()
    assert O.hadamard_k(12, dtype=dtype, device=device).abs().min() == 1
    assert torch.equal(O.hadamard_k(1), torch.ones(1, 1, dtype=torch.float64))


def test_sources_are_named():
    for family, k in ALL:
        assert O.matrix_source(k, family)
    assert "had.172.will" in O.matrix_source(172)
    assert "Paley II, q = 5" in O.matrix_source(12, "fht")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: O.hadamard_k(36, family="fht"), r"hadamard_k: K=36 is not available in family 'fht'"),
        (lambda: O.hadamard_k(24), r"hadamard_k: K=24 is not available in family 'rotation'"),
        (lambda: O.hadamard_k(12, family="quip"), r"hadamard_k: family must be one of"),
        (lambda: O.matrix_source(8), r"matrix_source: K=8"),
        (lambda: R.hadamard_transform_kn_reference(torch.randn(48), 36), r"K must be one of \(12, 20, 28, 40\)"),
        (lambda: R.hadamard_transform_order_reference(torch.randn(100)), r"split_order: n=100"),
        (lambda: R.hadamard_transform_order_reference(torch.randn(96), K=20), r"K=20 does not split n=96"),
    ],
    ids=["fht36", "rot24", "family", "source", "kn36", "n100", "K20n96"],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "n,expected",
    [
        (1, (1, 1)),
        (4096, (1, 4096)),
        (12, (12, 1)),
        (20, (20, 1)),
        (40, (40, 1)),
        (80, (40, 2)),  # also 20 * 4: the larger K wins, as in QuaRot / SpinQuant
        (5120, (40, 128)),
        (14336, (28, 512)),
        (11008, (172, 64)),
        (13824, (108, 128)),
        (72, (36, 2)),
        (44 * 32, (44, 32)),
    ],
    ids=lambda v: str(v),
)
def test_split_order(n, expected):
    assert O.split_order(n) == expected


@pytest.mark.parametrize("n", [0, -12, 3, 6, 84, 100, 132, 516])
def test_split_order_rejects(n):
    with pytest.raises(ValueError, match=f"split_order: n={n} is not"):
        O.split_order(n)


@pytest.mark.parametrize(
    "n,k,expected",
    [
        (1, 12, 48),
        (12, 12, 48),
        (24, 12, 48),
        (48, 12, 48),
        (49, 12, 96),
        (96, 12, 96),
        (97, 12, 192),
        (12288, 12, 12288),
        (5120, 20, 5120),
        (5121, 20, 10240),
        (14336, 28, 14336),
        (160, 40, 160),
        (0, 20, 80),
    ],
    ids=lambda v: str(v),
)
def test_fht_padded_size(n, k, expected):
    assert O.fht_padded_size(n, k) == expected


@pytest.mark.parametrize("k", O.FHT_ORDERS, ids=lambda k: f"K{k}")
@pytest.mark.parametrize(
    "mult,add", [(0, 1), (1, 0), (2, 0), (4, 0), (4, 3), (6, -1), (16, 0), (64, 0)], ids=lambda v: str(v)
)
@pytest.mark.parametrize("transpose", [False, True], ids=["H", "HT"])
def test_kn_reference_equals_dense_formula(k, mult, add, transpose):
    # The peer's rule: zero-pad to M = fht_padded_size(n, K), y = scale * (H_K kron H_{M/K}) x_pad, keep n.
    n = mult * k + add
    x = torch.randn(3, n, dtype=torch.float64)
    m = O.fht_padded_size(n, k)
    h = O.hadamard_k(k, family="fht")
    dense = dense_kron(h.T if transpose else h, m // k)
    ref = 0.5 * (F.pad(x, (0, m - n)) @ dense.T)[:, :n]
    out = R.hadamard_transform_kn_reference(x, k, 0.5, transpose=transpose)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel_err(out, ref) <= RTOL[torch.float64]


@pytest.mark.parametrize("k", (1,) + O.ORDERS, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("m", [1, 2, 8], ids=lambda m: f"m{m}")
@pytest.mark.parametrize("transpose", [False, True], ids=["H", "HT"])
def test_order_reference_equals_dense_formula(k, m, transpose):
    n = k * m
    x = torch.randn(2, 3, n, dtype=torch.float64)
    k_used, m_used = O.split_order(n)
    assert k_used == k or (k, k_used) == (20, 40)
    h = O.hadamard_k(k_used)
    ref = 0.25 * x @ dense_kron(h.T if transpose else h, m_used).T
    assert rel_err(R.hadamard_transform_order_reference(x, 0.25, transpose=transpose), ref) <= RTOL[torch.float64]
    # an explicit K overrides the choice
    ref_k = x @ dense_kron(O.hadamard_k(k), m).T
    assert rel_err(R.hadamard_transform_order_reference(x, K=k), ref_k) <= RTOL[torch.float64]


def test_splits_20_and_40_differ():
    x = torch.randn(4, 80, dtype=torch.float64)
    assert rel_err(R.hadamard_transform_order_reference(x), R.hadamard_transform_order_reference(x, K=20)) > 0.1


def test_order_reference_with_k1_is_fwht():
    x = torch.randn(5, 256, dtype=torch.float64)
    assert rel_err(R.hadamard_transform_order_reference(x, 0.5), R.fwht_reference(x, 0.5)) <= RTOL[torch.float64]


@pytest.mark.parametrize("k", O.FHT_ORDERS, ids=lambda k: f"K{k}")
def test_kn_padding_quirk_below_4k(k):
    # n = 4K * 2^j is the exact K * 2^k transform; n = K and 2K are padded to 4K first, so they are not.
    x = torch.randn(3, 8 * k, dtype=torch.float64)
    h = O.hadamard_k(k, family="fht")
    assert rel_err(R.hadamard_transform_kn_reference(x, k), x @ dense_kron(h, 8).T) <= RTOL[torch.float64]
    x = torch.randn(3, k, dtype=torch.float64)
    assert rel_err(R.hadamard_transform_kn_reference(x, k), x @ h.T) > 0.1


@pytest.mark.parametrize(
    "fam_k", [("fht", k) for k in O.FHT_ORDERS] + [("rotation", 28), ("rotation", 172)], ids=fam_id
)
def test_gradient_is_the_transpose_transform(fam_k):
    family, k = fam_k
    n = 4 * k + 5 if family == "fht" else 4 * k
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, n, dtype=torch.float64)
    if family == "fht":
        fwd = lambda v, **kw: R.hadamard_transform_kn_reference(v, k, 0.3, **kw)  # noqa: E731
    else:
        fwd = lambda v, **kw: R.hadamard_transform_order_reference(v, 0.3, **kw)  # noqa: E731
    (grad,) = torch.autograd.grad(fwd(x), x, g)
    assert rel_err(grad, fwd(g, transpose=True)) <= RTOL[torch.float64]
    # Reusing the forward as its own backward (what the peer does) is right only for a symmetric H_K.
    same = rel_err(grad, fwd(g)) <= RTOL[torch.float64]
    assert same == (k in O.SYMMETRIC[family])


@pytest.mark.parametrize("n", [12 * 64, 5120, 11008], ids=lambda n: f"n{n}")
def test_orthonormal_with_inverse_sqrt_n(n):
    # scale = 1/sqrt(n) makes the transform orthogonal: norms kept, the transpose call inverts it.
    x = torch.randn(3, n, dtype=torch.float64)
    y = R.hadamard_transform_order_reference(x, n**-0.5)
    assert rel_err(y.norm(dim=-1), x.norm(dim=-1)) <= RTOL[torch.float64]
    assert rel_err(R.hadamard_transform_order_reference(y, n**-0.5, transpose=True), x) <= RTOL[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_low_precision_keeps_dtype(dtype):
    x = torch.randn(4, 28 * 16, dtype=dtype)
    for out, ref in [
        (R.hadamard_transform_kn_reference(x, 28, 0.1), R.hadamard_transform_kn_reference(x.double(), 28, 0.1)),
        (R.hadamard_transform_order_reference(x, 0.1), R.hadamard_transform_order_reference(x.double(), 0.1)),
    ]:
        assert out.dtype == dtype
        assert rel_err(out, ref) <= RTOL[dtype]


def test_empty_batch():
    x = torch.randn(0, 3, 40 * 4)
    assert R.hadamard_transform_kn_reference(x, 40).shape == x.shape
    assert R.hadamard_transform_order_reference(x).shape == x.shape
