"""hadamard_kernels.quantize: the fused rotate-and-quantise op (CPU kernel) against the reference
(transform in float64, then the same quantisation in the accumulator type)."""

import pytest
import torch
from conftest import DTYPES, LAYOUTS, RTOL, dtype_id, make_input

import hadamard_kernels as hk
from hadamard_kernels import orders
from hadamard_kernels import reference as R

ops = torch.ops.hadamard_kernels
CODES = list(hk.QUANT_DTYPES)


def code_id(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def bits(q: torch.Tensor) -> torch.Tensor:
    """The codes' bytes (float8 NaN compares equal to itself this way)."""
    return q.view(torch.int8)


def acc_of(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def encode(v: torch.Tensor, code: torch.dtype) -> torch.Tensor:
    """The kernels' encode of already scaled values v (float64), as quantize_reference does."""
    qmax = R.QUANT_MAX[code]
    v = v.clamp(-qmax, qmax)
    if code == torch.int8:
        return torch.nan_to_num(v.round(), nan=0.0).to(torch.int8)
    return v.float().to(code)


def assert_codes_match(q, s, x, code, group_size, signs=None, K=None):
    """q equals the code of v = y / s (y: the float64 transform, s: the kernel's own scales)
    except where v lies within the accumulator's rounding error (delta, in code units) of a code
    boundary; there q lies between the codes of v - delta and v + delta. Returns how many
    entries were that close (few, for the caller to bound)."""
    y = R.hadamard_transform_order_reference(x.double(), 1.0, K=K, signs=signs)
    n = y.shape[-1]
    g = n if group_size is None else group_size
    sd = s.double().repeat_interleave(g, dim=-1)
    v = torch.where(sd == 0, torch.zeros_like(y), y / sd)
    delta = (1e-12 if x.dtype == torch.float64 else 1e-5) * R.QUANT_MAX[code]
    lo, mid, hi = (encode(v + d, code) for d in (-delta, 0.0, delta))
    near = bits(lo) != bits(hi)
    assert torch.equal(bits(q)[~near], bits(mid)[~near])
    got = q.double()[near]
    assert bool(((lo.double()[near] <= got) & (got <= hi.double()[near])).all())
    return int(near.sum())


# ---------------------------------------------------------------------------------------
# Bit-exact where the transform is exact: small integers (every partial sum is exact in
# float32, and in float16 / bfloat16 inputs as well)

CASES = [(128, None, None), (1024, None, 32), (12 * 64, 12, 64), (20 * 32, 20, 128), (1, None, None)]


@pytest.mark.parametrize("signs", [False, True], ids=["plain", "signs"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-K{c[1]}-g{c[2]}")
@pytest.mark.parametrize("code", CODES, ids=code_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_exact_inputs_bit_equal(dtype, code, case, signs):
    n, K, g = case
    x = torch.randint(-8, 9, (5, n)).to(dtype)
    d = hk.random_signs(n, seed=11, dtype=dtype) if signs else None
    q, s = hk.fwht_quantize(x, dtype=code, group_size=g, signs=d, K=K)
    qr, sr = R.fwht_quantize_reference(x, dtype=code, group_size=g, signs=d, K=K)
    assert q.dtype == code and q.shape == x.shape and q.is_contiguous()
    assert s.dtype == torch.float32 and s.shape == (5, n // (g or n))
    assert torch.equal(bits(q), bits(qr))
    assert torch.equal(s, sr)


# ---------------------------------------------------------------------------------------
# Random inputs: codes of the float64 transform, scales to the transform's rounding error


@pytest.mark.parametrize("code", CODES, ids=code_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n,g", [(2**7, None), (2**10, 32), (2**14, 128), (28 * 32, 64)], ids=str)
def test_random_inputs_against_float64(n, g, dtype, code):
    x = torch.randn(6, n, dtype=dtype)
    q, s = hk.fwht_quantize(x, dtype=code, group_size=g)
    _, sr = R.fwht_quantize_reference(x, dtype=code, group_size=g)
    assert ((s.double() - sr.double()).abs() <= RTOL[acc_of(dtype)] * sr.double().abs()).all()
    near = assert_codes_match(q, s, x, code, g)
    assert near <= max(8, x.numel() // 50)  # the exemption stays rare (half inputs hit ties more often)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_batch_shapes(layout):
    x = make_input((2, 3, 256), torch.float32, layout)
    q, s = hk.fwht_quantize(x, 256**-0.5, group_size=64)
    assert q.shape == x.shape and s.shape == (2, 3, 4)
    qc, sc = hk.fwht_quantize(x.contiguous(), 256**-0.5, group_size=64)
    assert torch.equal(q, qc) and torch.equal(s, sc)
    q0, s0 = hk.fwht_quantize(torch.empty(0, 4, 64), group_size=32)
    assert q0.shape == (0, 4, 64) and s0.shape == (0, 4, 2)


def test_dequantize_round_trip():
    x = torch.randn(4, 2048)
    y = hk.fwht(x, 2048**-0.5)
    for code, tol in ((torch.int8, 0.5 / 127), (torch.float8_e4m3fn, 2**-4), (torch.float8_e5m2, 2**-3)):
        q, s = hk.fwht_quantize(x, 2048**-0.5, dtype=code, group_size=32)
        err = (hk.dequantize(q, s) - y).abs().reshape(4, 64, 32).amax(-1)
        amax = y.abs().reshape(4, 64, 32).amax(-1)
        assert (err <= tol * amax * 1.0001).all()


# ---------------------------------------------------------------------------------------
# Zeros, inf and NaN (module docstring): scale 0 without NaN; inf gives scale inf and NaN (float8)
# or 0 (int8) codes; NaN gives scale NaN


@pytest.mark.parametrize("code", CODES, ids=code_id)
def test_zeros_inf_nan(code):
    x = torch.randn(4, 64)
    x[0] = 0.0
    x[1, 5] = float("inf")
    x[2, 7] = float("nan")
    x[3, :32] = 0.0  # the transform mixes the row: no zero group, but a finite row
    q, s = hk.fwht_quantize(x, dtype=code, group_size=16)
    qr, sr = R.fwht_quantize_reference(x, dtype=code, group_size=16)
    assert torch.equal(bits(q), bits(qr))
    assert torch.allclose(s, sr, equal_nan=True, rtol=RTOL[torch.float32], atol=0)
    assert (s[0] == 0).all() and (bits(q[0]) == 0).all()
    assert torch.isinf(s[1]).all()
    assert torch.isnan(s[2]).all()
    if code == torch.int8:
        assert (q[1:3] == 0).all()
    else:
        assert torch.isnan(q[1:3].float()).all()
    assert torch.isfinite(s[3]).all() and not torch.isnan(hk.dequantize(q, s)[[0, 3]]).any()


def test_zero_group_after_transform():
    # A group of zeros in the transform's output: rows whose transform vanishes on a group.
    x = torch.zeros(2, 64)
    x[:, 0] = 1.0  # H e_0 = all ones: no zero group; x = e_0 - e_32 vanishes on the first half
    x[1, 32] = -1.0
    q, s = hk.fwht_quantize(x, dtype=torch.int8, group_size=32)
    assert s[1, 0] == 0 and (q[1, :32] == 0).all() and s[1, 1] == torch.tensor(2.0 / 127, dtype=torch.float32)
    assert torch.equal(q, R.fwht_quantize_reference(x, dtype=torch.int8, group_size=32)[0])


# ---------------------------------------------------------------------------------------
# Errors, autograd refusal, opcheck, torch.compile


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(group_size=48), ValueError, "does not divide n = 256"),
        (dict(group_size=0), ValueError, "group_size must be None or an int >= 1"),
        (dict(group_size=True), ValueError, "group_size must be None or an int >= 1"),
        (dict(dtype=torch.float16), TypeError, "dtype must be torch.int8"),
        (dict(signs=torch.ones(8)), ValueError, r"signs must have shape \(n,\)"),
        (dict(K=12), ValueError, "K=12 does not split n=256"),
        (dict(backend="gpu"), ValueError, "backend must be 'auto', 'cuda', 'triton', 'cpu' or 'reference'"),
        (dict(backend="cuda"), RuntimeError, "backend 'cuda' is not available for a tensor on cpu"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        hk.fwht_quantize(torch.randn(2, 256), **kwargs)


def test_errors_input():
    with pytest.raises(ValueError, match="is not a power of two or K"):
        hk.fwht_quantize(torch.randn(2, 100))
    with pytest.raises(TypeError, match="x must be float32"):
        hk.fwht_quantize(torch.ones(2, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="group_size 48 does not divide n = 256"):
        ops.hadamard_quantize(torch.randn(2, 256), None, 256, 1.0, None, torch.int8, 48)
    with pytest.raises(TypeError, match="dtype must be int8, float8_e4m3fn or float8_e5m2"):
        ops.hadamard_quantize(torch.randn(2, 256), None, 256, 1.0, None, torch.uint8, 0)
    with pytest.raises(TypeError, match="q must be an int8 or float8"):
        hk.dequantize(torch.ones(2, 8), torch.ones(2, 1))
    with pytest.raises(ValueError, match="do not fit q"):
        hk.dequantize(torch.ones(2, 8, dtype=torch.int8), torch.ones(2, 3))


def test_not_differentiable():
    x = torch.randn(2, 64, requires_grad=True)
    with pytest.raises(RuntimeError, match="fwht_quantize is not differentiable"):
        hk.fwht_quantize(x)
    with pytest.raises(RuntimeError, match="hadamard_quantize is not differentiable"):
        ops.hadamard_quantize(x, None, 64, 1.0, None, torch.int8, 0)
    with torch.no_grad():
        q, s = hk.fwht_quantize(x)
    assert not s.requires_grad and torch.equal(q, hk.fwht_quantize(x.detach())[0])


@pytest.mark.parametrize("K,p,g,code", [(1, 64, 0, torch.int8), (12, 16, 32, torch.float8_e4m3fn),
                                        (20, 8, 0, torch.float8_e5m2)])  # fmt: skip
def test_opcheck(K, p, g, code):
    n = K * p
    x = torch.randn(3, n)
    h = orders.hadamard_k(K, torch.int8) if K > 1 else None
    torch.library.opcheck(ops.hadamard_quantize, (x, h, p, 0.5, hk.random_signs(n, seed=1), code, g))


def test_compile_fullgraph():
    n = 28 * 16
    d = hk.random_signs(n, seed=0)

    def f(x):
        q, s = hk.fwht_quantize(x * 2.0, n**-0.5, dtype=torch.float8_e4m3fn, group_size=32, signs=d)
        return hk.dequantize(q, s)

    x = torch.randn(4, n)
    assert torch.equal(torch.compile(f, fullgraph=True)(x), f(x))
