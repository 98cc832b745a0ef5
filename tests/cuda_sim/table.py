"""Write the committed tables of the CPU-run CUDA harness's memory counters:

    .venv/bin/python tests/cuda_sim/table.py [--only transform|kn|quantize]

Runs the rows of tests/test_cuda_sim.py's coverage that are contiguous with in = out = 2^L
(one schedule: the counters do not depend on it) and writes
benchmarks/results/cuda-sim-counters.{json,md}; likewise the contiguous out-of-place cases of
tests/test_cuda_sim_orders.py (the K * 2^k kernel) into cuda-sim-counters-kn.{json,md}, and the
gate and larger contiguous cases of tests/test_cuda_sim_quantize.py (the rotate-and-quantise
kernel) into cuda-sim-counters-quantize.{json,md}. The tests'
test_committed_counter_table_is_current fail when the kernels no longer give these numbers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import test_cuda_sim as T  # noqa: E402
import test_cuda_sim_orders as O  # noqa: E402
import test_cuda_sim_quantize as Q  # noqa: E402

from cuda_sim import harness as H  # noqa: E402


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description="write the committed counter tables of the CPU-run CUDA harness")
    ap.add_argument("--only", choices=("transform", "kn", "quantize"), help="write this table only")
    only = ap.parse_args().only
    runner = H.build()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    meta = {"commit": commit, "date": datetime.date.today().isoformat(), "compiler": H.CXX,
            "what": "CPU-run CUDA harness counters per kernel launch (tests/cuda_sim/README.md)"}  # fmt: skip
    if only in (None, "transform"):
        transform_table(runner, commit, meta)
    if only in (None, "kn"):
        kn_table(runner, commit, meta)
    if only in (None, "quantize"):
        quantize_table(runner, commit, meta)


def transform_table(runner, commit: str, meta: dict) -> None:
    todo = [c for c in T.CASES if T._table_case(c)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = {o.case.id: o for o in pool.map(lambda c: T.run_case(c, runner), todo)}
    bad = [o.case.id for o in outcomes.values() if o.error]
    if bad:
        raise SystemExit(f"failed: {bad}")
    rows = T.counter_rows(outcomes)
    T.COUNTERS.write_text(json.dumps({"meta": meta, "launches": rows}, indent=1) + "\n")
    lines = [
        "# Memory counters of the CUDA kernels, from the CPU-run harness",
        "",
        f"Commit {commit}, {meta['date']}; `python tests/cuda_sim/table.py` (tests/cuda_sim/README.md says what",
        "each counter means and what the harness cannot see). Contiguous inputs, in = out = 2^L.",
        "read/written: bytes of x (and grad_y) requested by the threads / their tensor's bytes, bytes of",
        "the output written / its bytes (1.00 = one pass); coalescing: fewest possible 32-byte sectors /",
        "sectors touched, per warp instruction (input loads, output stores, all loads and stores of the",
        "launch: bias, workspace, ...); shared: fewest possible wavefronts / wavefronts (100% = no bank",
        "conflict). Two-pass sizes (L > 15, float64 L > 14) show each of their launches.",
        "",
        "| op | dtype | L | rows | kernel | grid x block | smem B | in read | out written | in loads | out stores | all loads | all stores | shared |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}[r["dtype"]]
        tensor = r["rows"] * (1 << r["L"]) * size
        bufs = r["buffers"]
        ins = [bufs[k] for k in ("x", "g") if k in bufs]
        out = bufs.get("out", {})
        src = sum(b["read"] for b in ins)
        src_tensor = tensor * len(ins)
        lines.append(
            f"| {r['op']} | {r['dtype']} | {r['L']} | {r['rows']} | `{r['kernel']}` | {r['grid']} x {r['block']} | "
            f"{r['dynamic_smem']} | {src / src_tensor if ins else 0:.2f} | {out.get('written', 0) / tensor:.2f} | "
            f"{pct(sum(b['load_sectors_ideal'] for b in ins), sum(b['load_sectors'] for b in ins))} | "
            f"{pct(out.get('store_sectors_ideal', 0), out.get('store_sectors', 0))} | "
            f"{pct(r['global_load_sectors_ideal'], r['global_load_sectors'])} | "
            f"{pct(r['global_store_sectors_ideal'], r['global_store_sectors'])} | "
            f"{pct(r['shared_wavefronts_ideal'], r['shared_wavefronts'])} |"
        )
    T.COUNTERS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {T.COUNTERS} and .md: {len(rows)} launches")


def kn_table(runner, commit: str, meta: dict) -> None:
    todo = [c for c in O.CASES + O.GATE if O._table_case(c)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = {o.case.id: o for o in pool.map(lambda c: O.run_case(c, runner), todo)}
    bad = [o.case.id for o in outcomes.values() if o.error]
    if bad:
        raise SystemExit(f"failed: {bad}")
    rows = O.counter_rows(outcomes)
    O.COUNTERS.write_text(json.dumps({"meta": meta, "launches": rows}, indent=1) + "\n")
    lines = [
        "# Memory counters of the K * 2^k CUDA kernel, from the CPU-run harness",
        "",
        f"Commit {commit}, {meta['date']}; `python tests/cuda_sim/table.py` (tests/cuda_sim/README.md says what",
        "each counter means). The contiguous out-of-place cases of tests/test_cuda_sim_orders.py; each",
        "K > 1 case is two launches, the H_K mask kernel and the transform. x read / y written: bytes",
        "requested / the tensor's bytes (1.00 = one pass); other reads: distinct bytes of the sign",
        "vectors, H_K and its masks (read by every block; the masks by every lane at once); coalescing of x loads / y stores (fewest 32-byte sectors / sectors touched;",
        "below 100% where n or the chunks are not sector multiples); shared: fewest wavefronts /",
        "wavefronts (100% = no bank conflict).",
        "",
        "| case | kernel | grid x block | smem B | x read | y written | other reads (distinct) B | x loads | y stores | shared |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}[r["dtype"]]
        tensor = r["rows"] * r["n"] * size
        bufs = r["buffers"]
        x, y = bufs.get("x", {}), bufs.get("out", {})
        other = sum(b["read_unique"] for k, b in bufs.items() if k not in ("x", "out"))
        lines.append(
            f"| {r['case']} | `{r['kernel']}` | {r['grid']} x {r['block']} | {r['dynamic_smem']} | "
            f"{x.get('read', 0) / tensor:.2f} | {y.get('written', 0) / tensor:.2f} | {other} | "
            f"{pct(x.get('load_sectors_ideal', 0), x.get('load_sectors', 0))} | "
            f"{pct(y.get('store_sectors_ideal', 0), y.get('store_sectors', 0))} | "
            f"{pct(r['shared_wavefronts_ideal'], r['shared_wavefronts'])} |"
        )
    O.COUNTERS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {O.COUNTERS} and .md: {len(rows)} launches")


def quantize_table(runner, commit: str, meta: dict) -> None:
    todo = [c for c in Q.CASES + Q.GATE if Q._table_case(c)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = {o.case.id: o for o in pool.map(lambda c: Q.run_case(c, runner), todo)}
    bad = [o.case.id for o in outcomes.values() if o.error]
    if bad:
        raise SystemExit(f"failed: {bad}")
    rows = Q.counter_rows(outcomes)
    Q.COUNTERS.write_text(json.dumps({"meta": meta, "launches": rows}, indent=1) + "\n")
    lines = [
        "# Memory counters of the rotate-and-quantise CUDA kernel, from the CPU-run harness",
        "",
        f"Commit {commit}, {meta['date']}; `python tests/cuda_sim/table.py` (tests/cuda_sim/README.md says what",
        "each counter means). The byte-counter gate of tests/test_cuda_sim_quantize.py (one-pass K * 2^k",
        "up to 40 * 2^10, one row each) and its larger contiguous cases; each K > 1 case is two launches,",
        "the H_K mask kernel and kn_quantize_kernel. x read: bytes requested / x's bytes; q written: code",
        "bytes written / rows * n; scales written: bytes written / rows * n / group * 4 (1.00 = once);",
        "other reads: distinct bytes of the pre signs, H_K and its masks; coalescing of x loads / code",
        "stores (fewest 32-byte sectors / sectors touched; groups whose size is not a multiple of 4 store",
        "one code a lane, and one warp a group above 32 codes: fewer whole sectors); shared: fewest",
        "wavefronts / wavefronts (100% = no bank conflict; chunks under 512 bytes of accumulators and padded",
        "rows have some, as the transform kernel).",
        "",
        "| case | kernel | grid x block | smem B | x read | q written | scales written | other reads (distinct) B "
        "| x loads | q stores | shared |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}[r["dtype"]]
        bufs = r["buffers"]
        x, q, sc = bufs.get("x", {}), bufs.get("q", {}), bufs.get("scales", {})
        other = sum(b["read_unique"] for k, b in bufs.items() if k not in ("x", "q", "scales"))
        entries = r["rows"] * r["n"]
        lines.append(
            f"| {r['case']} | `{r['kernel']}` | {r['grid']} x {r['block']} | {r['dynamic_smem']} | "
            f"{x.get('read', 0) / (entries * size):.2f} | {q.get('written', 0) / entries:.2f} | "
            f"{sc.get('written', 0) / (entries // r['group'] * 4):.2f} | {other} | "
            f"{pct(x.get('load_sectors_ideal', 0), x.get('load_sectors', 0))} | "
            f"{pct(q.get('store_sectors_ideal', 0), q.get('store_sectors', 0))} | "
            f"{pct(r['shared_wavefronts_ideal'], r['shared_wavefronts'])} |"
        )
    Q.COUNTERS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {Q.COUNTERS} and .md: {len(rows)} launches")


if __name__ == "__main__":
    main()
