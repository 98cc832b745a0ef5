"""Public ops: ``fwht`` and ``hadamard_classifier``, their backend dispatch, and the fake
kernels and autograd formulas of the ``hadamard_kernels::*`` custom ops defined in C++.

The C++ ops (csrc/ops.cpp) are:

* ``hadamard_transform(x, out_features, scale)``: ``scale * H_M[:out, :in] @ x`` over the
  last dim, M = next_pow2(max(in, out)). ``fwht`` is the case out = in.
* ``classifier_forward(x, scale, bias, num_classes, normalize, eps, etf=False)``:
  ``scale * W @ (x / max(||x||, eps)) + bias`` with W = H_M[:C, :N], or with ``etf`` the
  simplex ETF ``sqrt(C / ((C-1) N)) (I - 11^T / C) H_N[:C, :N]`` (N a power of two,
  2 <= C <= N): the mean over the C outputs is subtracted in the kernel's epilogue.
* ``classifier_backward(grad_y, x, scale, normalize, eps, etf=False) -> (grad_x, grad_scale, grad_bias)``.

The transforms of order K * 2^k (ops ``hadamard_transform_kn`` and ``hadamard_transform_kn_``)
have their public functions and fake kernels in ``transforms.py``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from . import reference

__all__ = ["fwht", "hadamard_classifier", "available_backends", "register_backend", "BACKENDS", "MAX_FEATURES"]

#: Every backend name. "auto" takes the first one available for the tensor's device, in
#: the order of _PREFERENCE (fastest first).
BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")

# On CPU, triton means its interpreter (TRITON_INTERPRET=1): correct but slow, so last.
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "triton", "reference")}

#: Largest transform size M = next_pow2(max(in_features, out_features)) the kernels accept.
MAX_FEATURES: int = 2**20

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Backends implemented outside the C++ extension, registered with register_backend():
# name -> predicate telling whether it can run on a device (see triton_kernels.py).
_EXTRA_BACKENDS: dict[str, Callable[[torch.device], bool]] = {}


# Dispatch keys with a C++ kernel, read once at import (the extension registers its
# kernels when it is loaded, before this module): a constant for torch.compile, which
# cannot trace the registry query, and no torch.compiler decorator, whose import of
# torch._dynamo would double the time of `import hadamard_kernels`.
_KERNEL_DEVICES: frozenset[str] = frozenset(
    key
    for key in ("CPU", "CUDA")
    if torch._C._dispatch_has_kernel_for_dispatch_key("hadamard_kernels::hadamard_transform", key)
)


def register_backend(name: str, usable: Callable[[torch.device], bool]) -> None:
    """Make backend ``name`` (one of BACKENDS) selectable where ``usable(device)`` is true."""
    if name not in BACKENDS:
        raise ValueError(f"register_backend: name must be one of {BACKENDS}, got {name!r}")
    _EXTRA_BACKENDS[name] = usable
    _AVAILABLE.clear()
    _FAST_OPS.clear()


# device -> usable backends. A plain dict, not functools.lru_cache: torch.compile traces
# through it without warning.
_AVAILABLE: dict[torch.device, tuple[str, ...]] = {}


def _available(device: torch.device) -> tuple[str, ...]:
    cached = _AVAILABLE.get(device)
    if cached is not None:
        return cached
    found = []
    for name in _PREFERENCE.get(device.type, ("triton", "reference")):
        if name == "reference":
            ok = True
        elif name in ("cpu", "cuda"):
            ok = device.type == name and name.upper() in _KERNEL_DEVICES
        else:
            ok = name in _EXTRA_BACKENDS and _EXTRA_BACKENDS[name](device)
        if ok:
            found.append(name)
    _AVAILABLE[device] = tuple(found)
    return _AVAILABLE[device]


# The eager fast path of fwht and hadamard_classifier (issue 10, item 4: at batch 1 the
# Python checks cost as much as the kernel). (public function, backend, device) -> the
# C++ entry of the op that the full path resolved there (OpOverload._op: the OpOverload's
# own __call__ is a Python frame around it), cached after its first successful call. The fast
# path calls that op directly and leaves the checks to the op's C++ code; if the
# op raises, the call is repeated through the full path, whose checks then raise the
# error that names the public function and argument (or, the arguments being valid, the
# op raises its own error again). Not taken under torch.compile, which traces the full path.
_FAST_OPS: dict[tuple[str, str, torch.device], Callable] = {}
_OP_ERRORS = (RuntimeError, TypeError, ValueError, AttributeError, IndexError)
_is_compiling = torch.compiler.is_compiling  # bound once: it is checked on every call
# eps at or above this passes _check_eps for every dtype (1 / the largest float32).
_EPS_ALWAYS_OK = 1.0 / torch.finfo(torch.float32).max


def available_backends(device: torch.device | str | None = None) -> tuple[str, ...]:
    """Backends that can run on ``device``, fastest first ("auto" picks the first).

    ``device`` defaults to "cuda" when a GPU is visible, else "cpu". These are the backends of
    ``fwht`` and ``hadamard_classifier``; the K * 2^k transforms of ``transforms.py`` and
    ``fwht_`` take the same, less "cpu" / "cuda" where the extension has no kernel of their ops
    for that device.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _available(torch.device(device))


def _backends_with_kernels(device: torch.device, keys: frozenset[str]) -> tuple[str, ...]:
    """``available_backends(device)`` less "cpu" / "cuda" where a C++ op has no kernel for that
    dispatch key (``keys``: the keys it has, read at import)."""
    return tuple(b for b in available_backends(device) if b not in ("cpu", "cuda") or b.upper() in keys)


def _resolve_backend(backend: str, x: torch.Tensor, op: str, usable: tuple[str, ...] | None = None,
                     what: str = "") -> str:
    """The backend "auto" stands for, or the named one checked against ``usable`` (default:
    ``available_backends(x.device)``); ``what`` names the ops in the error ("the K * 2^k
    transforms of ")."""
    if backend not in BACKENDS and backend != "auto":
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    usable = available_backends(x.device) if usable is None else usable
    if backend == "auto":
        return usable[0]
    if backend not in usable:
        raise RuntimeError(
            f"{op}: backend {backend!r} is not available for {what}a tensor on {x.device}; "
            f"available there: {usable}"
        )
    return backend


def _check_input(x: object, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension (features last), got a 0-d tensor")


def _check_scale(scale: object, op: str) -> float:
    """A real, non-bool Python number (the transform ops take a float scale), as float."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{op}: scale must be a real number, got {type(scale).__name__}")
    return float(scale)


def _check_size(n: int, out_features: int, op: str) -> None:
    m = reference.next_pow2(max(n, out_features))
    if m > MAX_FEATURES:
        raise ValueError(
            f"{op}: transform size next_pow2(max({n}, {out_features})) = {m} exceeds the "
            f"supported maximum {MAX_FEATURES} (2^20)"
        )


def _check_etf_size(n: int, num_classes: int, op: str) -> None:
    """The simplex ETF head's sizes: N a power of two and 2 <= C <= N, else ValueError."""
    if n & (n - 1) or not 2 <= num_classes <= n:
        raise ValueError(
            f"{op}: the simplex ETF head needs in_features N a power of two and 2 <= num_classes <= N "
            f"(its C rows are orthonormal Hadamard rows), got N={n}, num_classes={num_classes}"
        )


def etf_factor(num_classes: int, n: int) -> float:
    """sqrt(C / ((C-1) N)): with it, ``etf_factor * (I - 11^T / C) H_N[:C, :N]`` has unit rows."""
    return math.sqrt(num_classes / ((num_classes - 1) * n))


def _check_eps(eps: float, dtype: torch.dtype, op: str) -> None:
    """eps > 0, and 1 / eps finite in the accumulator (float64 for float64 x, else float32):
    a smaller eps would turn the zero row's x / max(||x||, eps) into 0 * inf = NaN."""
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps}")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    largest = torch.finfo(acc).max
    if eps * largest < 1.0:
        raise ValueError(
            f"{op}: eps must be >= {1.0 / largest:.3g} for {dtype} x (1 / eps must be finite in the "
            f"{str(acc).removeprefix('torch.')} accumulator), got eps={eps!r}"
        )


def fwht(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """Fast Walsh-Hadamard transform over the last dimension.

    Returns ``scale * x @ H_n.T`` (``H_n`` Sylvester order, ``scipy.linalg.hadamard(n)``;
    it is symmetric) for ``x`` of shape ``(..., n)``, any strides, dtype float32 / float64 /
    float16 / bfloat16 (half types accumulate in float32); the result has the same shape
    and dtype, contiguous. For n not a power of two, x is zero-padded to the next power of
    two and the first n outputs are kept. ``fwht(fwht(x)) == n * x`` for powers of two;
    ``scale = n ** -0.5`` makes it orthonormal. Same call as ``hadamard_transform(x, scale)``
    of the package ``fast-hadamard-transform``. Differentiable: the backward is
    ``fwht(grad, scale)``, H being symmetric. n up to 2^20.
    """
    if (type(scale) is float or type(scale) is int) and not _is_compiling():
        try:
            op = _FAST_OPS.get(("fwht", backend, x.device))
            if op is not None:
                return op(x, x.shape[-1], float(scale))
        except _OP_ERRORS:
            pass  # the full path below raises the error with the argument's name
    _check_input(x, "fwht")
    _check_scale(scale, "fwht")
    n = x.shape[-1]
    _check_size(n, n, "fwht")
    name = _resolve_backend(backend, x, "fwht")
    if name == "reference":
        return reference.fwht_reference(x, float(scale))
    if name == "triton":
        op = torch.ops.hadamard_kernels.hadamard_transform_triton.default
    else:
        op = torch.ops.hadamard_kernels.hadamard_transform.default
    y = op(x, n, float(scale))
    if name in ("cpu", "cuda"):  # ops whose C++ checks are complete
        _FAST_OPS[("fwht", backend, x.device)] = op._op
    return y


def classifier_fast_path(x, num_classes, scale, bias, normalize, eps, backend, etf=False) -> torch.Tensor | None:
    """``hadamard_classifier(x, ...)`` through the op cached in _FAST_OPS, or None where the
    full path must run (first call, torch.compile, arguments the op cannot take as they are,
    or any error). nn.HadamardClassifier.forward has the same lines written out."""
    if _is_compiling():
        return None
    try:
        fwd = _FAST_OPS.get(("hadamard_classifier", backend, x.device))
        # The full path casts a bias of another dtype and makes a tensor of a float scale;
        # the op checks everything else.
        if (fwd is not None and type(num_classes) is int and isinstance(scale, torch.Tensor)
                and eps >= _EPS_ALWAYS_OK and (bias is None or bias.dtype == x.dtype)):
            return fwd(x, scale, bias, num_classes, normalize, eps, etf)
    except _OP_ERRORS:
        pass  # the full path raises the error with the argument's name
    return None


def hadamard_classifier(
    x: torch.Tensor,
    num_classes: int,
    scale: torch.Tensor | float,
    bias: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    eps: float = 1e-12,
    etf: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The fixed Hadamard classifier of Hoffer et al. (ICLR 2018), fused in one kernel.

    ``y = scale * H_M[:C, :N] @ (x / max(||x||_2, eps)) + bias`` over the last dim, where
    x has shape ``(..., N)``, C = num_classes, M = next_pow2(max(N, C)) and H_M is the
    Sylvester Hadamard matrix (entries +-1); the result has shape ``(..., C)`` and x's
    dtype. Dense equivalent:
    ``scale * F.linear(F.normalize(x, dim=-1, eps=eps), H_M[:C, :N]) + bias``.

    With ``etf=True`` the weight is the simplex equiangular tight frame (Papyan et al. 2020,
    Zhu et al. 2021) built from the C orthonormal rows ``U = H_N[:C, :N] / sqrt(N)``:
    ``y = scale * sqrt(C / (C-1)) * (U x_hat - mean_over_classes(U x_hat)) + bias``, whose
    C weight rows have unit norm and pairwise cosine -1 / (C-1)
    (``reference.simplex_etf_matrix`` builds it densely). It needs N a power of two and
    2 <= C <= N (else ValueError); the centring is fused into the same kernel.

    Args:
        x: float32 / float64 / float16 / bfloat16 features, at least one, any strides.
        num_classes: C >= 1. The rows of H_M[:C, :N] are orthogonal only when N is a power
            of two and C <= N; with C > N (the paper's caveat) some classes share
            directions up to sign, which costs accuracy - allowed, not refused.
        scale: the learned inverse temperature alpha, a 0-d or 1-element floating tensor
            on x's device (a Python float is taken as a constant).
        bias: None or a tensor of shape (C,) on x's device (cast to x's dtype).
        normalize: divide each row by its L2 norm first (the paper's practice).
        eps: lower bound of the norm, as in ``F.normalize``; at least 1 / the largest
            value of the accumulator (2.94e-39 for float32 / float16 / bfloat16 x, 5.56e-309
            for float64), so that 1 / eps is finite. The norm itself is computed without
            overflow or underflow wherever the result is finite.
        backend: "auto" or one of ``available_backends(x.device)``.

    Gradients flow to x, scale and bias.
    """
    y = classifier_fast_path(x, num_classes, scale, bias, normalize, eps, backend, etf)
    if y is not None:
        return y
    op = "hadamard_classifier"
    _check_input(x, op)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"{op}: num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"{op}: num_classes must be >= 1, got {num_classes}")
    n = x.shape[-1]
    if n < 1:
        raise ValueError(f"{op}: x must have at least one feature, got shape {tuple(x.shape)}")
    _check_size(n, num_classes, op)
    _check_eps(eps, x.dtype, op)
    if not isinstance(etf, bool):
        raise TypeError(f"{op}: etf must be a bool, got {type(etf).__name__}")
    if etf:
        _check_etf_size(n, num_classes, op)
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        # float64 x keeps a float64 scale: float32 would round it (1e-8 relative error).
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        scale = torch.tensor(float(scale), dtype=acc, device=x.device)
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{op}: scale must be a tensor or a real number, got {type(scale).__name__}")
    if scale.numel() != 1:
        raise ValueError(f"{op}: scale must be a 0-d or 1-element tensor, got shape {tuple(scale.shape)}")
    if scale.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: scale must be a floating-point tensor, got {scale.dtype}")
    if scale.device != x.device:
        raise ValueError(f"{op}: scale is on {scale.device} but x is on {x.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{op}: bias must be a tensor or None, got {type(bias).__name__}")
        if bias.shape != (num_classes,):
            raise ValueError(
                f"{op}: bias must have shape (num_classes,) = ({num_classes},), got {tuple(bias.shape)}"
            )
        if bias.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: bias must be a floating-point tensor, got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
        bias = bias.to(x.dtype)
    name = _resolve_backend(backend, x, op)
    if name == "reference":
        return reference.hadamard_classifier_reference(
            x, num_classes, scale, bias, normalize=normalize, eps=eps, etf=etf
        )
    if name == "triton":
        fwd = torch.ops.hadamard_kernels.classifier_forward_triton.default
    else:
        fwd = torch.ops.hadamard_kernels.classifier_forward.default
    y = fwd(x, scale, bias, num_classes, normalize, eps, etf)
    if name in ("cpu", "cuda"):  # ops whose C++ checks are complete
        _FAST_OPS[("hadamard_classifier", backend, x.device)] = fwd._op
    return y


# ---------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes and dtypes only, with the C++ checks repeated as torch._check.


def _out_shape(x: torch.Tensor, last: int) -> list:
    return [*x.shape[:-1], last]


@torch.library.register_fake("hadamard_kernels::hadamard_transform")
def _transform_fake(x: torch.Tensor, out_features: int, scale: float) -> torch.Tensor:
    torch._check(x.dim() >= 1, lambda: "hadamard_transform: x must have at least 1 dimension")
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"hadamard_transform: unsupported dtype {x.dtype}")
    torch._check(out_features >= 0, lambda: "hadamard_transform: out_features must be >= 0")
    return x.new_empty(_out_shape(x, out_features))


@torch.library.register_fake("hadamard_kernels::classifier_forward")
def _classifier_forward_fake(x, scale, bias, num_classes, normalize, eps, etf=False):
    torch._check(x.dim() >= 1, lambda: "classifier_forward: x must have at least 1 dimension")
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"classifier_forward: unsupported dtype {x.dtype}")
    torch._check(num_classes >= 1, lambda: "classifier_forward: num_classes must be >= 1")
    torch._check(scale.numel() == 1, lambda: "classifier_forward: scale must have one element")
    # A meta tensor among cpu ones dispatches here: the devices must be checked here too.
    torch._check(scale.device == x.device, lambda: f"classifier_forward: scale is on {scale.device}, x on {x.device}")
    if bias is not None:
        torch._check(bias.shape == (num_classes,), lambda: "classifier_forward: bias must be (num_classes,)")
        torch._check(bias.dtype == x.dtype, lambda: "classifier_forward: bias dtype must equal x dtype")
        torch._check(bias.device == x.device, lambda: f"classifier_forward: bias is on {bias.device}, x on {x.device}")
    if etf:
        _check_etf_size(x.shape[-1], num_classes, "classifier_forward")
    return x.new_empty(_out_shape(x, num_classes))


@torch.library.register_fake("hadamard_kernels::classifier_backward")
def _classifier_backward_fake(grad_y, x, scale, normalize, eps, etf=False):
    torch._check(grad_y.shape[:-1] == x.shape[:-1], lambda: "classifier_backward: grad_y/x shape mismatch")
    torch._check(grad_y.dtype == x.dtype, lambda: "classifier_backward: grad_y dtype must equal x dtype")
    torch._check(grad_y.device == x.device and scale.device == x.device,
                 lambda: "classifier_backward: grad_y, x and scale must be on one device")
    if etf:
        _check_etf_size(x.shape[-1], grad_y.shape[-1], "classifier_backward")
    return classifier_backward_outputs(grad_y, x, scale)


def classifier_backward_outputs(grad_y: torch.Tensor, x: torch.Tensor, scale: torch.Tensor):
    """Empty (grad_x, grad_scale, grad_bias) as every classifier backward op returns them:
    grad_x contiguous in x's dtype, grad_scale like scale, grad_bias (C,) in float32
    (float64 for float64 x). Shared by the fake kernels of all backends."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(scale),
        grad_y.new_empty((grad_y.shape[-1],), dtype=acc),
    )


# ---------------------------------------------------------------------------------------
# Autograd of the Triton classifier (triton_kernels.py). The C++ ops carry their autograd in
# C++ (csrc/autograd.cpp, cheaper per call); classifier_grads_differentiable below is the
# Python twin of the differentiable backward there, with the transform as a parameter.


def classifier_setup_context(ctx, inputs, output) -> None:
    """setup_context of every classifier forward op (inputs: x, scale, bias, C, normalize, eps, etf)."""
    x, scale, bias, _, normalize, eps, etf = inputs
    ctx.save_for_backward(x, scale)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.normalize = normalize
    ctx.eps = eps
    ctx.etf = etf


def _row_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 over the last dim (keepdim) without overflow or underflow: ``a * ||x / a||``
    with a = max |x| (LAPACK's nrm2 scaling). It equals ||x|| for every a > 0, so its
    derivatives of every order with respect to a vanish and autograd through it is exact."""
    a = x.abs().amax(-1, keepdim=True)
    a = torch.where(a > 0, a, torch.ones_like(a))
    return a * torch.linalg.vector_norm(x / a, dim=-1, keepdim=True)


def _default_transform(x: torch.Tensor) -> Callable:
    """The differentiable transform for x's device: the C++ op where it is built, else the
    pure-PyTorch reference."""
    if x.device.type.upper() in _KERNEL_DEVICES or x.device.type == "meta":
        return torch.ops.hadamard_kernels.hadamard_transform
    return reference.hadamard_transform_reference


def classifier_grads_differentiable(
    grad: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    normalize: bool,
    eps: float,
    etf: bool = False,
    transform: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_scale, grad_bias) of the classifier, as the fused backward op returns
    them, computed with differentiable torch ops and ``transform(t, out_features, scale)``
    (an op with autograd; default: the C++ transform, or the reference off its devices).

    With g = dL/dy, u = W^T g (the adjoint: H_M[:N, :C] g, or for the simplex ETF
    ``f H_N[:N, :C] (g - mean(g))`` with f = sqrt(C / ((C-1) N))), r = ||x||, d = max(r, eps):
        dL/dscale = sum u . x_hat,  dL/dbias = sum g,
        dL/dx = (scale u - [r >= eps] x_hat (x_hat . scale u)) / d   (normalize)
              = scale u                                             (otherwise).
    """
    transform = transform or _default_transform(x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c = x.shape[-1], grad.shape[-1]
    g, xa, s = grad.to(acc), x.to(acc), scale.to(acc).reshape(())
    u = transform(g - g.mean(-1, keepdim=True), n, etf_factor(c, n)) if etf else transform(g, n, 1.0)
    if normalize:
        r = _row_norm(xa)
        d = r.clamp_min(eps)
        x_hat = xa / d
        v = s * u
        proj = torch.where(r >= eps, (x_hat * v).sum(-1, keepdim=True), torch.zeros_like(r))
        grad_x = (v - x_hat * proj) / d
    else:
        x_hat = xa
        grad_x = s * u
    grad_scale = (u * x_hat).sum().to(scale.dtype).reshape(scale.shape)
    grad_bias = g.reshape(-1, c).sum(0)
    return grad_x.to(x.dtype), grad_scale, grad_bias


def make_classifier_backward(backward_op: Callable, transform: Callable | None = None) -> Callable:
    """The autograd backward of a classifier forward op: its fused ``backward_op`` for a
    plain backward; :func:`classifier_grads_differentiable` with ``transform`` when the
    backward is itself differentiated (grad mode on inside backward: create_graph=True)."""

    def backward(ctx, grad: torch.Tensor):
        x, scale = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = classifier_grads_differentiable(grad, x, scale, ctx.normalize, ctx.eps, ctx.etf, transform)
        else:
            grads = backward_op(grad, x, scale, ctx.normalize, ctx.eps, ctx.etf)
        grad_x, grad_scale, grad_bias = grads
        grad_bias = None if ctx.bias_dtype is None else grad_bias.to(ctx.bias_dtype)
        return grad_x, grad_scale, grad_bias, None, None, None, None

    return backward
