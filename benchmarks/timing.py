"""Timing helpers shared by the benchmarks: interleaved rounds, robust statistics, spread.

How ``interleaved_times`` times the candidates of one case, all in one loop:

- Many short rounds. In each round every candidate gives one sample, in an order shuffled
  anew each round (fixed seed), so a slow spell of a shared machine (a neighbour process,
  a descheduled vCPU, a frequency change) falls on all candidates of a few rounds alike
  instead of on one candidate's whole block of calls, and no candidate always follows the
  same other one.
- A sample is the mean time of a batch of consecutive calls, sized from the warm-up so
  that it lasts about ``sample_ms`` (one call for anything slower): the timer's own cost
  and the clock's granularity then weigh little even for a 4 us call, and a sample stays
  short, so a stall spoils few of them.
- Each candidate's time is a robust statistic of its samples (``stat``), reported with
  its spread: half the interquartile range over the median, so "±3%" reads as the
  half-width of the middle half of the samples.
- Its ratio to a baseline (``x.clone()`` in the sweep) is the median over rounds of the
  ratio of the two samples taken in the same round, with the spread of those ratios. A
  slow spell that spans a round slows both samples and cancels in their ratio; a stall
  that hits only one of them pushes that ratio up or down, and the median ignores such
  rounds as long as fewer than half push each way.

- What no statistic can see is a machine too busy for the candidates' threads: 2 threads
  on 2 cores, one of them running another process, made every call of fwht and of x.clone()
  take exactly 7.99 ms (two 4 ms scheduler ticks) with no spread at all. So the CPU that
  other processes and the hypervisor took during the rounds is measured too (``busy``, in
  cores, from /proc/stat), for the caller to flag (``contended``).

On CUDA each sample is one call timed with CUDA events after the L2 cache is flushed (as
``triton.testing.do_bench`` does); rounds, order and statistics are the same.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "STATS", "Timing", "interleaved_times", "summarize", "quantile", "MachineBusy", "contended",
    "environment", "keep_heap_mapped",
]

# The statistic of a candidate's samples, by name. Stalls only ever add time, so while they
# are rare the lower quartile ("q25") resists them best: the median moves once half the
# samples are hit, q25 only once three quarters are. But a loaded machine slows most calls
# (every 2-thread call waits while one of 2 cores runs another process), and then the few
# lucky samples that q25 and the minimum rest on change from run to run. Measured here
# (fwht of 4096 x 1024 float32 against x.clone(), another process busy on one of the 2
# cores), the ratio over 8 runs with 2 threads came out 0.78-2.44 from the lower quartiles,
# 0.89-1.89 from the medians and 1.00-1.58 as the median of paired ratios (module
# docstring), each run flagged by a ratio spread of ±29-84 %; over 9 runs with 1 thread the
# three agreed (1.58-1.83). Hence the default "median", which is also the GPU convention
# (do_bench). The minimum rests on one sample and falls the more samples are taken; it is
# offered for comparison only.
STATS = ("median", "q25", "min")


@dataclass(frozen=True)
class Timing:
    """One candidate's result. ``ratio`` and ``ratio_spread`` are None without a baseline."""

    ms: float  # the chosen statistic of the samples, milliseconds per call
    spread: float  # (q75 - q25) / (2 * median) of the samples
    ratio: float | None  # median over rounds of (this sample / the baseline's sample)
    ratio_spread: float | None  # (q75 - q25) / (2 * median) of those per-round ratios
    rounds: int  # samples taken (one per round)
    calls: int  # calls averaged in each sample
    busy: float | None  # cores' worth of CPU others took during the rounds (MachineBusy)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of ``values``, linearly interpolated (numpy's default rule)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile: values is empty")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float], stat: str = "median") -> tuple[float, float]:
    """``(statistic, spread)`` of samples; spread = (q75 - q25) / (2 * median)."""
    if stat not in STATS:
        raise ValueError(f"summarize: stat={stat!r} is not one of {STATS}")
    q25, q50, q75 = (quantile(values, q) for q in (0.25, 0.5, 0.75))
    value = {"median": q50, "q25": q25, "min": min(values)}[stat]
    return value, (q75 - q25) / (2 * q50) if q50 > 0 else math.inf


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


def _machine_cpu_s() -> tuple[float, int] | None:
    """CPU seconds the whole machine has run (user, system, interrupts, and steal: time the
    hypervisor gave our vCPUs to someone else) and its CPU count, from /proc/stat; None
    where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        fields = [float(v) for v in lines[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    ncpu = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), ncpu


class MachineBusy:
    """Context manager: how many cores' worth of CPU other processes and the hypervisor
    (steal) took while it was open, in ``.cores`` (None off Linux or under 0.1 s, as
    /proc/stat counts in 10 ms ticks). A whole-machine figure: in a container, the host's.
    """

    def __enter__(self) -> "MachineBusy":
        self.cores: float | None = None
        self._start = (time.perf_counter(), time.process_time(), _machine_cpu_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, own0, machine0 = self._start
        wall, own, machine = time.perf_counter() - wall0, time.process_time() - own0, _machine_cpu_s()
        if machine0 is not None and machine is not None and wall >= 0.1:
            self.cores = max(0.0, (machine[0] - machine0[0] - own) / wall)


def contended(busy: float | None, threads: int, ncpu: int | None = None) -> bool:
    """Whether others took CPU that ``threads`` threads needed: more than the cores left
    over by them, with 0.1 core of slack for the system's own housekeeping."""
    if busy is None:
        return False
    if ncpu is None:
        machine = _machine_cpu_s()
        ncpu = machine[1] if machine is not None else os.cpu_count() or 1
    return busy > max(0, ncpu - threads) + 0.1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str,
    *,
    baseline: str | None = None,
    stat: str = "median",
    budget_s: float = 1.0,
    sample_ms: float = 1.0,
    min_rounds: int = 7,
    max_rounds: int = 300,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every callable in interleaved rounds (module docstring); a Timing per name.

    One warm-up call per candidate (compilation, allocation), then up to three timed calls
    (at most ~50 ms) size its batch; the number of rounds is chosen so that the case takes
    about ``budget_s`` seconds, within [min_rounds, max_rounds]. ``baseline`` names the
    candidate the ratios are taken to. ``clock`` (seconds) is replaceable for tests; on
    CUDA the samples come from CUDA events instead.
    """
    device = torch.device(device)
    if stat not in STATS:
        raise ValueError(f"interleaved_times: stat={stat!r} is not one of {STATS}")
    if baseline is not None and baseline not in fns:
        raise ValueError(f"interleaved_times: baseline={baseline!r} is not one of the candidates {list(fns)}")
    cuda = device.type == "cuda"
    calls: dict[str, int] = {}
    round_s = 0.0
    for name, fn in fns.items():
        fn()
        _sync(device)
        best, spent = math.inf, 0.0
        for _ in range(3):
            t0 = clock()
            fn()
            _sync(device)
            dt = clock() - t0
            best, spent = min(best, dt), spent + dt
            if spent > 0.05:
                break
        calls[name] = 1 if cuda else min(10_000, max(1, math.ceil(sample_ms * 1e-3 / max(best, 1e-9))))
        round_s += calls[name] * best
    rounds = int(min(max_rounds, max(min_rounds, budget_s / max(round_s, 1e-9))))

    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(seed)
    flush = torch.empty(64 * 2**20, dtype=torch.int8, device=device) if cuda else None
    with MachineBusy() as busy:
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                fn, k = fns[name], calls[name]
                if flush is not None:
                    flush.zero_()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    samples[name].append(start.elapsed_time(end))
                else:
                    t0 = clock()
                    for _ in range(k):
                        fn()
                    samples[name].append((clock() - t0) * 1e3 / k)

    out = {}
    for name, s in samples.items():
        ms, spread = summarize(s, stat)
        ratio = ratio_spread = None
        if baseline is not None:
            ratios = [a / b for a, b in zip(s, samples[baseline])]
            ratio, ratio_spread = summarize(ratios, "median")
        out[name] = Timing(ms, spread, ratio, ratio_spread, rounds, calls[name], busy.cores)
    return out


def environment(device: torch.device | str) -> dict[str, str]:
    """Device name, library versions, commit, date and load average for a results file."""
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
    if hasattr(os, "getloadavg"):  # a busy machine shows up as spread; this says why
        env["load"] = "%.2f %.2f %.2f" % os.getloadavg()
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env
