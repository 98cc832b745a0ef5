"""Build hadamard_kernels._C: the CPU kernels always, the CUDA kernels when they can be built.

The CUDA extension is built iff torch was built with CUDA and a CUDA toolkit is found
(set HADAMARD_KERNELS_CUDA=0 or 1 to force either way; TORCH_CUDA_ARCH_LIST picks the
architectures). CPU code is compiled for the building machine (-march=native), since the
package is built from source where it runs; HADAMARD_KERNELS_PORTABLE=1 turns that off.

Build against the torch already installed, never one pip would download:
    pip install --no-build-isolation -e .
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("HADAMARD_KERNELS_CUDA")
    if flag is not None:
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-Wno-array-bounds"]
    if os.environ.get("HADAMARD_KERNELS_PORTABLE") != "1":
        cxx.append("-march=native")
    sources = ["csrc/ops.cpp", "csrc/orders.cpp", "csrc/quantize.cpp", "csrc/autograd.cpp"]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    common = dict(
        name="hadamard_kernels._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if _want_cuda() and cuda_sources:
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            sources=sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DHADAMARD_KERNELS_WITH_CUDA"], "nvcc": nvcc},
            **common,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)


setup(
    packages=find_packages(include=["hadamard_kernels", "hadamard_kernels.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
