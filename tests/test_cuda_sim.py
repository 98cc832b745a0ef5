"""The CUDA kernels (csrc/cuda/*.cuh), run on the CPU by the harness in tests/cuda_sim/.

The unchanged kernel source is compiled by the host compiler with AddressSanitizer and UBSan
against tests/cuda_sim/include/hk_sim.h; each block's threads are fibers resumed in a seeded
order at every barrier and shuffle (random, and one warp run ahead of the others), shared
memory and outputs are poisoned, CUDA's launch limits and alignment are checked, and every
schedule must give bit-identical results. Here: every launcher x dtype x size against the
float64 reference, the memory counters (one read and one write, coalescing, bank conflicts),
and mutants of the kernels that the harness must reject.

HK_SIM_SEEDS="1 2 3" (default) picks the scheduling seeds; HK_SIM_FULL=1 runs the full
cartesian coverage (about 20 minutes on 2 cores) instead of CI's covering subset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import RTOL, dtype_id

from cuda_sim import harness as H
from hadamard_kernels import reference as R

if shutil.which(H.CXX) is None:  # CI has g++ with its sanitizer runtimes
    pytest.skip(f"the CPU-run CUDA harness needs a C++ compiler ({H.CXX})", allow_module_level=True)

SEEDS = tuple(int(s) for s in os.environ.get("HK_SIM_SEEDS", "1 2 3").split())
FULL = os.environ.get("HK_SIM_FULL") == "1"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "row-strided", "col-strided", "misaligned"]
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def max_single(dtype: torch.dtype) -> int:
    return 14 if dtype == torch.float64 else 15


# ---------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    op: str  # "transform", "forward", "backward"
    dtype: torch.dtype
    n_in: int  # transform: in_features; classifier: N
    n_out: int  # transform: out_features; classifier: C
    rows: int
    layout: str  # of x (and of grad_y in the backward)
    bias: bool = True
    normalize: bool = True
    max_grid: int = 0  # > 0: at most this many blocks, the grid-stride loops iterate

    @property
    def schedules(self) -> list[str]:
        """Every seed, random and warp-ahead; two-pass cases (and grid-capped ones beyond one
        pass): one seed each, rotating, random and warp-ahead."""
        if self.log2m <= max_single(self.dtype) or FULL:
            return H.schedules(SEEDS, max_grid=self.max_grid)
        seed = SEEDS[zlib.crc32(self.id.encode()) % len(SEEDS)]
        return H.schedules((seed,), max_grid=self.max_grid)

    @property
    def log2m(self) -> int:
        return (max(self.n_in, self.n_out, 1) - 1).bit_length()

    @property
    def id(self) -> str:
        extra = ("" if self.bias else "-nobias") + ("" if self.normalize else "-nonorm")
        extra += f"-grid{self.max_grid}" if self.max_grid else ""
        return f"{self.op}-{dtype_id(self.dtype)}-L{self.log2m}-in{self.n_in}-out{self.n_out}-r{self.rows}-{self.layout}{extra}"


def rows_for(L: int) -> int:
    return 65 if L <= 8 else 3 if L <= 12 else 1


def sizes(L: int) -> list[tuple[int, int]]:
    """(in, out) pairs with next_pow2(max) = 2^L: equal powers of two, then non-powers of two
    with out < in, out = in and out > in."""
    m = 1 << L
    if L == 0:
        return [(1, 1)]
    if L == 1:
        return [(2, 2), (2, 1), (1, 2)]
    h = m // 2 + 1
    return [(m, m), (m - 1, h), (m - 1, m - 1), (h, m - 1)]


def cases() -> list[Case]:
    """CI: every launcher x dtype x L = 0..20, each L with all four size pairs of sizes() and
    all four layouts (rotated, so that each pair and each layout occurs per L), row counts 0,
    1, 3 (2 in two passes), 65, bias and normalisation on and off; two passes (the costly
    part: a 2^20 row is 32 blocks of 2^15) at their first L with every size pair, at L = 20
    for every op and dtype, at the L between for one dtype each. HK_SIM_FULL=1: the product
    of sizes and layouts at every L."""
    out = []
    for op in ("transform", "forward", "backward"):
        for d, dtype in enumerate(DTYPES):
            top = max_single(dtype)
            for L in range(0, 21):
                two_pass = L > top
                if two_pass and not FULL and L not in (top + 1, 20) and (L + d) % len(DTYPES) != 0:
                    continue
                for k, (n_in, n_out) in enumerate(sizes(L)):
                    if two_pass and not FULL and L != top + 1 and k > 0:
                        continue
                    for j, layout in enumerate(LAYOUTS):
                        if not FULL and (k + L) % len(LAYOUTS) != j:
                            continue
                        rows = (2 if L == top + 1 else 1) if two_pass else rows_for(L)
                        flip = (L + k + j) % 3
                        out.append(Case(op, dtype, n_in, n_out, rows, layout, bias=flip != 1, normalize=flip != 2))
            # Empty batches, and grids smaller than the work (grid-stride iterations).
            out.append(Case(op, dtype, 16, 16, 0, "contiguous"))
            for L, rows in ((3, 600), (9, 20), (12, 5), (top, 3)):  # each block does > 1 row
                out.append(Case(op, dtype, 1 << L, 1 << L, rows, "contiguous", max_grid=2))
            out.append(Case(op, dtype, 1 << (top + 1), 1 << (top + 1), 3, "contiguous", max_grid=2))
    return out


CASES = cases()


def make_view(rows: int, n: int, dtype: torch.dtype, layout: str, gen: torch.Generator) -> tuple[torch.Tensor, H.View]:
    """A fresh random (rows, n) input in `layout`, and the view the kernel gets."""

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    if layout == "contiguous":
        t = randn(rows, n)
    elif layout == "row-strided":  # rows padded by 16 entries: still vector-aligned
        t = randn(rows, n + 16)[:, :n]
    elif layout == "col-strided":  # features with the largest stride
        t = randn(n, rows + 1)[:, :rows].t()
    elif layout == "misaligned":  # contiguous rows starting one element in
        t = randn(rows * n + 1)[1:].view(rows, n)
    else:
        raise ValueError(layout)
    return t, H.View.of(t)


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str, scale: torch.Tensor | None = None) -> None:
    """Relative error against the float64 reference; where the true result overflows the
    storage type, the reference rounded to that type (inf) must be matched exactly. scale:
    what the error is relative to when the result is a difference of larger terms (the
    backward projects u onto the tangent space of x_hat: relative to u, not to the
    difference, which is 0 for N = 1); default ref."""
    rounded = ref.to(dtype).double()
    finite = torch.isfinite(rounded)
    assert torch.equal(out.double()[~finite], rounded[~finite]), f"{what}: overflowed entries differ"
    assert torch.isfinite(out.double()[finite]).all(), f"{what}: NaN or inf where the result is finite"
    diff = (out.double()[finite] - ref[finite]).norm().item()
    denom = ref[finite].norm().item() if scale is None else max(ref[finite].norm().item(), scale[finite].norm().item())
    err = diff / denom if denom > 0 else diff
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3g} > {RTOL[dtype]:g}"


@dataclasses.dataclass
class Outcome:
    case: Case
    result: H.Result | None
    error: str | None
    inputs: dict


def run_case(case: Case, runner: Path) -> Outcome:
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    n_x = case.n_in
    x, xv = make_view(case.rows, n_x, case.dtype, case.layout, gen)
    inputs = {"x": x}
    kw = {}
    if case.op == "backward":
        g, gv = make_view(case.rows, case.n_out, case.dtype, case.layout, gen)
        inputs["g"] = g
        kw["g"] = gv
    if case.op == "forward" and case.bias:
        inputs["bias"] = kw["bias"] = torch.randn(case.n_out, generator=gen, dtype=torch.float64).to(case.dtype)
    alpha = 0.5 + torch.rand((), generator=gen).item()
    inputs["alpha"] = alpha
    scale = 0.25 + torch.rand((), generator=gen).item()
    inputs["scale"] = scale
    try:
        res = H.run(case.op, x=xv, rows=case.rows, n_in=case.n_in, n_out=case.n_out,
                    schedules=case.schedules, alpha=alpha, scale=scale,
                    normalize=case.normalize, runner=runner, **kw)  # fmt: skip
        return Outcome(case, res, None, inputs)
    except H.SimFailure as e:
        return Outcome(case, None, str(e), inputs)


@pytest.fixture(scope="module")
def runner() -> Path:
    return H.build()


@pytest.fixture(scope="module")
def outcomes(request, runner) -> dict[str, Outcome]:
    """Every selected case, run two at a time (one runner process per core)."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}  # fmt: skip
    todo = [c for c in CASES if c.id in selected]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return {o.case.id: o for o in pool.map(lambda c: run_case(c, runner), todo)}


def references(o: Outcome) -> dict[str, torch.Tensor]:
    c, inp = o.case, o.inputs
    x = inp["x"].double()
    if c.op == "transform":
        return {"y": R.hadamard_transform_reference(x, c.n_out, inp["scale"])}
    bias = inp.get("bias")
    if c.op == "forward":
        return {"y": R.hadamard_classifier_reference(x, c.n_out, inp["alpha"], None if bias is None else bias.double(),
                                                     normalize=c.normalize)}  # fmt: skip
    x = x.clone().requires_grad_(True)
    g = inp["g"].double()
    y = R.hadamard_classifier_reference(x, c.n_out, inp["alpha"], normalize=c.normalize)
    (gx,) = torch.autograd.grad(y, x, g) if x.numel() else (torch.zeros_like(x),)
    x_hat = F.normalize(x.detach(), dim=-1, eps=1e-12) if c.normalize else x.detach()
    contrib = (g * R.hadamard_transform_reference(x_hat, c.n_out)).sum(-1)
    # alpha * dx_hat/dx applied to u = H^T g without the projection: the scale of gx's terms.
    norm = x.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12) if c.normalize else 1.0
    unprojected = inp["alpha"] * R.hadamard_transform_reference(g, c.n_in) / norm
    return {"y": gx, "contrib": contrib, "y_scale": unprojected}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel_matches_reference(case: Case, outcomes):
    o = outcomes[case.id]
    assert o.error is None, o.error
    ref = references(o)
    assert o.result.y.shape == ref["y"].shape
    compare(o.result.y, ref["y"], case.dtype, "output", ref.get("y_scale"))
    if "contrib" in ref:
        compare(o.result.contrib, ref["contrib"], torch.float64 if case.dtype == torch.float64 else torch.float32,
                "dL/dalpha per row")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Memory counters: one read and one write, coalescing, bank conflicts


def _single_pass(c: Case) -> bool:
    return c.rows > 0 and c.log2m <= max_single(c.dtype)


def _table_case(c: Case) -> bool:
    """The rows of the committed counter table: contiguous, in = out = 2^L, full grid."""
    return c.rows > 0 and c.layout == "contiguous" and c.n_in == c.n_out == 1 << c.log2m and not c.max_grid


@pytest.mark.parametrize("case", [c for c in CASES if c.op == "transform" and _single_pass(c)], ids=lambda c: c.id)
def test_single_pass_transform_reads_and_writes_once(case: Case, outcomes):
    """Every entry of x read exactly once, every output written exactly once, nothing else."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    (launch,) = o.result.launches
    size = case.dtype.itemsize
    assert set(launch["buffers"]) == {"x", "out"}, launch["buffers"]
    x, y = launch["buffers"]["x"], launch["buffers"]["out"]
    assert x["read"] == x["read_unique"] == case.rows * case.n_in * size and x["written"] == 0
    assert y["written"] == y["written_unique"] == case.rows * case.n_out * size and y["read"] == 0


@pytest.mark.parametrize("case", [c for c in CASES if _table_case(c)], ids=lambda c: c.id)
def test_contiguous_aligned_inputs_are_coalesced(case: Case, outcomes):
    """Every warp-wide load of an aligned contiguous input (x, grad_y) and every store of the
    output touches the fewest 32-byte sectors its bytes allow. (The other accesses: bias,
    workspace, are in the committed table, benchmarks/results/cuda-sim-counters.md.)"""
    o = outcomes[case.id]
    assert o.error is None, o.error
    for launch in o.result.launches:
        for name, kind in (("x", "load"), ("g", "load"), ("out", "store")):
            b = launch["buffers"].get(name)
            if b is not None and b[f"{kind}_sectors"]:
                got, ideal = b[f"{kind}_sectors"], b[f"{kind}_sectors_ideal"]
                assert got == ideal, f"{launch['kernel']}: {kind}s of {name} touch {got} sectors, {ideal} would do"


@pytest.mark.parametrize("case", [c for c in CASES if c.rows > 0], ids=lambda c: c.id)
def test_no_shared_memory_bank_conflicts(case: Case, outcomes):
    """Bound, for every kernel: no bank conflict at all (wavefronts = the fewest possible)."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    for launch in o.result.launches:
        assert launch["shared_wavefronts"] == launch["shared_wavefronts_ideal"], launch


COUNTERS = RESULTS / "cuda-sim-counters.json"


def counter_rows(selected: dict[str, Outcome]) -> list[dict]:
    """The committed table's rows (tests/cuda_sim/table.py writes them)."""
    rows = []
    for c in CASES:
        if _table_case(c) and c.id in selected and selected[c.id].result is not None:
            for launch in selected[c.id].result.launches:
                rows.append({"op": c.op, "dtype": dtype_id(c.dtype), "L": c.log2m, "rows": c.rows, **launch})
    return rows


def test_committed_counter_table_is_current(outcomes):
    """benchmarks/results/cuda-sim-counters.json holds what the kernels do now (regenerate
    with `python tests/cuda_sim/table.py` after a kernel change)."""
    committed = {(r["op"], r["dtype"], r["L"], r["kernel"]): r for r in json.loads(COUNTERS.read_text())["launches"]}
    fresh = counter_rows(outcomes)
    assert fresh, "no table case was selected"
    for r in fresh:
        key = (r["op"], r["dtype"], r["L"], r["kernel"])
        assert committed.get(key) == r, f"stale counter table at {key}: regenerate with tests/cuda_sim/table.py"


# ---------------------------------------------------------------------------------------
# The harness can fail: mutants of the kernels it must reject

#: (file, exact text, replacement): each replacement consults hk_sim::mutant(id).
MUTATIONS = {
    1: ("fwht.cuh", "      for (int c = 0; c < CH; ++c) st_shared16(base + (c * NVEC + q_load(v)) * AV, &a[v][c * AV]);\n    __syncthreads();",
        "      for (int c = 0; c < CH; ++c) st_shared16(base + (c * NVEC + q_load(v)) * AV, &a[v][c * AV]);\n    if (!hk_sim::mutant(1)) __syncthreads();"),
    2: ("fwht.cuh", "    if constexpr (Tile::W > 1) __syncthreads();",
        "    if constexpr (Tile::W > 1) if (!hk_sim::mutant(2)) __syncthreads();"),
    3: ("fwht.cuh", "for (int k = 0; k < KV; ++k) a[v][k] = c + c_thread + k < lim ? Num<T>::load(base[c + k]) : A(0);",
        "for (int k = 0; k < KV; ++k) a[v][k] = c + c_thread + k < lim + hk_sim::mutant(3) ? Num<T>::load(base[c + k]) : A(0);"),
    # The K * 2^k kernel's (tests/test_cuda_sim_orders.py runs these; one build for all).
    4: ("orders.cuh", "    __syncthreads();  // stage 2 reads every chunk of the rows",
        "    if (!hk_sim::mutant(4)) __syncthreads();"),
    5: ("orders.cuh", "    __syncthreads();  // before the next rows' chunks overwrite the buffer",
        "    if (!hk_sim::mutant(5)) __syncthreads();"),
    6: ("orders.cuh", "const uint32_t bits = mask[a2 * p.words] >> shift;",
        "const uint32_t bits = mask[a2 * p.words] >> (shift + hk_sim::mutant(6));"),
    # The rotate-and-quantise kernel's (tests/test_cuda_sim_quantize.py runs these).
    7: ("orders.cuh", "    __syncthreads();  // the round's columns read by all of their output groups",
        "    if (!hk_sim::mutant(7)) __syncthreads();"),
    8: ("orders.cuh", "            __syncthreads();  // the epilogue reads what stage 2 wrote",
        "            if (!hk_sim::mutant(8)) __syncthreads();"),
    9: ("quantize.cuh", "for (int h = 1; h < lanes; h <<= 1) m = nan_max(",
        "for (int h = 1; h < (lanes >> hk_sim::mutant(9)); h <<= 1) m = nan_max("),
    10: ("quantize.cuh", "__syncthreads();  // every warp's maximum of this step is in red[parity]",
         "if (!hk_sim::mutant(10)) __syncthreads();"),
    11: ("quantize.cuh", "      for (int u = l; u < units; u += sw) {",
         "      for (int u = l; u < units + hk_sim::mutant(11); u += sw) {"),
    # The classifier's simplex ETF head (tests/test_cuda_sim_etf.py runs these).
    12: ("classifier.cuh", "    if constexpr (kEtf) mean = tile_mean(tile, p.c, p.inv_c, red);",
         "    if constexpr (kEtf) mean = hk_sim::mutant(12) ? A(0) : tile_mean(tile, p.c, p.inv_c, red);"),
    13: ("classifier.cuh", "  return sum * inv_c;",
         "  return hk_sim::mutant(13) ? sum / static_cast<A>(c + 1) : sum * inv_c;"),
    14: ("classifier.cuh", "      if (Tile::q_load_offset(v) * Tile::KV + k < rel) tile.a[v][k] -= mean;",
         "      if (Tile::q_load_offset(v) * Tile::KV + k < rel + hk_sim::mutant(14)) tile.a[v][k] -= mean;"),
    15: ("fwht.cuh", "sum_below(Tile::clamp_limit(p.centre_cols, 0));",
         "sum_below(Tile::clamp_limit(p.centre_cols + hk_sim::mutant(15), 0));"),
    16: ("classifier.cuh", "static_cast<A>(hadamard_prefix_sum(p.etf_c, i))",
         "static_cast<A>(hadamard_prefix_sum(p.etf_c + hk_sim::mutant(16), i))"),
    17: ("classifier.cuh", "p.contrib[r] = kEtf ? co.contrib * p.factor : co.contrib;",
         "p.contrib[r] = kEtf && !hk_sim::mutant(17) ? co.contrib * p.factor : co.contrib;"),
}  # fmt: skip

#: Mutant -> (what it breaks, a case that must be rejected).
MUTANTS = {
    1: ("the exchange's barrier removed", Case("transform", torch.float32, 1 << 11, 1 << 11, 2, "contiguous")),
    2: ("the row loop's last barrier removed (needed only when a block does several rows)",
        Case("transform", torch.float32, 1 << 11, 1 << 11, 24, "contiguous", max_grid=2)),
    3: ("a scalar load's bound off by one", Case("transform", torch.float32, 13, 13, 3, "misaligned")),
}  # fmt: skip


@pytest.mark.parametrize("mutant", sorted(MUTANTS), ids=lambda m: f"mutant{m}")
def test_harness_rejects_mutant(mutant: int, mutant_runner: Path):
    what, case = MUTANTS[mutant]
    control = run_case(case, mutant_runner)  # the same build with no mutant switched on
    assert control.error is None, control.error
    compare(control.result.y, references(control)["y"], case.dtype, "control")
    os.environ["HK_SIM_MUTANT"] = str(mutant)
    try:
        o = run_case(case, mutant_runner)
    finally:
        del os.environ["HK_SIM_MUTANT"]
    if o.error is not None:
        return  # rejected by a check of the harness, AddressSanitizer or UBSan
    with pytest.raises(AssertionError):
        compare(o.result.y, references(o)["y"], case.dtype, what)
