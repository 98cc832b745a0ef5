"""A one-minute tour of hadamard_kernels on whatever device exists.

    python examples/demo.py
"""

import time

import torch
import torch.nn.functional as F

import hadamard_kernels as hk
from hadamard_kernels.reference import hadamard_matrix


def timed_ms(fn, reps: int = 20) -> float:
    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; backends here, fastest first: {hk.available_backends(device)}")

    # 1. The transform: scale * x @ H_n.T, O(n log n) adds instead of a matmul.
    n = 1024
    x = torch.randn(4096, n, device=device)
    h = hadamard_matrix(n, dtype=x.dtype, device=device)
    y = hk.fwht(x, scale=n**-0.5)
    err = ((y - F.linear(x, h) * n**-0.5).norm() / y.norm()).item()
    print(f"fwht of (4096, {n}): relative difference to the dense product {err:.1e}; "
          f"{timed_ms(lambda: hk.fwht(x)):.3f} ms vs x.clone() {timed_ms(lambda: x.clone()):.3f} ms "
          f"vs dense F.linear(x, H) {timed_ms(lambda: F.linear(x, h)):.3f} ms")

    # 2. The fixed classifier replacing the last nn.Linear: C + 1 parameters instead of C * (N + 1).
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), hk.nn.HadamardClassifier(512, 10)
    ).to(device)
    print(model)
    head_params = sum(p.numel() for p in model[2].parameters())
    print(f"head parameters: {head_params} (a learned nn.Linear(512, 10) has {512 * 10 + 10})")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = torch.randn(256, 64, device=device)
    labels = torch.randint(0, 10, (256,), device=device)
    for step in range(101):
        loss = F.cross_entropy(model(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:2d}: loss {loss.item():.3f}, alpha {model[2].scale.item():.3f}")


if __name__ == "__main__":
    main()
