"""The CUDA kernel of the fused rotate-and-quantise op (csrc/cuda/quantize.cuh, issue 12), run
on the CPU by the harness in tests/cuda_sim/ (README there: fibers, poisoned memory, every
schedule bit-identical, byte counters).

    y = scale * [(H_K kron H_pow2) @ pad(pre . x[r], K * pow2)][:n]
    per group of g: s = float32(max |y| / qmax), q = encode(clamp(y / s, -qmax, qmax))

The oracle is the CPU op, ``torch.ops.hadamard_kernels.hadamard_quantize`` (tests/test_quantize.py
holds it to the float64 reference), run on the same x:

- "int" inputs (small integers, power-of-two scales): the transform is exact in the
  accumulator, so codes and scales must equal the CPU op's bit for bit, whatever order the two
  kernels add in; this is the bulk of the coverage (every code, K in {1, 12, 20, 28, 40, 172},
  pow2 from 1 to the largest one-pass tile, n padded, groups of the row, 32, 64, 128, odd and
  other divisors, every dtype, pre signs, strided and misaligned rows, partial blocks, grid-stride
  iterations);
- "boundary" inputs: rows (A + t, A - t) / 2 whose y is exactly (A, t) with A = qmax, so s = 1 and
  the encoder sees t itself: every float8 code, every midpoint between codes and a float32 ulp
  either side, int8 ties (float32 where exact in float32, all in float64); also checked against
  torch's own casts of t;
- "special" inputs: zero rows (scale 0), inf, NaN, values whose scale underflows or whose y
  overflows, a group of zeros;
- "randn" inputs: the transform rounds differently from the CPU kernel's, so scales agree to
  the accumulator's rounding and codes are those of the float64 transform except within its
  rounding error of a boundary (test_quantize.assert_codes_match).

NaN codes are compared as NaN (the sign bit of a NaN is the hardware's: x86 divides inf by
inf into -NaN, a GPU into +NaN), everything else bit for bit. The byte-counter gate: one read
of x, one write of the codes and of the scales for every one-pass K * 2^k up to 40 * 2^10.
HK_SIM_FULL=1 runs the full product of codes, groups and dtypes instead of CI's rotation.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from conftest import RTOL, dtype_id
from test_quantize import assert_codes_match

from cuda_sim import harness as H
from hadamard_kernels import orders
from hadamard_kernels import reference as R

if shutil.which(H.CXX) is None:
    pytest.skip(f"the CPU-run CUDA harness needs a C++ compiler ({H.CXX})", allow_module_level=True)

SEEDS = tuple(int(s) for s in os.environ.get("HK_SIM_SEEDS", "1 2 3").split())
FULL = os.environ.get("HK_SIM_FULL") == "1"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CODES = [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2]
ops = torch.ops.hadamard_kernels

# The kernel's constants (csrc/cuda/orders.cuh, quantize.cuh), for the coverage checks.
TARGET_SMEM = 32 * 1024  # kKnTargetSmemBytes
SMEM_LIMIT = 227 * 1024  # the simulated sm_90's opt-in limit


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def max_tile_log2(dtype: torch.dtype, K: int) -> int:
    """Largest one-pass pow2 (log2): the row tiles (K = 1), with the K-point stage (K > 1)."""
    if K == 1:
        return 14 if dtype == torch.float64 else 15
    return 12 if dtype.itemsize == 2 else 13


def one_pass(K: int, pow2: int, n: int, dtype: torch.dtype) -> bool:
    """kn_quantize_single_pass on the simulated sm_90 (rows of R = 1 buffer: used chunks)."""
    if pow2.bit_length() - 1 > max_tile_log2(dtype, K):
        return False
    return -(-n // pow2) * pow2 * acc_dtype(dtype).itemsize <= SMEM_LIMIT


def rows_per_block(K: int, pow2: int, n: int, dtype: torch.dtype) -> int:
    """R of kn_shape for the buffered epilogue: rows filling about 32 KB, at least 1."""
    return max(1, TARGET_SMEM // (-(-n // pow2) * pow2 * acc_dtype(dtype).itemsize))


def threads(pow2: int, dtype: torch.dtype) -> int:
    """RowTile<T, L>::THREADS: 256, or one row of 512 threads for the largest tiles."""
    L = pow2.bit_length() - 1
    return 512 if (L == 15 and dtype != torch.float64) else 256


def segment(K: int, pow2: int, n: int, group: int, dtype: torch.dtype) -> int:
    """Threads a group takes (quantize.cuh: quant_segment_log2, on the vector or scalar units)."""
    qv = 16 // acc_dtype(dtype).itemsize
    vec = group % qv == 0 and n % qv == 0 and (-(-n // pow2) * pow2) % qv == 0
    units = group // (qv if vec else 1)
    if units <= 32:
        return 1 << (units - 1).bit_length()
    per = 1 << (-(-units // 8) - 1).bit_length()
    return min(threads(pow2, dtype), max(32, per))


# ---------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    K: int  # 1: hk None
    pow2: int
    n: int
    rows: int
    dtype: torch.dtype
    code: torch.dtype
    group: int = 0  # 0: the row
    inputs: str = "int"  # "int", "boundary", "special", "randn"
    pre: bool = True
    layout: str = "contiguous"  # or "row-strided" (rows padded by 16 entries), "misaligned"
    max_grid: int = 0
    seeds: int = 0  # 0: every seed (random and warp-ahead); else the first `seeds`

    @property
    def g(self) -> int:
        return self.group or self.n

    @property
    def id(self) -> str:
        flags = ("-pre" if self.pre else "") + (f"-grid{self.max_grid}" if self.max_grid else "")
        return (f"K{self.K}-p{self.pow2}-n{self.n}-r{self.rows}-{dtype_id(self.dtype)}-{dtype_id(self.code)}"
                f"-g{self.group or 'row'}-{self.inputs}-{self.layout}{flags}")  # fmt: skip

    @property
    def schedules(self) -> list[str]:
        seeds = SEEDS if not self.seeds else SEEDS[: self.seeds]
        return H.schedules(seeds, max_grid=self.max_grid)


def _groups(n: int, K: int) -> list[int]:
    """The row, 32, 64, 128, the largest odd divisor > 1 (K's odd part: 3, 5, 7, 43 ...), a
    non-power-of-two even one, and 1, where they divide n and differ from n."""
    odd = n
    while odd % 2 == 0:
        odd //= 2
    cands = [0, 32, 64, 128, odd, 3 * 32, 12, 1]
    out = []
    for g in cands:
        if g == 0 or (g < n and n % g == 0 and g not in out):
            out.append(g)
    return out


def _rows_for(K: int, pow2: int, n: int, dtype: torch.dtype, budget: int = 1 << 14) -> int:
    """Two blocks and a partial third where the entries allow (R + R + 1 rows), else fewer."""
    r = rows_per_block(K, pow2, n, dtype)
    return max(1, min(2 * r + 1, budget // max(n, 1)))


#: (K, pow2, n): exact and padded widths, every tile kind (one thread a row, 2, 4, 32 threads,
#: several warps: the exchange in the row buffer), K = 1 up to the largest tile.
SHAPES = [
    (1, 1, 1), (1, 8, 8), (1, 64, 60), (1, 128, 128), (1, 1024, 1024), (1, 4096, 4096 - 64),
    (12, 1, 12), (12, 16, 12 * 16), (12, 64, 12 * 64 - 20), (12, 256, 12 * 256),
    (20, 2, 40), (20, 32, 20 * 32 - 5), (20, 128, 20 * 128),
    (28, 4, 100), (28, 64, 28 * 64), (28, 512, 28 * 512 - 256),
    (40, 16, 40 * 16), (172, 16, 172 * 16 - 2), (172, 64, 172 * 64),
]  # fmt: skip


def cases() -> list[Case]:
    out = []
    i = 0
    for K, pow2, n in SHAPES:
        for g in _groups(n, K):
            i += 1
            # CI: one dtype and one code per (shape, group), rotating; FULL: every pair.
            pairs = [(d, c) for d in DTYPES for c in CODES] if FULL else [(DTYPES[i % 4], CODES[i % 3])]
            for dtype, code in pairs:
                if not one_pass(K, pow2, n, dtype):
                    continue
                big = n * acc_dtype(dtype).itemsize > 16 * 1024
                out.append(Case(K, pow2, n, 1 if big else _rows_for(K, pow2, n, dtype), dtype, code, g,
                                pre=i % 3 != 0, seeds=1 if big else 0))  # fmt: skip
    # The largest tiles: K = 1 up to 2^15 (2^14 in float64), K > 1 up to the K-point limit.
    out += [
        Case(1, 1 << 15, 1 << 15, 1, torch.float32, torch.float8_e4m3fn, 0, seeds=1),
        Case(1, 1 << 15, 1 << 15, 1, torch.bfloat16, torch.int8, 1024, seeds=1),
        Case(1, 1 << 14, (1 << 14) - 3, 1, torch.float64, torch.float8_e5m2, 0, seeds=1),
        Case(12, 1 << 13, 2 * 8192, 1, torch.float32, torch.int8, 128, seeds=1),
        Case(12, 1 << 12, 3 * 4096 + 6, 1, torch.float16, torch.float8_e4m3fn, 3, seeds=1),
        Case(40, 1 << 10, 40 * 1024, 1, torch.float32, torch.float8_e5m2, 0, pre=False, seeds=1),
        Case(12, 1 << 9, 12 * 512, 2, torch.float64, torch.int8, 64, seeds=1),
    ]
    # Layouts: rows padded (strided, still aligned), misaligned (scalar loads of x).
    out += [
        Case(20, 64, 20 * 64, 5, torch.float32, torch.int8, 64, layout="row-strided"),
        Case(12, 16, 12 * 16 - 2, 30, torch.float16, torch.float8_e4m3fn, 10, layout="misaligned"),
        Case(1, 256, 250, 5, torch.float32, torch.float8_e5m2, 0, layout="misaligned"),
    ]
    # Grid-stride iterations: one or two blocks do every row group.
    out += [
        Case(12, 64, 12 * 64, 25, torch.float32, torch.int8, 32, max_grid=1),
        Case(1, 1 << 12, 1 << 12, 5, torch.float32, torch.float8_e4m3fn, 0, max_grid=2, seeds=1),
        Case(20, 1 << 11, 20 * 2048, 2, torch.float32, torch.int8, 2048, max_grid=1, seeds=1),
    ]
    # Special values, and the encoders on every boundary, every code.
    for code in CODES:
        out += [
            Case(1, 64, 64, 8, torch.float32, code, 16, inputs="special", pre=False),
            Case(12, 64, 12 * 64, 8, torch.float32, code, 32, inputs="special"),
            Case(20, 16, 20 * 16, 8, torch.float64, code, 0, inputs="special"),
            Case(28, 8, 28 * 8, 8, torch.float16, code, 8, inputs="special"),
            Case(1, 2, 2, 0, torch.float32, code, 0, inputs="boundary", pre=False),  # rows: from the boundaries
            Case(1, 2, 2, 0, torch.float64, code, 0, inputs="boundary", pre=False),
        ]
    # Random inputs: scales to rounding, codes against the float64 transform.
    out += [
        Case(1, 1024, 1024, 4, torch.float32, torch.int8, 32, inputs="randn"),
        Case(28, 32, 28 * 32, 4, torch.bfloat16, torch.float8_e4m3fn, 64, inputs="randn"),
        Case(20, 16, 20 * 16, 4, torch.float64, torch.float8_e5m2, 0, inputs="randn"),
        Case(172, 64, 172 * 64, 1, torch.float16, torch.int8, 128, inputs="randn", seeds=1),
    ]
    return out


#: The byte-counter gate: one read of x, one write of codes and scales, for the one-pass
#: K * 2^k up to 40 * 2^10. CI: float32 at each K of orders.ORDERS (and K = 1) at its largest
#: pow2 with K * pow2 <= 40 * 2^10, and float32 and float16 at 12, 20, 28, 40 times 2^10 and
#: 2^11, 40 * 64, 172 * 64 and 2^15 (test_cuda_sim_orders.GATE's shapes); FULL: every pow2 of
#: every K, every dtype where one pass. One row each (the cases above have several).
def gate_cases() -> list[Case]:
    orders_gate = {(K, p) for K in (12, 20, 28, 40) for p in (1024, 2048)} | {(40, 64), (172, 64), (1, 1 << 15)}
    out = []
    for dtype in DTYPES:
        for K in (1, *orders.ORDERS):
            for L in range(16):
                pow2 = 1 << L
                if (K * pow2 > 40 * 1024 and K > 1) or not one_pass(K, pow2, K * pow2, dtype):
                    continue
                largest = K * pow2 * 2 > 40 * 1024 or not one_pass(K, pow2 * 2, K * pow2 * 2, dtype)
                if not FULL and not ((dtype == torch.float32 and largest) or
                                     (dtype in (torch.float32, torch.float16) and (K, pow2) in orders_gate)):  # fmt: skip
                    continue
                i = len(out)
                out.append(Case(K, pow2, K * pow2, 1, dtype, CODES[i % 3], 128 if i % 2 else 0, pre=False, seeds=1))
    return out


CASES = cases()
GATE = gate_cases()


def _boundaries(code: torch.dtype) -> torch.Tensor:
    """Every non-negative finite code, the midpoints between neighbours (ties) and a float32
    ulp either side, both signs; plus NaN, -0, and values below the smallest subnormal
    (float64, holding float32 values)."""
    if code == torch.int8:
        vals = torch.arange(0, 128, dtype=torch.float64)
    else:
        vals = torch.arange(0, 128, dtype=torch.uint8).view(code).double()
        vals = vals[vals.isfinite() & (vals <= R.QUANT_MAX[code])]
    mids = ((vals[1:] + vals[:-1]) / 2).float()
    pts = torch.cat([vals.float(), mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(1e9))])
    pts = torch.cat([pts, torch.tensor([1e-30, 2.0**-20, float("nan")])])
    return torch.cat([pts, -pts]).double()


def make_x(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, H.View, torch.Tensor | None]:
    """x (a view in case.layout) and, for "boundary" inputs, the t each row encodes."""
    rows, n = case.rows, case.n
    t = None
    if case.inputs == "boundary":
        # Rows whose transform (x0 + x1, x0 - x1) is exactly (qmax, t) in the accumulator;
        # NaN rows too (their scale is NaN). -0 becomes +0: x0 - x1 is never -0.
        qmax = R.QUANT_MAX[case.code]
        t = _boundaries(case.code) + 0.0
        x = torch.stack([(qmax + t) / 2, (qmax - t) / 2], dim=1).to(case.dtype)
        x0, x1 = x[:, 0].double(), x[:, 1].double()
        exact = ((x0 + x1 == qmax) & (x0 - x1 == t)) | t.isnan()
        x, t = x[exact].contiguous(), t[exact]
        return x, H.View.of(x), t
    if case.inputs in ("int", "special"):
        base = torch.randint(-8, 9, (rows, n + 16), generator=gen).double()
    else:
        base = torch.randn(rows, n + 16, generator=gen, dtype=torch.float64)
    if case.inputs == "special":
        # Integer rows (exact transforms), except: zeros (scale 0); an inf, a NaN, a -inf; one
        # smallest subnormal (float32 / float64: amax / qmax underflows, scale 0); integers times
        # the largest power of two that keeps every partial sum finite; e_0 - e_{pow2/2}, whose
        # transform vanishes on the first half of each chunk (K = 1: zero groups).
        finfo = torch.finfo(case.dtype)
        base[0] = 0.0
        base[1, 5] = float("inf")
        base[2, 7] = float("nan")
        base[3] = 0.0
        base[3, 1] = finfo.smallest_normal * finfo.eps
        base[4] *= 2.0 ** (int(math.log2(finfo.max)) - 4 - (n * 8).bit_length())
        base[5] = 0.0
        base[5, 0], base[5, case.pow2 // 2] = 1.0, -1.0
        base[6, 3] = -float("inf")
    if case.layout == "contiguous":
        x = base[:, :n].to(case.dtype).contiguous()
    elif case.layout == "row-strided":
        x = base.to(case.dtype)[:, :n]
    elif case.layout == "misaligned":
        x = base.to(case.dtype).flatten()[1 : rows * n + 1].view(rows, n)
    else:
        raise ValueError(case.layout)
    return x, H.View.of(x), t


@dataclasses.dataclass
class Outcome:
    case: Case
    result: H.QuantResult | None
    error: str | None
    x: torch.Tensor
    hk: torch.Tensor | None
    pre: torch.Tensor | None
    scale: float
    t: torch.Tensor | None


def run_case(case: Case, runner: Path, env: dict[str, str] | None = None) -> Outcome:
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    x, xv, t = make_x(case, gen)
    rows = x.shape[0]
    hk = None
    if case.K > 1:
        family = "rotation" if case.inputs == "randn" else ("fht" if case.K in (12, 20, 28) else "rotation")
        hk = orders.hadamard_k(case.K, torch.int8, family=family)
    acc = acc_dtype(case.dtype)
    pre = (torch.randint(0, 2, (case.n,), generator=gen) * 2 - 1).to(acc) if case.pre else None
    # A power of two (exact) except for random inputs, whose codes are checked at scale 1.
    scale = 1.0 if case.inputs in ("randn", "boundary") else 2.0 ** -(zlib.crc32(case.id.encode()) % 5)
    try:
        res = H.run_quantize(x=xv, rows=rows, n=case.n, pow2=case.pow2, code=case.code, group=case.g,
                             schedules=case.schedules, hk=hk, pre=pre, scale=scale, runner=runner, env=env)  # fmt: skip
        return Outcome(case, res, None, x, hk, pre, scale, t)
    except H.SimFailure as e:
        return Outcome(case, None, str(e), x, hk, pre, scale, t)


def bits(q: torch.Tensor) -> torch.Tensor:
    """The codes' bytes, float8 NaN codes (0x7f / 0xff) as 0x7f: the sign of a NaN is not
    portable (module docstring)."""
    b = q.view(torch.uint8).clone()
    if q.dtype != torch.int8:
        b[q.float().isnan()] = 0x7F
    return b


def cpu_op(o: Outcome) -> tuple[torch.Tensor, torch.Tensor]:
    c = o.case
    return ops.hadamard_quantize(o.x, o.hk, c.pow2, o.scale, o.pre, c.code, c.group)


def assert_matches_cpu(o: Outcome) -> None:
    """Bit-equal codes (NaN as NaN) and scales (the CPU op's NaN scale is the kernel's)."""
    assert o.error is None, o.error
    q, s = o.result.q, o.result.scales
    qc, sc = cpu_op(o)
    assert q.shape == qc.shape and s.shape == sc.shape, (q.shape, qc.shape, s.shape, sc.shape)
    diff = (bits(q) != bits(qc)).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} codes differ, first at {diff[:4].tolist()}"
    assert torch.equal(s.view(torch.int32), sc.view(torch.int32)), (s - sc).abs().max()


@pytest.fixture(scope="module")
def runner() -> Path:
    return H.build()


@pytest.fixture(scope="module")
def outcomes(request, runner) -> dict[str, Outcome]:
    """Every selected case, two runner processes at a time."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}  # fmt: skip
    todo = sorted({c.id: c for c in CASES + GATE if c.id in selected}.values(), key=lambda c: -c.n * c.K * max(c.rows, 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # the costliest first
        return {o.case.id: o for o in pool.map(lambda c: run_case(c, runner), todo)}


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


def test_cases_cover_the_issue():
    """Every code and dtype, K in {1, 12, 20, 28, 172}, pow2 from 1 up to the largest tiles,
    padded rows, groups of the row, 32, 64, 128, odd sizes, segments of one thread, of several
    lanes, of whole warps looping and of several warps; pre signs both ways; partial blocks,
    grid-stride iterations, strided and misaligned rows; zeros, inf, NaN and encoder boundaries."""
    ints = [c for c in CASES if c.inputs == "int"]
    assert {c.code for c in ints} == set(CODES) and {c.dtype for c in ints} == set(DTYPES)
    assert {1, 12, 20, 28, 172} <= {c.K for c in ints}
    assert {1, 2, 4, 16, 64, 1024, 1 << 13, 1 << 15} <= {c.pow2 for c in ints}
    assert any(c.n < c.K * c.pow2 for c in ints) and any(c.pre for c in ints) and any(not c.pre for c in ints)
    groups = {c.group for c in ints}
    assert {0, 32, 64, 128} <= groups and any(g % 2 for g in groups if g > 1)
    widths = {segment(c.K, c.pow2, c.n, c.g, c.dtype) for c in ints}
    assert {1, 32} <= widths and any(1 < w < 32 for w in widths) and any(w > 32 for w in widths)
    assert any(c.rows > rows_per_block(c.K, c.pow2, c.n, c.dtype) and c.rows % rows_per_block(c.K, c.pow2, c.n, c.dtype)
               for c in ints)  # fmt: skip
    assert {c.layout for c in ints} == {"contiguous", "row-strided", "misaligned"} and any(c.max_grid for c in ints)
    assert {c.code for c in CASES if c.inputs == "special"} == set(CODES)
    assert {(c.code, c.dtype) for c in CASES if c.inputs == "boundary"} >= {(code, d) for code in CODES
                                                                             for d in (torch.float32, torch.float64)}
    assert all(one_pass(c.K, c.pow2, c.n, c.dtype) for c in CASES + GATE)


@pytest.mark.parametrize("case", [c for c in CASES if c.inputs in ("int", "special", "boundary")], ids=lambda c: c.id)
def test_quantize_kernel_matches_cpu_op(case: Case, outcomes):
    o = outcomes[case.id]
    assert_matches_cpu(o)
    if case.inputs == "special":
        q, s = o.result.q, o.result.scales
        assert (s[0] == 0).all() and (bits(q[0]) == 0).all()
        assert torch.isinf(s[1]).all() and torch.isnan(s[2]).all() and torch.isinf(s[6]).all()
        if case.K == 1 and case.g <= case.pow2 // 2 and not case.pre:
            assert s[5, 0] == 0 and (bits(q[5, : case.g]) == 0).all()
    if case.inputs == "boundary":
        # The encoder against torch's own casts of t (s = 1 exactly).
        q, t = o.result.q, o.t
        assert (o.result.scales[~t.isnan()] == 1).all()
        want = torch.nan_to_num(t.round(), nan=0.0).to(torch.int8) if case.code == torch.int8 else t.float().to(case.code)
        assert torch.equal(bits(q[:, 1]), bits(want))


@pytest.mark.parametrize("case", [c for c in CASES if c.inputs == "randn"], ids=lambda c: c.id)
def test_quantize_kernel_random_inputs(case: Case, outcomes):
    """Codes of the float64 transform except near a boundary; scales and codes close to the
    CPU op's (which adds in another order)."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    q, s = o.result.q, o.result.scales
    qc, sc = cpu_op(o)
    tol = RTOL[acc_dtype(case.dtype)]
    assert ((s.double() - sc.double()).abs() <= tol * sc.double().abs()).all()
    signs = None if o.pre is None else o.pre.to(case.dtype)
    near = assert_codes_match(q, s, o.x, case.code, case.group or None, signs=signs, K=case.K if case.K > 1 else None)
    assert near <= max(8, q.numel() // 50)
    assert int((bits(q) != bits(qc)).sum()) <= max(8, q.numel() // 50)


def _quantize_launch(o: Outcome) -> dict:
    (launch,) = [la for la in o.result.launches if "kn_quantize_kernel" in la["kernel"]]
    assert len(o.result.launches) == (1 if o.case.K == 1 else 2), o.result.launches
    return launch


@pytest.mark.parametrize("case", [c for c in CASES + GATE if c.layout == "contiguous" and c.inputs != "boundary"],
                         ids=lambda c: c.id)  # fmt: skip
def test_quantize_kernel_reads_x_once_and_writes_q_once(case: Case, outcomes):
    """One pass over global memory: every byte of x read exactly once, every code and every
    scale written exactly once, nothing else of that size (H_K's masks and the pre signs, read
    per block, are the other buffers)."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    bufs = _quantize_launch(o)["buffers"]
    size = case.rows * case.n
    x, q, s = bufs["x"], bufs["q"], bufs["scales"]
    assert x["read"] == x["read_unique"] == size * case.dtype.itemsize and x["written"] == 0, x
    assert q["written"] == q["written_unique"] == size and q["read"] == 0, q
    assert s["written"] == s["written_unique"] == case.rows * (case.n // case.g) * 4 and s["read"] == 0, s
    assert set(bufs) <= {"x", "hk", "pre", "workspace", "q", "scales"}, bufs
    if case in GATE:
        assert_matches_cpu(o)


@pytest.mark.parametrize("case", [c for c in CASES + GATE if c.layout == "contiguous" and c.inputs == "int" and
                                  c.n % 32 == 0 and c.pow2 * c.dtype.itemsize >= 32 and c.g % 4 == 0],
                         ids=lambda c: c.id)  # fmt: skip
def test_quantize_kernel_is_coalesced(case: Case, outcomes):
    """Rows of whole 32-byte sectors (and chunks of at least one): every warp-wide load of x and
    store of the codes touches the fewest sectors its bytes allow."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    bufs = _quantize_launch(o)["buffers"]
    assert bufs["x"]["load_sectors"] == bufs["x"]["load_sectors_ideal"], bufs["x"]
    assert bufs["q"]["store_sectors"] == bufs["q"]["store_sectors_ideal"], bufs["q"]


@pytest.mark.parametrize("case", [c for c in CASES + GATE if c.pow2 * acc_dtype(c.dtype).itemsize >= 512 and
                                  c.layout == "contiguous" and c.n == c.K * c.pow2],
                         ids=lambda c: c.id)  # fmt: skip
def test_quantize_kernel_has_no_bank_conflicts(case: Case, outcomes):
    """Chunks of at least 512 bytes of accumulators and unpadded rows: no shared-memory bank
    conflict (as the transform kernel; smaller chunks have some, left so)."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    for launch in o.result.launches:
        assert launch["shared_wavefronts"] == launch["shared_wavefronts_ideal"], launch


# ---------------------------------------------------------------------------------------
# The committed counter table (tests/cuda_sim/table.py)

COUNTERS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cuda-sim-counters-quantize.json"


def _table_case(c: Case) -> bool:
    return c in GATE or (c.layout == "contiguous" and c.inputs == "int" and not c.max_grid and c.K * c.pow2 >= 1024)


def counter_rows(selected: dict[str, Outcome]) -> list[dict]:
    rows = []
    for c in CASES + GATE:
        if _table_case(c) and c.id in selected and selected[c.id].result is not None:
            for launch in selected[c.id].result.launches:
                rows.append({"case": c.id, "K": c.K, "pow2": c.pow2, "n": c.n, "rows": c.rows, "group": c.g,
                             "dtype": dtype_id(c.dtype), "code": dtype_id(c.code), **launch})  # fmt: skip
    return rows


def test_committed_counter_table_is_current(outcomes):
    """benchmarks/results/cuda-sim-counters-quantize.json holds what the kernel does now
    (regenerate with `python tests/cuda_sim/table.py` after a kernel change)."""
    committed = {(r["case"], r["kernel"]): r for r in json.loads(COUNTERS.read_text())["launches"]}
    fresh = counter_rows(outcomes)
    assert fresh, "no table case was selected"
    for r in fresh:
        assert committed.get((r["case"], r["kernel"])) == r, f"stale quantize counter table at {r['case']}"


# ---------------------------------------------------------------------------------------
# The harness can fail this kernel: mutants (test_cuda_sim.MUTATIONS 7 to 11, one build with
# the other kernels' mutants) that must be rejected, each beside an unmutated control run.

#: Mutant -> (what it breaks, a case that must be rejected). Float32: the mutant build's type.
QUANT_MUTANTS = {
    7: ("the barrier between the in-place K-point stage's reads and its writes removed",
        Case(20, 16, 20 * 16, 3, torch.float32, torch.int8, 32)),
    8: ("the barrier between the K-point stage's writes and the quantiser's reads removed",
        Case(12, 64, 12 * 64, 5, torch.float32, torch.float8_e4m3fn, 64)),
    9: ("the group's max |y| reduced over half its lanes", Case(1, 256, 256, 3, torch.float32, torch.int8, 128)),
    10: ("the barrier of the cross-warp group maximum removed",
         Case(1, 4096, 4096, 2, torch.float32, torch.float8_e5m2, 0)),
    11: ("a group's maximum taken over one unit of the next group too",
         Case(12, 16, 12 * 16 - 8, 3, torch.float32, torch.int8, 8)),
}  # fmt: skip


@pytest.mark.parametrize("mutant", sorted(QUANT_MUTANTS), ids=lambda m: f"mutant{m}")
def test_harness_rejects_quantize_mutant(mutant: int, mutant_runner: Path):
    what, case = QUANT_MUTANTS[mutant]
    assert segment(case.K, case.pow2, case.n, case.g, case.dtype) > (32 if mutant == 10 else 1)
    assert_matches_cpu(run_case(case, mutant_runner))  # the control: the same build, no mutant
    o = run_case(case, mutant_runner, env={"HK_SIM_MUTANT": str(mutant)})
    if o.error is not None:
        return  # rejected by a check of the harness, AddressSanitizer or UBSan
    try:
        assert_matches_cpu(o)
    except AssertionError:
        return  # rejected: other codes or scales than the CPU op's
    pytest.fail(f"not caught: {what}")
