"""A small run of every CUDA kernel path, for compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 1 .venv/bin/python scripts/sanitize_cuda.py
    compute-sanitizer --tool racecheck --error-exitcode 1 .venv/bin/python scripts/sanitize_cuda.py
    compute-sanitizer --tool synccheck --error-exitcode 1 .venv/bin/python scripts/sanitize_cuda.py
    compute-sanitizer --tool initcheck --error-exitcode 1 .venv/bin/python scripts/sanitize_cuda.py

Covers: one-thread rows, one-warp rows, multi-warp rows (shared-memory exchange), the largest
single pass and the two-pass scheme; vector, contiguous-scalar and strided loads; padding and
truncation; the classifier forward and backward (also two-pass); the fused rotate-and-quantise
op (one pass: K = 1 and K > 1, groups of one thread, of a warp and of several warps; the
composed path); every dtype. Checks results against the reference (quantise: the CPU op, on
integer inputs) too, and exits non-zero on a mismatch.
"""

from __future__ import annotations

import sys

import torch

import hadamard_kernels as hk
from hadamard_kernels import orders
from hadamard_kernels import reference as R

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def main() -> int:
    if not torch.cuda.is_available() or "cuda" not in hk.available_backends("cuda"):
        print("sanitize_cuda.py: no CUDA device or CUDA backend not built; nothing run")
        return 0
    dev = "cuda"
    failures = []

    def check(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
        err = rel_err(got, want)
        if not err <= TOL[dtype]:
            failures.append(f"{name}: rel err {err:.2e} > {TOL[dtype]:.0e}")

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for n in (1, 8, 100, 1024, 2048, 2**15, 2**16):
            for layout in ("contiguous", "sliced", "transposed"):
                if layout == "contiguous":
                    x = torch.randn(3, n, dtype=dtype, device=dev)
                elif layout == "sliced":
                    x = torch.randn(3, n + 5, dtype=dtype, device=dev)[:, 3 : 3 + n]
                else:
                    x = torch.randn(n, 3, dtype=dtype, device=dev).t()
                check(f"fwht {dtype} n={n} {layout}", hk.fwht(x, 0.5), R.fwht_reference(x.double(), 0.5), dtype)
        x = torch.randn(5, 100, dtype=dtype, device=dev)
        for out in (7, 3000, 40000):
            got = torch.ops.hadamard_kernels.hadamard_transform(x, out, 1.0)
            check(f"transform {dtype} 100->{out}", got, R.hadamard_transform_reference(x.double(), out), dtype)
        for n, c in ((8, 10), (512, 1000), (4096, 100), (100, 40000)):
            x = torch.randn(3, n, dtype=dtype, device=dev, requires_grad=True)
            s = torch.tensor(0.7, device=dev, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            s.requires_grad_()
            b = torch.randn(c, dtype=dtype, device=dev, requires_grad=True)
            g = torch.randn(3, c, dtype=dtype, device=dev)
            y = hk.hadamard_classifier(x, c, s, b)
            grads = torch.autograd.grad(y, (x, s, b), g)
            leaves = [t.detach().double().requires_grad_() for t in (x, s, b)]
            ref = R.hadamard_classifier_reference(leaves[0], c, leaves[1], leaves[2])
            refs = torch.autograd.grad(ref, leaves, g.double())
            check(f"classifier {dtype} N={n} C={c}", y, ref, dtype)
            for name, got, want in zip(("x", "scale", "bias"), grads, refs):
                check(f"classifier grad_{name} {dtype} N={n} C={c}", got, want, dtype)
        for K, pow2, n, g in ((1, 64, 60, 4), (1, 4096, 4096, 0), (12, 64, 768, 3), (40, 1024, 40960, 128),
                              (40, 2048, 81920, 0)):
            x = torch.randint(-8, 9, (3, n), device=dev).to(dtype)
            h = None if K == 1 else orders.hadamard_k(K, torch.int8, dev)
            pre = hk.random_signs(n, seed=1, dtype=dtype, device=dev)
            for code in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2):
                q, s = torch.ops.hadamard_kernels.hadamard_quantize(x, h, pow2, 0.5, pre, code, g)
                qc, sc = torch.ops.hadamard_kernels.hadamard_quantize(x.cpu(), None if h is None else h.cpu(), pow2,
                                                                      0.5, pre.cpu(), code, g)
                nan = qc.float().isnan() if code != torch.int8 else torch.zeros_like(qc, dtype=torch.bool)
                same = torch.equal(q.cpu().view(torch.uint8)[~nan], qc.view(torch.uint8)[~nan])
                same = same and torch.equal(q.cpu().float().isnan(), nan) and torch.equal(s.cpu(), sc)
                if not same:
                    failures.append(f"quantize {dtype} {code} K={K} pow2={pow2} n={n} g={g}: differs from the CPU op")
    torch.cuda.synchronize()
    for f in failures:
        print(f, file=sys.stderr)
    print(f"sanitize_cuda.py: {'FAILED' if failures else 'ok'} ({len(failures)} mismatches)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
