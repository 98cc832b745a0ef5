"""The CPU K * 2^k row kernel alone, against the power-of-two one: issue 11's CPU targets
without torch's allocator in the way.

    .venv/bin/python benchmarks/kn_row.py [--rounds 31] [--processes 5] [--out benchmarks/results]

Builds benchmarks/kn_row.cpp with g++ (the extension's flags: -O3 -march=native) in a
temporary folder, feeds it the library's H_K (hadamard_kernels.orders, family "rotation",
as ``hadamard_transform_order`` uses them) for 12 * 1024, 28 * 512 and 172 * 64, and the "fht"
family's H_28 (``hadamard_transform_28N``'s) for 28 * 512, and writes
benchmarks/results/cpu-kn-row.md: per order, the median over interleaved rounds of its time
per value over the time per value of ``fwht_row`` at 2^13 (thread CPU time, one thread,
float32, about 2^22 values each, preallocated output), in several fresh processes (their
median and range). The sweep (benchmarks/sweep.py) times
the same ops through torch, where a fresh output's page faults can dominate on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import environment  # noqa: E402

from hadamard_kernels import orders  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# sweep.ORDER_SHAPES (the targets) with the rotation family's H_K, then 28 * 512 with
# the peer's (fast-hadamard-transform's hadamard_transform_28N: a Williamson-type H_28, which
# takes the four-Russians product where the rotation family's Paley II one has its own).
SHAPES = [(12, 1024, "rotation"), (28, 512, "rotation"), (172, 64, "rotation"), (28, 512, "fht")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes, run one after another")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "kn_row")
        subprocess.run(["g++", "-O3", "-march=native", "-std=c++20", "-Wno-array-bounds", "-I", os.path.join(ROOT, "csrc"),
                        os.path.join(HERE, "kn_row.cpp"), "-o", exe], check=True)
        feed = [str(args.rounds)]
        for K, p, family in SHAPES:
            h = orders.hadamard_k(K, torch.int64, family=family)
            feed.append(f"{K} {p} " + " ".join(map(str, h.flatten().tolist())))
        feed.append("0 0")
        # Each process allocates its tensors anew: the 2^13 baseline, bound by memory, varies
        # between processes (1.73 to 2.16 ms per 2^22 values in one morning's runs) more than
        # the K * 2^k kernels, bound by arithmetic, so one process's ratio is one draw.
        runs = [
            subprocess.run([exe], input="\n".join(feed) + "\n", capture_output=True, text=True, check=True).stdout
            for _ in range(args.processes)
        ]
    env = environment("cpu")
    env["device"] = env["device"].rsplit(" (", 1)[0] + " (1 thread)"
    env.pop("threads", None)  # torch's setting; the benchmark runs on one thread
    lines = [
        "# The CPU K * 2^k row kernel against the 2^13 transform (benchmarks/kn_row.py)",
        "",
        ", ".join(f"{k} {v}" for k, v in env.items())
        + f", {args.processes} processes of {args.rounds} interleaved rounds each, thread CPU time",
        "",
        "Per process: the median over its rounds of the time per value over the 2^13 transform's in the",
        "same round; the table gives the median of the processes' ratios and their range.",
        "",
        "| n = K * p | rows | median ms (per process) | time per value / fwht_row 2^13's | range over processes |",
        "|---|---:|---|---:|---:|",
    ]
    labels = ["2^13 (baseline, fwht_row)"] + [
        f"{K} * {p} = {K * p}" + ("" if family == "rotation" else f" ({family} family)") for K, p, family in SHAPES
    ]
    per_process = [[line.split() for line in out.strip().splitlines()] for out in runs]
    for i, label in enumerate(labels):
        fields = [run[i] for run in per_process]
        rows = fields[0][2]
        ms = " / ".join(f"{float(f[3]):.2f}" for f in fields)
        ratios = sorted(float(f[4]) for f in fields)
        mid = statistics.median(ratios)
        lines.append(f"| {label} | {rows} | {ms} | {mid:.2f}x | {ratios[0]:.2f} - {ratios[-1]:.2f} |")
    md = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cpu-kn-row.md")
    with open(path, "w") as f:
        f.write(md)
    print(md + f"wrote {path}")


if __name__ == "__main__":
    main()
