"""hadamard_kernels: fast Walsh-Hadamard transforms and the fused fixed Hadamard classifier.

Importing the package loads the compiled extension, which registers the
``torch.ops.hadamard_kernels.*`` custom ops (CPU always, CUDA when built).
"""

import importlib.util
import os

import torch  # (loads libc10 / libtorch before the extension)

from . import _C  # noqa: F401  (runs the TORCH_LIBRARY registrations)
from . import nn, orders, reference
from .ops import BACKENDS, MAX_FEATURES, available_backends, fwht, hadamard_classifier
from .quantize import QUANT_DTYPES, dequantize, fwht_quantize
from .transforms import (
    fwht_,
    hadamard_transform_12N,
    hadamard_transform_20N,
    hadamard_transform_28N,
    hadamard_transform_40N,
    hadamard_transform_order,
    hadamard_transform_order_,
    random_signs,
)

# The "triton" backend (optional dependency triton) registers itself when
# hadamard_kernels.triton_kernels is imported. Only where it can run: on a CUDA GPU, or on
# the CPU under the Triton interpreter (TRITON_INTERPRET=1 set before this import).
# Elsewhere it is skipped, as importing it also imports torch._dynamo, which would make
# `import hadamard_kernels` about 1.6x slower than `import torch`. Not lazily on first
# use: under torch.compile that first use is traced, and the registration is not seen.
if importlib.util.find_spec("triton") is not None and (
    os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
):
    from . import triton_kernels  # noqa: F401

__all__ = [
    "BACKENDS",
    "MAX_FEATURES",
    "QUANT_DTYPES",
    "available_backends",
    "dequantize",
    "fwht",
    "fwht_",
    "fwht_quantize",
    "hadamard_classifier",
    "hadamard_transform_12N",
    "hadamard_transform_20N",
    "hadamard_transform_28N",
    "hadamard_transform_40N",
    "hadamard_transform_order",
    "hadamard_transform_order_",
    "random_signs",
    "nn",
    "orders",
    "reference",
]
__version__ = "0.1.0"
