"""The oracle itself (hadamard_kernels/reference.py), checked against scipy.linalg.hadamard
and dense matrix products in float64."""

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from conftest import DTYPES, RTOL, dtype_id, rel_err

from hadamard_kernels import reference as R


def dense_h(m: int) -> torch.Tensor:
    """scipy's Sylvester Hadamard matrix of order m as a float64 tensor."""
    return torch.from_numpy(scipy.linalg.hadamard(m)).double()


def padded_dense(x: torch.Tensor, out: int) -> torch.Tensor:
    """H_M[:out, :n] @ x over the last dim, the slow way: zero-pad x to M, multiply by the
    full scipy matrix, keep the first out entries."""
    n = x.shape[-1]
    m = R.next_pow2(max(n, out))
    return (F.pad(x, (0, m - n)) @ dense_h(m).T)[..., :out]


@pytest.mark.parametrize("n,expected", [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (1024, 1024), (1025, 2048)])
def test_next_pow2(n, expected):
    assert R.next_pow2(n) == expected


@pytest.mark.parametrize("n", [2**k for k in range(11)], ids=lambda n: f"n{n}")
def test_hadamard_matrix_equals_scipy(n):
    h = R.hadamard_matrix(n)
    assert h.dtype == torch.float64 and h.shape == (n, n)
    assert torch.equal(h, dense_h(n))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_hadamard_matrix_dtype_device(dtype, device):
    h = R.hadamard_matrix(8, dtype=dtype, device=device)
    assert h.dtype == dtype and h.device.type == torch.device(device).type
    assert torch.equal(h.cpu().double(), dense_h(8))


@pytest.mark.parametrize("n", [0, -4, 3, 6, 12])
def test_hadamard_matrix_rejects_non_powers_of_two(n):
    with pytest.raises(ValueError, match=f"power of two >= 1, got {n}"):
        R.hadamard_matrix(n)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 17, 64, 100, 256, 1000, 1024], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_fwht_reference_equals_dense(n, scale):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    out = R.fwht_reference(x, scale)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel_err(out, scale * padded_dense(x, n)) <= RTOL[torch.float64]


@pytest.mark.parametrize("n", [1, 8, 64, 1024], ids=lambda n: f"n{n}")
def test_fwht_reference_equals_matrix_product_for_powers_of_two(n):
    # For a power of two the transform is exactly x @ H_n.T, no padding involved.
    x = torch.randn(4, n, dtype=torch.float64)
    assert rel_err(R.fwht_reference(x), x @ dense_h(n).T) <= RTOL[torch.float64]


@pytest.mark.parametrize(
    "n,out", [(5, 3), (3, 5), (8, 2), (2, 8), (12, 20), (20, 12), (100, 1), (1, 100)], ids=lambda v: str(v)
)
def test_hadamard_transform_reference_truncation(n, out):
    x = torch.randn(6, n, dtype=torch.float64)
    y = R.hadamard_transform_reference(x, out, 0.5)
    assert y.shape == (6, out)
    assert rel_err(y, 0.5 * padded_dense(x, out)) <= RTOL[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
def test_fwht_reference_low_precision_keeps_dtype(dtype):
    x = torch.randn(4, 100, dtype=dtype)
    out = R.fwht_reference(x, 0.1)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out, 0.1 * padded_dense(x.double(), 100)) <= RTOL[dtype]


def test_fwht_reference_gradient_is_transpose():
    # The oracle's autograd gradients are the oracle for the kernels' gradients.
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 12, dtype=torch.float64)
    (gx,) = torch.autograd.grad(R.fwht_reference(x, 0.3), x, g)
    h = dense_h(16)[:12, :12]
    assert rel_err(gx, 0.3 * g @ h) <= RTOL[torch.float64]


# (N, C): C < N, C = N, C > N, non-powers of two on either side.
CLASSIFIER_CASES = [(1, 1), (8, 10), (3, 1000), (16, 16), (16, 4), (100, 10), (17, 33), (512, 1000)]


@pytest.mark.parametrize("n,c", CLASSIFIER_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_classifier_reference_equals_dense_formula(n, c, normalize, bias):
    x = torch.randn(7, n, dtype=torch.float64)
    scale = torch.tensor(0.7, dtype=torch.float64)
    b = torch.randn(c, dtype=torch.float64) if bias else None
    y = R.hadamard_classifier_reference(x, c, scale, b, normalize=normalize)
    h_hat = dense_h(R.next_pow2(max(n, c)))[:c, :n]
    x_hat = F.normalize(x, dim=-1) if normalize else x
    dense = scale * F.linear(x_hat, h_hat) + (b if bias else 0)
    assert y.shape == (7, c) and y.dtype == torch.float64
    assert rel_err(y, dense) <= RTOL[torch.float64]


@pytest.mark.parametrize("scale_shape", [(), (1,), (1, 1)], ids=lambda s: f"scale{list(s)}")
def test_classifier_reference_one_element_scale_keeps_shape(scale_shape):
    x = torch.randn(8, dtype=torch.float64)
    scale = torch.full(scale_shape, 0.5, dtype=torch.float64, requires_grad=True)
    y = R.hadamard_classifier_reference(x, 4, scale)
    assert y.shape == (4,)
    assert rel_err(y, 0.5 * padded_dense(F.normalize(x, dim=-1), 4)) <= RTOL[torch.float64]
    (gs,) = torch.autograd.grad(y.sum(), scale)
    assert gs.shape == scale_shape


def test_classifier_reference_zero_row_gives_bias():
    x = torch.randn(3, 8, dtype=torch.float64)
    x[1] = 0
    b = torch.randn(10, dtype=torch.float64)
    y = R.hadamard_classifier_reference(x, 10, 2.0, b)
    assert torch.equal(y[1], b)
    assert torch.isfinite(y).all()


def test_classifier_reference_rows_are_unit_norm_logits():
    # N a power of two and C = N: H/sqrt(N) is orthogonal, so ||y|| = scale * sqrt(N).
    x = torch.randn(5, 64, dtype=torch.float64)
    y = R.hadamard_classifier_reference(x, 64, 1.0)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((5,), 8.0, dtype=torch.float64))
