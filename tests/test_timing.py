"""benchmarks/timing.py: the statistics, the interleaving and the paired ratios, on candidates
that advance a fake clock by known costs (no real timing is asserted)."""

import importlib.util
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "timing.py"
_SPEC = importlib.util.spec_from_file_location("timing", _PATH)
timing = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = timing  # dataclasses look their module up there
_SPEC.loader.exec_module(timing)


class FakeMachine:
    """A clock in seconds that only the fake candidates advance."""

    def __init__(self):
        self.now = 0.0
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now

    def candidate(self, name: str, ms: float, *, stall_every: int = 0, stall_ms: float = 16.0,
                  slow_spell_s: float = 0.0, slow_factor: float = 1.0):
        """Costs ``ms`` a call; every ``stall_every``-th call also waits ``stall_ms`` (a
        scheduler stall); during every other spell of ``slow_spell_s`` seconds the machine
        runs ``slow_factor`` times slower for everyone."""
        count = itertools.count(1)

        def fn():
            i = next(count)
            factor = slow_factor if slow_spell_s and int(self.now / slow_spell_s) % 2 else 1.0
            self.now += (ms * factor + (stall_ms if stall_every and i % stall_every == 0 else 0.0)) / 1e3
            self.log.append(name)

        return fn


def run(machine: FakeMachine, fns, **kwargs):
    kwargs.setdefault("sample_ms", 0.5)
    return timing.interleaved_times(fns, "cpu", clock=machine.clock, **kwargs)


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_quantile_is_numpys_linear_rule(n: int, q: float) -> None:
    values = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)).tolist()
    assert timing.quantile(values, q) == pytest.approx(torch.quantile(torch.tensor(values), q).item())


def test_summarize_statistics_and_spread() -> None:
    values = [5.0, 1.0, 2.0, 4.0, 3.0]  # q25 = 2, median = 3, q75 = 4
    assert timing.summarize(values, "median") == (3.0, pytest.approx(1 / 3))
    assert timing.summarize(values, "q25") == (2.0, pytest.approx(1 / 3))
    assert timing.summarize(values, "min") == (1.0, pytest.approx(1 / 3))
    assert timing.summarize([2.0] * 4) == (2.0, 0.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="summarize: stat='mean'"):
        timing.summarize([1.0], "mean")
    with pytest.raises(ValueError, match="quantile: values is empty"):
        timing.quantile([], 0.5)
    machine = FakeMachine()
    fns = {"a": machine.candidate("a", 1.0)}
    with pytest.raises(ValueError, match="interleaved_times: stat='mean'"):
        run(machine, fns, stat="mean")
    with pytest.raises(ValueError, match="interleaved_times: baseline='b'"):
        run(machine, fns, baseline="b")


@pytest.mark.parametrize("stat", ["median", "q25"])
def test_stalls_on_a_few_calls_do_not_move_the_statistic(stat: str) -> None:
    machine = FakeMachine()
    fns = {
        "clone": machine.candidate("clone", 1.0, stall_every=9, stall_ms=20.0),
        "ours": machine.candidate("ours", 2.0, stall_every=7, stall_ms=16.0),
    }
    t = run(machine, fns, baseline="clone", stat=stat)
    assert t["ours"].rounds == 300 and t["ours"].calls == 1  # 0.5 ms samples: one call each
    assert t["clone"].ms == pytest.approx(1.0) and t["ours"].ms == pytest.approx(2.0)
    assert t["ours"].ratio == pytest.approx(2.0) and t["clone"].ratio == 1.0
    assert t["ours"].spread == pytest.approx(0.0) and t["clone"].ratio_spread == 0.0
    # The stalls did happen, in about one sample in 7 (a mean would say 2 + 16/7 = 4.3 ms).
    assert sum(name == "ours" for name in machine.log) // 7 >= 40


def test_paired_ratios_cancel_slow_spells_shared_by_both() -> None:
    machine = FakeMachine()
    spell = dict(slow_spell_s=0.1, slow_factor=1.5)  # 100 ms slow, 100 ms not, ...
    fns = {"clone": machine.candidate("clone", 1.0, **spell), "ours": machine.candidate("ours", 2.0, **spell)}
    t = run(machine, fns, baseline="clone")
    # The times themselves are spread between the two speeds of the machine ...
    assert t["ours"].spread > 0.2 and t["clone"].spread > 0.2
    # ... but in each round both samples were taken at the same speed.
    assert t["ours"].ratio == pytest.approx(2.0) and t["ours"].ratio_spread == pytest.approx(0.0)


def test_a_stall_of_either_side_of_a_pair_is_outvoted() -> None:
    """Stalls push a round's ratio up (candidate hit) or down (baseline hit); the median of
    the per-round ratios stays at the true one while each kind is a minority of rounds."""
    machine = FakeMachine()
    fns = {
        "clone": machine.candidate("clone", 1.0, stall_every=3, stall_ms=4.0),
        "ours": machine.candidate("ours", 1.5, stall_every=4, stall_ms=4.0),
    }
    t = run(machine, fns, baseline="clone")
    assert t["ours"].ratio == pytest.approx(1.5)
    assert t["ours"].ratio_spread > 0  # the stalls do show, as spread


def test_short_calls_are_timed_in_batches() -> None:
    machine = FakeMachine()
    fns = {"tiny": machine.candidate("tiny", 0.01), "slow": machine.candidate("slow", 5.0)}
    t = run(machine, fns, sample_ms=1.0, budget_s=0.5)
    assert 99 <= t["tiny"].calls <= 101 and t["slow"].calls == 1
    assert t["tiny"].ms == pytest.approx(0.01) and t["slow"].ms == pytest.approx(5.0)
    # budget: about 0.5 s of rounds of (1 ms + 5 ms)
    assert 80 <= t["tiny"].rounds <= 84


def test_rounds_interleave_candidates_in_a_seeded_shuffled_order() -> None:
    logs = []
    for _ in range(2):
        machine = FakeMachine()
        fns = {name: machine.candidate(name, 1.0) for name in "abcd"}
        t = run(machine, fns, budget_s=0.2, seed=3)
        rounds = t["a"].rounds
        # warm-up: each candidate once, then three timed calls (a 1 ms call stays under 50 ms)
        assert machine.log[:16] == [name for name in "abcd" for _ in range(4)]
        orders = ["".join(machine.log[16 + 4 * r: 20 + 4 * r]) for r in range(rounds)]
        assert all(sorted(order) == list("abcd") for order in orders)  # each once a round
        assert len(set(orders)) > 5 and len({order[0] for order in orders}) == 4
        logs.append(machine.log)
    assert logs[0] == logs[1]


def test_rounds_stay_within_bounds() -> None:
    machine = FakeMachine()
    slow = {"slow": machine.candidate("slow", 400.0)}
    assert run(machine, slow, budget_s=1.0)["slow"].rounds == 7
    fast = {"fast": machine.candidate("fast", 0.5)}
    assert run(machine, fast, budget_s=10.0, max_rounds=50)["fast"].rounds == 50


def test_real_callables() -> None:
    """The real clock path returns a sane Timing for every candidate; no speed is asserted."""
    x = torch.randn(64, 64)
    t = timing.interleaved_times({"clone": x.clone, "sum": x.sum}, "cpu", baseline="clone",
                                 budget_s=0.05, sample_ms=0.2)
    for r in t.values():
        assert r.ms > 0 and 0 <= r.spread < float("inf") and r.rounds >= 7 and r.calls >= 1
        assert r.ratio > 0 and r.ratio_spread >= 0
    assert t["clone"].ratio == 1.0
    assert t["clone"].busy is None or t["clone"].busy >= 0


def test_contended() -> None:
    assert timing.contended(1.0, threads=2, ncpu=2)  # another process on one of our 2 cores
    assert timing.contended(0.2, threads=2, ncpu=2)
    assert not timing.contended(0.05, threads=2, ncpu=2)  # housekeeping
    assert not timing.contended(0.9, threads=1, ncpu=2)  # the other core was free for it
    assert timing.contended(1.5, threads=1, ncpu=2)
    assert not timing.contended(None, threads=2, ncpu=2)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_machine_busy_counts_other_processes() -> None:
    spin = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.6: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.1)  # the child's interpreter starts
        with timing.MachineBusy() as busy:
            time.sleep(0.3)
    finally:
        child.wait()
    assert busy.cores is not None and busy.cores > 0.5
