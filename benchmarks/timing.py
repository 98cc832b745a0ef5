"""Timing helpers shared by the benchmarks: medians of repeated calls, in rounds.

Every candidate of one case is timed in the same run: ``rounds`` times over, each
candidate gets a block of consecutive calls, so that a slow moment of a shared machine
(turbo, a neighbour process, the allocator) hits all of them alike, while a candidate's
own thread pool only meets the next candidate at block boundaries, after a 20 ms
pause (idle OpenMP threads spin for a while after each call). The
median of all calls is reported. On CUDA each call is timed with CUDA events and the L2
cache is flushed between calls.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["interleaved_medians", "environment", "keep_heap_mapped"]


def keep_heap_mapped() -> bool:
    """Stop glibc from handing large buffers back to the kernel (Linux only).

    By default glibc serves a 16 MB allocation with a fresh mmap, or trims the heap after
    a free, depending on the allocation history; the next call then page-faults its whole
    output (about 4 ms for 16 MB here), so the same kernel measured 0.5 ms or 4.5 ms at
    random. With mmap and trimming off, every candidate (ours, x.clone(), numpy peers)
    reuses warm memory after its warm-up call, as with a caching allocator on GPU.
    Returns whether the setting took effect.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 2**30)) and bool(libc.mallopt(m_trim_threshold, 2**40))
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    budget_s: float = 1.0,
    rounds: int = 3,
    min_reps: int = 6,
    max_reps: int = 300,
) -> dict[str, float]:
    """Median milliseconds of each callable, timed in ``rounds`` blocks per candidate.

    The call count is chosen from one warm-up call of every candidate so that the whole
    case takes about ``budget_s`` seconds, within [min_reps, max_reps] per candidate.
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
    per_block = max(1, reps // rounds)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    flush = torch.empty(64 * 2**20, dtype=torch.int8, device=device) if device.type == "cuda" else None
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_block):
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
            if flush is None:
                time.sleep(0.02)  # let the block's worker threads stop spinning before the next
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
        "threads": str(torch.get_num_threads()),
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
