"""The "triton" backend of ``fwht_quantize`` and its op ``hadamard_quantize_triton``
(triton_kernels.py: the K * 2^k kernel with its quantising epilogue), against the reference
(transform in float64, quantisation in the accumulator type) and the CPU op. Without a GPU the
kernel runs in the Triton interpreter (conftest sets TRITON_INTERPRET=1): sizes stay small."""

import pytest
import torch
from conftest import DTYPES, LAYOUTS, RTOL, dtype_id, make_input
from test_quantize import CODES, acc_of, assert_codes_match, bits, code_id

import hadamard_kernels as hk
from hadamard_kernels import orders, quantize
from hadamard_kernels import reference as R

triton = pytest.importorskip("triton")
tl = triton.language
tk = pytest.importorskip("hadamard_kernels.triton_kernels")
_fp8_bits, _rint = tk._fp8_bits, tk._rint  # the epilogue's encoders, for _encode_kernel

pytestmark = pytest.mark.triton

ops = torch.ops.hadamard_kernels


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> str:
    if "triton" not in hk.available_backends(request.param):
        pytest.skip(f"no triton backend on {request.param} (CPU needs TRITON_INTERPRET=1)")
    return request.param


def triton_quantize(x, scale=1.0, **kwargs):
    return hk.fwht_quantize(x, scale, backend="triton", **kwargs)


# ---------------------------------------------------------------------------------------
# Bit-exact where the transform is exact (small integers): every epilogue layout. Groups
# inside a chunk (GS) or of whole chunks (GM), per row; pow2 < 16 (chunks padded to 16
# columns in registers); signs on half the cases.

CASES = [
    (128, None, None, False),  # power of two, per row
    (256, None, 32, True),  # power of two, groups of 32 (GS)
    (12 * 16, 12, 64, True),  # K * 2^k, groups of 4 chunks (GM)
    (20 * 32, 20, None, False),  # K * 2^k per row (GM = KB = 32, 12 chunks of padding)
    (12 * 64, 12, 16, False),  # K * 2^k, groups inside chunks
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-K{c[1]}-g{c[2]}" + ("-signs" if c[3] else ""))
@pytest.mark.parametrize("code", CODES, ids=code_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_exact_inputs_bit_equal(device, dtype, code, case):
    n, K, g, signs = case
    x = torch.randint(-8, 9, (3, n), device=device).to(dtype)
    d = hk.random_signs(n, seed=5, dtype=dtype, device=device) if signs else None
    q, s = triton_quantize(x, 0.5, dtype=code, group_size=g, signs=d, K=K)  # a power of two: exact
    qr, sr = R.fwht_quantize_reference(x, 0.5, dtype=code, group_size=g, signs=d, K=K)
    assert q.dtype == code and q.shape == x.shape and q.is_contiguous()
    assert s.dtype == torch.float32 and s.shape == (3, n // (g or n))
    assert torch.equal(bits(q), bits(qr))
    assert torch.equal(s, sr)


@pytest.mark.parametrize("n,K,g", [(1, None, None), (8, None, 4), (12 * 4, 12, 16), (28 * 2, 28, 8), (12 * 8, 12, 4)],
                         ids=str)  # fmt: skip
def test_small_chunks_bit_equal(device, n, K, g):
    # pow2 < 16: the kernel's chunk has 16 columns of which pow2 are the row's; groups of
    # whole chunks (12 * 4, g 16) and groups inside them.
    x = torch.randint(-8, 9, (5, n), device=device).float()
    for code in CODES:
        q, s = triton_quantize(x, dtype=code, group_size=g, K=K)
        qr, sr = R.fwht_quantize_reference(x, dtype=code, group_size=g, K=K)
        assert torch.equal(bits(q), bits(qr)) and torch.equal(s, sr)


# ---------------------------------------------------------------------------------------
# Random inputs: against the float64 transform (codes off only within its rounding error of
# a boundary), and against the CPU op where both are built


@pytest.mark.parametrize("code", CODES, ids=code_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n,K,g", [(2**10, None, 32), (28 * 32, 28, 64), (20 * 16, 20, None)], ids=str)
def test_random_inputs_against_float64_and_cpu(device, n, K, g, dtype, code):
    x = torch.randn(4, n, dtype=dtype, device=device)
    q, s = triton_quantize(x, dtype=code, group_size=g, K=K)
    _, sr = R.fwht_quantize_reference(x, dtype=code, group_size=g, K=K)
    assert ((s.double() - sr.double()).abs() <= RTOL[acc_of(dtype)] * sr.double().abs()).all()
    near = assert_codes_match(q.cpu(), s.cpu(), x.cpu(), code, g, K=K)
    assert near <= max(8, x.numel() // 50)
    if "cpu" in quantize._backends(torch.device("cpu")):
        # Powers of two: both kernels add the same butterflies in the same order, so codes and
        # scales are bit-equal (observed for every dtype and code). K * 2^k: the C++ kernel
        # adds the K-point product in another order, so scales may differ in their last bit
        # and a code within rounding of a boundary may be the neighbour (rare).
        qc, sc = hk.fwht_quantize(x.cpu(), dtype=code, group_size=g, K=K, backend="cpu")
        if K is None:
            assert torch.equal(bits(q.cpu()), bits(qc)) and torch.equal(s.cpu(), sc)
        assert ((s.cpu().double() - sc.double()).abs() <= RTOL[acc_of(dtype)] * sc.double().abs()).all()
        assert int((bits(q.cpu()) != bits(qc)).sum()) <= max(8, x.numel() // 50)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_batch_shapes(device, layout):
    x = make_input((2, 3, 256), torch.float32, layout, device)
    q, s = triton_quantize(x, 256**-0.5, group_size=64)
    assert q.shape == x.shape and s.shape == (2, 3, 4)
    qc, sc = triton_quantize(x.contiguous(), 256**-0.5, group_size=64)
    assert torch.equal(q, qc) and torch.equal(s, sc)
    q0, s0 = triton_quantize(torch.empty(0, 4, 64, device=device), group_size=32)
    assert q0.shape == (0, 4, 64) and s0.shape == (0, 4, 2)


def test_many_rows_per_program(device):
    # n = 32: 32 rows a program (kn_config), 37 rows leave a partial program: its masked rows
    # must not write scales or codes (poisoned outputs would show it).
    x = torch.randint(-8, 9, (37, 32), device=device).float()
    q, s = triton_quantize(x, dtype=torch.float8_e5m2, group_size=8)
    qr, sr = R.fwht_quantize_reference(x, dtype=torch.float8_e5m2, group_size=8)
    assert torch.equal(bits(q), bits(qr)) and torch.equal(s, sr)


# ---------------------------------------------------------------------------------------
# The encoders alone on every boundary: the float8 bits against torch's casts (ties, values a
# float32 ulp off them, subnormals, the largest code, NaN, -0), int8 ties against torch.round


@triton.jit
def _encode_kernel(v_ptr, out_ptr, N: tl.constexpr, QUANT: tl.constexpr):
    i = tl.arange(0, N)
    v = tl.load(v_ptr + i)
    if QUANT == 1:
        r = _rint(v)
        code = tl.where(r != r, 0.0, r).to(tl.int8)
    else:
        code = _fp8_bits(v, QUANT)
    tl.store(out_ptr + i, code)


def _boundaries(code: torch.dtype) -> torch.Tensor:
    """Every non-negative finite code, the midpoints between neighbours (ties), each a float32
    ulp either side, with both signs; plus NaN, and values below the smallest subnormal."""
    if code == torch.int8:
        vals = torch.arange(0, 128, dtype=torch.float64)
    else:
        vals = torch.arange(0, 128, dtype=torch.uint8).view(code).double()
        vals = vals[vals.isfinite() & (vals <= R.QUANT_MAX[code])]
    mids = ((vals[1:] + vals[:-1]) / 2).float()
    pts = torch.cat([vals.float(), mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(1e9))])
    pts = torch.cat([pts, torch.tensor([1e-30, 2.0**-20, float("nan")])])
    return torch.cat([pts, -pts])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the encoder kernel runs under the interpreter here")
@pytest.mark.parametrize("code", CODES, ids=code_id)
def test_encoders_on_every_boundary(code):
    v = _boundaries(code)
    N = triton.next_power_of_2(v.numel())
    v = torch.cat([v, torch.zeros(N - v.numel())])
    out = torch.empty(N, dtype=torch.int8)
    _encode_kernel[(1,)](v, out, N=N, QUANT={torch.int8: 1, torch.float8_e4m3fn: 2, torch.float8_e5m2: 3}[code])
    if code == torch.int8:
        want = torch.nan_to_num(v.round(), nan=0.0).to(torch.int8)
    else:
        want = bits(v.to(code))
    assert torch.equal(out, want)


# ---------------------------------------------------------------------------------------
# Zeros, inf and NaN, as the CPU op and the reference


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # inf / inf in the interpreter
@pytest.mark.parametrize("code", CODES, ids=code_id)
def test_zeros_inf_nan(device, code):
    x = torch.randn(5, 64, device=device)
    x[0] = 0.0
    x[1, 5] = float("inf")
    x[2, 7] = float("nan")
    x[3, :32] = 0.0
    x[4] = 0.0
    x[4, 0], x[4, 32] = 1.0, -1.0  # y vanishes on the first group of 32 (see test_quantize)
    q, s = triton_quantize(x, dtype=code, group_size=16)
    qr, sr = R.fwht_quantize_reference(x, dtype=code, group_size=16)
    assert torch.equal(bits(q), bits(qr))
    assert torch.allclose(s, sr, equal_nan=True, rtol=RTOL[torch.float32], atol=0)
    assert (s[0] == 0).all() and (bits(q[0]) == 0).all()
    assert (s[4, :2] == 0).all() and (bits(q[4, :32]) == 0).all() and (s[4, 2:] > 0).all()
    assert torch.isinf(s[1]).all() and torch.isnan(s[2]).all()
    if code == torch.int8:
        assert (q[1:3] == 0).all()
    else:
        assert torch.isnan(q[1:3].float()).all()
    if device == "cpu" and "cpu" in quantize._backends(torch.device("cpu")):
        qc, sc = hk.fwht_quantize(x, dtype=code, group_size=16, backend="cpu")
        assert torch.equal(bits(q), bits(qc)) and torch.equal(s.isnan(), sc.isnan())


# ---------------------------------------------------------------------------------------
# Backend choice, errors, autograd refusal, opcheck, torch.compile


def test_auto_resolution(monkeypatch):
    x = torch.randn(2, 12 * 64)
    assert quantize._resolve("auto", x, 768, 12, 64, 768, "f") == "cpu"  # CPU: the C++ kernel first
    monkeypatch.setattr(quantize, "_backends", lambda device: ("triton", "reference"))  # as on a GPU
    assert quantize._resolve("auto", x, 768, 12, 64, 32, "f") == "triton"
    assert quantize._resolve("auto", x, 768, 12, 64, 768, "f") == "triton"  # per row
    assert quantize._resolve("auto", x, 768, 12, 64, 96, "f") == "reference"  # straddles chunks
    assert quantize._resolve("auto", x, 2**16, 1, 2**16, 32, "f") == "reference"  # over 2^15 a row
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available"):
        quantize._resolve("cpu", x, 768, 12, 64, 32, "f")


def test_errors(device):
    x = torch.randn(2, 12 * 64, device=device)
    with pytest.raises(ValueError, match="group_size 96 is neither the row"):
        triton_quantize(x, group_size=96, K=12)
    h = orders.hadamard_k(12, torch.int8, device)
    with pytest.raises(ValueError, match="group_size 50 does not divide n = 768"):
        ops.hadamard_quantize_triton(x, h, 64, 1.0, None, torch.int8, 50)
    with pytest.raises(TypeError, match="dtype must be int8, float8_e4m3fn or float8_e5m2"):
        ops.hadamard_quantize_triton(x, h, 64, 1.0, None, torch.uint8, 0)
    with pytest.raises(ValueError, match="more than 32768"):
        triton_quantize(torch.randn(1, 2**16, device=device))
    with pytest.raises(TypeError, match="dtype must be torch.int8"):
        triton_quantize(x, dtype=torch.float16, K=12)


def test_not_differentiable(device):
    x = torch.randn(2, 64, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="hadamard_quantize_triton is not differentiable"):
        ops.hadamard_quantize_triton(x, None, 64, 1.0, None, torch.int8, 0)
    d = hk.random_signs(64, seed=2, device=device).requires_grad_()
    with pytest.raises(RuntimeError, match="hadamard_quantize_triton is not differentiable"):
        ops.hadamard_quantize_triton(x.detach(), None, 64, 1.0, d, torch.int8, 0)
    with torch.no_grad():
        q, s = ops.hadamard_quantize_triton(x, None, 64, 1.0, None, torch.int8, 0)
    assert not s.requires_grad and torch.equal(q, triton_quantize(x.detach())[0])


@pytest.mark.parametrize("K,p,g,code", [(1, 64, 16, torch.int8), (12, 16, 0, torch.float8_e4m3fn)])
def test_opcheck(device, K, p, g, code):
    n = K * p
    x = torch.randn(3, n, device=device)
    h = orders.hadamard_k(K, torch.int8, device).mT if K > 1 else None  # column-major, as quantize.py passes it
    d = hk.random_signs(n, seed=1, device=device)
    torch.library.opcheck(ops.hadamard_quantize_triton, (x, h, p, 0.5, d, code, g))


def test_compile_fullgraph(device):
    n = 12 * 16
    d = hk.random_signs(n, seed=0, device=device)

    def f(x):
        q, s = hk.fwht_quantize(x * 2.0, n**-0.5, dtype=torch.float8_e4m3fn, group_size=32, signs=d,
                                backend="triton")  # fmt: skip
        return hk.dequantize(q, s)

    x = torch.randn(4, n, device=device)
    assert torch.equal(torch.compile(f, fullgraph=True)(x), f(x))
