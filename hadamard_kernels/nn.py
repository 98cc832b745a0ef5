"""Fixed classifiers of Hoffer, Hubara & Soudry (ICLR 2018), and the simplex ETF head of the
neural-collapse papers: drop-in replacements for the last ``nn.Linear`` of a classifier that
learn only a scale and a bias."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import ops, reference
from .ops import hadamard_classifier

__all__ = ["HadamardClassifier", "OrthogonalClassifier", "SimplexETFClassifier"]


def _got(value: object) -> str:
    """The value and its type as error messages show them: 10.5 (float), None."""
    return "None" if value is None else f"{value!r} ({type(value).__name__})"


def _check_int(name: str, arg: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: {arg} must be an int, got {_got(value)}")
    if value < low:
        raise ValueError(f"{name}: {arg} must be >= {low}, got {value}")


def _check_bool(name: str, arg: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {arg} must be a bool, got {_got(value)}")


def _check_real(name: str, arg: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {arg} must be a real number, got {_got(value)}")


class _FixedClassifier(nn.Module):
    """Shared parts: the scale alpha (a parameter, or a buffer when not learned) and bias."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool,
        init_scale: float,
        learn_scale: bool,
        normalize: bool,
        eps: float,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "in_features", in_features, 1)
        _check_int(name, "num_classes", num_classes, 1)
        _check_bool(name, "bias", bias)
        _check_real(name, "init_scale", init_scale)
        if not math.isfinite(init_scale):
            raise ValueError(f"{name}: init_scale must be finite, got {init_scale}")
        _check_bool(name, "learn_scale", learn_scale)
        _check_bool(name, "normalize", normalize)
        if dtype is not None and (not isinstance(dtype, torch.dtype) or dtype not in ops._FLOAT_DTYPES):
            raise TypeError(
                f"{name}: dtype must be a floating-point dtype (float32, float64, float16, bfloat16) "
                f"or None, got {dtype}"
            )
        _check_real(name, "eps", eps)
        ops._check_eps(eps, dtype or torch.get_default_dtype(), name)
        self.in_features = in_features
        self.num_classes = num_classes
        self.normalize = normalize
        self.eps = eps
        factory = {"device": device, "dtype": dtype}
        scale = torch.tensor(float(init_scale), **factory)
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.bias = nn.Parameter(torch.zeros(num_classes, **factory)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"bias={self.bias is not None}, learn_scale={isinstance(self.scale, nn.Parameter)}, "
            f"normalize={self.normalize}"
        )


class HadamardClassifier(_FixedClassifier):
    """``y = alpha * H_M[:C, :N] @ (x / ||x||) + b``: a fixed +-1 Hadamard head.

    Replaces ``nn.Linear(in_features, num_classes)``: input ``(..., N)``, output
    ``(..., C)``. Learns only alpha (one scalar) and b (C values) instead of C x N weights;
    nothing of size C x N is stored. Computed by :func:`hadamard_kernels.hadamard_classifier`
    (fused kernel: normalise, transform, truncate, scale, bias).

    ``init_scale`` defaults to ``-1 / sqrt(num_classes)``: the paper's own code
    (``HadamardProj``) returns ``-scale * H_hat x_hat`` with ``scale = 1 / sqrt(C)``, which is
    this alpha in our sign convention. With unit-norm x each logit ``H_row . x_hat`` is of
    order 1 and at most sqrt(N), so a small |alpha| starts from a near-uniform softmax and
    training raises |alpha| (the learned inverse temperature, the paper's Fig. 1). The sign
    of the start matters on non-negative features (see below); examples/README.md compares
    both on Fashion-MNIST. With
    ``num_classes > in_features`` the rows of H_M[:C, :N] are no longer orthogonal (see the
    paper's caveat): rows repeat, and classes whose rows are equal can be told apart only
    by their biases (see examples/README.md: 19 points lost on Fashion-MNIST at C=10, N=8).
    Row 0 is all ones: on non-negative features (a ReLU before the head) class 0's logit
    ``alpha * sum(x_hat)`` is the largest of all for alpha > 0, and the smallest for alpha < 0.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        init_scale: float | None = None,
        learn_scale: bool = True,
        *,
        normalize: bool = True,
        eps: float = 1e-12,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if isinstance(num_classes, numbers.Integral) and isinstance(in_features, numbers.Integral):
            m = reference.next_pow2(max(in_features, num_classes))
            if m > ops.MAX_FEATURES:
                raise ValueError(
                    f"{name}: transform size next_pow2(max(in_features, num_classes)) = {m} exceeds "
                    f"the supported maximum {ops.MAX_FEATURES} (2^20); got in_features={in_features}, "
                    f"num_classes={num_classes}"
                )
        if not isinstance(backend, str):
            raise TypeError(f"{name}: backend must be a str, got {_got(backend)}")
        if backend != "auto" and backend not in ops.BACKENDS:
            raise ValueError(f"{name}: backend must be 'auto' or one of {ops.BACKENDS}, got {backend!r}")
        if init_scale is None and isinstance(num_classes, numbers.Integral):
            init_scale = -1.0 / math.sqrt(max(num_classes, 1))
        super().__init__(in_features, num_classes, bias, init_scale, learn_scale, normalize, eps, device, dtype)
        self.backend = backend

    # The weight: H_M[:C, :N] here, the simplex ETF in SimplexETFClassifier (the same op with etf).
    _etf = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: expected {self.in_features} input features, got shape {tuple(x.shape)}"
            )
        # ops.classifier_fast_path written out: at batch 1 the extra Python frame cost ~8% of
        # the call, the margin between this head and nn.Linear(512, 10) (benchmarks/sweep.py).
        if not ops._is_compiling():
            try:
                fwd = ops._FAST_OPS.get(("hadamard_classifier", self.backend, x.device))
                bias, eps = self.bias, self.eps
                if fwd is not None and eps >= ops._EPS_ALWAYS_OK and (bias is None or bias.dtype == x.dtype):
                    return fwd(x, self.scale, bias, self.num_classes, self.normalize, eps, self._etf)
            except ops._OP_ERRORS:
                pass  # hadamard_classifier below raises the error with the argument's name
        return hadamard_classifier(
            x, self.num_classes, self.scale, self.bias, normalize=self.normalize, eps=self.eps, etf=self._etf,
            backend=self.backend,
        )


def _orthonormal(in_features: int, num_classes: int, seed: int) -> torch.Tensor:
    """(C, N) weight from the reduced QR of a seeded Gaussian: orthonormal rows when
    C <= N, orthonormal columns when C > N. Computed in float64 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    tall, wide = max(in_features, num_classes), min(in_features, num_classes)
    q, r = torch.linalg.qr(torch.randn(tall, wide, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # unique QR: positive diagonal of R
    return q.T.contiguous() if num_classes <= in_features else q


class OrthogonalClassifier(_FixedClassifier):
    """``y = alpha * Q @ (x / ||x||) + b`` with a fixed random orthonormal ``Q`` (C x N).

    The paper's other fixed head. ``Q`` comes from the QR decomposition of a Gaussian
    matrix drawn with ``seed`` and is kept as a buffer (it follows ``.to()`` and is saved in
    the state_dict). With C > N its columns, not its rows, are orthonormal. ``init_scale``
    defaults to 10, the paper's code: the logits ``Q_row . x_hat`` lie in [-1, 1], so alpha
    must start large enough for the softmax to be trainable.

    Data-parallel training: ``torch.nn.parallel.DistributedDataParallel`` re-broadcasts
    every buffer, ``Q`` included (4 C N bytes), from rank 0 before each forward by default.
    ``Q`` is identical on every rank already, so pass ``forward_sync_buffers=False``
    (``broadcast_buffers=False`` before torch 2.13) when no other buffer needs syncing
    (BatchNorm running statistics do). :class:`HadamardClassifier` has no such buffer.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        init_scale: float = 10.0,
        learn_scale: bool = True,
        *,
        normalize: bool = True,
        eps: float = 1e-12,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, num_classes, bias, init_scale, learn_scale, normalize, eps, device, dtype)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"OrthogonalClassifier: seed must be an int, got {_got(seed)}")
        self.seed = seed
        weight = _orthonormal(in_features, num_classes, seed)
        self.register_buffer("weight", weight.to(device=device, dtype=dtype or torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"OrthogonalClassifier: expected {self.in_features} input features, got shape {tuple(x.shape)}"
            )
        x_hat = F.normalize(x, dim=-1, eps=self.eps) if self.normalize else x
        y = self.scale.to(x.dtype) * F.linear(x_hat, self.weight.to(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seed={self.seed}"


class SimplexETFClassifier(HadamardClassifier):
    """``y = alpha * sqrt(C/(C-1)) * (U x_hat - mean_over_classes(U x_hat)) + b``: a fixed
    simplex equiangular tight frame head (Papyan, Han & Donoho 2020; Zhu et al., NeurIPS
    2021; Yang et al., NeurIPS 2022), with ``U = H_N[:C, :N] / sqrt(N)`` (C orthonormal
    Hadamard rows) and ``x_hat = x / ||x||``.

    Its implied weight ``W = sqrt(C/(C-1)) (I - 11^T/C) U`` has C unit rows with pairwise
    cosine -1/(C-1), the largest equal separation C directions can have, and is never stored:
    :func:`hadamard_kernels.hadamard_classifier` with ``etf=True`` computes it with the
    fused Hadamard head and subtracts the mean in the same kernel (forward and backward).
    Drop-in for ``nn.Linear(in_features, num_classes)``: input ``(..., N)``, output
    ``(..., C)``; learns alpha and b only. Needs ``in_features`` a power of two and
    ``2 <= num_classes <= in_features`` (else ValueError): only then are the rows of U
    orthonormal.

    Under softmax the centring cancels (softmax is shift-invariant): the class probabilities
    equal those of :class:`HadamardClassifier` with alpha multiplied by
    ``sqrt(C / ((C-1) N))``, so cross-entropy training differs only in alpha's scale. The
    ETF differs where the logits themselves are used: they sum to zero over the classes, and
    the rows are the neural-collapse geometry (losses on logits, logit-based scores,
    distillation).

    ``init_scale`` defaults to -10: unit rows and a unit x_hat give logits in [-1, 1], so
    alpha must start large enough for the softmax to be trainable (as for
    :class:`OrthogonalClassifier`, whose default is 10), and negative because, as in the
    Hadamard head, row 0 dominates every other row entry by entry (``W[c] <= W[0]``): on
    non-negative features class 0's logit is the largest for alpha > 0 and the smallest for
    alpha < 0, and the Hadamard head trains better from the negative side
    (examples/README.md).
    """

    _etf = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        init_scale: float = -10.0,
        learn_scale: bool = True,
        *,
        normalize: bool = True,
        eps: float = 1e-12,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        _check_int(name, "in_features", in_features, 1)
        _check_int(name, "num_classes", num_classes, 1)
        if in_features & (in_features - 1) or not 2 <= num_classes <= in_features:
            raise ValueError(
                f"{name}: needs in_features a power of two and 2 <= num_classes <= in_features (the C rows "
                f"are orthonormal Hadamard rows), got in_features={in_features}, num_classes={num_classes}"
            )
        super().__init__(
            in_features, num_classes, bias, init_scale, learn_scale,
            normalize=normalize, eps=eps, backend=backend, device=device, dtype=dtype,
        )  # fmt: skip

    @property
    def weight(self) -> torch.Tensor:
        """The implied (C, N) weight, built densely on request (for inspection and tests;
        forward never builds it), in the dtype and on the device of alpha."""
        return reference.simplex_etf_matrix(
            self.in_features, self.num_classes, dtype=self.scale.dtype, device=self.scale.device
        )
