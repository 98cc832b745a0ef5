"""Pure-PyTorch ground truth for every kernel: written to be obviously right, not fast.

Everything here is differentiable with plain autograd, runs on any device and in any
floating dtype (float64 for tests). Half-precision inputs are computed in float32 and
the result is cast back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hadamard_kernels.orders import FHT_ORDERS, ORDERS, fht_padded_size, hadamard_k, split_order

__all__ = [
    "next_pow2",
    "hadamard_matrix",
    "hadamard_transform_reference",
    "fwht_reference",
    "hadamard_transform_kn_reference",
    "hadamard_transform_order_reference",
    "hadamard_classifier_reference",
    "simplex_etf_matrix",
    "QUANT_MAX",
    "quantize_reference",
    "fwht_quantize_reference",
    "dequantize_reference",
]


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    m = 1
    while m < n:
        m *= 2
    return m


def hadamard_matrix(
    n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The (n, n) Sylvester Hadamard matrix, equal to ``scipy.linalg.hadamard(n)``.

    H_1 = [[1]], H_2k = [[H_k, H_k], [H_k, -H_k]]. ``n`` must be a power of two.
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard_matrix: n must be a power of two >= 1, got {n}")
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def _fwht_pow2(x: torch.Tensor) -> torch.Tensor:
    """H_m @ x over the last dim for m = x.shape[-1] a power of two, by the Sylvester
    recursion: for x = [a, b] (halves), H_2k x = [H_k a + H_k b, H_k a - H_k b]."""
    lead, m = x.shape[:-1], x.shape[-1]
    h = 1
    while h < m:
        y = x.reshape(*lead, m // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, m)
        h *= 2
    return x


def hadamard_transform_reference(x: torch.Tensor, out_features: int, scale: float = 1.0) -> torch.Tensor:
    """``scale * H_M[:out_features, :n] @ x`` over the last dim, n = x.shape[-1],
    M = next_pow2(max(n, out_features)): zero-pad to M, transform, keep the first
    out_features entries. Shape (..., n) -> (..., out_features)."""
    n = x.shape[-1]
    m = next_pow2(max(n, out_features))
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    y = _fwht_pow2(F.pad(work, (0, m - n)))[..., :out_features]
    return (scale * y).to(x.dtype)


def fwht_reference(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * x @ H_n.T`` over the last dim (n not a power of two: x is zero-padded
    to the next power of two and the first n outputs are kept). Shape (..., n) -> (..., n)."""
    return hadamard_transform_reference(x, x.shape[-1], scale)


def _kron_transform(x: torch.Tensor, h_k: torch.Tensor) -> torch.Tensor:
    """``(H_K kron H_m) @ x`` over the last dim, n = x.shape[-1] = K * m, m a power of two:
    view x as (..., K, m) (index a * m + b), Sylvester-transform each length-m row, then
    multiply by H_K along the K axis."""
    k, n = h_k.shape[0], x.shape[-1]
    y = _fwht_pow2(x.reshape(*x.shape[:-1], k, n // k))
    return (h_k @ y).reshape(x.shape)


def hadamard_transform_kn_reference(
    x: torch.Tensor, K: int, scale: float = 1.0, *, transpose: bool = False
) -> torch.Tensor:
    """fast-hadamard-transform's ``hadamard_transform_{K}N(x, scale)``, K in FHT_ORDERS.

    x is zero-padded to M = K * 2^k = ``fht_padded_size(n, K)`` (2^k = max(4,
    next_pow2(ceil(n / K)))), transformed by ``scale * (H_K kron H_{2^k})`` with H_K =
    ``hadamard_k(K, family="fht")`` acting on the high digit a of the index a * 2^k + b, and
    the first n outputs are kept. ``transpose=True`` uses H_K^T: the adjoint, i.e. the
    gradient (padding and truncation are each other's adjoints). Shape (..., n) -> (..., n).
    """
    if K not in FHT_ORDERS:
        raise ValueError(f"hadamard_transform_kn_reference: K must be one of {FHT_ORDERS}, got {K}")
    n = x.shape[-1]
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    h_k = hadamard_k(K, dtype=work.dtype, device=x.device, family="fht")
    h_k = h_k.T if transpose else h_k
    y = _kron_transform(F.pad(work, (0, fht_padded_size(n, K) - n)), h_k)[..., :n]
    return (scale * y).to(x.dtype)


def hadamard_transform_order_reference(
    x: torch.Tensor,
    scale: float = 1.0,
    *,
    K: int | None = None,
    family: str = "rotation",
    signs: torch.Tensor | None = None,
    transpose: bool = False,
) -> torch.Tensor:
    """The general transform ``scale * (H_K kron H_{2^k}) @ x`` over the last dim, n =
    x.shape[-1] = K * 2^k exactly (no padding), H_K = ``hadamard_k(K, family=family)`` (default:
    the rotation family, QuaRot / SpinQuant) on the high digit a of the index a * 2^k + b.

    K = None takes ``split_order(n)``; an explicit K (1 or in ORDERS) must divide n with a
    power-of-two quotient (K=20 for n = 40 * 2^k gives QuIP#'s split). ``signs`` (shape (n,),
    +-1; D = diag(signs)) randomises it: ``scale * (H_K kron H_{2^k}) @ D @ x``.
    ``transpose=True`` applies the transposed matrix, ``scale * D @ (H_K^T kron H_{2^k}) @ x``
    (QuaRot's ``matmul_hadUt``; the adjoint, and with scale 1 / (n * scale) the inverse).
    With scale = 1/sqrt(n) and no signs this is QuaRot's ``matmul_hadU``. Shape (..., n) -> (..., n).
    """
    n = x.shape[-1]
    if K is None:
        K, _ = split_order(n)
    elif not ((K == 1 or K in ORDERS) and n > 0 and n % K == 0 and (n // K) & (n // K - 1) == 0):
        raise ValueError(
            f"hadamard_transform_order_reference: K={K} does not split n={n} as K * 2^k with K = 1 or in {ORDERS}"
        )
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    h_k = hadamard_k(K, dtype=work.dtype, device=x.device, family=family)
    d = None if signs is None else signs.to(device=x.device, dtype=work.dtype)
    if transpose:
        y = _kron_transform(work, h_k.T)
        y = y if d is None else d * y
    else:
        y = _kron_transform(work if d is None else d * work, h_k)
    return (scale * y).to(x.dtype)


def hadamard_classifier_reference(
    x: torch.Tensor,
    num_classes: int,
    scale: torch.Tensor | float,
    bias: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    eps: float = 1e-12,
    etf: bool = False,
) -> torch.Tensor:
    """The fixed Hadamard classifier: ``scale * W @ x_hat + bias`` with
    ``x_hat = x / max(||x||_2, eps)`` (``F.normalize``) or ``x`` if not normalize, and
    ``W = H_M[:C, :N]``, or with ``etf`` the simplex ETF :func:`simplex_etf_matrix`.
    Shape (..., N) -> (..., C), C = num_classes."""
    x_hat = F.normalize(x, dim=-1, eps=eps) if normalize else x
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(())  # a (1, 1) scale must not broadcast extra dims into y
    if etf:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        w = simplex_etf_matrix(x.shape[-1], num_classes, dtype=acc, device=x.device)
        y = scale * F.linear(x_hat.to(acc), w)
    else:
        y = scale * hadamard_transform_reference(x_hat, num_classes)
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


def simplex_etf_matrix(
    in_features: int, num_classes: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The (C, N) simplex ETF of the ETF head, built densely:
    ``sqrt(C / (C - 1)) * (U - mean_over_rows(U))`` with ``U = H_N[:C, :N] / sqrt(N)``, the
    C orthonormal Hadamard rows (N a power of two, 2 <= C <= N). Its rows have unit norm and
    pairwise cosine -1 / (C - 1) (Papyan et al. 2020; Zhu et al. 2021)."""
    n, c = in_features, num_classes
    if n < 1 or n & (n - 1) or not 2 <= c <= n:
        raise ValueError(f"simplex_etf_matrix: needs N a power of two and 2 <= C <= N, got N={n}, C={c}")
    u = hadamard_matrix(n, dtype=torch.float64)[:c] / math.sqrt(n)
    w = math.sqrt(c / (c - 1)) * (u - u.mean(0, keepdim=True))
    return w.to(dtype=dtype, device=device)


# The largest code magnitude of each quantised format (symmetric: int8 uses -127 .. 127).
QUANT_MAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def quantize_reference(y: torch.Tensor, dtype: torch.dtype, group_size: int | None,
                       acc: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantisation of y per group of ``group_size`` consecutive values of the
    last dim (None: the whole row), computed in ``acc`` (the kernels' accumulator: float64
    for float64 x, float32 otherwise), as ``csrc/cpu/quantize.h`` does:

        amax = max |y| over the group (NaN if the group has a NaN)
        s = float32(amax / qmax), q = encode(clamp(y / s, -qmax, qmax)), q = 0 where s == 0

    qmax = ``QUANT_MAX[dtype]``; encode rounds half to even and maps NaN to 0 for int8, and is
    torch's cast (via float32) for the float8 formats. Returns (q of y's shape and ``dtype``,
    float32 scales of shape y.shape[:-1] + (n / group_size,))."""
    n = y.shape[-1]
    g = n if group_size is None else group_size
    v = y.to(acc).reshape(*y.shape[:-1], n // g, g)
    qmax = QUANT_MAX[dtype]
    amax = v.abs().amax(dim=-1, keepdim=True)  # propagates NaN
    s = (amax / qmax).to(torch.float32)
    r = torch.where(s == 0, torch.zeros((), dtype=acc, device=y.device), v / s.to(acc))
    r = r.clamp(-qmax, qmax)  # keeps NaN
    if dtype == torch.int8:
        q = torch.nan_to_num(r.round(), nan=0.0).to(torch.int8)
    else:
        q = r.to(torch.float32).to(dtype)
    return q.reshape(y.shape), s.squeeze(-1)


def fwht_quantize_reference(
    x: torch.Tensor,
    scale: float = 1.0,
    *,
    dtype: torch.dtype = torch.int8,
    group_size: int | None = None,
    signs: torch.Tensor | None = None,
    K: int | None = None,
    family: str = "rotation",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused rotate-and-quantise op's ground truth: ``hadamard_transform_order_reference``
    of x in float64, then ``quantize_reference`` in the kernels' accumulator type."""
    y = hadamard_transform_order_reference(x.double(), scale, K=K, family=family, signs=signs)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return quantize_reference(y, dtype, group_size, acc)


def dequantize_reference(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q * s per group, in float32: the inverse of ``quantize_reference`` up to rounding."""
    n, groups = q.shape[-1], scales.shape[-1]
    v = q.to(torch.float32).reshape(*q.shape[:-1], groups, n // groups)
    return (v * scales.unsqueeze(-1)).reshape(q.shape)

