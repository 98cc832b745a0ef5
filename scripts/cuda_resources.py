#!/usr/bin/env python3
"""Resource table and gate of every CUDA kernel instantiation for sm_90 (standard library only).

Inputs, both from the one nvcc compile of scripts/check_cuda.sh (`-Xptxas -v -keep`):
  - the ptxas -v log: registers, stack frame, spill stores / loads and static shared memory of
    each kernel;
  - the PTX: each kernel's `.maxntid` (its __launch_bounds__, which is the block size every
    launcher in csrc/cuda/ uses) and the tile manifest of csrc/cuda/check/compile_check.cu,
    {L, threads, dynamic shared bytes} of RowTile<T, L> (row_transform_kernel,
    row_transform_centre_kernel, classifier_forward_kernel and classifier_backward_kernel launch with
    RowTile<T, L>::kSmemBytes of dynamic shared memory; the other kernels with none), and the
    kn manifest of kn_transform_kernel and kn_quantize_kernel (orders.cuh, quantize.cuh:
    RowTile<T, L>::THREADS threads, a row buffer that depends on the call, listed at its
    typical size).

Theoretical occupancy on sm_90 (H100), the model of the CUDA occupancy calculator:
    warps      = ceil(threads / 32)                                 warps per block
    reg_warp   = ceil(registers * 32 / 256) * 256                   registers allocated per warp
    smem_block = ceil((static + dynamic + 1024) / 128) * 128        1 KB reserved per block
    by_warps   = floor(64 / warps)                                  64 warps per SM
    by_regs    = floor(floor(65536 / reg_warp) / warps)             65536 registers per SM
    by_smem    = floor(233472 / smem_block)                         228 KB shared memory per SM
    blocks     = min(32, by_warps, by_regs, by_smem)                32 blocks per SM
                 (0 if registers > 255 or static + dynamic > 227 KB: the launch fails)
    occupancy  = blocks * warps / 64
The limiter column names the terms that reach the minimum.

Gate (--gate, exit status 1 on failure):
  - every kernel declares __launch_bounds__ (its .maxntid), and the manifest covers every tile;
  - contiguous path (everything but the kStrided row-tile kernels): no spill stores or loads
    and at least 25% occupancy;
  - strided path (kStrided = true: column stride != 1): no spills, unless listed in
    STRIDED_ALLOW with a reason.

Usage: scripts/cuda_resources.py --ptxas-log LOG --ptx PTX [--nvcc-version TEXT] [--gate]
           [--save PREFIX]    (writes PREFIX.md and PREFIX.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import subprocess
import sys
from pathlib import Path

# sm_90 limits (CUDA C++ Programming Guide, compute capability 9.0; occupancy calculator).
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers, per warp
MAX_REGS_PER_THREAD = 255
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SMEM_PER_SM = 228 * 1024
SMEM_MAX_PER_BLOCK = 227 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
SMEM_ALLOC_UNIT = 128

MIN_OCCUPANCY = 0.25

# Strided-path kernels allowed to spill: (kernel, dtype, L) -> reason.
_BACKWARD_512 = (
    "512-thread tile, so 128 registers is the hardware limit and u holds 64 of them; ptxas issues "
    "the strided loads of x (a 64-bit address each) for u . x ahead of the exchange's read-back "
    "of u and spills about 200-480 B. Column-strided inputs at the largest single-pass size "
    "only; the contiguous instantiation does not spill."
)
STRIDED_ALLOW: dict[tuple[str, str, int], str] = {
    ("classifier_backward", "float32", 15): _BACKWARD_512,
    ("classifier_backward", "float16", 15): _BACKWARD_512,
    ("classifier_backward", "bfloat16", 15): _BACKWARD_512,
    ("classifier_backward", "float64", 14): _BACKWARD_512,
}

DTYPES = {"float": "float32", "double": "float64", "__half": "float16", "__nv_bfloat16": "bfloat16",
          "signed char": "int8"}
MANIFEST_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16"}
ROW_TILE_KERNELS = ("row_transform", "row_transform_centre", "classifier_forward", "classifier_backward")
KN_KERNELS = ("kn_transform", "kn_quantize")  # <T, L>, launched as the kn manifest says
EPILOGUES = {0: "scale", 1: "classifier"}  # enum class ColumnEpilogue in fwht.cuh


@dataclasses.dataclass(frozen=True)
class Usage:
    """What ptxas reports for one kernel."""

    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    static_smem_bytes: int


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One instantiation, from its mangled name."""

    kernel: str  # row_transform, column_transform, classifier_forward, ...
    dtype: str  # storage type
    out: str  # output type of row/column kernels ("" for the others)
    log2: int | None  # L of a row tile, L2 (high bits) of a column kernel, None otherwise
    strided: bool  # kStrided row-tile kernel (column stride != 1)
    epilogue: str  # column kernels: scale | classifier
    etf: bool = False  # classifier_forward / classifier_backward with the simplex ETF head (kEtf)

    @property
    def path(self) -> str:
        return "strided" if self.strided else "contiguous"

    @property
    def label(self) -> str:
        args = [self.dtype]
        if self.out and self.out != self.dtype:
            args.append(f"out={self.out}")
        if self.log2 is not None:
            args.append(f"L={self.log2}" if self.kernel != "column_transform" else f"L2={self.log2}")
        if self.epilogue:
            args.append(self.epilogue)
        if self.kernel in ROW_TILE_KERNELS:
            args.append(self.path)
        if self.etf:
            args.append("etf")
        return f"{self.kernel}<{', '.join(args)}>"


@dataclasses.dataclass(frozen=True)
class Occupancy:
    blocks: int  # resident blocks per SM
    fraction: float  # resident warps / 64
    limiter: str


@dataclasses.dataclass(frozen=True)
class Row:
    mangled: str
    kernel: Kernel
    usage: Usage
    threads: int
    dynamic_smem_bytes: int
    occupancy: Occupancy


# ------------------------------------------------------------------------------------------
# Parsing.

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_log(text: str) -> dict[str, Usage]:
    """Per mangled kernel name, the ptxas -v report (the lines after 'Compiling entry function')."""
    out: dict[str, Usage] = {}
    name = None
    props = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            name, props = m.group(1), None
        elif name is not None and (m := _PROPS.search(line)):
            props = tuple(int(g) for g in m.groups())
        elif name is not None and (m := _USED.search(line)):
            if props is None:
                raise ValueError(f"ptxas log: no stack/spill line before 'Used' for {name}")
            out[name] = Usage(int(m.group(1)), *props, int(m.group(2) or 0))
            name = None
    return out


_MAXNTID = re.compile(r"\.entry\s+(\S+?)\s*\((?:[^)]*)\)\s*((?:\.\w+[^\n]*\n\s*)*)\{", re.S)
_MANIFEST = re.compile(r"\.global\s+\.align\s+\d+\s+\.b8\s+\S*hk_(kn_)?tiles_(\w+?)E?\[(\d+)\]\s*=\s*\{([^}]*)\}")


def parse_ptx(text: str) -> tuple[dict[str, int], dict[tuple[str, str, int], tuple[int, int]]]:
    """(threads per kernel from .maxntid, {(manifest, dtype, L): (threads, dynamic shared bytes)}),
    manifest "row" (hk_tiles_*: the row-tile kernels) or "kn" (hk_kn_tiles_*: kn_transform)."""
    threads: dict[str, int] = {}
    for m in _MAXNTID.finditer(text):
        if d := re.search(r"\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", m.group(2)):
            threads[m.group(1)] = math.prod(int(g) for g in d.groups())
    tiles: dict[tuple[str, str, int], tuple[int, int]] = {}
    for m in _MANIFEST.finditer(text):
        data = [int(b) for b in m.group(4).replace(" ", "").split(",") if b]
        data += [0] * (int(m.group(3)) - len(data))  # PTX drops trailing zero bytes
        ints = [int.from_bytes(bytes(data[i : i + 4]), "little", signed=True) for i in range(0, len(data), 4)]
        kind = "kn" if m.group(1) else "row"
        for i in range(0, len(ints), 3):
            tiles[(kind, MANIFEST_DTYPES[m.group(2)], ints[i])] = (ints[i + 1], ints[i + 2])
    return threads, tiles


_KERNEL_NAME = re.compile(r"_ZN16hadamard_kernels4cuda(\d+)(\w+)")


def describe(mangled: str) -> Kernel:
    """The instantiation behind a mangled hadamard_kernels::cuda kernel name."""
    m = _KERNEL_NAME.match(mangled)
    if not m:
        raise ValueError(f"not a hadamard_kernels::cuda kernel: {mangled}")
    n = int(m.group(1))
    rest = m.group(2)
    name, rest = rest[:n], rest[n:]
    if not name.endswith("_kernel") or not rest.startswith("I"):
        raise ValueError(f"unexpected kernel name: {mangled}")
    # Template arguments: builtin types, source names, substitutions, literals.
    subs = ["hadamard_kernels", "hadamard_kernels::cuda", name]
    args: list[object] = []
    i = 1
    token = re.compile(r"(?P<b>[fda])|(?P<n>\d+)|S(?P<s>\d*)_|L(?P<l>b[01]|i\d+|NS0_(?P<en>\d+))")
    while rest[i] != "E":
        t = token.match(rest, i)
        if not t:
            raise ValueError(f"cannot read template arguments of {mangled} at {rest[i:]!r}")
        if t.group("b"):
            args.append({"f": "float", "d": "double", "a": "signed char"}[t.group("b")])
            i = t.end()
        elif t.group("n"):
            k = int(t.group("n"))
            args.append(rest[t.end() : t.end() + k])
            subs.append(args[-1])
            i = t.end() + k
        elif t.group("s") is not None:
            args.append(subs[int(t.group("s") or -1) + 1])
            i = t.end()
        else:
            lit = t.group("l")
            if lit[0] == "b":
                args.append(lit == "b1")
                i = t.end() + 1
            elif lit[0] == "i":
                args.append(int(lit[1:]))
                i = t.end() + 1
            else:  # LNS0_<n>ColumnEpilogueE<value>E
                j = t.end() + int(t.group("en")) + 1  # past the enum's name and its E
                v = re.match(r"\d+", rest[j:])
                args.append(EPILOGUES[int(v.group(0))])
                i = j + v.end() + 1
    kernel = name[: -len("_kernel")]
    dtype = DTYPES[args[0]]
    if kernel in ("row_transform", "row_transform_centre"):  # <T, O, L, kStrided>
        return Kernel(kernel, dtype, DTYPES[args[1]], args[2], args[3], "")
    if kernel == "column_transform":  # <T, O, L2, kEpi>
        return Kernel(kernel, dtype, DTYPES[args[1]], args[2], False, args[3])
    if kernel in ("classifier_forward", "classifier_backward"):  # <T, L, kStrided, kEtf>
        return Kernel(kernel, dtype, "", args[1], args[2], "", args[3])
    if kernel in ("classifier_backward_rows", "classifier_backward_rows_etf"):  # <T>
        return Kernel(kernel, dtype, "", None, False, "")
    if kernel == "classifier_chunk_scale":  # <A>
        return Kernel(kernel, dtype, "", None, False, "")
    if kernel in KN_KERNELS:  # <T, L>
        return Kernel(kernel, dtype, "", args[1], False, "")
    if kernel == "kn_masks":  # <int8_t>
        return Kernel(kernel, dtype, "", None, False, "")
    raise ValueError(f"unknown kernel {kernel} in {mangled}: teach scripts/cuda_resources.py its arguments")


def occupancy(threads: int, registers: int, smem_bytes: int) -> Occupancy:
    """Theoretical occupancy on sm_90 (formula in the module docstring); smem = static + dynamic."""
    if threads <= 0:
        return Occupancy(0, 0.0, "no launch bounds")
    warps = -(-threads // 32)
    if registers > MAX_REGS_PER_THREAD or smem_bytes > SMEM_MAX_PER_BLOCK or threads > 1024:
        return Occupancy(0, 0.0, "launch fails")
    reg_warp = -(-max(registers, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    smem_block = -(-(smem_bytes + SMEM_RESERVED_PER_BLOCK) // SMEM_ALLOC_UNIT) * SMEM_ALLOC_UNIT
    limits = {
        "blocks": MAX_BLOCKS_PER_SM,
        "warps": MAX_WARPS_PER_SM // warps,
        "registers": (REGS_PER_SM // reg_warp) // warps,
        "shared memory": SMEM_PER_SM // smem_block,
    }
    blocks = min(limits.values())
    limiter = ", ".join(k for k, v in limits.items() if v == blocks)
    return Occupancy(blocks, blocks * warps / MAX_WARPS_PER_SM, limiter)


def build_rows(ptxas_log: str, ptx: str) -> list[Row]:
    usage = parse_ptxas_log(ptxas_log)
    threads, tiles = parse_ptx(ptx)
    rows = []
    for mangled, u in usage.items():
        k = describe(mangled)
        t = threads.get(mangled, 0)
        dyn = 0
        if k.kernel in ROW_TILE_KERNELS or k.kernel in KN_KERNELS:
            tile = tiles.get(("kn" if k.kernel in KN_KERNELS else "row", k.dtype, k.log2))
            if tile is None:
                raise ValueError(f"tile manifest lacks {k.dtype} L={k.log2} ({k.label})")
            if t != tile[0]:
                raise ValueError(f"{k.label}: __launch_bounds__ {t} != RowTile::THREADS {tile[0]}")
            dyn = tile[1]
        rows.append(Row(mangled, k, u, t, dyn, occupancy(t, u.registers, u.static_smem_bytes + dyn)))
    order = {"row_transform": 0, "row_transform_centre": 0.5, "classifier_forward": 1, "classifier_backward": 2,
             "column_transform": 3, "kn_transform": 4, "kn_quantize": 5, "kn_masks": 6}
    rows.sort(key=lambda r: (order.get(r.kernel.kernel, 4), list(DTYPES.values()).index(r.kernel.dtype),
                             r.kernel.out, r.kernel.epilogue, r.kernel.etf, r.kernel.strided, r.kernel.log2 or 0))
    return rows


# ------------------------------------------------------------------------------------------
# Gate and reports.


def spills(r: Row) -> bool:
    return r.usage.spill_store_bytes > 0 or r.usage.spill_load_bytes > 0


def gate(rows: list[Row], allow: dict[tuple[str, str, int], str] = STRIDED_ALLOW) -> list[str]:
    """The gate's failures, one line each (empty: passed)."""
    failures = []
    for r in rows:
        k = r.kernel
        if r.threads == 0:
            failures.append(f"{k.label}: no __launch_bounds__ (.maxntid) in the PTX")
            continue
        if k.strided:
            if spills(r) and (k.kernel, k.dtype, k.log2) not in allow:
                failures.append(f"{k.label}: spills {r.usage.spill_store_bytes} B stores / "
                                f"{r.usage.spill_load_bytes} B loads (strided path, not in STRIDED_ALLOW)")
            continue
        if spills(r):
            failures.append(f"{k.label}: spills {r.usage.spill_store_bytes} B stores / "
                            f"{r.usage.spill_load_bytes} B loads")
        if r.occupancy.fraction < MIN_OCCUPANCY:
            failures.append(f"{k.label}: occupancy {r.occupancy.fraction:.1%} < {MIN_OCCUPANCY:.0%} "
                            f"({r.usage.registers} registers, {r.threads} threads, limited by {r.occupancy.limiter})")
    return failures


def summary(rows: list[Row]) -> dict[str, object]:
    levels: dict[str, int] = {}
    for r in rows:
        key = f"{r.occupancy.fraction:.1%}"
        levels[key] = levels.get(key, 0) + 1
    return {
        "kernels": len(rows),
        "spilling": sum(spills(r) for r in rows),
        "spilling_contiguous": sum(spills(r) and not r.kernel.strided for r in rows),
        "below_min_occupancy_contiguous": sum(r.occupancy.fraction < MIN_OCCUPANCY and not r.kernel.strided
                                              for r in rows),
        "occupancy_histogram": dict(sorted(levels.items(), key=lambda kv: float(kv[0][:-1]))),
        "max_registers": max(r.usage.registers for r in rows),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance(nvcc_version: str) -> dict[str, str]:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", "csrc/cuda", "csrc/hadamard.h"):
        commit += " + uncommitted changes in csrc/cuda"
    return {
        "arch": "sm_90",
        "nvcc": nvcc_version,
        "date": datetime.date.today().isoformat(),
        "commit": commit,
    }


def to_json(rows: list[Row], prov: dict[str, str], failures: list[str]) -> str:
    return json.dumps({
        **prov,
        "model": {
            "regs_per_sm": REGS_PER_SM, "reg_alloc_unit_per_warp": REG_ALLOC_UNIT,
            "max_warps_per_sm": MAX_WARPS_PER_SM, "max_blocks_per_sm": MAX_BLOCKS_PER_SM,
            "smem_per_sm": SMEM_PER_SM, "smem_max_per_block": SMEM_MAX_PER_BLOCK,
            "smem_reserved_per_block": SMEM_RESERVED_PER_BLOCK, "smem_alloc_unit": SMEM_ALLOC_UNIT,
        },
        "summary": summary(rows),
        "gate": {"min_occupancy": MIN_OCCUPANCY, "failures": failures,
                 "strided_allow": {f"{k[0]}<{k[1]}, L={k[2]}>": v for k, v in STRIDED_ALLOW.items()}},
        "kernels": [{
            "instantiation": r.kernel.label, "mangled": r.mangled, **dataclasses.asdict(r.kernel),
            "path": r.kernel.path, "threads": r.threads, **dataclasses.asdict(r.usage),
            "dynamic_smem_bytes": r.dynamic_smem_bytes, "blocks_per_sm": r.occupancy.blocks,
            "occupancy": r.occupancy.fraction, "limiter": r.occupancy.limiter,
        } for r in rows],
    }, indent=1) + "\n"


def to_markdown(rows: list[Row], prov: dict[str, str], failures: list[str]) -> str:
    s = summary(rows)
    out = [
        "# CUDA kernel resources on sm_90",
        "",
        f"Generated by `bash scripts/check_cuda.sh --save` (ptxas -v of the compile check, "
        f"occupancy model in scripts/cuda_resources.py). {prov['nvcc']}; {prov['date']}; commit {prov['commit']}.",
        "",
        f"{s['kernels']} kernel instantiations; {s['spilling']} spill ({s['spilling_contiguous']} on the contiguous "
        f"path); {s['below_min_occupancy_contiguous']} contiguous-path kernels below {MIN_OCCUPANCY:.0%} occupancy; "
        f"at most {s['max_registers']} registers.",
        "",
        "Occupancy histogram: " + ", ".join(f"{k}: {v}" for k, v in s["occupancy_histogram"].items()) + ".",
        "",
        "Gate: " + ("passed." if not failures else f"{len(failures)} failures:"),
    ]
    out += [f"- {f}" for f in failures]
    out += ["", "Strided-path allow-list (scripts/cuda_resources.py, STRIDED_ALLOW):"]
    out += [f"- {k}<{d}, L={n}, strided>: {why}" for (k, d, n), why in STRIDED_ALLOW.items()] or ["- empty"]
    out += ["", "| instantiation | threads | registers | spill st / ld (B) | stack (B) | smem static + dynamic (B) "
            "| blocks/SM | occupancy | limited by |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        u = r.usage
        out.append(f"| {r.kernel.label} | {r.threads} | {u.registers} | {u.spill_store_bytes} / {u.spill_load_bytes} "
                   f"| {u.stack_bytes} | {u.static_smem_bytes} + {r.dynamic_smem_bytes} | {r.occupancy.blocks} "
                   f"| {r.occupancy.fraction:.1%} | {r.occupancy.limiter} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptxas-log", type=Path, required=True, help="stderr of nvcc -Xptxas -v")
    ap.add_argument("--ptx", type=Path, required=True, help="the PTX kept by nvcc -keep")
    ap.add_argument("--nvcc-version", default="nvcc version unknown")
    ap.add_argument("--gate", action="store_true", help="exit 1 if the gate fails")
    ap.add_argument("--save", type=Path, help="write PREFIX.md and PREFIX.json")
    a = ap.parse_args(argv)
    rows = build_rows(a.ptxas_log.read_text(), a.ptx.read_text())
    failures = gate(rows)
    s = summary(rows)
    print(f"cuda_resources.py: {s['kernels']} kernels, {s['spilling']} spill "
          f"({s['spilling_contiguous']} contiguous), {s['below_min_occupancy_contiguous']} contiguous below "
          f"{MIN_OCCUPANCY:.0%} occupancy; occupancy histogram {s['occupancy_histogram']}")
    if a.save:
        prov = provenance(a.nvcc_version)
        a.save.with_suffix(".md").write_text(to_markdown(rows, prov, failures))
        a.save.with_suffix(".json").write_text(to_json(rows, prov, failures))
        print(f"cuda_resources.py: wrote {a.save}.md and .json")
    for f in failures:
        print(f"cuda_resources.py: FAIL {f}", file=sys.stderr)
    if a.gate:
        print(f"cuda_resources.py: resource gate {'FAILED' if failures else 'passed'}")
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
