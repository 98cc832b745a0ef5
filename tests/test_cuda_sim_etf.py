"""The simplex ETF head of the CUDA classifier kernels (issue 13), run on the CPU by the harness
in tests/cuda_sim/.

With etf the classifier's weight is W = f (I - 11^T / C) H_N[:C, :N], f = sqrt(C / ((C-1) N))
(N a power of two, 2 <= C <= N). Every kernel path that can take it (csrc/cuda/classifier.cuh,
file comment): the single-pass forward and backward at every kind of tile (one thread a row,
two threads, one warp, several warps; several rows a block and one), and the two-pass path
(pass 1's per-chunk sums, the chunk kernel's mean, pass 2's centring; the backward's row
kernel), forward and backward, every storage type, normalize on and off, bias, zero rows,
partial blocks, grids smaller than the work. Against the float64 reference
``hadamard_classifier_reference(..., etf=True)`` and its autograd (grad_x, dL/dalpha per row
and in total); for N > 2^11, where the dense reference builds an N x N matrix, against its
fast twin ``etf_reference``, itself checked against the dense one here. Also: one read and one
write, exactly the traffic of the plain head, coalescing, no bank conflicts, and mutants of
the ETF code that these tests reject.

HK_SIM_SEEDS and HK_SIM_FULL as in tests/test_cuda_sim.py (FULL: every L and more C).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import os
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import RTOL, dtype_id, rel_err
from test_cuda_sim import FULL, SEEDS, compare, make_view, max_single

from cuda_sim import harness as H
from hadamard_kernels import reference as R

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "row-strided", "col-strided", "misaligned"]
DENSE_MAX_N = 1 << 11  # the dense reference builds H_N: 32 MB of float64 at 2^11


def etf_reference(x: torch.Tensor, c: int, alpha, bias=None, *, normalize: bool = True, eps: float = 1e-12):
    """``hadamard_classifier_reference(x, c, alpha, bias, etf=True)`` without the dense matrix:
    alpha * f * (t - mean(t)) + bias, t = H_N[:C, :N] @ x_hat by butterflies. Differentiable."""
    n = x.shape[-1]
    x_hat = F.normalize(x, dim=-1, eps=eps) if normalize else x
    t = R.hadamard_transform_reference(x_hat, c)
    y = alpha * math.sqrt(c / ((c - 1) * n)) * (t - t.mean(-1, keepdim=True))
    return y if bias is None else y + bias


def reference(x: torch.Tensor, c: int, alpha, bias=None, *, normalize: bool = True) -> torch.Tensor:
    """The dense reference where it fits, its fast twin beyond."""
    if x.shape[-1] <= DENSE_MAX_N:
        return R.hadamard_classifier_reference(x, c, alpha, bias, normalize=normalize, etf=True)
    return etf_reference(x, c, alpha, bias, normalize=normalize)


# ---------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    op: str  # "forward" or "backward"
    dtype: torch.dtype
    n: int  # N, a power of two
    c: int  # C, 2 <= C <= N
    rows: int
    layout: str = "contiguous"
    bias: bool = True
    normalize: bool = True
    max_grid: int = 0  # > 0: at most this many blocks (the grid-stride loops iterate)

    @property
    def log2n(self) -> int:
        return self.n.bit_length() - 1

    @property
    def two_pass(self) -> bool:
        return self.log2n > max_single(self.dtype)

    @property
    def schedules(self) -> list[str]:
        """Every seed, random and warp-ahead; two passes: one seed, rotating."""
        if not self.two_pass or FULL:
            return H.schedules(SEEDS, max_grid=self.max_grid)
        return H.schedules((SEEDS[zlib.crc32(self.id.encode()) % len(SEEDS)],), max_grid=self.max_grid)

    @property
    def id(self) -> str:
        extra = ("" if self.bias or self.op == "backward" else "-nobias") + ("" if self.normalize else "-nonorm")
        extra += f"-grid{self.max_grid}" if self.max_grid else ""
        return f"{self.op}-{dtype_id(self.dtype)}-N{self.n}-C{self.c}-r{self.rows}-{self.layout}{extra}"


def classes(n: int) -> list[int]:
    """C = 2, C = N, and between: 3, a non-power of two above N/2, N/2, N - 1."""
    return sorted({c for c in (2, n, 3, n // 2 + 3, n // 2, n - 1) if 2 <= c <= n})


def rows_for(log2n: int) -> int:
    """65 rows (partial blocks: 256 / threads-per-row rows a block) for small rows."""
    return 65 if log2n <= 8 else 3 if log2n <= 12 else 2


#: Single-pass L in CI, with the largest: every kind of tile (fwht.cuh, make_tile_config): one
#: thread a row (L = 1; 3 in 16-bit types), two threads (3 and 4; 4 in 16-bit types), part of a
#: warp (6), a whole warp (9 in float32 and float64), several warps and several rows a block
#: (11), one row of 512 threads a block (the largest L).
LEVELS = (1, 3, 4, 6, 9, 11)


def cases() -> list[Case]:
    """CI: per op and dtype, LEVELS and the largest single-pass L, each with one C of classes()
    and one layout, rotating, normalize and bias alternating; two passes at the first L beyond
    one pass for every op and dtype (C = 2, a remainder across chunks, C = N, 3), float32 at
    L = 16 with C below one chunk and across chunks, float64 forward at L = 20 (64 chunks).
    Grids smaller than the work in float32. FULL: every L up to one pass with every C and
    layout, and L = 20 in both ops."""
    out = []
    for op in ("forward", "backward"):
        for d, dtype in enumerate(DTYPES):
            top = max_single(dtype)
            levels = range(1, top + 1) if FULL else (*LEVELS, top)
            for i, L in enumerate(levels):
                n = 1 << L
                cs = classes(n)
                picks = [(c, LAYOUTS[(i + j + d) % 4]) for j, c in enumerate(cs)] if FULL else [
                    (cs[(i + d) % len(cs)], LAYOUTS[(i + d) % 4])]
                for k, (c, layout) in enumerate(picks):
                    flip = (i + k + d) % 3
                    out.append(Case(op, dtype, n, c, rows_for(L), layout, bias=flip != 1, normalize=flip != 2))
            n = 1 << (top + 1)
            out.append(Case(op, dtype, n, [2, n // 2 + 3, n, 3][d], 2, LAYOUTS[d], normalize=d != 2))
        m1 = 1 << 12  # float32 at L = 16: 16 chunks of 2^12
        for c in (1000, 3 * m1 + 5):
            out.append(Case(op, torch.float32, 1 << 16, c, 2, bias=c != 1000, normalize=c != 1000))
        if op == "forward" or FULL:
            out.append(Case(op, torch.float64, 1 << 20, (1 << 19) + 7, 1))
        for L, rows in ((3, 600), (12, 5), (16, 3)):  # each block does > 1 row
            out.append(Case(op, torch.float32, 1 << L, (1 << L) - 1, rows, max_grid=2))
    return out


CASES = cases()


@dataclasses.dataclass
class Outcome:
    case: Case
    result: H.Result | None
    error: str | None
    inputs: dict


def run_case(case: Case, runner: Path, etf: bool = True) -> Outcome:
    """The case on fresh random inputs; etf=False: the plain head on the same inputs."""
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    x, xv = make_view(case.rows, case.n, case.dtype, case.layout, gen)
    # A zero row (x is a view of the storage the kernel gets); not in the normalised backward
    # of 16-bit types, whose clamped norm scales grad_x by alpha / eps = 1e12: beyond their
    # range, and with it the rounding of the entries that cancel to 0 (a column of H_N[:C]
    # constant over the classes).
    if case.rows >= 3 and (case.op == "forward" or not case.normalize or case.dtype.itemsize >= 4):
        x[1] = 0
    inputs = {"x": x}
    kw = {}
    if case.op == "backward":
        g, gv = make_view(case.rows, case.c, case.dtype, case.layout, gen)
        inputs["g"], kw["g"] = g, gv
    if case.op == "forward" and case.bias:
        inputs["bias"] = kw["bias"] = torch.randn(case.c, generator=gen, dtype=torch.float64).to(case.dtype)
    # alpha * f in [0.5, 1.5]: outputs of the bias's size (with alpha itself there, f = 1 / 256
    # at N = 2^16 would leave W x_hat 256 times below the bias, and its errors with it)
    alpha = (0.5 + torch.rand((), generator=gen).item()) / math.sqrt(case.c / ((case.c - 1) * case.n))
    inputs["alpha"] = alpha
    try:
        res = H.run(case.op, x=xv, rows=case.rows, n_in=case.n, n_out=case.c, schedules=case.schedules,
                    alpha=alpha, normalize=case.normalize, etf=etf, runner=runner, **kw)  # fmt: skip
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


@contextlib.contextmanager
def one_thread():
    """The references in one thread: their tensors are small, and on a busy 2-core machine two
    threads made them 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def references(o: Outcome) -> dict[str, torch.Tensor]:
    """Forward: y. Backward: grad_x and the per-row dL/dalpha, by autograd of the reference,
    with the total dL/dalpha; y_scale: what grad_x's error is relative to (as in
    tests/test_cuda_sim.py: alpha * dx_hat/dx applied to W^T g without the projection);
    contrib_scale: what dL/dalpha's is relative to, ||W^T g|| ||x_hat|| per row (a row's share
    is the dot product W^T g . x_hat of N terms, for random rows about sqrt(N) times smaller
    than that: float32 sums of 2^20 terms reach 2e-5 of the dot product itself)."""
    c, inp = o.case, o.inputs
    x = inp["x"].double()
    if c.op == "forward":
        bias = inp.get("bias")
        return {"y": reference(x, c.c, inp["alpha"], None if bias is None else bias.double(), normalize=c.normalize)}
    x = x.clone().requires_grad_(True)
    alpha = torch.tensor(inp["alpha"], dtype=torch.float64, requires_grad=True)
    g = inp["g"].double()
    y = reference(x, c.c, alpha, normalize=c.normalize)
    gx, galpha = torch.autograd.grad(y, (x, alpha), g)
    contrib = (g * y.detach()).sum(-1) / inp["alpha"]  # row r's share of dL/dalpha
    norm = x.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12) if c.normalize else 1.0
    wt_g = torch.autograd.grad(etf_reference(x, c.c, 1.0, normalize=False), x, g)[0]  # W^T g
    contrib_scale = wt_g.norm(dim=-1) * (x.detach() / norm).norm(dim=-1)
    return {"y": gx, "contrib": contrib, "galpha": galpha, "y_scale": inp["alpha"] * wt_g / norm,
            "contrib_scale": contrib_scale}  # fmt: skip


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(o: Outcome) -> None:
    """The outputs against the references, the zero row (whose normalised backward is alpha / eps
    times larger) apart from the others."""
    c = o.case
    with one_thread():
        ref = references(o)
    assert o.result.y.shape == ref["y"].shape
    zero = (o.inputs["x"] == 0).all(-1)
    for rows in (~zero, zero):
        scale = ref["y_scale"][rows] if "y_scale" in ref else None
        compare(o.result.y[rows], ref["y"][rows], c.dtype, "output", scale)
    if c.op == "backward":
        acc = acc_dtype(c.dtype)
        compare(o.result.contrib, ref["contrib"], acc, "dL/dalpha per row", ref["contrib_scale"])
        err = (o.result.contrib.double().sum() - ref["galpha"]).abs().item()
        assert err <= RTOL[acc] * ref["contrib_scale"].sum().item(), f"dL/dalpha: error {err:.3g}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_etf_kernel_matches_reference(case: Case, outcomes):
    o = outcomes[case.id]
    assert o.error is None, o.error
    check(o)


def test_cases_cover_every_path():
    """Every kind of tile and both passes, C = 2 and C = N, every dtype, both ops."""
    for op in ("forward", "backward"):
        for dtype in DTYPES:
            mine = [c for c in CASES if c.op == op and c.dtype == dtype]
            assert {*LEVELS, max_single(dtype)} <= {c.log2n for c in mine}, (op, dtype)
            assert any(c.two_pass for c in mine) and any(not c.normalize for c in mine), (op, dtype)
        mine = [c for c in CASES if c.op == op]
        assert any(c.c == 2 for c in mine) and any(c.c == c.n and c.two_pass for c in mine)
        assert any(c.max_grid and c.two_pass for c in mine) and {c.layout for c in mine} == set(LAYOUTS)


# ---------------------------------------------------------------------------------------
# Traffic: one read and one write, and nothing more than the plain head


def _traffic(launches: list[dict]) -> dict[str, dict[str, int]]:
    """Bytes read / written (requested and distinct) per buffer over all launches."""
    out: dict[str, dict[str, int]] = {}
    for launch in launches:
        for name, b in launch["buffers"].items():
            t = out.setdefault(name, dict.fromkeys(("read", "written", "read_unique", "written_unique"), 0))
            for k in t:
                t[k] += b[k]
    return out


# Contiguous cases up to 2^16 (each also runs the plain head once).
GATE = [c for c in CASES if c.layout == "contiguous" and not c.max_grid and c.rows > 0 and c.n <= 1 << 16]


@pytest.mark.parametrize("case", GATE, ids=lambda c: c.id)
def test_etf_reads_and_writes_once(case: Case, outcomes, runner):
    """The input rows (x; the backward's grad_y) are read once and the output (y; grad_x) is
    written once, exactly, and every buffer sees exactly the bytes the plain head's kernels move
    on the same inputs (the centring needs no pass and no reads of its own), but for the two-pass
    forward's per-chunk sums and the backward's reads of u[0] in the workspace."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    t = _traffic(o.result.launches)
    size = case.dtype.itemsize
    src = "x" if case.op == "forward" else "g"
    src_bytes = case.rows * (case.n if case.op == "forward" else case.c) * size
    out_bytes = case.rows * (case.c if case.op == "forward" else case.n) * size
    assert t[src]["read"] == t[src]["read_unique"] == src_bytes and t[src]["written"] == 0, t[src]
    assert t["out"]["written"] == t["out"]["written_unique"] == out_bytes and t["out"]["read"] == 0, t["out"]
    plain = run_case(case, runner, etf=False)
    assert plain.error is None, plain.error
    p = _traffic(plain.result.launches)
    assert set(t) == set(p)
    for name in t:
        if name == "workspace":
            assert t[name]["read_unique"] >= p[name]["read_unique"]
            continue
        assert t[name] == p[name], (name, t[name], p[name])


@pytest.mark.parametrize("case", [c for c in CASES if c.rows > 0], ids=lambda c: c.id)
def test_etf_is_coalesced_without_bank_conflicts(case: Case, outcomes):
    """No launch has a shared-memory bank conflict; contiguous inputs: every warp-wide load of x
    / grad_y and store of the output whose rows are whole 16-byte vectors touches the fewest
    32-byte sectors its bytes allow."""
    o = outcomes[case.id]
    assert o.error is None, o.error
    cols = {"x": case.n, "g": case.c, "out": case.c if case.op == "forward" else case.n}
    for launch in o.result.launches:
        assert launch["shared_wavefronts"] == launch["shared_wavefronts_ideal"], launch
        if case.layout != "contiguous":
            continue
        for name, kind in (("x", "load"), ("g", "load"), ("out", "store")):
            b = launch["buffers"].get(name)
            if b is not None and b[f"{kind}_sectors"] and cols[name] % (16 // case.dtype.itemsize) == 0:
                assert b[f"{kind}_sectors"] == b[f"{kind}_sectors_ideal"], (launch["kernel"], name, b)


# ---------------------------------------------------------------------------------------
# The references


@pytest.mark.parametrize("n,c", [(2, 2), (4, 3), (16, 16), (64, 5), (512, 257), (2048, 2048)])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_fast_reference_matches_dense(n, c, normalize):
    """etf_reference is the dense reference: values and gradients (x and alpha)."""
    gen = torch.Generator().manual_seed(n + c)
    x = torch.randn(5, n, generator=gen, dtype=torch.float64)
    x[2] = 0
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    g = torch.randn(5, c, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (etf_reference, lambda *a, **k: R.hadamard_classifier_reference(*a, etf=True, **k)):
        xr = x.clone().requires_grad_(True)
        alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        y = fn(xr, c, alpha, b, normalize=normalize)
        grads.append((y.detach(), *torch.autograd.grad(y, (xr, alpha), g)))
    for got, want in zip(*grads):  # (the zero row's grad_x: alpha / eps = 1e12 times the rounding)
        assert rel_err(got, want) <= 1e-12


# ---------------------------------------------------------------------------------------
# Mutants of the ETF code (tests/test_cuda_sim.py's MUTATIONS 12 - 17, one build for all)

#: Mutant -> (what it breaks, a float32 case that must be rejected).
MUTANTS = {
    12: ("forward: the outputs not centred", Case("forward", torch.float32, 256, 10, 3)),
    13: ("forward: the mean over C + 1 classes", Case("forward", torch.float32, 1 << 11, 3, 3)),
    14: ("backward: the mean also subtracted from the padding entry after the C classes",
         Case("backward", torch.float32, 64, 37, 5, normalize=False)),
    15: ("two-pass forward: the per-chunk sums below C mod M1 off by one column",
         Case("forward", torch.float32, 1 << 16, 4096 + 5, 2)),
    16: ("two-pass backward: the prefix sums of H's rows for C + 1 classes",
         Case("backward", torch.float32, 1 << 16, 5, 2)),
    17: ("backward: dL/dalpha not multiplied by f", Case("backward", torch.float32, 32, 32, 4)),
}  # fmt: skip


@pytest.mark.parametrize("mutant", sorted(MUTANTS), ids=lambda m: f"mutant{m}")
def test_etf_tests_reject_mutant(mutant: int, mutant_runner: Path):
    what, case = MUTANTS[mutant]
    control = run_case(case, mutant_runner)  # the same build with no mutant switched on
    assert control.error is None, control.error
    check(control)
    os.environ["HK_SIM_MUTANT"] = str(mutant)
    try:
        o = run_case(case, mutant_runner)
    finally:
        del os.environ["HK_SIM_MUTANT"]
    if o.error is None:
        with pytest.raises(AssertionError):
            check(o)
