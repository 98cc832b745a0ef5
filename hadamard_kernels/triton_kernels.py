"""Triton kernels for the ``hadamard_kernels`` ops: the "triton" backend.

Six custom ops, the Triton twins of the C++ ones in csrc/ops.cpp (same semantics,
dtypes, argument checks and gradients):

* ``hadamard_transform_triton(x, out_features, scale)``: ``scale * H_M[:out, :in] @ x``
  over the last dim, M = next_pow2(max(in, out)); its backward is itself with in and out
  swapped (H_M is symmetric).
* ``classifier_forward_triton(x, scale, bias, num_classes, normalize, eps, etf=False)``:
  ``scale * W @ (x / max(||x||, eps)) + bias``, W = H_M[:C, :N] or, with ``etf``, the
  simplex ETF ``sqrt(C / ((C-1) N)) (I - 11^T / C) H_N[:C, :N]`` (N a power of two,
  2 <= C <= N), one kernel.
* ``classifier_backward_triton(grad_y, x, scale, normalize, eps, etf=False)``: one kernel
  for dL/dx and per-program partial sums of dL/dscale (summed in float64 afterwards, in a
  fixed order: deterministic); dL/dbias is ``grad_y.sum(0)``.
* ``hadamard_transform_kn_triton(x, hk, pow2, scale, pre_signs, post_signs)`` and its
  in-place twin ``hadamard_transform_kn_triton_``: the transforms of order K * 2^k
  (hadamard_kernels/transforms.py, docs/orders.md).
* ``hadamard_quantize_triton(...)``: the same transform, then the rotate-and-quantise
  codes and scales (hadamard_kernels/quantize.py).

One program handles ROWS rows; the butterfly runs on t = next_pow2(min(in, out)) points
held in registers (fp32, fp64 for fp64 input), the longer side being folded or repeated in
chunks (see the comment above the kernels), so t is limited to 2^15
(``MAX_TRITON_FEATURES``): ``fwht`` of n > 2^15 raises a ValueError pointing at
backend="cuda" or "cpu". On CPU the kernels run in the Triton interpreter when
TRITON_INTERPRET=1 was set before this module was imported (tests).

``fwht_block`` is the butterfly itself, a ``@triton.jit`` device function meant to be
called from user kernels too (see examples/triton_fused_rotation.py).
"""

import contextlib
import functools
import math
import os
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from . import ops

__all__ = ["MAX_TRITON_FEATURES", "block_config", "fwht_block"]

#: Largest butterfly of the Triton kernels, next_pow2(min(in_features, out_features)) (for
#: fwht: next_pow2(n)): one row of that many accumulators must fit in one program's registers.
MAX_TRITON_FEATURES: int = 2**15

# Smallest block width. H_{2M}[:M, :M] = H_M (Sylvester), so padding a row with zeros to a
# wider power of two and keeping the first entries is exact; 16 keeps every tensor of the
# butterfly at least 16 wide (no degenerate layouts for n = 1, 2, 4, 8) at a negligible cost.
_MIN_BLOCK = 16


# ---------------------------------------------------------------------------------------
# The butterfly: a device function for this module's kernels and for users' own kernels.


@triton.jit
def fwht_block(x):
    """Unnormalised Walsh-Hadamard transform of every row of a register block.

    ``x``: a 2-D tensor ``[ROWS, M]`` (both powers of two, M >= 2; use ``x[None, :]`` for a
    single vector). Returns ``x @ H_M`` (= ``H_M @ row`` for each row; H_M is the Sylvester
    Hadamard matrix, ``scipy.linalg.hadamard(M)``, symmetric), same shape and dtype, with
    log2(M) add/sub stages and no memory traffic. Compute in float32 (or float64): cast
    fp16/bf16 blocks with ``x.to(tl.float32)`` first, since the values grow by up to
    sqrt(M). Multiply by ``M ** -0.5`` for the orthonormal transform. For n entries not a
    power of two, load them into a block of the next power of two with ``other=0.0``
    (zero padding) and keep the first n outputs.

    Usage in the body of your own ``@triton.jit`` kernel (a complete one, rotation then
    int8 quantisation, is examples/triton_fused_rotation.py)::

        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)   # [ROWS, M]
        y = fwht_block(x) * inv_sqrt_m    # rotated rows, still in registers
        # ... quantise y, then tl.store

    Stage s (h = 2^s) views each row as [M / 2h, 2, h] and maps the pair (a, b) on the
    axis of size 2 to (a + b, a - b). The pair is moved last with ``tl.permute``, taken
    apart with ``tl.split`` and put back with ``tl.join``: these ops and ``tl.reshape``
    compile on NVIDIA GPUs with Triton 3.6+, every dimension stays a power of two, and
    the layout conversions they imply go through a fraction of the block in shared memory
    (M = 2^15 fp32 in 32 warps: 32 KB on sm_90, 64 KB on sm_80; compiled with Triton 3.6
    and 3.9). Alternatives we compiled and rejected: the constant-geometry (Pease) form,
    always splitting the last axis, stages the whole block in shared memory (128 KB at
    M = 2^15 fp32, too much for fp64 or consumer GPUs); a masked sum over the axis of
    size 2 needs ~3x the instructions and spills registers at M = 2^15.
    """
    ROWS: tl.constexpr = x.shape[0]
    M: tl.constexpr = x.shape[1]
    tl.static_assert(M >= 2 and (M & (M - 1)) == 0, "fwht_block: the row length must be a power of two >= 2")
    tl.static_assert((ROWS & (ROWS - 1)) == 0, "fwht_block: the number of rows must be a power of two")
    # Unrolled at compile time; stages with (1 << s) >= M are pruned. 2^20 bounds M far
    # above what fits in registers.
    for s in tl.static_range(0, 20):
        if (1 << s) < M:
            x = tl.reshape(x, (ROWS, M // (2 << s), 2, 1 << s))
            x = tl.permute(x, (0, 1, 3, 2))
            a, b = tl.split(x)
            x = tl.join(a + b, a - b)
            x = tl.permute(x, (0, 1, 3, 2))
            x = tl.reshape(x, (ROWS, M))
    return x


# ---------------------------------------------------------------------------------------
# Small device helpers.


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    """A host float passed as two fp32 numbers (see _split_scalar), in ACC precision."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _sqrt(x):
    # IEEE round-to-nearest, like std::sqrt in the C++ kernels (fp32 tl.sqrt is approximate).
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _div(a, b):
    # IEEE round-to-nearest division (fp32 "/" is approximate to 2 ulp).
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _pow2(k, dtype: tl.constexpr):
    """2.0 ** k in ``dtype`` for an int32 tensor k in its normal exponent range, from the bits."""
    if dtype == tl.float64:
        return ((k.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _ldexp(x, k):
    """x * 2 ** k for int32 k (broadcast against x) up to twice the exponent range of x's
    dtype, in two multiplications by powers of two: exact wherever the result is normal."""
    half = k >> 1
    return x * _pow2(half, x.dtype) * _pow2(k - half, x.dtype)


@triton.jit
def _row_absmax(x_rows, x_col_stride, in_features, row_ok, ROWS: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    """max |x| of each of ROWS rows (x_rows: their first entries; columns < in_features)."""
    m = tl.zeros((ROWS,), ACC)
    for k in range(0, in_features, CHUNK):
        c = k + tl.arange(0, CHUNK).to(tl.int64)
        mask = row_ok & (c < in_features)[None, :]
        x = tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
        m = tl.maximum(m, tl.max(tl.abs(x), axis=1))
    return m


@triton.jit
def _shift_to_one(m):
    """The int32 k with m * 2 ** k in [1, 2) for finite m > 0 (read from the exponent bits
    of m in float64, where every float32 is normal), 0 for m = 0, inf or NaN."""
    m = m.to(tl.float64)
    exponent = ((m.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32) - 1023
    return tl.where((m > 0) & (m - m == 0), -exponent, 0)


@triton.jit
def _needs_rescale(sumsq, valid):
    """Rows whose sum of squares over- or underflowed ACC, to be redone with x * 2^shift.
    Below 2^-100 (fp32) or 2^-900 (fp64) squares of entries may have been flushed; after an
    overflow the fold and the butterfly may have overflowed too; NaN rows come along."""
    if sumsq.dtype == tl.float64:
        return valid & ~((sumsq >= 2.0**-900) & (sumsq - sumsq == 0))
    else:
        return valid & ~((sumsq >= 2.0**-100) & (sumsq - sumsq == 0))


@triton.jit
def _fold(tile, BLOCK_T: tl.constexpr):
    """[ROWS, CHUNK] -> [ROWS, BLOCK_T]: the sum of the tile's CHUNK / BLOCK_T column blocks."""
    ROWS: tl.constexpr = tile.shape[0]
    CHUNK: tl.constexpr = tile.shape[1]
    if CHUNK == BLOCK_T:
        return tile
    else:
        return tl.sum(tl.reshape(tile, (ROWS, CHUNK // BLOCK_T, BLOCK_T)), axis=1)


@triton.jit
def _repeat(y, CHUNK: tl.constexpr):
    """[ROWS, BLOCK_T] -> [ROWS, CHUNK]: y repeated CHUNK / BLOCK_T times along the columns."""
    ROWS: tl.constexpr = y.shape[0]
    BLOCK_T: tl.constexpr = y.shape[1]
    if CHUNK == BLOCK_T:
        return y
    else:
        return tl.reshape(tl.broadcast_to(y[:, None, :], (ROWS, CHUNK // BLOCK_T, BLOCK_T)), (ROWS, CHUNK))


@triton.jit
def _class_counts(num_classes, BLOCK_T: tl.constexpr, ACC: tl.constexpr):
    """[BLOCK_T] weights of the columns of a butterfly block in a sum over the C classes:
    class j is column j mod BLOCK_T (the fold of grad_y, the period of the logits), so
    column i stands for ceil((C - i) / BLOCK_T) classes (0 for i >= C; C - i + BLOCK_T - 1
    >= C > 0, no negative division). With the ETF sizes, C <= BLOCK_T: 1 for i < C."""
    i = tl.arange(0, BLOCK_T)
    return ((num_classes - i + BLOCK_T - 1) // BLOCK_T).to(ACC)


# ---------------------------------------------------------------------------------------
# Kernels. Every program owns ROWS consecutive rows; row indices are int64.
#
# Only t = next_pow2(min(in, out)) points of H_M[:out, :in] @ x are ever needed
# (csrc/ops.cpp): with H_M = H_{M/t} (x) H_t, an input longer than t is first folded onto
# t points (the sum of its blocks of t), and when out > t the size-t result repeats with
# period t over the outputs. The kernels fold the input in chunks of IN_CHUNK columns into
# a [ROWS, BLOCK_T] block (BLOCK_T = max(16, t); any power of two between t and M works),
# run the butterfly on it, and store it repeated in chunks of OUT_CHUNK columns; the plain
# transform (in = out) is the case of a single chunk, and only t, not in or out, is bounded
# by the registers. The classifier with C = 10, N = 512 reads x once and transforms 16 points.
#
# The simplex ETF head (ETF; csrc/hadamard.h) centres the C classes in those registers: the
# forward subtracts the mean of the C logits from the butterfly's output before alpha and the
# bias (epilogue), the backward subtracts the mean of g from the folded block before the
# butterfly (prologue; the fold keeps the sum of g, so the mean is sum(block) / C). Both weigh
# column i by the number of classes it holds (_class_counts), which makes the mean exact in
# every chunking; N a power of two and C <= N give t = next_pow2(C), so OUT_CHUNK = G_CHUNK =
# BLOCK_T >= C: one chunk, each class its own column. f = sqrt(C / ((C-1) N)) multiplies
# alpha (in float64) and dL/dalpha; f and 1 / C come from the host (_etf_scalars). No extra
# pass over memory.


@triton.jit
def _transform_kernel(
    x_ptr,  # *T: input rows (rows, in_features), any strides
    out_ptr,  # *T: output rows (rows, out_features)
    scale_hi,  # fp32: scale = scale_hi + scale_lo (the low part matters for fp64 only)
    scale_lo,  # fp32: low part of scale
    rows,  # number of rows
    in_features,  # entries read per row
    out_features,  # entries written per row
    x_row_stride,  # elements between consecutive input rows
    x_col_stride,  # elements between consecutive entries of an input row
    out_row_stride,  # elements between consecutive output rows (entries contiguous)
    ACC: tl.constexpr,  # accumulator dtype: tl.float32, or tl.float64 for fp64 input
    ROWS: tl.constexpr,  # rows per program (power of two)
    BLOCK_T: tl.constexpr,  # butterfly size, >= next_pow2(min(in, out)) (power of two)
    IN_CHUNK: tl.constexpr,  # input columns per load, a multiple of BLOCK_T
    OUT_CHUNK: tl.constexpr,  # output columns per store, a multiple of BLOCK_T
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = (r < rows)[:, None]
    x_rows = x_ptr + r[:, None] * x_row_stride
    acc = tl.zeros((ROWS, BLOCK_T), ACC)
    for k in range(0, in_features, IN_CHUNK):
        c = k + tl.arange(0, IN_CHUNK).to(tl.int64)
        mask = row_ok & (c < in_features)[None, :]
        acc += _fold(tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC), BLOCK_T)
    y = _repeat(fwht_block(acc) * _scalar(scale_hi, scale_lo, ACC), OUT_CHUNK).to(out_ptr.dtype.element_ty)
    out_rows = out_ptr + r[:, None] * out_row_stride
    for k in range(0, out_features, OUT_CHUNK):
        c = k + tl.arange(0, OUT_CHUNK).to(tl.int64)
        tl.store(out_rows + c[None, :], y, mask=row_ok & (c < out_features)[None, :])


@triton.jit
def _classifier_forward_kernel(
    x_ptr,  # *T: features (rows, N), any strides
    scale_ptr,  # *float: alpha, one element (read on device: no host sync)
    bias_ptr,  # *T: bias (C,), or any pointer when HAS_BIAS is false
    y_ptr,  # *T: logits (rows, C)
    eps_hi,  # fp32: eps = eps_hi + eps_lo, lower bound of the norm
    eps_lo,  # fp32: low part of eps
    etf_hi,  # fp32: ETF only: f = etf_hi + etf_lo = sqrt(C / ((C-1) N)) (ops.etf_factor)
    etf_lo,  # fp32: low part of f
    inv_c_hi,  # fp32: ETF only: 1 / C = inv_c_hi + inv_c_lo, the factor of the mean
    inv_c_lo,  # fp32: low part of 1 / C
    rows,  # number of rows
    in_features,  # N
    num_classes,  # C
    x_row_stride,  # elements between consecutive rows of x
    x_col_stride,  # elements between consecutive features of a row of x
    bias_stride,  # elements between consecutive bias entries
    y_row_stride,  # elements between consecutive rows of y (entries contiguous)
    NORMALIZE: tl.constexpr,  # divide each row by max(||x||, eps) first
    HAS_BIAS: tl.constexpr,  # add bias
    ETF: tl.constexpr,  # the simplex ETF head: centre the C logits, alpha * sqrt(C / ((C-1) N))
    ACC: tl.constexpr,  # accumulator dtype: tl.float32, or tl.float64 for fp64 input
    ROWS: tl.constexpr,  # rows per program (power of two)
    BLOCK_T: tl.constexpr,  # butterfly size, >= next_pow2(min(N, C)) (power of two)
    IN_CHUNK: tl.constexpr,  # columns of x per load, a multiple of BLOCK_T
    OUT_CHUNK: tl.constexpr,  # columns of y per store, a multiple of BLOCK_T
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = (r < rows)[:, None]
    x_rows = x_ptr + r[:, None] * x_row_stride
    acc = tl.zeros((ROWS, BLOCK_T), ACC)
    sumsq = tl.zeros((ROWS,), ACC)
    for k in range(0, in_features, IN_CHUNK):
        c = k + tl.arange(0, IN_CHUNK).to(tl.int64)
        mask = row_ok & (c < in_features)[None, :]
        x = tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
        if NORMALIZE:
            sumsq += tl.sum(x * x, axis=1)
        acc += _fold(x, BLOCK_T)
    alpha = tl.load(scale_ptr)
    if ETF:
        alpha = alpha.to(tl.float64) * _scalar(etf_hi, etf_lo, tl.float64)
    if NORMALIZE:
        # Rows whose squares over- or underflowed are folded again as x * 2^shift, the power
        # of two that brings max|x| into [1, 2) (exact); then ||x|| = sqrt(sumsq) * 2^-shift.
        shift = tl.zeros((ROWS,), tl.int32)
        redo = _needs_rescale(sumsq, r < rows)
        if tl.max(redo.to(tl.int32), axis=0) > 0:
            m = _row_absmax(x_rows, x_col_stride, in_features, row_ok, ROWS, IN_CHUNK, ACC)
            shift = tl.where(redo, _shift_to_one(m), 0)
            acc = tl.zeros((ROWS, BLOCK_T), ACC)
            sumsq = tl.zeros((ROWS,), ACC)
            for k in range(0, in_features, IN_CHUNK):
                c = k + tl.arange(0, IN_CHUNK).to(tl.int64)
                mask = row_ok & (c < in_features)[None, :]
                x = tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
                x = _ldexp(x, shift[:, None])
                sumsq += tl.sum(x * x, axis=1)
                acc += _fold(x, BLOCK_T)
        # alpha / max(||x||, eps) in the units of x * 2^shift, per row in float64 (1 / eps
        # may overflow float32); an all-zero row gives the bias whatever eps is.
        norm = _sqrt(sumsq).to(tl.float64)
        eps = _ldexp(_scalar(eps_hi, eps_lo, tl.float64), shift)
        a = tl.where(sumsq == 0, 0.0, alpha.to(tl.float64) / tl.maximum(norm, eps)).to(ACC)
    else:
        a = alpha.to(ACC)
    h = fwht_block(acc)
    if ETF:  # the epilogue's centring: h minus the mean of the C logits it holds
        counts = _class_counts(num_classes, BLOCK_T, ACC)
        h -= (tl.sum(h * counts[None, :], axis=1) * _scalar(inv_c_hi, inv_c_lo, ACC))[:, None]
    if NORMALIZE:
        t = a[:, None] * h
    else:
        t = a * h
    t = _repeat(t, OUT_CHUNK)  # logits of classes k .. k + OUT_CHUNK, before the bias
    y_rows = y_ptr + r[:, None] * y_row_stride
    for k in range(0, num_classes, OUT_CHUNK):
        c = k + tl.arange(0, OUT_CHUNK).to(tl.int64)
        col_ok = c < num_classes
        y = t
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + c * bias_stride, mask=col_ok, other=0.0).to(ACC)[None, :]
        tl.store(y_rows + c[None, :], y.to(y_ptr.dtype.element_ty), mask=row_ok & col_ok[None, :])


@triton.jit
def _classifier_backward_kernel(
    g_ptr,  # *T: dL/dy (rows, C), any strides
    x_ptr,  # *T: features (rows, N), any strides
    scale_ptr,  # *float: alpha, one element
    gx_ptr,  # *T: dL/dx (rows, N)
    partial_ptr,  # *ACC: one partial sum of dL/dalpha per program
    eps_hi,  # fp32: eps = eps_hi + eps_lo
    eps_lo,  # fp32: low part of eps
    etf_hi,  # fp32: ETF only: f = etf_hi + etf_lo = sqrt(C / ((C-1) N)) (ops.etf_factor)
    etf_lo,  # fp32: low part of f
    inv_c_hi,  # fp32: ETF only: 1 / C = inv_c_hi + inv_c_lo, the factor of the mean
    inv_c_lo,  # fp32: low part of 1 / C
    rows,  # number of rows
    in_features,  # N
    num_classes,  # C
    g_row_stride,  # elements between consecutive rows of grad_y
    g_col_stride,  # elements between consecutive entries of a row of grad_y
    x_row_stride,  # elements between consecutive rows of x
    x_col_stride,  # elements between consecutive features of a row of x
    gx_row_stride,  # elements between consecutive rows of dL/dx (entries contiguous)
    NORMALIZE: tl.constexpr,  # the forward normalised x
    ETF: tl.constexpr,  # the simplex ETF head: centre g, alpha and dL/dalpha times sqrt(C / ((C-1) N))
    ACC: tl.constexpr,  # accumulator dtype: tl.float32, or tl.float64 for fp64 input
    ROWS: tl.constexpr,  # rows per program (power of two)
    BLOCK_T: tl.constexpr,  # butterfly size, >= next_pow2(min(N, C)) (power of two)
    G_CHUNK: tl.constexpr,  # columns of grad_y per load, a multiple of BLOCK_T
    X_CHUNK: tl.constexpr,  # columns of x and dL/dx per load/store, a multiple of BLOCK_T
):
    # Formulas of csrc/hadamard.h: u = H_M[:N, :C] @ g (the adjoint, H symmetric),
    # dL/dalpha = sum_r u . x_hat, dL/dx_hat = alpha * u,
    # dL/dx = alpha / ||x|| * (u - x (u . x) / ||x||^2) where ||x|| >= eps, alpha / eps * u
    # where the norm is clamped, alpha * u without normalisation. The simplex ETF head
    # (W = f P H_N[:C, :N], P = I - 11^T / C symmetric) has u = H_N[:N, :C] P g, with
    # alpha * f in place of alpha and f * dL/dalpha.
    pid = tl.program_id(0)
    r = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = (r < rows)[:, None]
    g_rows = g_ptr + r[:, None] * g_row_stride
    acc = tl.zeros((ROWS, BLOCK_T), ACC)
    for k in range(0, num_classes, G_CHUNK):
        c = k + tl.arange(0, G_CHUNK).to(tl.int64)
        mask = row_ok & (c < num_classes)[None, :]
        acc += _fold(tl.load(g_rows + c[None, :] * g_col_stride, mask=mask, other=0.0).to(ACC), BLOCK_T)
    if ETF:  # the prologue's centring: g minus its mean over the C classes, folded
        counts = _class_counts(num_classes, BLOCK_T, ACC)
        acc -= (tl.sum(acc, axis=1) * _scalar(inv_c_hi, inv_c_lo, ACC))[:, None] * counts[None, :]
    u = _repeat(fwht_block(acc), X_CHUNK)  # u over any X_CHUNK columns (period BLOCK_T)
    alpha = tl.load(scale_ptr)
    if ETF:
        alpha = alpha.to(tl.float64) * _scalar(etf_hi, etf_lo, tl.float64)
    alpha = alpha.to(ACC)
    x_rows = x_ptr + r[:, None] * x_row_stride
    ux = tl.zeros((ROWS,), ACC)
    sumsq = tl.zeros((ROWS,), ACC)
    for k in range(0, in_features, X_CHUNK):
        c = k + tl.arange(0, X_CHUNK).to(tl.int64)
        x = tl.load(x_rows + c[None, :] * x_col_stride, mask=row_ok & (c < in_features)[None, :], other=0.0)
        x = x.to(ACC)
        ux += tl.sum(u * x, axis=1)  # x is zero beyond N
        if NORMALIZE:
            sumsq += tl.sum(x * x, axis=1)
    if NORMALIZE:
        # As in the forward: rows whose squares over- or underflowed are redone with
        # x * 2^shift; below, norm, ux and eps are in those units (||x|| 2^shift etc.).
        shift = tl.zeros((ROWS,), tl.int32)
        redo = _needs_rescale(sumsq, r < rows)
        if tl.max(redo.to(tl.int32), axis=0) > 0:
            m = _row_absmax(x_rows, x_col_stride, in_features, row_ok, ROWS, X_CHUNK, ACC)
            shift = tl.where(redo, _shift_to_one(m), 0)
            ux = tl.zeros((ROWS,), ACC)
            sumsq = tl.zeros((ROWS,), ACC)
            for k in range(0, in_features, X_CHUNK):
                c = k + tl.arange(0, X_CHUNK).to(tl.int64)
                mask = row_ok & (c < in_features)[None, :]
                x = tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
                x = _ldexp(x, shift[:, None])
                ux += tl.sum(u * x, axis=1)
                sumsq += tl.sum(x * x, axis=1)
        norm = _sqrt(sumsq)
        eps = _ldexp(_scalar(eps_hi, eps_lo, tl.float64), shift)  # float64: no overflow
        full = norm.to(tl.float64) >= eps  # else the norm was clamped to eps: x_hat = x / eps
        alpha = alpha.to(tl.float64)
        # alpha / ||x|| in the full case, alpha / eps where clamped
        a = tl.where(full, _ldexp(alpha / norm.to(tl.float64), shift), alpha / _scalar(eps_hi, eps_lo, tl.float64))
        a = a.to(ACC)
        nonzero = full & (sumsq > 0)
        b = tl.where(nonzero, _div(ux, tl.where(nonzero, norm * norm, 1.0)), 0.0)  # no 0/0 in zero rows
        d_alpha = tl.where(sumsq == 0, 0.0, ux.to(tl.float64) / tl.maximum(norm.to(tl.float64), eps))
        d_alpha = d_alpha.to(ACC)
    else:
        d_alpha = ux
    gx_rows = gx_ptr + r[:, None] * gx_row_stride
    for k in range(0, in_features, X_CHUNK):  # second pass over x (one chunk: cache hits)
        c = k + tl.arange(0, X_CHUNK).to(tl.int64)
        mask = row_ok & (c < in_features)[None, :]
        if NORMALIZE:
            x = tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
            gx = a[:, None] * (u - _ldexp(x, shift[:, None]) * b[:, None])
        else:
            gx = alpha * u
        tl.store(gx_rows + c[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)
    partial = tl.sum(d_alpha, axis=0)
    if ETF:
        partial = (partial.to(tl.float64) * _scalar(etf_hi, etf_lo, tl.float64)).to(ACC)
    tl.store(partial_ptr + pid, partial)


# The transform of order K * 2^k (transforms.py): y = scale * post . [(H_K (x) H_pow2) @
# pad(pre . x, K pow2)][:n] per row. A row is K chunks of pow2 entries (chunk a: entries
# a * pow2 + b), H_K acts on the chunk index a (docs/orders.md), so output chunk a is
# sum_a' H_K[a, a'] * H_pow2 (pre . chunk a'). The kernel loops over the input chunks a' that
# hold entries of the row (used = ceil(n / pow2); the rest are zero padding): it loads chunk a'
# of ROWS rows once, transforms it by fwht_block and adds it, times column a' of H_K, into a
# [KB, ROWS, P] accumulator of every output chunk; then scales and stores the used chunks. So
# x is read once and y written once; the K-point product multiplies by +-1 (exact) and adds in
# ACC in the order a' = 0, 1, ..., rounding as a dot product in ACC would.
#
# Rejected: one tl.dot(H_K, chunks) (input_precision="ieee") after transforming all chunks.
# Compiled for sm_90 (Triton 3.9), Triton stages both operands in shared memory: 36 KB at
# K = 20, pow2 = 256, and 320 KB plus 18 KB of spills at K = 172, pow2 = 64 (11008 features),
# which cannot launch; the loop keeps only the accumulator and one chunk in registers.


# The quantising epilogue of _transform_kn_kernel (QUANT > 0; hadamard_quantize_triton): the
# symmetric absmax quantisation of csrc/cpu/quantize.h, from the registers that hold y, so x
# is read once and the codes and scales written once. y is a [KB, ROWS, P] block, output
# column a * pow2 + b in chunk a; groups of GS consecutive columns lie inside a chunk (GS a
# power of two dividing pow2), or are GM whole chunks (GM = KB: the row). Per group:
#
#   amax = max |y| (NaN if the group has one)       s = float32(amax / qmax) (IEEE division)
#   q = encode(clamp(y / s, -qmax, qmax))             q = 0 where s == 0 (an all-zero group)
#
# with y / s in ACC, and encode the int8 round-half-to-even (NaN -> 0), or the float8 bits of
# torch's (c10's) round-to-nearest-even conversion from float32 (NaN -> 0x7f | sign), computed
# with integer operations, the same on every GPU and in the interpreter: Triton 3.9's
# interpreter converts float32 to fp8 by truncating the mantissa and adding its first cut-off
# bit (ties away from zero: 1.0625 -> 1.125; the carry does not reach the exponent: 1.9375 ->
# 1.0; NaN -> 384 in e4m3fn), and what ``.to(tl.float8e4nv)`` compiles to depends on the
# GPU architecture. A few integer operations a value in a memory-bound kernel.


@triton.jit
def _rint(v):
    # Round half to even for |v| < 2^22 (fp32) / 2^51 (fp64): adding and subtracting 1.5 * 2^23
    # (1.5 * 2^52) rounds v to an integer in the default rounding mode; NaN stays NaN.
    if v.dtype == tl.float64:
        return (v + 6755399441055744.0) - 6755399441055744.0
    else:
        return (v + 12582912.0) - 12582912.0


@triton.jit
def _fp8_bits(f, QUANT: tl.constexpr):
    """The float8 bits (int8) of float32 values f with |f| <= the format's maximum, or NaN:
    float8_e4m3fn (QUANT 2: 3 mantissa bits, bias 7) or float8_e5m2 (QUANT 3: 2, bias 15),
    rounded to nearest even like c10::Float8_e4m3fn / Float8_e5m2 (torch's .to())."""
    if QUANT == 2:
        M: tl.constexpr = 3
        BIAS: tl.constexpr = 7
        SUB: tl.constexpr = 512.0  # 2^(M - emin), emin = 1 - BIAS: subnormal codes count 2^-9
    else:
        M: tl.constexpr = 2
        BIAS: tl.constexpr = 15
        SUB: tl.constexpr = 65536.0  # subnormal codes count 2^-16
    SHIFT: tl.constexpr = 23 - M
    u = f.to(tl.int32, bitcast=True)
    sign = (u >> 31) & 1
    a = u & 0x7FFFFFFF
    # Normal: round the float32 mantissa to M bits (carry into the exponent), rebias.
    normal = ((a + ((1 << (SHIFT - 1)) - 1) + ((a >> SHIFT) & 1)) >> SHIFT) - ((127 - BIAS) << M)
    # Subnormal (|f| < 2^emin): the count of quanta, rounded half to even (exact scaling).
    small = a < ((128 - BIAS) << 23)
    sub = _rint(tl.abs(tl.where(small, f, 0.0)) * SUB).to(tl.int32)  # (no int cast of big or NaN values)
    code = tl.where(small, sub, normal)
    code = tl.where(a > 0x7F800000, 0x7F, code)
    return (code | (sign << 7)).to(tl.int8)


@triton.jit
def _quantize_store(y, out, mask, a, r, r_ok, n, pow2, scales_ptr, groups, QUANT: tl.constexpr, GS: tl.constexpr,
                    GM: tl.constexpr):
    """Quantise the [KB, ROWS, P] block y (ACC) of chunks a (arange(KB)) of rows r (r_ok:
    the rows that exist) and store its codes at out (int8 pointers, masked by mask: the
    columns < n of real rows) and its scales at scales_ptr + r * groups + group."""
    KB: tl.constexpr = y.shape[0]
    ROWS: tl.constexpr = y.shape[1]
    P: tl.constexpr = y.shape[2]
    if QUANT == 1:
        qmax: tl.constexpr = 127.0
    elif QUANT == 2:
        qmax: tl.constexpr = 448.0
    else:
        qmax: tl.constexpr = 57344.0
    # |y| of the columns of the row (0 elsewhere); its group maxima keep NaN, so a group with
    # a NaN gets amax = NaN and s = NaN (a separate NaN flag block spilled on sm_90).
    mag = tl.where(mask, tl.abs(y), 0.0)
    if GS > 0:  # NG groups of GS columns in each chunk
        NG: tl.constexpr = P // GS
        amax = tl.reduce(tl.reshape(mag, (KB, ROWS, NG, GS)), 3, _nan_max)
        s = _div(amax, tl.full(amax.shape, qmax, amax.dtype)).to(tl.float32)
        j = tl.arange(0, NG)
        start = a[:, None] * pow2 + j[None, :] * GS  # first column of each group, [KB, NG]
        s_ok = (j * GS < pow2)[None, :] & (start < n)
        s_ptr = scales_ptr + r[None, :, None] * groups + (start // GS)[:, None, :]
        tl.store(s_ptr, s, mask=s_ok[:, None, :] & r_ok[None, :, None])
        s = tl.reshape(tl.broadcast_to(s[:, :, :, None], (KB, ROWS, NG, GS)), (KB, ROWS, P))
    else:  # NG groups of GM whole chunks
        NG: tl.constexpr = KB // GM
        amax = tl.reduce(tl.reduce(tl.reshape(mag, (NG, GM, ROWS, P)), 3, _nan_max), 1, _nan_max)
        s = _div(amax, tl.full(amax.shape, qmax, amax.dtype)).to(tl.float32)
        j = tl.arange(0, NG)
        tl.store(scales_ptr + r[None, :] * groups + j[:, None], s, mask=(j < groups)[:, None] & r_ok[None, :])
        s = tl.reshape(tl.broadcast_to(s[:, None, :, None], (NG, GM, ROWS, P)), (KB, ROWS, P))
    s = s.to(y.dtype)
    zero = s == 0.0
    v = tl.where(zero, 0.0, _div(y, tl.where(zero, 1.0, s)))
    v = tl.where(v < -qmax, -qmax, tl.where(v > qmax, qmax, v))  # NaN passes through
    if QUANT == 1:
        v = _rint(v)
        code = tl.where(v != v, 0.0, v).to(tl.int8)
    else:
        code = _fp8_bits(v.to(tl.float32), QUANT)
    tl.store(out, code, mask=mask)


@triton.jit
def _nan_max(a, b):
    # max that returns NaN if either is NaN (IEEE maxNum, Triton's default, drops it)
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _transform_kn_kernel(
    x_ptr,  # *T: input rows (rows, n), any strides
    out_ptr,  # *T: output rows (rows, n), entries contiguous; may be x_ptr (in place)
    hk_ptr,  # *int8: H_K (K, K), or any pointer when HAS_HK is false
    pre_ptr,  # *float: n factors applied before the transform, or any pointer (not HAS_PRE)
    post_ptr,  # *float: n factors applied after it, or any pointer (not HAS_POST)
    scale_hi,  # fp32: scale = scale_hi + scale_lo (the low part matters for fp64 only)
    scale_lo,  # fp32: low part of scale
    rows,  # number of rows
    n,  # entries read and written per row, n <= K * pow2
    pow2,  # chunk length, a power of two <= P
    x_row_stride,  # elements between consecutive input rows
    x_col_stride,  # elements between consecutive entries of an input row
    out_row_stride,  # elements between consecutive output rows
    hk_row_stride,  # elements between rows of H_K (H_K^T is passed as a transposed view)
    hk_col_stride,  # elements between columns of H_K
    pre_stride,  # elements between consecutive pre factors
    post_stride,  # elements between consecutive post factors
    scales_ptr,  # *fp32: QUANT only, (rows, groups) scales, contiguous; else any pointer
    groups,  # QUANT only: groups per row, n // group_size
    HAS_HK: tl.constexpr,  # K > 1 (else the chunk is the row: the power-of-two transform)
    HAS_PRE: tl.constexpr,  # multiply by the pre factors
    HAS_POST: tl.constexpr,  # multiply by the post factors
    ACC: tl.constexpr,  # accumulator dtype: tl.float32, or tl.float64 for fp64 input
    ROWS: tl.constexpr,  # rows per program (power of two)
    KB: tl.constexpr,  # output chunks per row held: next_pow2(used) with HAS_HK, else 1
    P: tl.constexpr,  # chunk width in registers: max(16, pow2); columns >= pow2 are zero
    QUANT: tl.constexpr = 0,  # 0: store y; 1, 2, 3: quantise y to int8, e4m3fn, e5m2 codes (out_ptr: *int8)
    GS: tl.constexpr = 0,  # QUANT: group width, a power of two <= pow2 (groups inside a chunk), or 0
    GM: tl.constexpr = 1,  # QUANT with GS = 0: chunks per group, a power of two <= KB (KB: per row)
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = (r < rows)[:, None]
    b = tl.arange(0, P)
    # H_{2P}[:P, :P] = H_P: a chunk zero-padded from pow2 to P columns transforms exactly on
    # its first pow2.
    b_ok = b < pow2
    x_rows = x_ptr + r[:, None] * x_row_stride
    if HAS_HK:
        a = tl.arange(0, KB)
        used = tl.cdiv(n, pow2)
        acc = tl.zeros((KB, ROWS, P), ACC)
        for a2 in range(0, used):
            c = (a2 * pow2 + b).to(tl.int64)
            c_ok = b_ok & (c < n)
            chunk = tl.load(x_rows + c[None, :] * x_col_stride, mask=row_ok & c_ok[None, :], other=0.0).to(ACC)
            if HAS_PRE:
                chunk = chunk * tl.load(pre_ptr + c * pre_stride, mask=c_ok, other=0.0).to(ACC)[None, :]
            h = tl.load(hk_ptr + a * hk_row_stride + a2 * hk_col_stride, mask=a < used, other=0).to(ACC)
            acc += h[:, None, None] * fwht_block(chunk)[None, :, :]
        # Entries of a row in int32 (n <= 256 * 2^20 < 2^31), rows' starts in int64.
        col = (a[:, None] * pow2 + b[None, :])[:, None, :]  # [KB, 1, P]
        col_ok = (col < n) & b_ok[None, None, :]
        y = acc * _scalar(scale_hi, scale_lo, ACC)
        if HAS_POST:
            y = y * tl.load(post_ptr + col.to(tl.int64) * post_stride, mask=col_ok, other=0.0).to(ACC)
        # In place (out_ptr == x_ptr) this is safe: the loop has read every chunk of the rows.
        out = (out_ptr + r * out_row_stride)[None, :, None] + col
        if QUANT:
            _quantize_store(y, out, row_ok[None, :, :] & col_ok, a, r, r < rows, n, pow2, scales_ptr, groups,
                            QUANT, GS, GM)
        else:
            tl.store(out, y.to(out_ptr.dtype.element_ty), mask=row_ok[None, :, :] & col_ok)
    else:
        c = b.to(tl.int64)
        c_ok = b_ok & (c < n)
        mask = row_ok & c_ok[None, :]
        x = tl.load(x_rows + c[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
        if HAS_PRE:
            x = x * tl.load(pre_ptr + c * pre_stride, mask=c_ok, other=0.0).to(ACC)[None, :]
        y = fwht_block(x) * _scalar(scale_hi, scale_lo, ACC)
        if HAS_POST:
            y = y * tl.load(post_ptr + c * post_stride, mask=c_ok, other=0.0).to(ACC)[None, :]
        out = out_ptr + r[:, None] * out_row_stride + c[None, :]
        if QUANT:  # the row as one chunk: a [1, ROWS, P] block
            _quantize_store(y[None, :, :], out[None, :, :], mask[None, :, :], tl.arange(0, 1), r, r < rows, n,
                            pow2, scales_ptr, groups, QUANT, GS, GM)
        else:
            tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------
# Launch configuration.


@functools.lru_cache(maxsize=None)
def block_config(
    in_features: int, out_features: int, dtype: torch.dtype, live_blocks: int = 1
) -> tuple[int, int, int, int, int]:
    """``(BLOCK_T, IN_CHUNK, OUT_CHUNK, ROWS, num_warps)`` for ``H_M[:out, :in] @ x``.

    BLOCK_T = max(16, next_pow2(min(in, out))) is the butterfly size; a program handles
    ROWS rows, loading IN_CHUNK and storing OUT_CHUNK columns at a time (multiples of
    BLOCK_T, at most next_pow2 of the size they cover). ``live_blocks`` counts the
    ROWS x chunk blocks a kernel holds in registers at once (1 for the transform, 2 for
    the classifier kernels). With L = max(16, next_pow2(max(in, out))) and a budget of
    B = 1024 // live_blocks elements per program (8 or 4 per thread in 4 warps):

    =================  ===========================  =========  ==========================
    case               chunk                        ROWS       num_warps
    =================  ===========================  =========  ==========================
    BLOCK_T <= B       min(L, B) (>= BLOCK_T)       B // chunk 4
    BLOCK_T > B        BLOCK_T                      1          min(32, 4 * BLOCK_T // B)
    =================  ===========================  =========  ==========================

    e.g. the transform of n = 16 runs 64 rows per program, n = 256 4 rows, n = 1024 one
    row in 4 warps, n = 4096 one row in 16 warps, n >= 8192 one row in 32 warps; the
    classifier with N = 512, C = 10 folds one row in chunks of 512 onto a 16-point
    butterfly. The budget is what keeps every kernel at >= 25 % occupancy on sm_90 and free
    of register spills, by scripts/triton_resources.py (compiled with Triton 3.9, table in
    benchmarks/results/triton-resources-sm90.md): twice as many elements per program made
    the small sizes use 160-255 registers per thread (12.5-19 % occupancy, n < 16, where
    rows are not 16-byte aligned). The exceptions are the blocks that do not fit in the
    registers of 1024 threads (64 each): BLOCK_T = 2^15 in the classifier kernels and in
    fp64, 2^13-2^14 in the fp64 classifier kernels, which spill (ALLOW_LIST there). Not
    tuned by measurement (no GPU was at hand).
    """
    block_t = max(_MIN_BLOCK, ops.reference.next_pow2(min(in_features, out_features)))
    big = max(_MIN_BLOCK, ops.reference.next_pow2(max(in_features, out_features)))
    budget = 1024 // live_blocks
    chunk = max(block_t, min(big, budget))
    rows = max(1, budget // chunk)
    warps = 4 if chunk <= budget else min(32, 4 * chunk // budget)

    def fit(n: int) -> int:
        return max(block_t, min(ops.reference.next_pow2(n), chunk))

    return block_t, fit(in_features), fit(out_features), rows, warps


#: Largest order K of hk the K * 2^k op takes (kMaxK of the C++ ops, csrc/hadamard.h).
MAX_TRITON_K: int = 256


@functools.lru_cache(maxsize=None)
def kn_config(n: int, K: int, pow2: int) -> tuple[int, int, int, int]:
    """``(KB, P, ROWS, num_warps)`` of ``_transform_kn_kernel`` for rows of n entries in
    chunks of pow2, H_K of order K (1: no H_K).

    A program accumulates a [KB, ROWS, P] block: P = max(16, pow2) columns per chunk, KB =
    next_pow2(used) output chunks per row (used = ceil(n / pow2)), or KB = 1 for K = 1. With
    t = KB * P, rows per program and warps follow ``block_config``'s table for one live block
    of t values: ROWS = max(1, 1024 // t), num_warps = 4 up to t = 1024, then
    min(32, 4 * t // 1024); t <= 2^15 (``_check_kn_size``). E.g. n = 20 * 256 (K = 20): a
    32 x 256 block, one row in 32 warps; n = 12 * 16: 16 x 16, four rows in 4 warps;
    n = 172 * 64 (11008): 256 x 64, one row in 32 warps. Compiled for sm_90 with Triton 3.9
    (scripts/triton_resources.py) this spills at t = 2^15, and 8-72 bytes for some shapes at
    t = 2^14 (all in float64 with P >= 128; 32 x 512 in 32-bit types); ALLOW_LIST there.
    """
    kb, p = _kn_block(n, K, pow2)
    t = kb * p
    rows = max(1, 1024 // t)
    warps = 4 if t <= 1024 else min(32, 4 * t // 1024)
    return kb, p, rows, warps


def _kn_block(n: int, K: int, pow2: int) -> tuple[int, int]:
    """(KB, P) of kn_config, uncached (the fake kernel calls it with symbolic sizes)."""
    kb = ops.reference.next_pow2((n + pow2 - 1) // pow2) if K > 1 else 1
    return kb, max(_MIN_BLOCK, pow2)


def _check_kn_size(n: int, K: int, pow2: int, op: str) -> None:
    """The [KB, P] block of a row (kn_config) must fit in one program: KB * P <= 2^15."""
    kb, p = _kn_block(n, K, pow2)
    torch._check_value(
        kb * p <= MAX_TRITON_FEATURES,
        lambda: (
            f"{op}: n={n} in chunks of pow2={pow2} (K={K}) needs a register block of {kb} x {p} = "
            f"{kb * p} values per row, more than {MAX_TRITON_FEATURES} (2^15), the largest the "
            f"Triton kernels transform in one pass; use backend='cuda' or backend='cpu'"
        ),
    )


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _split_scalar(value: float, dtype: torch.dtype, what: str, op: str) -> tuple[float, float]:
    """``value`` as (hi, lo) float32 numbers with hi + lo == value to 2^-48 relative.

    Triton passes Python floats to kernels as fp32 (and its interpreter ignores fp64
    annotations), so a float64 scalar is split in two fp32 halves and rebuilt in the
    kernel; for fp32/fp16/bf16 input lo = 0 and hi = float32(value), the C++ kernels'
    static_cast<float>.
    """
    with np.errstate(over="ignore", under="ignore"):
        hi = np.float32(value)
        if dtype != torch.float64 or not math.isfinite(value):
            return float(hi), 0.0
        lo = np.float32(value - float(hi))
    rebuilt = float(hi) + float(lo)
    if value != 0 and not (math.isfinite(rebuilt) and abs(rebuilt - value) <= 2.0**-46 * abs(value)):
        raise ValueError(
            f"{op}: {what}={value!r} cannot be passed to a float64 Triton kernel (the "
            f"Triton backend carries float64 scalars as two float32 numbers, magnitude "
            f"about 1e-30 to 3e38); use backend='cuda' or backend='cpu'"
        )
    return float(hi), float(lo)


def _etf_scalars(num_classes: int, n: int, dtype: torch.dtype, op: str) -> tuple[float, float, float, float]:
    """(etf_hi, etf_lo, inv_c_hi, inv_c_lo) of the classifier kernels with ETF: f =
    sqrt(C / ((C-1) N)) and 1 / C, each split by _split_scalar. Computed here rather than in
    the kernel: a float64 division or square root there is a call in the SASS, around which
    ptxas spilled 4-8 bytes (sm_90: the forward at N = C = 16 in float32, at N = 2048,
    C = 1000 in float64)."""
    return (*_split_scalar(ops.etf_factor(num_classes, n), dtype, "f", op),
            *_split_scalar(1.0 / num_classes, dtype, "1 / C", op))  # fmt: skip


def _check_triton_size(in_features: int, out_features: int, op: str) -> None:
    """The butterfly runs on next_pow2(min(in, out)) <= 2^15 points held in registers; the
    longer side is folded or repeated in chunks, up to ops.MAX_FEATURES like the C++ ops."""
    torch._check_value(
        min(in_features, out_features) <= MAX_TRITON_FEATURES,
        lambda: (
            f"{op}: transform size next_pow2(min({in_features}, {out_features})) = "
            f"{ops.reference.next_pow2(min(in_features, out_features))} exceeds "
            f"{MAX_TRITON_FEATURES} (2^15), the largest the Triton kernels transform in one "
            f"pass; use backend='cuda' or backend='cpu' (up to 2^20)"
        ),
    )
    torch._check_value(
        max(in_features, out_features) <= ops.MAX_FEATURES,
        lambda: (
            f"{op}: transform size next_pow2(max({in_features}, {out_features})) = "
            f"{ops.reference.next_pow2(max(in_features, out_features))} exceeds the "
            f"supported maximum {ops.MAX_FEATURES} (2^20)"
        ),
    )


# Whether this module's kernels were built for the Triton interpreter (TRITON_INTERPRET=1
# when it was imported).
_INTERPRETED: bool = type(_transform_kernel).__name__ == "InterpretedFunction"


def _check_device(x: torch.Tensor, op: str) -> None:
    if x.device.type == "cpu" and not _INTERPRETED:
        raise RuntimeError(
            f"{op}: x is on the CPU but Triton compiles for GPUs only; set TRITON_INTERPRET=1 "
            f"before importing hadamard_kernels to run the Triton interpreter, or use backend='cpu'"
        )


@functools.lru_cache(maxsize=None)
def _cuda_works(index: Optional[int]) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
        return triton.runtime.driver.active.get_current_target().backend in ("cuda", "hip")
    except Exception:  # no usable driver, bad index: the backend is just not available
        return False


def _backend_available(device: torch.device) -> bool:
    """Whether the "triton" backend runs on ``device`` (registered with ops.register_backend):
    CUDA (or ROCm) GPUs that Triton can drive, and the CPU under the Triton interpreter."""
    if device.type == "cuda":
        return _cuda_works(device.index)
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1" and _INTERPRETED
    return False


# Run eagerly and taken as a constant by torch.compile (driver queries do not trace). This is
# what torch.compiler.assume_constant_result does (torch 2.11-2.13: it sets this attribute),
# without its import of torch._dynamo, which would make `import hadamard_kernels` on a GPU
# machine about 2x slower than `import torch`. tests/test_triton_kernels.py checks that the
# decorator still means this attribute.
_backend_available._dynamo_marked_constant = True


def _device_guard(x: torch.Tensor):
    """Make x's GPU current: Triton launches on the current device."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows, n) view of x (a copy only where no view exists, like csrc/checks.h)."""
    rows = math.prod(x.shape[:-1])
    if x.shape[-1] == 0:
        return x.new_zeros((rows, 0)), rows
    return x.reshape(rows, x.shape[-1]), rows


# ---------------------------------------------------------------------------------------
# Argument checks shared by the real and the fake kernels (csrc/checks.h in Python).


def _check_float(x: torch.Tensor, op: str, name: str) -> None:
    torch._check_type(
        x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
        lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}",
    )
    torch._check_value(
        x.dim() >= 1, lambda: f"{op}: {name} must have at least 1 dimension, got a 0-d tensor"
    )


def _check_classifier(x: torch.Tensor, scale: torch.Tensor, num_classes: int, eps: float, op: str) -> None:
    _check_float(x, op, "x")
    torch._check_value(num_classes >= 1, lambda: f"{op}: num_classes must be >= 1, got {num_classes}")
    torch._check_value(
        x.shape[-1] >= 1, lambda: f"{op}: x must have at least one feature, got {tuple(x.shape)}"
    )
    torch._check_value(eps > 0, lambda: f"{op}: eps must be > 0, got {eps}")
    _check_triton_size(x.shape[-1], num_classes, op)
    torch._check_value(
        scale.numel() == 1, lambda: f"{op}: scale must have one element, got {tuple(scale.shape)}"
    )
    torch._check_type(
        scale.dtype.is_floating_point, lambda: f"{op}: scale must be floating, got {scale.dtype}"
    )
    torch._check_value(
        scale.device == x.device, lambda: f"{op}: scale is on {scale.device} but x is on {x.device}"
    )


def _check_bias(bias: torch.Tensor, x: torch.Tensor, num_classes: int, op: str) -> None:
    torch._check_value(
        bias.dim() == 1 and bias.shape[0] == num_classes,
        lambda: f"{op}: bias must have shape (num_classes,) = ({num_classes},), got {tuple(bias.shape)}",
    )
    torch._check_type(
        bias.dtype == x.dtype, lambda: f"{op}: bias dtype {bias.dtype} differs from x dtype {x.dtype}"
    )
    torch._check_value(
        bias.device == x.device, lambda: f"{op}: bias is on {bias.device} but x is on {x.device}"
    )


def _check_grad(grad_y: torch.Tensor, x: torch.Tensor, op: str) -> None:
    torch._check_value(
        grad_y.shape[:-1] == x.shape[:-1],
        lambda: f"{op}: grad_y shape {tuple(grad_y.shape)} does not match x shape {tuple(x.shape)}",
    )
    torch._check_type(
        grad_y.dtype == x.dtype, lambda: f"{op}: grad_y dtype {grad_y.dtype} differs from x dtype {x.dtype}"
    )
    torch._check_value(
        grad_y.device == x.device, lambda: f"{op}: grad_y is on {grad_y.device} but x is on {x.device}"
    )


# ---------------------------------------------------------------------------------------
# Custom ops.

_TRANSFORM = "hadamard_kernels::hadamard_transform_triton"
_FORWARD = "hadamard_kernels::classifier_forward_triton"
_BACKWARD = "hadamard_kernels::classifier_backward_triton"


@torch.library.custom_op(_TRANSFORM, mutates_args=())
def hadamard_transform_triton(x: torch.Tensor, out_features: int, scale: float) -> torch.Tensor:
    """``scale * H_M[:out_features, :n] @ x`` over the last dim (Triton kernel)."""
    op = _TRANSFORM
    _check_float(x, op, "x")
    torch._check_value(out_features >= 0, lambda: f"{op}: out_features must be >= 0, got {out_features}")
    n = x.shape[-1]
    _check_triton_size(n, out_features, op)
    _check_device(x, op)
    out = x.new_empty((*x.shape[:-1], out_features))
    if out.numel() == 0:
        return out
    if n == 0:
        return out.zero_()  # H_M @ (all-zero padding)
    rows_view, rows = _rows(x)
    block_t, in_chunk, out_chunk, per_program, warps = block_config(n, out_features, x.dtype)
    hi, lo = _split_scalar(scale, x.dtype, "scale", op)
    with _device_guard(x):
        _transform_kernel[(triton.cdiv(rows, per_program),)](
            rows_view, out, hi, lo, rows, n, out_features,
            rows_view.stride(0), rows_view.stride(1), out_features,
            ACC=_acc(x.dtype), ROWS=per_program, BLOCK_T=block_t, IN_CHUNK=in_chunk,
            OUT_CHUNK=out_chunk, num_warps=warps,
        )  # fmt: skip
    return out


@hadamard_transform_triton.register_fake
def _(x: torch.Tensor, out_features: int, scale: float) -> torch.Tensor:
    _check_float(x, _TRANSFORM, "x")
    torch._check_value(out_features >= 0, lambda: f"{_TRANSFORM}: out_features must be >= 0")
    _check_triton_size(x.shape[-1], out_features, _TRANSFORM)
    return x.new_empty((*x.shape[:-1], out_features))


# y = s * H_M[:out, :in] x  =>  dL/dx = s * H_M[:out, :in]^T g = s * H_M[:in, :out] g, as
# H_M is symmetric: the same op with in and out swapped (so higher orders work too).
def _transform_setup_context(ctx, inputs, output) -> None:
    x, _, scale = inputs
    ctx.in_features = x.shape[-1]
    ctx.scale = scale


def _transform_backward(ctx, grad: torch.Tensor):
    return hadamard_transform_triton(grad, ctx.in_features, ctx.scale), None, None


hadamard_transform_triton.register_autograd(_transform_backward, setup_context=_transform_setup_context)


@torch.library.custom_op(_FORWARD, mutates_args=())
def classifier_forward_triton(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    num_classes: int,
    normalize: bool,
    eps: float,
    etf: bool = False,
) -> torch.Tensor:
    """``scale * W @ (x / max(||x||, eps)) + bias`` (Triton kernel), W = H_M[:C, :N] or with
    ``etf`` the simplex ETF ``sqrt(C / ((C-1) N)) (I - 11^T / C) H_N[:C, :N]``."""
    op = _FORWARD
    _check_classifier(x, scale, num_classes, eps, op)
    if etf:
        ops._check_etf_size(x.shape[-1], num_classes, op)
    if bias is not None:
        _check_bias(bias, x, num_classes, op)
    _check_device(x, op)
    y = x.new_empty((*x.shape[:-1], num_classes))
    if y.numel() == 0:
        return y
    rows_view, rows = _rows(x)
    n = x.shape[-1]
    block_t, in_chunk, out_chunk, per_program, warps = block_config(n, num_classes, x.dtype, 2)
    eps_hi, eps_lo = _split_scalar(eps, x.dtype, "eps", op)
    etf_args = _etf_scalars(num_classes, n, x.dtype, op) if etf else (1.0, 0.0, 1.0, 0.0)
    with _device_guard(x):
        _classifier_forward_kernel[(triton.cdiv(rows, per_program),)](
            rows_view, scale, x if bias is None else bias, y, eps_hi, eps_lo, *etf_args,
            rows, n, num_classes, rows_view.stride(0), rows_view.stride(1),
            0 if bias is None else bias.stride(0), num_classes,
            NORMALIZE=normalize, HAS_BIAS=bias is not None, ETF=etf, ACC=_acc(x.dtype),
            ROWS=per_program, BLOCK_T=block_t, IN_CHUNK=in_chunk, OUT_CHUNK=out_chunk,
            num_warps=warps,
        )  # fmt: skip
    return y


@classifier_forward_triton.register_fake
def _(x, scale, bias, num_classes, normalize, eps, etf=False):
    _check_classifier(x, scale, num_classes, eps, _FORWARD)
    if etf:
        ops._check_etf_size(x.shape[-1], num_classes, _FORWARD)
    if bias is not None:
        _check_bias(bias, x, num_classes, _FORWARD)
    return x.new_empty((*x.shape[:-1], num_classes))


@torch.library.custom_op(_BACKWARD, mutates_args=())
def classifier_backward_triton(
    grad_y: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, normalize: bool, eps: float, etf: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dx, dL/dscale, dL/dbias)`` of classifier_forward_triton (Triton kernel), ``etf``
    as there; dL/dbias in float32 (float64 for float64 input), the caller casts it."""
    op = _BACKWARD
    num_classes = grad_y.shape[-1]
    _check_classifier(x, scale, num_classes, eps, op)
    if etf:
        ops._check_etf_size(x.shape[-1], num_classes, op)
    _check_grad(grad_y, x, op)
    _check_device(x, op)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    g_rows, rows = _rows(grad_y)
    grad_bias = g_rows.sum(0, dtype=acc)
    if rows == 0:
        return grad_x, torch.zeros_like(scale), grad_bias
    x_rows, _ = _rows(x)
    n = x.shape[-1]
    # The adjoint: H_M[:N, :C] @ g, in = C, out = N.
    block_t, g_chunk, x_chunk, per_program, warps = block_config(num_classes, n, x.dtype, 2)
    programs = triton.cdiv(rows, per_program)
    partial = torch.empty(programs, dtype=acc, device=x.device)
    eps_hi, eps_lo = _split_scalar(eps, x.dtype, "eps", op)
    etf_args = _etf_scalars(num_classes, n, x.dtype, op) if etf else (1.0, 0.0, 1.0, 0.0)
    with _device_guard(x):
        _classifier_backward_kernel[(programs,)](
            g_rows, x_rows, scale, grad_x, partial, eps_hi, eps_lo, *etf_args, rows, n, num_classes,
            g_rows.stride(0), g_rows.stride(1), x_rows.stride(0), x_rows.stride(1), n,
            NORMALIZE=normalize, ETF=etf, ACC=_acc(x.dtype), ROWS=per_program, BLOCK_T=block_t,
            G_CHUNK=g_chunk, X_CHUNK=x_chunk, num_warps=warps,
        )  # fmt: skip
    # Fixed-order float64 sum of the per-program partials: deterministic, like the C++ op.
    grad_scale = partial.sum(dtype=torch.float64).to(scale.dtype).reshape(scale.shape)
    return grad_x, grad_scale, grad_bias


@classifier_backward_triton.register_fake
def _(grad_y, x, scale, normalize, eps, etf=False):
    _check_classifier(x, scale, grad_y.shape[-1], eps, _BACKWARD)
    if etf:
        ops._check_etf_size(x.shape[-1], grad_y.shape[-1], _BACKWARD)
    _check_grad(grad_y, x, _BACKWARD)
    return ops.classifier_backward_outputs(grad_y, x, scale)


classifier_forward_triton.register_autograd(
    ops.make_classifier_backward(classifier_backward_triton), setup_context=ops.classifier_setup_context
)


# ---------------------------------------------------------------------------------------
# The transforms of order K * 2^k (the Triton twins of csrc/orders.cpp; public functions and
# backend choice in transforms.py).

_KN = "hadamard_kernels::hadamard_transform_kn_triton"
_KN_INPLACE = "hadamard_kernels::hadamard_transform_kn_triton_"


def _check_kn(
    x: torch.Tensor,
    hk: Optional[torch.Tensor],
    pow2: int,
    pre_signs: Optional[torch.Tensor],
    post_signs: Optional[torch.Tensor],
    op: str,
) -> int:
    """csrc/checks.h's check_kn_args plus the register limit (_check_kn_size); returns K."""
    _check_float(x, op, "x")
    torch._check_value(
        pow2 >= 1 and pow2 & (pow2 - 1) == 0 and pow2 <= ops.MAX_FEATURES,
        lambda: f"{op}: pow2 must be a power of two in [1, 2^20], got {pow2}",
    )
    K = 1
    if hk is not None:
        torch._check_type(
            hk.dtype == torch.int8, lambda: f"{op}: hk must be an int8 tensor of +-1 entries, got {hk.dtype}"
        )
        torch._check_value(
            hk.dim() == 2 and hk.shape[0] == hk.shape[1] and hk.shape[0] >= 1,
            lambda: f"{op}: hk must be a square (K, K) matrix, got shape {tuple(hk.shape)}",
        )
        K = hk.shape[0]
        torch._check_value(K <= MAX_TRITON_K, lambda: f"{op}: the order K of hk must be <= {MAX_TRITON_K}, got {K}")
        torch._check_value(hk.device == x.device, lambda: f"{op}: hk is on {hk.device} but x is on {x.device}")
    n = x.shape[-1]
    torch._check_value(
        n <= K * pow2, lambda: f"{op}: x has n={n} features, more than K * pow2 = {K} * {pow2} = {K * pow2}"
    )
    for name, s in (("pre_signs", pre_signs), ("post_signs", post_signs)):
        if s is None:
            continue
        torch._check_type(
            s.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
            lambda: f"{op}: {name} must be float32, float64, float16 or bfloat16, got {s.dtype}",  # noqa: B023
        )
        torch._check_value(
            s.dim() == 1 and s.shape[0] == n,
            lambda: f"{op}: {name} must have shape (n,) = ({n},), got {tuple(s.shape)}",  # noqa: B023
        )
        torch._check_value(
            s.device == x.device, lambda: f"{op}: {name} is on {s.device} but x is on {x.device}"  # noqa: B023
        )
    _check_kn_size(n, K, pow2, op)
    return K


def _check_kn_inplace(x: torch.Tensor, op: str) -> None:
    # Contiguous, hence without overlapping entries (csrc/checks.h's check_inplace_target).
    torch._check_value(
        x.is_contiguous(),
        lambda: (
            f"{op}: x must be contiguous and without overlapping entries to be transformed in place, "
            f"got shape {tuple(x.shape)} and strides {x.stride()}; use the out-of-place transform"
        ),
    )


def _launch_kn(x_rows, out_rows, K, hk, pow2, scale, pre, post, op, scales=None, quant=0, gs=0, gm=1) -> None:
    """Transform the (rows, n) view x_rows into out_rows ((rows, n), entries contiguous; may
    be x_rows itself when it is contiguous). With quant > 0 (_quantize_store), out_rows is
    the int8 view of the codes and scales the contiguous (rows, groups) float32 scales."""
    rows, n = x_rows.shape
    kb, p, per_program, warps = kn_config(n, K, pow2)
    if hk is not None and hk.stride(0) != 1:
        # The kernel reads a column of H_K per chunk. Column-major (row stride 1, which Triton
        # specialises to a constant) its KB / num_warps entries per thread share one address
        # register; row-major they took one 64-bit address each, which spilled at K = 172,
        # pow2 = 64 on sm_90 (scripts/triton_resources.py). transforms.py passes H_K
        # column-major; the backward's H_K^T view is copied here (K * K bytes).
        hk = hk.mT.contiguous().mT
    hi, lo = _split_scalar(scale, x_rows.dtype, "scale", op)
    dummy = x_rows  # any pointer for the absent operands (never read)
    with _device_guard(x_rows):
        _transform_kn_kernel[(triton.cdiv(rows, per_program),)](
            x_rows, out_rows, dummy if hk is None else hk, dummy if pre is None else pre,
            dummy if post is None else post, hi, lo, rows, n, pow2,
            x_rows.stride(0), x_rows.stride(1), out_rows.stride(0),
            0 if hk is None else hk.stride(0), 0 if hk is None else hk.stride(1),
            0 if pre is None else pre.stride(0), 0 if post is None else post.stride(0),
            dummy if scales is None else scales, 0 if scales is None else scales.shape[1],
            HAS_HK=hk is not None, HAS_PRE=pre is not None, HAS_POST=post is not None,
            ACC=_acc(x_rows.dtype), ROWS=per_program, KB=kb, P=p, QUANT=quant, GS=gs, GM=gm, num_warps=warps,
        )  # fmt: skip


@torch.library.custom_op(_KN, mutates_args=())
def hadamard_transform_kn_triton(
    x: torch.Tensor,
    hk: Optional[torch.Tensor],
    pow2: int,
    scale: float,
    pre_signs: Optional[torch.Tensor],
    post_signs: Optional[torch.Tensor],
) -> torch.Tensor:
    """``scale * post . [(H_K (x) H_pow2) @ pad(pre . x, K pow2)][:n]`` over the last dim
    (Triton kernel), the twin of ``hadamard_kernels::hadamard_transform_kn``: hk the int8
    (K, K) H_K acting on the high index digit (None: K = 1), signs (n,) or None. hk's entries
    are used as they are (the C++ op also checks that they are +-1, which here would cost a
    device synchronisation; the public functions pass orders.py's matrices)."""
    K = _check_kn(x, hk, pow2, pre_signs, post_signs, _KN)
    _check_device(x, _KN)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    rows_view, rows = _rows(x)
    _launch_kn(rows_view, out.view(rows, x.shape[-1]), K, hk, pow2, scale, pre_signs, post_signs, _KN)
    return out


@hadamard_transform_kn_triton.register_fake
def _(x, hk, pow2, scale, pre_signs, post_signs):
    _check_kn(x, hk, pow2, pre_signs, post_signs, _KN)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# y = s P E^T (H_K (x) H_p) E Q x (P, Q = diag(post, pre), E pads to K p, E^T truncates)
# => dL/dx = s Q E^T (H_K^T (x) H_p) E P g: the same op with H_K transposed (a view, read
# through its strides) and the two sign vectors swapped, itself differentiable, so every
# order is exact. Sign vectors are constants: one that requires grad is refused, as the C++
# op does, rather than silently given no gradient.
def _kn_setup_context(ctx, inputs, output) -> None:
    _, hk, pow2, scale, pre, post = inputs
    if any(s is not None and s.requires_grad for s in (pre, post)):
        raise RuntimeError(
            f"{_KN}: the sign vectors are constants, not differentiable; pass them detached (signs.detach())"
        )
    ctx.save_for_backward(hk, pre, post)
    ctx.pow2, ctx.scale = pow2, scale


def _kn_backward(ctx, grad: torch.Tensor):
    hk, pre, post = ctx.saved_tensors
    hk_t = None if hk is None else hk.mT
    return hadamard_transform_kn_triton(grad, hk_t, ctx.pow2, ctx.scale, post, pre), None, None, None, None, None


hadamard_transform_kn_triton.register_autograd(_kn_backward, setup_context=_kn_setup_context)


@torch.library.custom_op(_KN_INPLACE, mutates_args=("x",))
def hadamard_transform_kn_triton_(
    x: torch.Tensor,
    hk: Optional[torch.Tensor],
    pow2: int,
    scale: float,
    pre_signs: Optional[torch.Tensor],
    post_signs: Optional[torch.Tensor],
) -> None:
    """``hadamard_transform_kn_triton`` written into x (contiguous): each program loads all
    of its rows before it stores them. No autograd formula: under autograd, use the
    out-of-place op and ``x.copy_`` (transforms.py does), which torch's in-place rules cover;
    an x that requires grad is refused while grad mode is on."""
    K = _check_kn(x, hk, pow2, pre_signs, post_signs, _KN_INPLACE)
    _check_kn_inplace(x, _KN_INPLACE)
    _check_device(x, _KN_INPLACE)
    if x.numel() == 0:
        return
    rows = x.view(-1, x.shape[-1])
    _launch_kn(rows, rows, K, hk, pow2, scale, pre_signs, post_signs, _KN_INPLACE)


@hadamard_transform_kn_triton_.register_fake
def _(x, hk, pow2, scale, pre_signs, post_signs):
    _check_kn(x, hk, pow2, pre_signs, post_signs, _KN_INPLACE)
    _check_kn_inplace(x, _KN_INPLACE)


# torch.library cannot attach an autograd formula to a mutating custom op, and without an
# Autograd kernel torch's fallback takes the op for the identity: a silently wrong gradient.
# This kernel refuses an x that would record the op in a graph, and otherwise goes on below
# autograd (ADInplaceOrView still bumps x's version).
def _kn_inplace_autograd(x, hk, pow2, scale, pre_signs, post_signs):
    if torch.is_grad_enabled() and (
        x.requires_grad or any(s is not None and s.requires_grad for s in (pre_signs, post_signs))
    ):
        raise RuntimeError(
            f"{_KN_INPLACE}: x (or a sign vector) requires grad, and this in-place op has no autograd "
            f"formula; use hadamard_transform_order_ / fwht_ (they compute out of place and copy under "
            f"autograd) or {_KN}"
        )
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.hadamard_kernels.hadamard_transform_kn_triton_.default(
            x, hk, pow2, scale, pre_signs, post_signs
        )


_LIB = torch.library.Library("hadamard_kernels", "FRAGMENT")
_LIB.impl("hadamard_transform_kn_triton_", _kn_inplace_autograd, "Autograd")


# ---------------------------------------------------------------------------------------
# Fused rotate-and-quantise (the Triton twin of csrc/quantize.cpp; public function and
# backend choice in quantize.py): _transform_kn_kernel with its quantising epilogue.

_QUANT = "hadamard_kernels::hadamard_quantize_triton"
_QUANT_CODES = {torch.int8: 1, torch.float8_e4m3fn: 2, torch.float8_e5m2: 3}


def _quant_groups(n: int, K: int, pow2: int, group_size: int) -> tuple[int, int, int]:
    """(g, GS, GM) of the epilogue for groups of g = group_size (0: n) values: GS = g when
    the groups lie inside the chunks of pow2 (g a power of two <= pow2), else GM = g / pow2
    chunks (the whole row: GM = KB). Other groups (g not a power of two, less than the row)
    straddle chunks irregularly: GS = GM = 0, which the op refuses."""
    g = n if group_size == 0 else group_size
    kb, _ = _kn_block(n, K, pow2)
    if g == n:
        return g, 0, kb
    if g & (g - 1) == 0:
        return (g, g, 1) if g <= pow2 else (g, 0, g // pow2)
    return g, 0, 0


def quantize_supported(n: int, K: int, pow2: int, group_size: int) -> bool:
    """Whether hadamard_quantize_triton takes groups of group_size (0: the row) of n =
    K * pow2 values: the row or a power of two, and a row block within _check_kn_size's limit
    (quantize.py's "auto" takes the reference otherwise)."""
    _, gs, gm = _quant_groups(n, K, pow2, group_size)
    kb, p = _kn_block(n, K, pow2)
    return (gs > 0 or gm > 0) and kb * p <= MAX_TRITON_FEATURES


def _check_quant(x, hk, pow2, pre_signs, dtype, group_size, op: str) -> tuple[int, int]:
    """csrc/checks.h's check_kn_args and check_quantize_args, plus the Triton limits; returns (K, g)."""
    K = _check_kn(x, hk, pow2, pre_signs, None, op)
    torch._check_type(
        dtype in _QUANT_CODES, lambda: f"{op}: dtype must be int8, float8_e4m3fn or float8_e5m2, got {dtype}"
    )
    n = x.shape[-1]
    torch._check_value(n >= 1, lambda: f"{op}: x must have at least one feature to quantise")
    torch._check_value(
        group_size >= 0, lambda: f"{op}: group_size must be >= 0 (0: one group a row), got {group_size}"
    )
    g = n if group_size == 0 else group_size
    torch._check_value(n % g == 0, lambda: f"{op}: group_size {g} does not divide n = {n}")
    _, gs, gm = _quant_groups(n, K, pow2, group_size)
    torch._check_value(
        gs > 0 or gm > 0,
        lambda: (
            f"{op}: group_size {g} is neither the row (n = {n}) nor a power of two; the Triton kernel "
            f"quantises groups inside its power-of-two chunks only; use backend='cpu' or 'reference'"
        ),
    )
    return K, g


@torch.library.custom_op(_QUANT, mutates_args=())
def hadamard_quantize_triton(
    x: torch.Tensor,
    hk: Optional[torch.Tensor],
    pow2: int,
    scale: float,
    pre_signs: Optional[torch.Tensor],
    dtype: torch.dtype,
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``hadamard_transform_kn_triton(x, hk, pow2, scale, pre_signs, None)`` quantised per
    group of group_size consecutive outputs (0: per row) to ``dtype`` codes and float32
    scales, in one kernel: the twin of ``hadamard_kernels::hadamard_quantize`` (formulas in
    csrc/cpu/quantize.h). group_size must be 0, n or a power of two. Not differentiable."""
    K, g = _check_quant(x, hk, pow2, pre_signs, dtype, group_size, _QUANT)
    _check_device(x, _QUANT)
    n = x.shape[-1]
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    scales = torch.empty((*x.shape[:-1], n // g), dtype=torch.float32, device=x.device)
    if q.numel() == 0:
        return q, scales
    _, gs, gm = _quant_groups(n, K, pow2, group_size)
    rows_view, rows = _rows(x)
    _launch_kn(rows_view, q.view(torch.int8).view(rows, n), K, hk, pow2, scale, pre_signs, None, _QUANT,
               scales.view(rows, n // g), _QUANT_CODES[dtype], gs, gm)  # fmt: skip
    return q, scales


@hadamard_quantize_triton.register_fake
def _(x, hk, pow2, scale, pre_signs, dtype, group_size):
    _, g = _check_quant(x, hk, pow2, pre_signs, dtype, group_size, _QUANT)
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    return q, torch.empty((*x.shape[:-1], x.shape[-1] // g), dtype=torch.float32, device=x.device)


# Rounding has a zero derivative almost everywhere: like the C++ op (csrc/autograd.cpp), a
# graph through the codes is refused at the call rather than built.
def _quant_autograd(x, hk, pow2, scale, pre_signs, dtype, group_size):
    if torch.is_grad_enabled() and (x.requires_grad or (pre_signs is not None and pre_signs.requires_grad)):
        raise RuntimeError(
            f"{_QUANT} is not differentiable (its codes are rounded): call it on x.detach() or under torch.no_grad()"
        )
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.hadamard_kernels.hadamard_quantize_triton.default(
            x, hk, pow2, scale, pre_signs, dtype, group_size
        )


_LIB.impl("hadamard_quantize_triton", _quant_autograd, "Autograd")


ops.register_backend("triton", _backend_available)
