"""Timing helpers shared by the benchmarks: medians of interleaved repetitions.

Every candidate of one case is timed in the same loop, round-robin, so that a slow
moment of a shared machine (turbo, a neighbour process, the allocator) hits all of them
alike; the median of the repetitions is reported. On CUDA each repetition is timed
with CUDA events after a warm-up, and the L2 cache is flushed between calls.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["interleaved_medians", "environment"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    budget_s: float = 1.0,
    min_reps: int = 5,
    max_reps: int = 200,
) -> dict[str, float]:
    """Median milliseconds of each callable, timed round-robin.

    The repetition count is chosen from one warm-up call of every candidate so that the
    whole case takes about ``budget_s`` seconds, within [min_reps, max_reps].
    """
    device = torch.device(device)
    first = {}
    for name, fn in fns.items():  # warm-up (and compilation, allocation) outside the timing
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first[name] = time.perf_counter() - t0
    total = sum(first.values())
    reps = int(min(max_reps, max(min_reps, budget_s / max(total, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    flush = torch.empty(64 * 2**20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    for _ in range(reps):
        for name, fn in fns.items():
            if flush is not None:
                flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def environment(device: torch.device | str) -> dict[str, str]:
    """Device name, library versions, commit and date for a results file."""
    import datetime
    import platform
    import subprocess

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name = f"{name} ({torch.get_num_threads()} threads)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    env = {
        "device": name,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env
