"""Fused rotate-and-quantise (issue 12): the Hadamard transform straight to int8 / float8 codes
and their float32 scales, in one pass over memory.

    q, scales = fwht_quantize(x, scale, dtype=torch.int8, group_size=None, signs=None, K=None)
    x_hat = dequantize(q, scales)          # ~ hadamard_transform_order(x, scale, signs=signs, K=K)

The transform is ``hadamard_transform_order``'s (n = x.shape[-1] a power of two or K * 2^k,
optionally randomised by a +-1 sign vector), then symmetric absmax quantisation per group of
``group_size`` consecutive values of the last dim (None: one group a row), in the
accumulator type (float32; float64 for float64 x), never rounded to x's dtype in between:

    amax = max |y| over the group (NaN if the group has a NaN)
    s = float32(amax / qmax)      qmax = 127 (int8), 448 (float8_e4m3fn), 57344 (float8_e5m2)
    q = encode(clamp(y / s, -qmax, qmax)),   q = 0 for an all-zero group (s = 0)

encode: int8 rounds half to even (as ``torch.round``) and maps NaN to 0; float8 is torch's own
cast (round to nearest even; values are clamped to the format's maximum first) and keeps NaN.
A group holding inf gets s = inf: the inf itself encodes as NaN (float8) / 0 (int8), its finite
neighbours as 0. Codes agree bit for bit with ``reference.fwht_quantize_reference`` whenever
the transform is exact in the accumulator (e.g. small integer inputs); otherwise a code whose
exact value lies within the transform's rounding error of a code boundary may be either
neighbour, and a scale may differ in its last bit.

Not differentiable (rounding has a zero derivative almost everywhere): a call with x that
requires grad under grad mode raises. Backends, "auto" taking the first that runs:

* "cuda" / "cpu": the C++ op ``hadamard_kernels::hadamard_quantize`` where the extension
  registers it for x's device (csrc/quantize.cpp: CPU; csrc/cuda/quantize.cuh: CUDA, any
  group size, one pass for every K * 2^k up to 40 * 2^10, verified on the CPU-run CUDA
  harness only, not yet run on a GPU);
* "triton": ``hadamard_kernels::hadamard_quantize_triton`` (triton_kernels.py), the K * 2^k
  Triton kernel with a quantising epilogue; groups must be the row or a power of two (others
  straddle the kernel's chunks: "auto" then takes the reference), rows within the Triton
  transform's register limit. Tested under the Triton interpreter only (no GPU run yet). On
  the CPU, where it means the interpreter, "auto" prefers "cpu";
* "reference": ``reference.fwht_quantize_reference`` (float64 transform), any device.
"""

from __future__ import annotations

import numbers

import torch

from . import reference
from .ops import _backends_with_kernels, _check_input, _check_scale
from .reference import QUANT_MAX
from .transforms import _check_signs, _hk_for, _split

__all__ = ["fwht_quantize", "dequantize", "QUANT_DTYPES"]

QUANT_DTYPES: tuple[torch.dtype, ...] = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)

_QUANTIZE_DEVICES: frozenset[str] = frozenset(
    key
    for key in ("CPU", "CUDA")
    if torch._C._dispatch_has_kernel_for_dispatch_key("hadamard_kernels::hadamard_quantize", key)
)


def _backends(device: torch.device) -> tuple[str, ...]:
    """The backends of fwht_quantize on ``device``, fastest first: ``available_backends``'s,
    less "cpu" / "cuda" where the extension has no hadamard_quantize kernel for that device
    (a CUDA kernel plugs in by registering one: _QUANTIZE_DEVICES)."""
    return _backends_with_kernels(device, _QUANTIZE_DEVICES)


def _resolve(backend: str, x: torch.Tensor, n: int, K: int, p: int, g: int, op: str) -> str:
    if backend not in ("auto", "cuda", "triton", "cpu", "reference"):
        raise ValueError(f"{op}: backend must be 'auto', 'cuda', 'triton', 'cpu' or 'reference', got {backend!r}")
    usable = _backends(x.device)
    if backend == "auto":
        for name in usable:
            if name != "triton":
                return name
            from . import triton_kernels  # imported already: "triton" is registered

            if triton_kernels.quantize_supported(n, K, p, g):
                return name
    if backend not in usable:
        raise RuntimeError(
            f"{op}: backend {backend!r} is not available for a tensor on {x.device}; available there: {usable}"
        )
    return backend


def _check_group(group_size: object, n: int, op: str) -> int:
    if group_size is None:
        return 0
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
        raise ValueError(f"{op}: group_size must be None or an int >= 1, got {group_size!r}")
    if n % group_size:
        raise ValueError(f"{op}: group_size {group_size} does not divide n = {n} (the last dim of x)")
    return int(group_size)


def fwht_quantize(
    x: torch.Tensor,
    scale: float = 1.0,
    *,
    dtype: torch.dtype = torch.int8,
    group_size: int | None = None,
    signs: torch.Tensor | None = None,
    K: int | None = None,
    family: str = "rotation",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform, then quantise, fused: ``(q, scales)`` (formulas in the module docstring).

    Args:
        x: shape (..., n), float32 / float64 / float16 / bfloat16, any strides; n a power of two
            or K * 2^k (``hadamard_transform_order``), n >= 1.
        scale: multiplies the transform (1 / sqrt(n): orthonormal). It scales the scales only.
        dtype: torch.int8, torch.float8_e4m3fn or torch.float8_e5m2.
        group_size: None (one scale a row) or a divisor of n (32, 64, 128 ...: one scale per
            group of that many consecutive outputs).
        signs: None or a +-1 vector of shape (n,) (``random_signs``): the randomised transform.
        K, family: the order's split and matrix family, as ``hadamard_transform_order``.
        backend: "auto", "cuda", "triton", "cpu" or "reference" (module docstring).

    Returns q (x's shape, ``dtype``, contiguous) and scales (float32, shape
    x.shape[:-1] + (n // group_size,), or (..., 1) per row). ``dequantize(q, scales)``
    returns the transform to within the quantisation error.
    """
    op = "fwht_quantize"
    _check_input(x, op)
    scale = _check_scale(scale, op)
    if dtype not in QUANT_DTYPES:
        raise TypeError(f"{op}: dtype must be torch.int8, torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    n = x.shape[-1]
    if n < 1:
        raise ValueError(f"{op}: x must have at least one feature (its last dim is 0)")
    K, p = _split(n, K, family, op)
    g = _check_group(group_size, n, op)
    signs = _check_signs(signs, x, n, op)
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{op} is not differentiable (its codes are rounded): pass x.detach() or call it under torch.no_grad()"
        )
    name = _resolve(backend, x, n, K, p, g, op)
    if name == "reference":
        return reference.fwht_quantize_reference(
            x, scale, dtype=dtype, group_size=group_size, signs=signs, K=K, family=family
        )
    if name == "triton":
        quantize_op = torch.ops.hadamard_kernels.hadamard_quantize_triton.default
    else:
        quantize_op = torch.ops.hadamard_kernels.hadamard_quantize.default
    return quantize_op(x, _hk_for(name, family, K, False, x.device), p, scale, signs, dtype, g)


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``q * scales`` per group, float32 of q's shape: the inverse of ``fwht_quantize``'s
    quantisation (not of the transform: apply ``hadamard_transform_order(..., transpose=True)``
    with scale 1 / (n * scale) for that). The group size is n // scales.shape[-1]."""
    if not isinstance(q, torch.Tensor) or q.dtype not in QUANT_DTYPES:
        raise TypeError(f"dequantize: q must be an int8 or float8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError("dequantize: scales must be a float32 tensor (as fwht_quantize returns)")
    n, groups = q.shape[-1], scales.shape[-1] if scales.dim() else 0
    if q.dim() == 0 or scales.shape[:-1] != q.shape[:-1] or groups < 1 or n % groups:
        raise ValueError(
            f"dequantize: scales of shape {tuple(scales.shape)} do not fit q of shape {tuple(q.shape)}: "
            "expected q.shape[:-1] + (n // group_size,)"
        )
    return reference.dequantize_reference(q, scales)


@torch.library.register_fake("hadamard_kernels::hadamard_quantize")
def _quantize_fake(x, hk, pow2, scale, pre_signs, dtype, group_size):
    op = "hadamard_quantize"
    n = x.shape[-1]
    torch._check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 lambda: f"{op}: unsupported dtype {x.dtype}")
    torch._check(dtype in QUANT_DTYPES, lambda: f"{op}: dtype must be int8 or float8")
    k = 1 if hk is None else hk.shape[0]
    torch._check(n >= 1 and n <= k * pow2, lambda: f"{op}: n must be in [1, K * pow2]")
    g = n if group_size == 0 else group_size
    torch._check(g >= 1 and n % g == 0, lambda: f"{op}: group_size must divide n")
    if pre_signs is not None:
        torch._check(pre_signs.shape == (n,), lambda: f"{op}: signs must have shape (n,)")
        torch._check(pre_signs.device == x.device, lambda: f"{op}: signs are on another device")
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    scales = torch.empty((*x.shape[:-1], n // g), dtype=torch.float32, device=x.device)
    return q, scales
