"""Micro benchmarks of the public ops (pytest-benchmark).

Disabled by default (each case then runs once, as a smoke test); measure with
``pytest benchmarks/bench_ops.py --benchmark-enable``. The README's tables come from
benchmarks/sweep.py, which also times x.clone(), dense F.linear and peer packages.
"""

import pytest
import torch

import hadamard_kernels as hk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in hk.available_backends(DEVICE) if b != "triton" or DEVICE == "cuda"]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("n", [256, 4096], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwht(benchmark, backend: str, n: int) -> None:
    rows = 2**18 // n
    x = torch.randn(rows, n, device=DEVICE)
    benchmark.group = f"fwht n={n}"
    benchmark.extra_info.update(bytes=2 * x.numel() * 4, rows=rows, n=n, device=DEVICE)

    def run():
        y = hk.fwht(x, backend=backend)
        _sync()
        return y

    y = benchmark(run)
    assert y.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_forward(benchmark, backend: str) -> None:
    n, c, batch = 2048, 1000, 64
    x = torch.randn(batch, n, device=DEVICE)
    scale = torch.tensor(0.1, device=DEVICE)
    bias = torch.zeros(c, device=DEVICE)
    benchmark.group = f"classifier {n}->{c} batch {batch}"
    benchmark.extra_info.update(bytes=(batch * (n + c)) * 4, device=DEVICE)

    def run():
        y = hk.hadamard_classifier(x, c, scale, bias, backend=backend)
        _sync()
        return y

    y = benchmark(run)
    assert y.shape == (batch, c)


def test_classifier_dense_baseline(benchmark) -> None:
    """The learned nn.Linear head the fixed classifier replaces, same shape as above."""
    head = torch.nn.Linear(2048, 1000, device=DEVICE)
    x = torch.randn(64, 2048, device=DEVICE)
    benchmark.group = "classifier 2048->1000 batch 64"

    def run():
        with torch.no_grad():
            y = head(x)
        _sync()
        return y

    assert benchmark(run).shape == (64, 1000)
