"""Fuse a Hadamard rotation into your own Triton kernel with ``fwht_block``.

Rotating activations by an orthonormal Hadamard matrix before quantising them spreads
outliers over the whole row (QuaRot, SpinQuant, ...), so a per-row int8 scale wastes
less range. Here one kernel loads rows, rotates them in registers with
``hadamard_kernels.triton_kernels.fwht_block``, and writes int8 codes plus one float
scale per row: the rotated tensor never goes to memory.

    python examples/triton_fused_rotation.py

Without a GPU it runs in Triton's interpreter (TRITON_INTERPRET=1, set below before
Triton is imported).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from hadamard_kernels.reference import hadamard_matrix  # noqa: E402
from hadamard_kernels.triton_kernels import fwht_block  # noqa: E402


@triton.jit
def rotate_quantize_int8_kernel(
    x_ptr,  # *T: rows to rotate (rows, n), unit column stride
    q_ptr,  # *int8: codes (rows, n), contiguous
    s_ptr,  # *fp32: one scale per row, x_rotated ~= q * s
    rows,  # number of rows
    n,  # entries per row, a power of two (BLOCK == n)
    x_row_stride,  # elements between consecutive rows of x
    inv_sqrt_n,  # fp32: n ** -0.5, makes the rotation orthonormal
    ROWS: tl.constexpr,  # rows per program (power of two)
    BLOCK: tl.constexpr,  # n (power of two)
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK)
    mask = (r < rows)[:, None] & (c < n)[None, :]
    x = tl.load(x_ptr + r[:, None] * x_row_stride + c[None, :], mask=mask, other=0.0).to(tl.float32)
    y = fwht_block(x) * inv_sqrt_n  # the rotation H_n / sqrt(n), in registers
    absmax = tl.max(tl.abs(y), axis=1)
    scale = tl.where(absmax > 0, absmax / 127.0, 1.0)
    q = tl.floor(y / scale[:, None] + 0.5)  # round half up
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(q_ptr + r[:, None] * n + c[None, :], q.to(tl.int8), mask=mask)
    tl.store(s_ptr + r, scale, mask=r < rows)


def rotate_quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)`` with ``q * s[..., None] ~= x @ H_n / sqrt(n)`` (int8 codes, fp32 scales).

    x: (..., n), n a power of two up to 4096 (one row per program at 4096), any float dtype.
    """
    n = x.shape[-1]
    if n < 2 or n & (n - 1) or n > 4096:
        raise ValueError(f"rotate_quantize_int8: n must be a power of two in [2, 4096], got {n}")
    rows2d = x.reshape(-1, n)
    if rows2d.stride(1) != 1:
        rows2d = rows2d.contiguous()
    rows = rows2d.shape[0]
    q = torch.empty((rows, n), dtype=torch.int8, device=x.device)
    s = torch.empty(rows, dtype=torch.float32, device=x.device)
    per_program = max(1, 4096 // n)
    if rows > 0:
        rotate_quantize_int8_kernel[(triton.cdiv(rows, per_program),)](
            rows2d, q, s, rows, n, rows2d.stride(0), n**-0.5, ROWS=per_program, BLOCK=n
        )
    return q.reshape(x.shape), s.reshape(x.shape[:-1])


def rotate_quantize_int8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same in plain PyTorch with a dense Hadamard matrix (float32 arithmetic)."""
    n = x.shape[-1]
    y = x.float() @ hadamard_matrix(n, dtype=torch.float32, device=x.device) * n**-0.5
    absmax = y.abs().amax(dim=-1)
    s = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.floor(y / s[..., None] + 0.5).clamp(-127, 127).to(torch.int8)
    return q, s


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 256
    x = torch.randn(64, n, device=device)
    x[:, 7] *= 50  # an outlier channel, as in LLM activations
    q, s = rotate_quantize_int8(x)
    q_ref, s_ref = rotate_quantize_int8_reference(x)
    h = hadamard_matrix(n, dtype=torch.float32, device=device) * n**-0.5
    x_back = (q.float() * s[:, None]) @ h  # dequantise, rotate back (H / sqrt(n) is its own inverse)
    s_plain = x.abs().amax(dim=-1, keepdim=True) / 127  # int8 without the rotation
    x_plain = torch.round(x / s_plain) * s_plain
    err = lambda a: ((a - x).norm() / x.norm()).item()  # noqa: E731
    print(f"codes equal to the PyTorch reference: {(q == q_ref).float().mean().item():.2%}, "
          f"largest scale difference {(s - s_ref).abs().max().item():.1e}")
    print(f"int8 relative error with the rotation {err(x_back):.4f}, without {err(x_plain):.4f}")


if __name__ == "__main__":
    main()
