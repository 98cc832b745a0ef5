"""Hadamard transforms of order K * 2^k, randomised and in place (issue 11).

Every function here transforms the last dimension of x (n = x.shape[-1]) by

    y = scale * (H_K kron H_{2^k}) @ x,   i.e.
    y[a * 2^k + b] = scale * sum_{a', b'} H_K[a, a'] * H_{2^k}[b, b'] * x[a' * 2^k + b']

with H_K the K x K +-1 matrix of ``orders.hadamard_k`` acting on the high digit a of the index
and H_{2^k} the Sylvester matrix (docs/orders.md derives this from the peers' sources).

* ``hadamard_transform_12N / 20N / 28N / 40N(x, scale)``: drop-ins for the functions of the same
  names in the PyPI package ``fast-hadamard-transform``: its matrices (family "fht"), its
  zero padding (``orders.fht_padded_size``) and its results; but the gradient uses H_K^T.
* ``hadamard_transform_order(x, scale, K=..., family=..., signs=..., transpose=...)``: the general
  transform for n = K * 2^k, exact (no padding), optionally randomised by a +-1 sign vector,
  or transposed (the adjoint; with scale 1 / (n * scale) the inverse).
* ``hadamard_transform_order_`` and ``fwht_``: the same and ``fwht``, written into a contiguous x.
* ``random_signs(n, seed=...)``: the seeded +-1 vector of a randomised transform.

All of them call one of two pairs of custom ops with H_K passed as an int8 tensor, so
orders.py stays the only source of the matrices:

* "cpu" and "cuda": the C++ ops ``hadamard_kernels::hadamard_transform_kn`` and
  ``hadamard_transform_kn_`` (CPU kernels in csrc/orders.cpp, CUDA kernels where the extension
  registers them for the CUDA key; fake kernels below, autograd in csrc/autograd.cpp);
* "triton": ``hadamard_transform_kn_triton`` and ``hadamard_transform_kn_triton_``
  (triton_kernels.py; on CUDA GPUs, or on the CPU under TRITON_INTERPRET=1), which hold a row
  of at most 2^15 values in registers (ValueError beyond, naming the other backends);
* "reference": ``reference.py`` (any device).

``backend="auto"`` takes the first of these available for x's device, in the order of
``ops.available_backends`` (CPU tensors: "cpu", then "triton", then "reference"; CUDA
tensors: "cuda", then "triton", then "reference"); naming a backend that is not available
there raises a RuntimeError that lists those that are.
"""

from __future__ import annotations

import numbers

import torch

from . import reference
from .ops import (
    _FAST_OPS,
    _FLOAT_DTYPES,
    _OP_ERRORS,
    MAX_FEATURES,
    _backends_with_kernels,
    _check_input,
    _check_scale,
    _check_size,
    _is_compiling,
    _resolve_backend,
)
from .orders import FAMILIES, FHT_ORDERS, ORDERS, fht_padded_size, hadamard_k, split_order

__all__ = [
    "hadamard_transform_order",
    "hadamard_transform_order_",
    "hadamard_transform_12N",
    "hadamard_transform_20N",
    "hadamard_transform_28N",
    "hadamard_transform_40N",
    "fwht_",
    "random_signs",
]

# Dispatch keys with a kernel of the K * 2^k ops, read once at import (see ops._KERNEL_DEVICES).
_KN_DEVICES: frozenset[str] = frozenset(
    key
    for key in ("CPU", "CUDA")
    if torch._C._dispatch_has_kernel_for_dispatch_key("hadamard_kernels::hadamard_transform_kn", key)
)

# (family, K, transpose, device) -> H_K (or H_K^T) as the int8 tensor the ops take. A plain
# dict (torch.compile reads it as a constant once filled by an eager call).
_HK: dict[tuple[str, int, bool, torch.device], torch.Tensor] = {}


def _hk(family: str, K: int, transpose: bool, device: torch.device) -> torch.Tensor | None:
    """H_K of ``family`` (H_K^T when transpose) as int8 on ``device``; None for K = 1."""
    if K == 1:
        return None
    key = (family, K, transpose, device)
    h = _HK.get(key)
    if h is None:
        h = hadamard_k(K, torch.int8, device, family=family)
        h = h.T.contiguous() if transpose else h
        _HK[key] = h
    return h


def _backends(device: torch.device) -> tuple[str, ...]:
    """The backends of the K * 2^k transforms on ``device``, fastest first: those of
    ``available_backends`` (fwht's), less "cpu" / "cuda" where the C++ extension has no K * 2^k
    kernel for that dispatch key. The Triton backend has the kn ops wherever it is available."""
    return _backends_with_kernels(device, _KN_DEVICES)


def _resolve(backend: str, x: torch.Tensor, op: str) -> str:
    return _resolve_backend(backend, x, op, _backends(x.device), "the K * 2^k transforms of ")


def _hk_for(name: str, family: str, K: int, transpose: bool, device: torch.device) -> torch.Tensor | None:
    """H_K (H_K^T when transpose) as the op of backend ``name`` reads it best: contiguous for
    the C++ ops, column-major (a transposed view of the cached transpose) for the Triton kernel,
    which reads one column of H_K per chunk (triton_kernels._launch_kn)."""
    if name != "triton" or K == 1:
        return _hk(family, K, transpose, device)
    return _hk(family, K, not transpose, device).mT


def _kn_out_of_place(name: str):
    """The out-of-place op of a resolved backend other than "reference"."""
    if name == "triton":
        return torch.ops.hadamard_kernels.hadamard_transform_kn_triton.default
    return torch.ops.hadamard_kernels.hadamard_transform_kn.default


def _kn_in_place(name: str, x: torch.Tensor, hk, pow2: int, scale: float, pre, post) -> None:
    """x = the transform of x, with torch's autograd rules for in-place ops. The C++ op
    carries them itself (csrc/autograd.cpp). The Triton in-place op has no autograd formula:
    where a graph is recorded through x, the out-of-place op and ``x.copy_`` give the same
    values, and copy_ refuses a leaf that requires grad, rebases a non-leaf's (or its base's)
    history onto the transform and bumps x's version."""
    if name != "triton":
        torch.ops.hadamard_kernels.hadamard_transform_kn_.default(x, hk, pow2, scale, pre, post)
    elif torch.is_grad_enabled() and x.requires_grad:
        x.copy_(torch.ops.hadamard_kernels.hadamard_transform_kn_triton.default(x, hk, pow2, scale, pre, post))
    else:
        torch.ops.hadamard_kernels.hadamard_transform_kn_triton_.default(x, hk, pow2, scale, pre, post)


def _check_pow2(p: int, n: int, K: int, op: str) -> None:
    if p > MAX_FEATURES:
        raise ValueError(f"{op}: n={n} = {K} * {p}, whose power-of-two part exceeds the supported maximum 2^20")


def _split(n: int, K: int | None, family: str, op: str) -> tuple[int, int]:
    """(K, 2^k) with n = K * 2^k exactly, H_K available in ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"{op}: family must be one of {FAMILIES}, got {family!r}")
    allowed = ORDERS if family == "rotation" else FHT_ORDERS
    if K is None:
        try:
            K, p = split_order(n)
        except ValueError:
            raise ValueError(
                f"{op}: n={n} features is not a power of two or K * 2^k for K in {ORDERS}"
            ) from None
        if K != 1 and K not in allowed:
            raise ValueError(f"{op}: n={n} splits as {K} * {p}, but family {family!r} has only K in {allowed}")
    else:
        if isinstance(K, bool) or not isinstance(K, numbers.Integral):
            raise TypeError(f"{op}: K must be an int or None, got {type(K).__name__}")
        p, rem = divmod(n, K) if K > 0 else (0, 1)
        if (K != 1 and K not in allowed) or rem or p < 1 or p & (p - 1):
            raise ValueError(
                f"{op}: K={K} does not split n={n} as K * 2^k with K = 1 or in {allowed} (family {family!r})"
            )
    _check_pow2(p, n, K, op)
    return K, p


def _check_signs(signs: object, x: torch.Tensor, n: int, op: str) -> torch.Tensor | None:
    if signs is None:
        return None
    if not isinstance(signs, torch.Tensor):
        raise TypeError(f"{op}: signs must be a tensor or None, got {type(signs).__name__}")
    if signs.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: signs must be float32, float64, float16 or bfloat16, got {signs.dtype}")
    if signs.shape != (n,):
        raise ValueError(f"{op}: signs must have shape (n,) = ({n},), got {tuple(signs.shape)}")
    if signs.device != x.device:
        raise ValueError(f"{op}: signs is on {signs.device} but x is on {x.device}")
    if signs.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{op}: signs are constants, not differentiable: pass signs.detach()")
    return signs


def _check_inplace(x: torch.Tensor, op: str) -> None:
    if not x.is_contiguous():
        raise ValueError(
            f"{op}: x must be contiguous (no overlapping or strided entries) to be transformed in place, got "
            f"shape {tuple(x.shape)} and strides {x.stride()}; use the out-of-place transform for other layouts"
        )


def _order_args(x, scale, K, family, signs, op):
    _check_input(x, op)
    scale = _check_scale(scale, op)
    n = x.shape[-1]
    K, p = _split(n, K, family, op)
    return scale, K, p, _check_signs(signs, x, n, op)


def hadamard_transform_order(
    x: torch.Tensor,
    scale: float = 1.0,
    *,
    K: int | None = None,
    family: str = "rotation",
    signs: torch.Tensor | None = None,
    transpose: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Hadamard transform of order n = K * 2^k over the last dimension, optionally randomised.

    ``y = scale * (H_K kron H_{2^k}) @ D @ x`` with D = diag(signs) (the identity without
    signs), H_K = ``orders.hadamard_k(K, family=family)`` acting on the high digit a of the index
    a * 2^k + b, H_{2^k} the Sylvester matrix; exact, no padding (docs/orders.md). With
    ``transpose=True`` the transposed matrix is applied: ``y = scale * D @ (H_K^T kron H_{2^k}) @ x``.

    Args:
        x: shape (..., n), float32 / float64 / float16 / bfloat16 (half types accumulate in
            float32), any strides. n must be a power of two or K * 2^k with K in ``orders.ORDERS``
            (e.g. 5120 = 20 * 256, 11008 = 172 * 64, 14336 = 28 * 512), 2^k <= 2^20.
        scale: multiplies the result; 1 / sqrt(n) makes the transform orthonormal.
        K: the order; None picks ``orders.split_order(n)`` (the largest K that fits, 40 over 20,
            as QuaRot and SpinQuant do). K=20 for n = 40 * 2^k gives QuIP#'s split.
        family: "rotation" (QuaRot / SpinQuant / QuIP#, Sloane's library) or "fht" (the matrices
            of fast-hadamard-transform, K in ``orders.FHT_ORDERS``).
        signs: None or a +-1 vector of shape (n,) on x's device (``random_signs``), fused into
            the same pass; a constant (it gets no gradient).
        transpose: apply the transposed matrix (the adjoint). H_K is not symmetric for most K
            (``orders.SYMMETRIC``), so this differs from the forward.
        backend: "auto", "cpu", "cuda", "triton" or "reference", as available for x's device
            (see the module docstring). "triton" holds a row in registers: with KB =
            max(16, next_pow2(K)), it needs KB * max(16, 2^k) <= 2^15 (e.g. n <= 20480 for
            K = 20, 11008 = 172 * 64 fits), and raises a ValueError beyond.

    Returns a contiguous tensor of x's shape and dtype. Differentiable to every order: the
    gradient is the transposed transform of the incoming gradient.

    The inverse of ``y = hadamard_transform_order(x, s, signs=d)`` is
    ``hadamard_transform_order(y, 1 / (n * s), signs=d, transpose=True)``. The random orthonormal
    rotation of QuaRot / SpinQuant, ``Q = H D / sqrt(n)``, and its inverse ``Q^T``::

        d = hk.random_signs(n, seed=0, device=x.device)
        y = hk.hadamard_transform_order(x, n ** -0.5, signs=d)                  # Q x
        x2 = hk.hadamard_transform_order(y, n ** -0.5, signs=d, transpose=True)  # Q^T y == x
    """
    op = "hadamard_transform_order"
    scale, K, p, signs = _order_args(x, scale, K, family, signs, op)
    name = _resolve(backend, x, op)
    if name == "reference":
        return reference.hadamard_transform_order_reference(
            x, scale, K=K, family=family, signs=signs, transpose=transpose
        )
    pre, post = (None, signs) if transpose else (signs, None)
    return _kn_out_of_place(name)(x, _hk_for(name, family, K, transpose, x.device), p, scale, pre, post)


def hadamard_transform_order_(
    x: torch.Tensor,
    scale: float = 1.0,
    *,
    K: int | None = None,
    family: str = "rotation",
    signs: torch.Tensor | None = None,
    transpose: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """``hadamard_transform_order`` written into x, which is returned (same arguments).

    x must be contiguous (a view with overlapping or strided entries raises ValueError). Under
    autograd it behaves as torch's in-place ops: a leaf that requires grad is refused, a
    non-leaf's history is rebased onto the transform, and tensors saved from x before the call
    raise at backward (x's version counter is bumped). With backend "triton", when autograd
    records through x the result is computed out of place and copied into x (same values,
    one extra buffer); otherwise every backend transforms x where it lies.
    """
    op = "hadamard_transform_order_"
    scale, K, p, signs = _order_args(x, scale, K, family, signs, op)
    _check_inplace(x, op)
    name = _resolve(backend, x, op)
    if name == "reference":
        return x.copy_(
            reference.hadamard_transform_order_reference(x, scale, K=K, family=family, signs=signs, transpose=transpose)
        )
    pre, post = (None, signs) if transpose else (signs, None)
    _kn_in_place(name, x, _hk_for(name, family, K, transpose, x.device), p, scale, pre, post)
    return x


def fwht_(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """In-place ``fwht``: x is overwritten by ``fwht(x, scale)`` and returned.

    ``scale * H_m @ x`` over the last dim (Sylvester H, m = n a power of two; otherwise x is
    zero-padded to the next power of two m and the first n outputs are kept, exactly as
    ``fwht``). x: contiguous (ValueError otherwise), float32 / float64 / float16 / bfloat16,
    n up to 2^20. For n = K * 2^k by H_K kron H_{2^k} in place, use
    ``hadamard_transform_order_``. Autograd as torch's in-place ops (see
    ``hadamard_transform_order_``). ``backend``: "auto", "cpu", "cuda", "triton" (n <= 2^15) or
    "reference", as available for x's device (see the module docstring).
    """
    if (type(scale) is float or type(scale) is int) and not _is_compiling():
        # ops.fwht's fast path: the op resolved by an earlier call, whose C++ checks are
        # complete; on any error the full path below raises the named error.
        try:
            fast = _FAST_OPS.get(("fwht_", backend, x.device))
            if fast is not None:
                n = x.shape[-1]
                fast(x, None, 1 << (n - 1).bit_length() if n > 1 else 1, float(scale), None, None)
                return x
        except _OP_ERRORS:
            pass
    op = "fwht_"
    _check_input(x, op)
    scale = _check_scale(scale, op)
    n = x.shape[-1]
    _check_size(n, n, op)
    m = reference.next_pow2(n)
    _check_inplace(x, op)
    name = _resolve(backend, x, op)
    if name == "reference":
        return x.copy_(reference.fwht_reference(x, scale))
    _kn_in_place(name, x, None, m, scale, None, None)
    if name in ("cpu", "cuda"):  # the C++ op, whose checks are complete: fwht_'s fast path
        _FAST_OPS[("fwht_", backend, x.device)] = torch.ops.hadamard_kernels.hadamard_transform_kn_.default._op
    return x


def _peer_transform(K: int, x: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    op = f"hadamard_transform_{K}N"
    _check_input(x, op)
    scale = _check_scale(scale, op)
    n = x.shape[-1]
    p = fht_padded_size(n, K) // K
    _check_pow2(p, n, K, op)
    name = _resolve(backend, x, op)
    if name == "reference":
        return reference.hadamard_transform_kn_reference(x, K, scale)
    return _kn_out_of_place(name)(x, _hk_for(name, "fht", K, False, x.device), p, scale, None, None)


_PEER_DOC = """fast-hadamard-transform's ``hadamard_transform_{K}N(x, scale)``: same call, padding and results.

    ``y = scale * [(H_{K} kron H_{{2^k}}) @ pad(x, M)][..., :n]`` over the last dim, where
    H_{K} = ``orders.hadamard_k({K}, family="fht")`` ({matrix}) acts on the high digit of the
    index, M = ``orders.fht_padded_size(n, {K})`` = {K} * max(4, next_pow2(ceil(n / {K}))) and
    x is zero-padded to M. So n = {K} * 2^k with 2^k >= 4 is the exact transform, while n = {K}
    and n = {double} are padded to {quad} first, as the peer does.

    x: shape (..., n), float32 / float64 / float16 / bfloat16, any strides, n <= {K} * 2^20 (the
    peer stops at {K} * 1024); the result is contiguous, x's shape and dtype. Differentiable:
    the gradient is ``scale * [(H_{K}^T kron H_{{2^k}}) @ pad(g, M)][..., :n]``. {backward}
    ``backend``: "auto", "cpu", "cuda", "triton" or "reference", as available for x's device
    (see the module docstring; "triton" holds a row as max(16, next_pow2(ceil(n / 2^k))) x
    max(16, 2^k) values, at most 2^15: every n <= {limit} fits).
    """


def hadamard_transform_12N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    return _peer_transform(12, x, scale, backend)


def hadamard_transform_20N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    return _peer_transform(20, x, scale, backend)


def hadamard_transform_28N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    return _peer_transform(28, x, scale, backend)


def hadamard_transform_40N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    return _peer_transform(40, x, scale, backend)


_SAME_GRAD = "H_{K} is symmetric, so this equals the peer's gradient."
_OTHER_GRAD = (
    "H_{K} is not symmetric: the peer's backward reuses the forward (H_{K} in place of H_{K}^T), so "
    "its gradients differ from these, which are the correct ones."
)
for _fn, _K, _matrix, _grad in (
    (hadamard_transform_12N, 12, "Paley II, q = 5, symmetric", _SAME_GRAD),
    (hadamard_transform_20N, 20, "Sloane's had.20.will", _OTHER_GRAD),
    (hadamard_transform_28N, 28, "Sloane's had.28.will", _OTHER_GRAD),
    (hadamard_transform_40N, 40, "Sloane's had.40.tpal", _OTHER_GRAD),
):
    _fn.__doc__ = _PEER_DOC.format(
        K=_K, matrix=_matrix, double=2 * _K, quad=4 * _K, backward=_grad.format(K=_K),
        limit=_K * 2**15 // max(16, reference.next_pow2(_K)),
    )


def random_signs(
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A vector of n random signs (+1 or -1, each with probability 1/2): the D of a randomised
    transform ``hadamard_transform_order(x, signs=D)``.

    ``seed`` gives the same vector on every call and every device (drawn on the CPU by a fresh
    ``torch.Generator`` seeded with it, then moved to ``device``); ``generator`` draws from that
    generator on its device; neither draws from torch's global generator. Shape (n,), ``dtype``
    (a floating type, float32 by default).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"random_signs: n must be an int >= 0, got {n!r}")
    if seed is not None and generator is not None:
        raise ValueError("random_signs: pass seed or generator, not both")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"random_signs: dtype must be float32, float64, float16 or bfloat16, got {dtype}")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    draw_device = generator.device if generator is not None else device
    bits = torch.randint(0, 2, (int(n),), generator=generator, device=draw_device)
    return (1 - 2 * bits).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------
# Fake (meta) kernels of the C++ ops, with their checks (csrc/checks.h) as torch._check.


def _kn_fake_checks(x, hk, pow2, pre_signs, post_signs, op):
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have at least 1 dimension")
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"{op}: unsupported dtype {x.dtype}")
    torch._check(pow2 >= 1 and pow2 & (pow2 - 1) == 0 and pow2 <= MAX_FEATURES, lambda: f"{op}: bad pow2 {pow2}")
    k = 1
    if hk is not None:
        torch._check(hk.dtype == torch.int8, lambda: f"{op}: hk must be int8")
        torch._check(hk.dim() == 2 and hk.shape[0] == hk.shape[1], lambda: f"{op}: hk must be square")
        torch._check(hk.device == x.device, lambda: f"{op}: hk is on {hk.device}, x on {x.device}")
        k = hk.shape[0]
    torch._check(x.shape[-1] <= k * pow2, lambda: f"{op}: n exceeds K * pow2")
    for s in (pre_signs, post_signs):
        if s is not None:
            torch._check(s.dtype in _FLOAT_DTYPES, lambda: f"{op}: signs must be floating")
            torch._check(s.shape == (x.shape[-1],), lambda: f"{op}: signs must have shape (n,)")
            torch._check(s.device == x.device, lambda: f"{op}: signs are on {s.device}, x on {x.device}")


@torch.library.register_fake("hadamard_kernels::hadamard_transform_kn")
def _transform_kn_fake(x, hk, pow2, scale, pre_signs, post_signs):
    _kn_fake_checks(x, hk, pow2, pre_signs, post_signs, "hadamard_transform_kn")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("hadamard_kernels::hadamard_transform_kn_")
def _transform_kn_inplace_fake(x, hk, pow2, scale, pre_signs, post_signs):
    _kn_fake_checks(x, hk, pow2, pre_signs, post_signs, "hadamard_transform_kn_")
    torch._check(x.is_contiguous(), lambda: "hadamard_transform_kn_: x must be contiguous")
    return None
