// Compiles every CUDA kernel of hadamard_kernels without torch, for CI machines with nvcc but
// no GPU (scripts/check_cuda.sh):
//     nvcc -arch=sm_90 -std=c++17 -c csrc/cuda/check/compile_check.cu -o /tmp/compile_check.o
// Instantiating the launch helpers for each storage type instantiates every kernel they can
// launch (each tile size, both passes, every epilogue). Not part of the extension: setup.py
// only globs csrc/cuda/*.cu.
#include "../classifier.cuh"
#include "../fwht.cuh"

namespace hadamard_kernels {
namespace cuda {

#define HADAMARD_KERNELS_INSTANTIATE(T)                                                              \
  template cudaError_t launch_transform<T>(const T*, T*, const TransformParams&, void*, cudaStream_t); \
  template cudaError_t launch_classifier_forward<T>(const T*, const acc_of<T>*, const T*, T*,          \
                                                    const ClassifierParams&, void*, cudaStream_t);     \
  template cudaError_t launch_classifier_backward<T>(const T*, const T*, int64_t, int64_t,             \
                                                     const acc_of<T>*, T*, acc_of<T>*,                 \
                                                     const ClassifierParams&, void*, cudaStream_t);

HADAMARD_KERNELS_INSTANTIATE(float)
HADAMARD_KERNELS_INSTANTIATE(double)
HADAMARD_KERNELS_INSTANTIATE(__half)
HADAMARD_KERNELS_INSTANTIATE(__nv_bfloat16)

#undef HADAMARD_KERNELS_INSTANTIATE

}  // namespace cuda
}  // namespace hadamard_kernels
