"""The CUDA kernel of the transforms of order K * 2^k (csrc/cuda/orders.cuh, issue 11), run on
the CPU by the harness in tests/cuda_sim/ (README there: fibers, poisoned memory, every
schedule bit-identical, byte counters).

    y[r] = scale * post . [(H_K kron H_pow2) @ pad(pre . x[r], K * pow2)][:n]

against a float64 reference computed here from its definition (Y = H_K X H_pow2 on the
(K, pow2) view of the padded row; H_K from hadamard_kernels.orders, X H_pow2 by
reference.fwht_reference), itself checked once against the dense Kronecker product and the
package's reference twin. Coverage: every K of orders.ORDERS, pow2 from 1 to 2^10 (and the
multi-warp tiles above), n < K * pow2 (padding), pre and post signs, scale, every dtype, in
place, several rows with a partial last block, grid-stride iterations; the byte-counter gate
(one read of x, one write of y) for K * 2^k up to 40 * 2^10 in float32 and float16.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import RTOL, dtype_id

from cuda_sim import harness as H
from hadamard_kernels import orders
from hadamard_kernels import reference as R

if shutil.which(H.CXX) is None:
    pytest.skip(f"the CPU-run CUDA harness needs a C++ compiler ({H.CXX})", allow_module_level=True)

SEEDS = tuple(int(s) for s in os.environ.get("HK_SIM_SEEDS", "1 2 3").split())
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TARGET_SMEM = 32 * 1024  # orders.cuh: kKnTargetSmemBytes


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_per_block(K: int, pow2: int, n: int, dtype: torch.dtype) -> int:
    """R of orders.cuh's kn_shape (K > 1): rows whose buffers fill about 32 KB, at least 1."""
    used = -(-n // pow2)
    return max(1, TARGET_SMEM // (used * pow2 * acc_dtype(dtype).itemsize))


def kn_reference(x: torch.Tensor, hk: torch.Tensor | None, pow2: int, scale: float,
                 pre: torch.Tensor | None, post: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """The op's formula in float64, x (rows, n): Y = H_K X H_pow2 on the (K, pow2) view."""
    rows, n = x.shape
    K = 1 if hk is None else hk.shape[0]
    w = x.double() * (1 if pre is None else pre.double())
    w = F.pad(w, (0, K * pow2 - n)).view(rows, K, pow2)
    h_k = torch.ones(1, 1, dtype=torch.float64) if hk is None else hk.double()
    y = (h_k @ R.fwht_reference(w)).reshape(rows, K * pow2)[:, :n]
    return scale * y * (1 if post is None else post.double())


def test_reference_is_the_kronecker_product():
    """The reference above equals the dense (H_K kron H_pow2) and the package's twin."""
    gen = torch.Generator().manual_seed(11)
    hk = orders.hadamard_k(20, torch.int8)
    x = torch.randn(3, 20 * 8, generator=gen, dtype=torch.float64)
    pre, post = (torch.randint(0, 2, (150,), generator=gen).double() * 2 - 1 for _ in range(2))
    dense = torch.kron(hk.double(), R.hadamard_matrix(8, dtype=torch.float64))
    want = 0.3 * post * (F.pad(pre * x[:, :150], (0, 10)) @ dense.T)[:, :150]
    assert torch.allclose(kn_reference(x[:, :150], hk, 8, 0.3, pre, post), want, rtol=0, atol=1e-12)
    twin = R.hadamard_transform_order_reference(x, 0.3, K=20, signs=pre.new_ones(160))
    assert torch.allclose(kn_reference(x, hk, 8, 0.3, None, None), twin, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    K: int  # 1: hk None
    pow2: int
    n: int
    rows: int
    dtype: torch.dtype
    pre: bool = True
    post: bool = True
    inplace: bool = False
    layout: str = "contiguous"  # or "row-strided" (rows padded by 16 entries), "misaligned"
    max_grid: int = 0
    seeds: int = 0  # schedules: 0 = every seed (random and warp-ahead), else the first `seeds`

    @property
    def id(self) -> str:
        flags = ("-pre" if self.pre else "") + ("-post" if self.post else "") + ("-inplace" if self.inplace else "")
        flags += f"-grid{self.max_grid}" if self.max_grid else ""
        return f"K{self.K}-p{self.pow2}-n{self.n}-r{self.rows}-{dtype_id(self.dtype)}-{self.layout}{flags}"

    @property
    def schedules(self) -> list[str]:
        seeds = SEEDS if not self.seeds else SEEDS[: self.seeds]
        return H.schedules(seeds, max_grid=self.max_grid)


def _rows_for(K: int, pow2: int, n: int, dtype: torch.dtype, budget: int = 1 << 15) -> int:
    """Two blocks and a partial third where the entries allow (R + R + 1 rows), else fewer."""
    if K == 1:
        return 3
    r = rows_per_block(K, pow2, n, dtype)
    return max(1, min(2 * r + 1, budget // max(n, 1)))


def cases() -> list[Case]:
    out = []
    # Every K of orders.ORDERS (pow2 varied, rows of at most 11008 = 172 * 64 entries), every
    # dtype in turn, sizes that pad and exact ones, signs on and off in turn.
    pow2s = {12: 1, 20: 2, 28: 4, 36: 8, 40: 16, 44: 32, 52: 64, 60: 128, 108: 32, 140: 16, 156: 8, 172: 64}
    for j, K in enumerate(orders.ORDERS):
        pow2 = pow2s[K]
        dtype = DTYPES[j % 4]
        n = K * pow2 - (j % 3) * max(1, pow2 // 3) - (1 if pow2 > 2 and j % 2 else 0)
        out.append(Case(K, pow2, n, _rows_for(K, pow2, n, dtype), dtype, pre=j % 3 != 1, post=j % 3 != 2,
                        seeds=0 if K * pow2 <= 4096 else 1))  # fmt: skip
    # pow2 = 2^0 .. 2^10 at K = 12 and 28 (fht family), exact and padded.
    for L in range(11):
        for K, dtype in ((12, DTYPES[L % 4]), (28, DTYPES[(L + 1) % 4])):
            n = K * (1 << L) if L % 2 else max(1, K * (1 << L) - (1 << L) // 2 - 1)
            out.append(Case(K, 1 << L, n, _rows_for(K, 1 << L, n, dtype), dtype, pre=L % 3 != 0, post=L % 4 != 1,
                            seeds=0 if K << L <= 4096 else 1))  # fmt: skip
    # Tiles spanning several warps (the exchange in the chunk's own buffer slot), K > 1: float32
    # from L = 12, float16 / bfloat16 from 11; and the last L with the K-point stage.
    out += [
        Case(12, 1 << 12, 3 * 4096 + 5, 2, torch.float32, seeds=1),
        Case(20, 1 << 11, 5 * 2048 - 3, 3, torch.float16, seeds=1),
        Case(2 * 6, 1 << 13, 2 * 8192, 1, torch.float32, pre=False, seeds=1),
        Case(36, 1 << 12, 4096 + 1, 1, torch.bfloat16, post=False, seeds=1),
        Case(12, 1 << 9, 12 * 512, 2, torch.float64, seeds=1),
    ]
    # K = 1 (hk None): the direct path, every single-pass tile kind, with and without signs.
    for L, dtype in ((0, torch.float32), (3, torch.float16), (7, torch.bfloat16), (10, torch.float64),
                     (12, torch.float32), (13, torch.float16), (14, torch.float64), (15, torch.bfloat16)):  # fmt: skip
        n = (1 << L) - (L % 3)
        out.append(Case(1, 1 << L, max(n, 1), 3 if L < 13 else 1, dtype, pre=L % 2 == 0, post=L != 7,
                        seeds=0 if L < 12 else 1))  # fmt: skip
    # Layouts: rows padded (strided rows, still aligned), misaligned (scalar loads and stores).
    out += [
        Case(20, 64, 20 * 64, 5, torch.float32, layout="row-strided"),
        Case(12, 16, 12 * 16 - 2, 30, torch.float16, layout="misaligned"),
        Case(1, 256, 250, 5, torch.float32, layout="misaligned"),
    ]
    # In place, with a partial last block.
    out += [
        Case(40, 64, 40 * 64, 7, torch.float32, inplace=True),
        Case(172, 16, 172 * 16 - 5, 5, torch.bfloat16, inplace=True),
        Case(12, 2048, 12 * 2048, 1, torch.float16, inplace=True, seeds=1),
        Case(1, 1 << 12, 1 << 12, 3, torch.float32, inplace=True, seeds=1),
        Case(28, 4, 100, 600, torch.float64, inplace=True),
    ]
    # Grid-stride iterations: two blocks do all rows (each block several row groups).
    out += [
        Case(12, 64, 12 * 64, 9, torch.float32, max_grid=2),
        Case(20, 1 << 11, 20 * 2048, 3, torch.float32, max_grid=1, seeds=1),
        Case(1, 1 << 12, 1 << 12, 9, torch.float16, max_grid=2, seeds=1),
    ]
    return out


#: The byte-counter gate: one read of x and one write of y for K * 2^k up to 40 * 2^10 (issue 11).
GATE = [
    Case(K, pow2, K * pow2, 2, dtype, seeds=1, pre=False, post=False)
    for dtype in (torch.float32, torch.float16)
    for K, pow2 in ((12, 1024), (20, 1024), (28, 1024), (40, 1024), (40, 64), (172, 64), (12, 2048), (20, 2048))
]

CASES = cases()


def make_x(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, H.View]:
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(case.dtype)

    rows, n = case.rows, case.n
    if case.layout == "contiguous":
        t = randn(rows, n)
    elif case.layout == "row-strided":
        t = randn(rows, n + 16)[:, :n]
    elif case.layout == "misaligned":
        t = randn(rows * n + 1)[1:].view(rows, n)
    else:
        raise ValueError(case.layout)
    return t, H.View.of(t)


@dataclasses.dataclass
class Outcome:
    case: Case
    result: H.Result | None
    error: str | None
    ref: torch.Tensor


def run_case(case: Case, runner: Path, env: dict[str, str] | None = None) -> Outcome:
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    x, xv = make_x(case, gen)
    hk = None if case.K == 1 else orders.hadamard_k(case.K, torch.int8, family="fht" if case.K in (12, 20, 28) else "rotation")
    if hk is not None and zlib.crc32(case.id.encode()) % 2:  # the transpose too (the backward's matrix)
        hk = hk.T.contiguous()
    signs = [torch.randint(0, 2, (case.n,), generator=gen).double() * 2 - 1 if on else None for on in (case.pre, case.post)]
    scale = 0.25 + torch.rand((), generator=gen).item()
    acc = acc_dtype(case.dtype)
    pre = None if signs[0] is None else signs[0].to(acc)
    post = None if signs[1] is None else (signs[1] * scale).to(acc)  # the glue folds the scale in
    ref = kn_reference(x, hk, case.pow2, scale, signs[0], signs[1])
    try:
        res = H.run_kn(x=xv, rows=case.rows, n=case.n, pow2=case.pow2, schedules=case.schedules, hk=hk,
                       pre=pre, post=post, scale=scale, inplace=case.inplace, runner=runner, env=env)  # fmt: skip
        return Outcome(case, res, None, ref)
    except H.SimFailure as e:
        return Outcome(case, None, str(e), ref)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out.double()).all(), "NaN or inf in the output"
    denom = ref.norm().item()
    return (out.double() - ref).norm().item() / (denom if denom > 0 else 1.0)


@pytest.fixture(scope="module")
def runner() -> Path:
    return H.build()


@pytest.fixture(scope="module")
def outcomes(request, runner) -> dict[str, Outcome]:
    """Every selected case, two runner processes at a time."""
    import concurrent.futures

    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}  # fmt: skip
    todo = [c for c in CASES + GATE if c.id in selected]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return {o.case.id: o for o in pool.map(lambda c: run_case(c, runner), todo)}


def test_cases_cover_the_issue():
    """Every K of orders.ORDERS, every pow2 from 1 to 2^10, every dtype, in place, padding,
    several blocks with a partial last one."""
    ks = {c.K for c in CASES}
    assert set(orders.ORDERS) <= ks and 1 in ks
    assert {1 << L for L in range(11)} <= {c.pow2 for c in CASES if c.K > 1}
    assert set(DTYPES) == {c.dtype for c in CASES}
    assert any(c.inplace and c.K > 1 for c in CASES) and any(c.n < c.K * c.pow2 for c in CASES)
    assert any(c.K > 1 and c.rows > rows_per_block(c.K, c.pow2, c.n, c.dtype) and
               c.rows % rows_per_block(c.K, c.pow2, c.n, c.dtype) for c in CASES)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kn_kernel_matches_reference(case: Case, outcomes):
    o = outcomes[case.id]
    assert o.error is None, o.error
    assert o.result.y.shape == (case.rows, case.n)
    err = rel_error(o.result.y, o.ref)
    assert err <= RTOL[case.dtype], f"relative error {err:.3g} > {RTOL[case.dtype]:g}"


@pytest.mark.parametrize("case", [c for c in CASES + GATE if c.layout == "contiguous" and c.rows > 0],
                         ids=lambda c: c.id)  # fmt: skip
def test_kn_kernel_reads_x_once_and_writes_y_once(case: Case, outcomes):
    """One pass over global memory: every byte of x read exactly once, every byte of y written
    exactly once (in place: the same buffer), and nothing else of that size: the other
    buffers are H_K's masks (a few hundred bytes) and the sign vectors (n accumulators, read
    once per block)."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    size = case.rows * case.n * case.dtype.itemsize
    transform = [launch for launch in o.result.launches if "kn_transform_kernel" in launch["kernel"]]
    assert len(transform) == 1 and len(o.result.launches) == (1 if case.K == 1 else 2), o.result.launches
    bufs = transform[0]["buffers"]
    x = bufs["x"]
    assert x["read"] == x["read_unique"] == size, x
    y = bufs["x"] if case.inplace else bufs["out"]
    assert y["written"] == y["written_unique"] == size, y
    if not case.inplace:
        assert x["written"] == 0 and y["read"] == 0
    assert set(bufs) <= {"x", "out", "hk", "pre", "post", "workspace"}, bufs
    if case in GATE:
        assert err_ok(o)


def err_ok(o: Outcome) -> bool:
    return rel_error(o.result.y, o.ref) <= RTOL[o.case.dtype]


def _sector_rows(c: Case) -> bool:
    """Contiguous rows and output chunks that start on 32-byte sectors (pow2 * itemsize >= 32).
    Smaller chunks (pow2 <= 4 in float32, <= 8 in 16-bit types: a warp's stores of one output
    chunk a cover less than a sector, the next chunk of the row is another thread's later
    store) touch up to twice the sectors: left so, those widths are tiny."""
    size = c.dtype.itemsize
    return c.layout == "contiguous" and c.rows > 0 and (c.n * size) % 32 == 0 and c.pow2 * size >= 32


@pytest.mark.parametrize("case", [c for c in CASES + GATE if _sector_rows(c)], ids=lambda c: c.id)
def test_kn_kernel_is_coalesced(case: Case, outcomes):
    """Aligned contiguous rows: every warp-wide load of x and store of y touches the fewest
    32-byte sectors its bytes allow."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    (launch,) = [la for la in o.result.launches if "kn_transform_kernel" in la["kernel"]]
    for name, kind in (("x", "load"), ("x" if case.inplace else "out", "store")):
        b = launch["buffers"][name]
        assert b[f"{kind}_sectors"] == b[f"{kind}_sectors_ideal"], (name, kind, b)


@pytest.mark.parametrize("case", [c for c in CASES + GATE if c.pow2 * acc_dtype(c.dtype).itemsize >= 512],
                         ids=lambda c: c.id)  # fmt: skip
def test_kn_kernel_has_no_bank_conflicts(case: Case, outcomes):
    """Chunks of at least 512 bytes of accumulators (pow2 >= 128 in float32 / float16 /
    bfloat16, >= 64 in float64): no shared-memory bank conflict at all. Smaller chunks have
    some (left so; benchmarks/results/cuda-sim-counters-kn.md): row tiles of fewer than 8
    threads store several rows' vectors per warp instruction, M apart, and a K-point warp
    whose rows have fewer than 8 column vectors reads several rows at once."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    for launch in o.result.launches:
        assert launch["shared_wavefronts"] == launch["shared_wavefronts_ideal"], launch


COUNTERS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cuda-sim-counters-kn.json"


def _table_case(c: Case) -> bool:
    return c.layout == "contiguous" and c.rows > 0 and not c.max_grid and not c.inplace


def counter_rows(selected: dict[str, Outcome]) -> list[dict]:
    """The committed kn table's rows (tests/cuda_sim/table.py writes them): every launch of the
    contiguous, out-of-place, full-grid cases."""
    rows = []
    for c in CASES + GATE:
        if _table_case(c) and c.id in selected and selected[c.id].result is not None:
            for launch in selected[c.id].result.launches:
                rows.append({"case": c.id, "K": c.K, "pow2": c.pow2, "n": c.n, "rows": c.rows,
                             "dtype": dtype_id(c.dtype), **launch})  # fmt: skip
    return rows


def test_committed_counter_table_is_current(outcomes):
    """benchmarks/results/cuda-sim-counters-kn.json holds what the kernel does now
    (regenerate with `python tests/cuda_sim/table.py` after a kernel change)."""
    import json

    committed = {(r["case"], r["kernel"]): r for r in json.loads(COUNTERS.read_text())["launches"]}
    fresh = counter_rows(outcomes)
    assert fresh, "no table case was selected"
    for r in fresh:
        assert committed.get((r["case"], r["kernel"])) == r, f"stale kn counter table at {r['case']}"


# ---------------------------------------------------------------------------------------
# The harness can fail this kernel: mutants (test_cuda_sim.MUTATIONS 4 to 6, one build
# with test_cuda_sim's own) that must be rejected, each beside an unmutated control run. (The
# barrier between a multi-warp tile's exchange and its store into the same slot matters only
# for 16-bit storage, whose exchange layout differs from the natural one; the mutant build is
# float32 only.)

#: Mutant -> (what it breaks, a case that must be rejected).
KN_MUTANTS = {
    4: ("the barrier between the chunk stage and the K-point stage removed", Case(12, 64, 12 * 64, 3, torch.float32)),
    5: ("the barrier after the K-point stage removed (needed when a block does several row groups)",
        Case(12, 64, 12 * 64, 25, torch.float32, max_grid=1)),
    6: ("H_K's sign bits read one output off", Case(20, 16, 20 * 16, 3, torch.float32)),
}  # fmt: skip


@pytest.mark.parametrize("mutant", sorted(KN_MUTANTS), ids=lambda m: f"mutant{m}")
def test_harness_rejects_kn_mutant(mutant: int, mutant_runner: Path):
    what, case = KN_MUTANTS[mutant]
    control = run_case(case, mutant_runner)
    assert control.error is None, control.error
    assert rel_error(control.result.y, control.ref) <= RTOL[case.dtype]
    o = run_case(case, mutant_runner, env={"HK_SIM_MUTANT": str(mutant)})
    if o.error is not None:
        return  # rejected by a check of the harness, AddressSanitizer or UBSan
    y = o.result.y.double()
    assert not torch.isfinite(y).all() or rel_error(y, o.ref) > RTOL[case.dtype], f"not caught: {what}"
