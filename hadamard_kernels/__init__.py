"""hadamard_kernels: fast Walsh-Hadamard transforms and the fused fixed Hadamard classifier.

Importing the package loads the compiled extension, which registers the
``torch.ops.hadamard_kernels.*`` custom ops (CPU always, CUDA when built).
"""

import torch  # noqa: F401  (loads libc10 / libtorch before the extension)

from . import _C  # noqa: F401  (runs the TORCH_LIBRARY registrations)
from . import nn, reference
from .ops import BACKENDS, MAX_FEATURES, available_backends, fwht, hadamard_classifier

try:
    import triton  # noqa: F401  (optional dependency)
except ImportError:  # no Triton: no "triton" backend
    pass
else:
    from . import triton_kernels  # noqa: F401  (registers the "triton" backend and its ops)

__all__ = [
    "BACKENDS",
    "MAX_FEATURES",
    "available_backends",
    "fwht",
    "hadamard_classifier",
    "nn",
    "reference",
]
__version__ = "0.1.0"
