"""Static resource gate for the Triton kernels, compiled for sm_90 (H100) without a GPU.

Every kernel of hadamard_kernels/triton_kernels.py is compiled ahead of time the way a
launch on an H100 would compile it: the op's own host code runs on small CPU tensors with
the kernel launches intercepted, so the arguments, block sizes and num_warps are exactly
what ``block_config`` chooses, and Triton's launch-time specialisation is applied to them
(an int equal to 1 becomes a constant, ints that are multiples of 16 and 16-byte aligned
pointers get a divisibility hint). Each variant is then compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` (no driver needed),
its PTX is assembled again with the ptxas Triton uses and ``-v`` for registers and spills
(the register count is cross-checked with ``cuobjdump --dump-resource-usage`` on Triton's
own cubin), and the theoretical occupancy on sm_90 is computed:

    regs/warp   = ceil(32 * regs / 256) * 256               (allocation unit 256 registers)
    by_regs     = floor(4 * floor(16384 / regs/warp) / W)   (65536 registers in 4 partitions)
    by_warps    = floor(64 / W)                             (64 warps per SM)
    by_smem     = floor(228 KB / (smem + 1 KB))             (1 KB reserved per block;
                                                             a block may use at most 227 KB)
    blocks/SM   = min(32, by_regs, by_warps, by_smem)
    occupancy   = blocks/SM * W / 64

with W = num_warps and smem = Triton's dynamic shared memory plus ptxas' static smem.

The gate fails (exit status 1) when a variant spills (ptxas spill stores or loads > 0) or
stays under 25 % occupancy, unless ALLOW_LIST excuses its spills with a reason (it never
excuses occupancy).

    python scripts/triton_resources.py                      # the CI set, gate only
    python scripts/triton_resources.py --set table --write  # the committed table
    python scripts/triton_resources.py --set full --jobs 16 --out DIR/triton-resources

Sets (all with contiguous inputs of 3 rows; the row count is not specialised):
  ci     n = 1, 2, 16, 4096, 2^13, 2^14, 2^15 square (transform in = out, classifier
         N = C: the largest blocks) x the three kernels x float32 / bfloat16 / float64, plus
         the classifier shapes of the benchmarks in float32, plus six (K, pow2) of the K * 2^k
         kernel (_CI_KN) in the same dtypes, and the same six with the quantising epilogue
         (quantize: per row to float8_e4m3fn, groups of 32 to int8; float32 also groups of
         128 to float8_e5m2), plus the two classifier kernels with the simplex ETF head
         (etf) at n = 2 and 2^14 (_CI_ETF). About 135 binaries, 0.5-2 min on 2 cores. Run by
         tests/test_triton_resources.py in CI.
  table  every n = 2^0..2^15 square x the three kernels x the four dtypes, plus the
         benchmark shapes, with the classifier kernels of both also with the simplex ETF
         head where it applies (N a power of two, 2 <= C <= N), plus the K * 2^k kernel for
         one K per block height (_TABLE_KN) and every pow2 that fits, each also quantising
         (per row to float8_e4m3fn, groups of 32 to int8, of 128 to float8_e5m2, where they
         divide n): about 1100 binaries, about 10 min on 2 shared cores. The committed
         table benchmarks/results/triton-resources-sm90.{md,json} (``--write``).
  full   every power-of-two (in, out) pair with min <= 2^15 and max <= 2^20 (every entry of
         the dispatch table: other sizes take the entry of their next power of two), every
         normalize/bias combination, each also with the simplex ETF head where it applies,
         the four dtypes: about 2800 binaries, about an hour and a half of one core
         (scripts/gpu_check.sh runs it with a job per core).
The classifier forward is compiled with normalize and bias, the backward with normalize,
except in the full set; the K * 2^k kernel (transform_kn, named by K and pow2, n = K * pow2)
with pre signs and H_K column-major, as transforms.py calls it, and so is its quantising
form (quantize, named by K, pow2, group size and code dtype). The full set has no
transform_kn or quantize rows (the table has every block of them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

# Compile real kernels (a JITFunction, not the interpreter's), quietly.
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; the default

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadamard_kernels import orders  # noqa: E402
from hadamard_kernels import triton_kernels as tk  # noqa: E402

CAPABILITY = 90
RESULTS = ROOT / "benchmarks" / "results" / "triton-resources-sm90"
MIN_OCCUPANCY = 0.25

# sm_90 limits (CUDA programming guide, compute capability 9.0).
REGS_PER_SM = 65536
REG_UNIT = 256
PARTITIONS = 4
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
SMEM_PER_SM = 228 * 1024
SMEM_PER_BLOCK = 227 * 1024
SMEM_RESERVED = 1024

_TOO_BIG = (
    "one program holds a row of BLOCK_T accumulators in 1024 threads, at most 64 registers "
    "each (the register file of an SM), plus the input chunk (forward) or u and x (backward) "
    "of the same size: {} values per thread before addresses. num_warps is at its limit of "
    "32, so no block-size / num_warps entry avoids the spill; only a kernel that stages "
    "blocks through shared or global memory would. Correct, slower."
)
#: The documented exceptions: spills (never occupancy under 25 %) are allowed for these
#: (kernel, dtypes, smallest BLOCK_T), each with its reason.
ALLOW_LIST: list[tuple[str, tuple[str, ...], int, str]] = [
    ("classifier_forward", ("float32", "float16", "bfloat16"), 2**15, _TOO_BIG.format("32 + 32 fp32")),
    ("classifier_backward", ("float32", "float16", "bfloat16"), 2**15, _TOO_BIG.format("32 + 32 fp32")),
    ("transform", ("float64",), 2**15, _TOO_BIG.format("32 fp64 (64 registers)")),
    ("classifier_forward", ("float64",), 2**14, _TOO_BIG.format("16 + 16 fp64 (64 registers)")),
    ("classifier_backward", ("float64",), 2**13, _TOO_BIG.format("8 + 8 + 8 fp64 (48 registers)")),
    ("transform_kn", ("float32", "float16", "bfloat16", "float64"), 2**15,
     "one program accumulates the [KB, P] block of a row, KB * P = 2^15 values, in 1024 threads at most 64 "
     "registers each: 32 fp32 (64 registers' worth in fp64) per thread before the chunk being added, its "
     "butterfly, the column of H_K and addresses. num_warps is at its limit of 32; a smaller block would "
     "mean a kernel that stages the row through memory. Correct, slower."),
    ("transform_kn", ("float32", "float16", "bfloat16", "float64"), 2**14,
     "KB * P = 2^14 values, 16 fp32 or fp64 per thread in 32 warps (64 registers each): ptxas spills 8 to "
     "72 bytes for some block shapes (fp64 with P >= 128; in fp32 / fp16 / bf16 only 32 x 512, i.e. "
     "20 * 512 and 28 * 512 = 14336), none for 256 x 64 (11008 = 172 * 64). 16 warps would give each "
     "thread 128 registers but halve the occupancy to 25 %. Small spills, cached in L1; not measured on "
     "a GPU."),
    ("quantize", ("float32", "float16", "bfloat16"), 2**14,
     "the transform_kn block (KB * P = 2^14 or 2^15 values: 16 or 32 a thread in 32 warps) plus the "
     "quantising epilogue, which holds |y| and the group scales broadcast over the block beside y until the "
     "codes are stored: ptxas spills (stores + loads) 172-292 bytes a thread at 2^14 values, 52-1568 at "
     "2^15 (table set; the NaN flags are already folded into a NaN-propagating max). Blocks up to 2^13 do "
     "not spill. num_warps is at its limit; less would mean a second pass over the row. Not measured on a "
     "GPU."),
    ("quantize", ("float64",), 2**13,
     "as for the 32-bit types, with twice the registers a value: 24-92 bytes a thread at 2^13 values (5 "
     "shapes), 232-1060 at 2^14, 1800-6188 at 2^15. Not measured on a GPU."),
]


def allowed(kernel: str, dtype: str, block_t: int, spills: int, occupancy: float) -> Optional[str]:
    """The ALLOW_LIST reason that excuses a failing binary, or None."""
    if occupancy < MIN_OCCUPANCY or spills == 0:
        return None
    for k, dtypes, smallest, reason in ALLOW_LIST:
        if k == kernel and dtype in dtypes and block_t >= smallest:
            return reason
    return None


KERNELS = ("transform", "classifier_forward", "classifier_backward", "transform_kn", "quantize")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}  # fmt: skip
BENCH_SHAPES = [(512, 10), (2048, 1000), (4096, 32000), (2**15, 10), (10, 2**15)]  # (N, C)


@dataclass(frozen=True)
class Variant:
    kernel: str  # one of KERNELS
    dtype: str  # one of DTYPES
    n_in: int  # transform: in_features; classifier: N
    n_out: int  # transform: out_features; classifier: C
    normalize: bool = True  # classifier kernels
    has_bias: bool = True  # classifier_forward
    etf: bool = False  # classifier kernels: the simplex ETF head (N a power of two, 2 <= C <= N)
    signs: bool = True  # transform_kn, quantize: with pre signs (the randomised transform)
    group: int = 0  # quantize: group size (0: per row)
    code: str = "int8"  # quantize: the codes' dtype (torch.<code>)

    @property
    def name(self) -> str:
        if self.kernel == "transform_kn":  # n_in = K (1: no H_K), n_out = pow2; n = K * pow2
            return f"transform_kn {self.dtype} K={self.n_in} pow2={self.n_out}" + (" signs" if self.signs else "")
        if self.kernel == "quantize":  # as transform_kn, quantised per group (or row) to code
            return (f"quantize {self.dtype} K={self.n_in} pow2={self.n_out} g={self.group or 'row'} {self.code}"
                    + (" signs" if self.signs else ""))  # fmt: skip
        sizes = f"in={self.n_in} out={self.n_out}" if self.kernel == "transform" else f"N={self.n_in} C={self.n_out}"
        flags = ""
        if self.kernel != "transform":
            flags += " normalize" if self.normalize else " raw"
        if self.kernel == "classifier_forward":
            flags += " bias" if self.has_bias else " nobias"
        if self.etf:
            flags += " etf"
        return f"{self.kernel} {self.dtype} {sizes}{flags}"


@dataclass(frozen=True)
class Row:
    name: str  # the first variant compiled to this binary
    same_binary: int  # variants of the set that compile to the same binary
    kernel: str
    dtype: str
    block_t: int
    chunks: str  # IN_CHUNK/OUT_CHUNK (G_CHUNK/X_CHUNK for the backward, KBxP for transform_kn)
    rows_per_program: int
    num_warps: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int  # dynamic + static, without the 1 KB reserved
    blocks_per_sm: int
    occupancy: float
    limiter: str
    passed: bool
    allowed: Optional[str]  # the ALLOW_LIST reason, when it failed and is allowed


# ---------------------------------------------------------------------------------------
# Capturing the launches the ops make.


@dataclass
class Launch:
    fn: Any  # the JITFunction
    args: dict  # argument name -> value (tensors, ints, floats, constexpr values)
    num_warps: int


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records instead of running."""

    def __init__(self, fn, sink: list):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def launch(*args, num_warps: int = 4, **kwargs):
            bound = dict(zip(self.fn.arg_names, args))
            bound.update(kwargs)
            self.sink.append(Launch(self.fn, bound, num_warps))

        return launch


def capture(v: Variant) -> Launch:
    """Run the op's host code for ``v`` on 3 contiguous CPU rows and return its launch."""
    sink: list[Launch] = []
    kernels = ("_transform_kernel", "_classifier_forward_kernel", "_classifier_backward_kernel", "_transform_kn_kernel")
    saved = {name: getattr(tk, name) for name in (*kernels, "_check_device")}
    try:
        for name in kernels:
            setattr(tk, name, _Recorder(saved[name], sink))
        tk._check_device = lambda x, op: None
        dtype = DTYPES[v.dtype]
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        x = torch.empty(3, v.n_in, dtype=dtype)
        scale = torch.tensor(1.0, dtype=acc)  # as ops.hadamard_classifier makes it
        if v.kernel == "transform":
            tk.hadamard_transform_triton(x, v.n_out, 1.0)
        elif v.kernel in ("transform_kn", "quantize"):
            K, pow2 = v.n_in, v.n_out
            x = torch.empty(3, K * pow2, dtype=dtype)
            # H_K column-major, as transforms.py passes it (triton_kernels._launch_kn).
            h = orders.hadamard_k(K, torch.int8).mT.contiguous().mT if K > 1 else None
            pre = torch.ones(K * pow2, dtype=dtype) if v.signs else None
            if v.kernel == "quantize":
                tk.hadamard_quantize_triton(x, h, pow2, 1.0, pre, getattr(torch, v.code), v.group)
            else:
                tk.hadamard_transform_kn_triton(x, h, pow2, 1.0, pre, None)
        elif v.kernel == "classifier_forward":
            bias = torch.zeros(v.n_out, dtype=dtype) if v.has_bias else None
            tk.classifier_forward_triton(x, scale, bias, v.n_out, v.normalize, 1e-12, v.etf)
        else:
            g = torch.empty(3, v.n_out, dtype=dtype)
            tk.classifier_backward_triton(g, x, scale, v.normalize, 1e-12, v.etf)
    finally:
        for name, value in saved.items():
            setattr(tk, name, value)
    assert len(sink) == 1, (v, len(sink))
    return sink[0]


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int8: "i8"}


def _specialise(value) -> tuple[str, Optional[str]]:
    """(type, hint) of a runtime argument as Triton's launcher specialises it: ints equal to
    1 become constants, multiples of 16 and 16-byte aligned pointers get 'D' (divisible)."""
    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_TYPES[value.dtype], "D" if value.data_ptr() % 16 == 0 else ""
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, int):
        if value == 1:
            return "constexpr", None
        kind = "i32" if -(2**31) <= value < 2**31 else "i64"
        return kind, "D" if value % 16 == 0 else ""
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"unexpected kernel argument {value!r}")


def source_of(launch: Launch) -> tuple[tuple, tuple]:
    """(fn name, signature, constexprs, attrs) of the ASTSource that a launch on an sm_90 GPU
    compiles, and a key identifying the binary."""
    fn = launch.fn
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        value = launch.args[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, hint = _specialise(value)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif hint == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    key = (fn.__name__, tuple(signature.items()), tuple((k, str(v)) for k, v in constexprs.items()),
           tuple(sorted(attrs)), launch.num_warps)  # fmt: skip
    return (fn.__name__, signature, constexprs, attrs), key


# ---------------------------------------------------------------------------------------
# Compiling and measuring.


def _tool(name: str) -> str:
    """Path of a CUDA tool bundled with Triton (the same ptxas it compiles with), else PATH."""
    from triton import knobs
    from triton.backends.nvidia import compiler as nv

    if name == "ptxas" and hasattr(nv, "get_ptxas"):
        return nv.get_ptxas(CAPABILITY).path
    tool = getattr(knobs.nvidia, name.replace("-", "_"), None)
    path = getattr(tool, "path", None) or shutil.which(name)
    if not path:
        raise FileNotFoundError(f"triton_resources: {name} is neither bundled with Triton nor on PATH")
    return path


def _ptxas_flags() -> list[str]:
    """Triton's own ptxas options that change code generation (besides -v and the arch)."""
    from triton.backends.nvidia.compiler import CUDABackend

    src = inspect.getsource(CUDABackend.make_cubin)
    return ["--regAllocOptLevel=2"] if "regAllocOptLevel=2" in src else []


def measure(spec: tuple, num_warps: int, workdir: str) -> dict:
    """Compile ``spec`` (see source_of) for sm_90; read registers, spills, stack, shared memory."""
    fn_name, signature, constexprs, attrs = spec
    src = ASTSource(fn=getattr(tk, fn_name), signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", CAPABILITY, 32), options={"num_warps": num_warps})
    base = os.path.join(workdir, hashlib.sha1(compiled.asm["ptx"].encode()).hexdigest()[:16])
    with open(base + ".ptx", "w") as f:
        f.write(compiled.asm["ptx"])
    with open(base + ".cubin", "wb") as f:
        f.write(compiled.asm["cubin"])
    arch = f"--gpu-name=sm_{CAPABILITY}a"
    log = subprocess.run([_tool("ptxas"), "-v", *_ptxas_flags(), arch, base + ".ptx", "-o", base + ".o"],
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    dump = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", base + ".cubin"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip

    def grab(pattern: str, text: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    regs = grab(r"Used (\d+) registers", log)
    cubin_regs = grab(r"REG:(\d+)", dump)
    if regs != cubin_regs:  # the reassembly must describe the binary Triton produced
        raise RuntimeError(f"triton_resources: ptxas -v says {regs} registers, Triton's cubin {cubin_regs}")
    return {
        "registers": regs,
        "spill_stores": grab(r"(\d+) bytes spill stores", log),
        "spill_loads": grab(r"(\d+) bytes spill loads", log),
        "stack_bytes": grab(r"(\d+) bytes stack frame", log),
        "shared_bytes": compiled.metadata.shared + grab(r"(\d+) bytes smem", log),
        "num_warps": compiled.metadata.num_warps,
    }


def occupancy(registers: int, num_warps: int, shared_bytes: int) -> tuple[int, float, str]:
    """(blocks per SM, occupancy, limiting resource) on sm_90; formula in the module docstring."""
    regs_per_warp = math.ceil(32 * max(registers, 1) / REG_UNIT) * REG_UNIT
    limits = {  # ties name the first: warps, then blocks, shared memory, registers
        "warps": WARPS_PER_SM // num_warps,
        "blocks": BLOCKS_PER_SM,
        "shared memory": SMEM_PER_SM // (shared_bytes + SMEM_RESERVED) if shared_bytes <= SMEM_PER_BLOCK else 0,
        "registers": PARTITIONS * ((REGS_PER_SM // PARTITIONS) // regs_per_warp) // num_warps,
    }
    limiter = min(limits, key=lambda k: limits[k])
    blocks = limits[limiter]
    return blocks, blocks * num_warps / WARPS_PER_SM, limiter


# ---------------------------------------------------------------------------------------
# Sets of variants.


# The CI set: the sizes where the configuration changes character (n < 16 unaligned rows,
# the largest multi-row blocks, the warps steps, the allowed spills) in one dtype of each
# width; float16 compiles like bfloat16.
_CI_SIZES = (1, 2, 16, 4096, 8192, 2**14, 2**15)
_CI_DTYPES = ("float32", "bfloat16", "float64")
# transform_kn (K, pow2): one block row (K = 1) small and largest, multi-row programs, the
# widths of LLaMA-family models (5120 = 20 * 256, 11008 = 172 * 64, 28672 = 28 * 1024).
_CI_KN = ((1, 16), (1, 2**15), (12, 16), (20, 256), (172, 64), (28, 1024))
# The table: one K per block height KB = next_pow2(K) (K = 1: KB = 1; the binary depends on KB,
# not K), every pow2 whose block KB * max(16, pow2) fits in 2^15.
_TABLE_KN = (1, 12, 20, 40, 108, 172)
# The quantising epilogue (group size, 0: per row; code dtype): each reduction layout (the
# row; groups inside a chunk, GS; groups of whole chunks, GM, where pow2 < 128) and encoder.
_CI_QUANT = ((0, "float8_e4m3fn"), (32, "int8"), (128, "float8_e5m2"))
# The classifier kernels with the simplex ETF head (etf; its centring and f add 0-8 registers),
# in the CI set at the sizes nearest a limit: n = 2 (the backward at 112-124 registers of the
# 128 that keep 25 % occupancy) and 2^14 (64 registers, the most at 32 warps, in 32-bit types).
_CI_ETF = (2, 2**14)


def etf_sizes(n: int, c: int) -> bool:
    """Whether the simplex ETF head takes N = n, C = c (ops._check_etf_size)."""
    return n & (n - 1) == 0 and 2 <= c <= n


def variants(which: str) -> list[Variant]:
    out = []
    for dtype in DTYPES:
        if which in ("ci", "table"):
            if which == "ci" and dtype not in _CI_DTYPES:
                continue
            for n in _CI_SIZES if which == "ci" else [2**k for k in range(16)]:
                out += [Variant("transform", dtype, n, n), Variant("classifier_forward", dtype, n, n),
                        Variant("classifier_backward", dtype, n, n)]  # fmt: skip
                if etf_sizes(n, n) and (which == "table" or n in _CI_ETF):
                    out += [Variant("classifier_forward", dtype, n, n, etf=True),
                            Variant("classifier_backward", dtype, n, n, etf=True)]  # fmt: skip
            if which == "table" or dtype == "float32":
                for n, c in BENCH_SHAPES:
                    out += [Variant("classifier_forward", dtype, n, c), Variant("classifier_backward", dtype, n, c)]
                    if which == "table" and etf_sizes(n, c):
                        out += [Variant("classifier_forward", dtype, n, c, etf=True),
                                Variant("classifier_backward", dtype, n, c, etf=True)]  # fmt: skip
            if which == "ci":
                kn = list(_CI_KN)
                quant = _CI_QUANT if dtype == "float32" else _CI_QUANT[:2]
            else:
                kn = [(K, 2**k) for K in _TABLE_KN for k in range(16)
                      if tk._kn_block(K * 2**k, K, 2**k)[0] * max(16, 2**k) <= 2**15]  # fmt: skip
                quant = _CI_QUANT
            out += [Variant("transform_kn", dtype, K, pow2) for K, pow2 in kn]
            out += [Variant("quantize", dtype, K, pow2, group=g, code=code) for K, pow2 in kn
                    for g, code in quant if (K * pow2) % max(g, 1) == 0]  # fmt: skip
        else:
            for a in range(21):
                for b in range(21):
                    if min(a, b) > 15:
                        continue
                    n_in, n_out = 2**a, 2**b
                    out.append(Variant("transform", dtype, n_in, n_out))
                    for normalize in (True, False):
                        for etf in (False, True) if etf_sizes(n_in, n_out) else (False,):
                            out.append(Variant("classifier_backward", dtype, n_in, n_out, normalize, etf=etf))
                            for bias in (True, False):
                                out.append(Variant("classifier_forward", dtype, n_in, n_out, normalize, bias, etf))
    return out


def _measure_job(job: tuple) -> dict:
    return measure(*job)


def run(which: str, jobs: int) -> tuple[list[Row], float]:
    start = time.perf_counter()
    groups: dict[tuple, list] = {}  # binary key -> [launch, spec, [variants]]
    for v in variants(which):
        launch = capture(v)
        spec, key = source_of(launch)
        groups.setdefault(key, [launch, spec, []])[2].append(v)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as workdir:
        todo = [(spec, launch.num_warps, workdir) for launch, spec, _ in groups.values()]
        if jobs > 1:
            with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
                results = list(pool.map(_measure_job, todo))
        else:
            results = [_measure_job(job) for job in todo]
    for (launch, _, members), res in zip(groups.values(), results):
        a = launch.args
        blocks, occ, limiter = occupancy(res["registers"], res["num_warps"], res["shared_bytes"])
        first = members[0]
        spills = res["spill_stores"] + res["spill_loads"]
        passed = spills == 0 and occ >= MIN_OCCUPANCY
        if "KB" in a:  # transform_kn: a [KB, P] block per row (BLOCK_T column: KB * P)
            block_t, chunks = a["KB"] * a["P"], f"{a['KB']}x{a['P']}"
        else:
            block_t = a["BLOCK_T"]
            pair = (a["G_CHUNK"], a["X_CHUNK"]) if "G_CHUNK" in a else (a["IN_CHUNK"], a["OUT_CHUNK"])
            chunks = f"{pair[0]}/{pair[1]}"
        excuse = None if passed else allowed(first.kernel, first.dtype, block_t, spills, occ)
        rows.append(Row(
            name=first.name, same_binary=len(members), kernel=first.kernel, dtype=first.dtype,
            block_t=block_t, chunks=chunks, rows_per_program=a["ROWS"],
            num_warps=res["num_warps"], registers=res["registers"], spill_stores=res["spill_stores"],
            spill_loads=res["spill_loads"], stack_bytes=res["stack_bytes"],
            shared_bytes=res["shared_bytes"], blocks_per_sm=blocks, occupancy=occ, limiter=limiter,
            passed=passed, allowed=excuse,
        ))  # fmt: skip
    return rows, time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# Output.


def environment(which: str, seconds: float, jobs: int) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    source = "hadamard_kernels/triton_kernels.py"
    ptxas = subprocess.run([_tool("ptxas"), "--version"], capture_output=True, text=True).stdout
    return {
        "target": f"sm_{CAPABILITY} (GPUTarget('cuda', {CAPABILITY}, 32)), compiled without a GPU",
        "set": which,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "ptxas": (re.findall(r"release [\d.]+", ptxas) or ["unknown"])[0],
        "commit": git("rev-parse", "--short", "HEAD"),
        "kernels_modified_since_commit": bool(git("status", "--porcelain", "--", source)),
        "kernels_sha256": hashlib.sha256((ROOT / source).read_bytes()).hexdigest()[:16],
        "date": datetime.date.today().isoformat(),
        "seconds": round(seconds, 1),
        "jobs": jobs,
    }


def markdown(rows: list[Row], env: dict) -> str:
    lines = [
        "# Triton kernels: registers, spills and occupancy on sm_90 (static, no GPU)",
        "",
        f"Made by `python scripts/triton_resources.py --set {env['set']} --write`; the formula "
        "and the sets of variants are in the script's docstring. " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
        "One row per distinct binary (the variants of the set compiling to it are counted in "
        "'same'; the name is the first of them). Gate: no spills, occupancy >= 25 %.",
        "",
        "| variant | same | BLOCK_T | chunks | ROWS | warps | regs | spill st/ld B | stack B "
        "| smem B | blocks/SM | occupancy | limiter | gate |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        gate = "ok" if r.passed else ("allowed" if r.allowed else "**FAIL**")
        lines.append(
            f"| {r.name} | {r.same_binary} | {r.block_t} | {r.chunks} | {r.rows_per_program} | {r.num_warps} "
            f"| {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.stack_bytes} | {r.shared_bytes} "
            f"| {r.blocks_per_sm} | {100 * r.occupancy:.1f} % | {r.limiter} | {gate} |"
        )
    lines += ["", "Allowed exceptions (ALLOW_LIST in the script; spills only, never occupancy):", ""]
    for kernel, dtypes, smallest, reason in ALLOW_LIST:
        lines.append(f"- {kernel}, {'/'.join(dtypes)}, BLOCK_T >= {smallest}: {reason}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=("ci", "table", "full"), default="ci",
                        help="which variants to compile (default: ci; see the module docstring)")
    parser.add_argument("--jobs", type=int, default=1, help="compiler processes (default: 1)")
    parser.add_argument("--write", action="store_true",
                        help=f"write {RESULTS.relative_to(ROOT)}.{{md,json}} (default: only print and gate)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="write the table to OUT.{md,json} instead (implies --write)")
    args = parser.parse_args()
    rows, seconds = run(args.set, args.jobs)
    env = environment(args.set, seconds, args.jobs)
    failed = [r for r in rows if not r.passed and not r.allowed]
    table = markdown(rows, env)
    out = args.out or (RESULTS if args.write else None)
    if out is not None:
        out.with_suffix(".md").write_text(table)
        allow = [dict(zip(("kernel", "dtypes", "min_block_t", "reason"), entry)) for entry in ALLOW_LIST]
        payload = {"environment": env, "min_occupancy": MIN_OCCUPANCY, "allow_list": allow,
                   "rows": [dataclasses.asdict(r) for r in rows]}  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    for r in failed:
        print(f"FAIL {r.name}: {r.registers} registers, spills {r.spill_stores}/{r.spill_loads} B, "
              f"occupancy {100 * r.occupancy:.1f} % ({r.limiter})")  # fmt: skip
    worst = min(rows, key=lambda r: r.occupancy)
    print(f"triton_resources: {len(rows)} binaries for {sum(r.same_binary for r in rows)} variants "
          f"(set {args.set}) in {seconds:.0f} s; lowest occupancy {100 * worst.occupancy:.1f} % "
          f"({worst.name}); {len(failed)} failing the gate")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
