// Compiles every CUDA kernel of hadamard_kernels without torch, for CI machines with nvcc but
// no GPU (scripts/check_cuda.sh):
//     nvcc -arch=sm_90 -std=c++17 -c csrc/cuda/check/compile_check.cu -o /tmp/compile_check.o
// Instantiating the launch helpers for each storage type instantiates every kernel they can
// launch (each tile size, both passes, every epilogue). Not part of the extension: setup.py
// only globs csrc/cuda/*.cu.
//
// The same compile feeds the resource table (scripts/cuda_resources.py): ptxas -v gives each
// kernel's registers, spills and static shared memory, the PTX (nvcc -keep) each kernel's
// __launch_bounds__ and the tile manifest below.
#include <utility>

#include "../classifier.cuh"
#include "../fwht.cuh"
#include "../orders.cuh"
#include "../quantize.cuh"

namespace hadamard_kernels {
namespace cuda {

#define HADAMARD_KERNELS_INSTANTIATE(T)                                                              \
  template cudaError_t launch_transform<T>(const T*, T*, const TransformParams&, void*, cudaStream_t); \
  template cudaError_t launch_classifier_forward<T>(const T*, const acc_of<T>*, const T*, T*,          \
                                                    const ClassifierParams&, void*, cudaStream_t);     \
  template cudaError_t launch_classifier_backward<T>(const T*, const T*, int64_t, int64_t,             \
                                                     const acc_of<T>*, T*, acc_of<T>*,                 \
                                                     const ClassifierParams&, void*, cudaStream_t);     \
  template cudaError_t launch_kn<T>(const T*, T*, const int8_t*, const acc_of<T>*, const acc_of<T>*,          \
                                    const KnParams&, void*, cudaStream_t);                               \
  template cudaError_t launch_kn_quantize<T>(const T*, uint8_t*, float*, const int8_t*, const acc_of<T>*,      \
                                             const KnParams&, const QuantParams&, void*, cudaStream_t);

HADAMARD_KERNELS_INSTANTIATE(float)
HADAMARD_KERNELS_INSTANTIATE(double)
HADAMARD_KERNELS_INSTANTIATE(__half)
HADAMARD_KERNELS_INSTANTIATE(__nv_bfloat16)

#undef HADAMARD_KERNELS_INSTANTIATE

// Tile manifest: {L, threads, dynamic shared bytes} of RowTile<T, L> for every single-pass L,
// the launch configuration of row_transform_kernel, row_transform_centre_kernel,
// classifier_forward_kernel and classifier_backward_kernel. The PTX holds it as the byte
// initialiser of these __device__ variables (hk_tiles_f32, _f64, _f16, _bf16), so the script
// reads the launchers' own constants.
template <int N>
struct TileManifest {
  int row[N][3];
};

template <typename T, int... Ls>
constexpr TileManifest<sizeof...(Ls)> tile_manifest(std::integer_sequence<int, Ls...>) {
  return {{{Ls, RowTile<T, Ls>::THREADS, static_cast<int>(RowTile<T, Ls>::kSmemBytes)}...}};
}

template <typename T>
using SinglePassLs = std::make_integer_sequence<int, max_single_pass_log2<T>() + 1>;

#define HADAMARD_KERNELS_MANIFEST(T, NAME) \
  __device__ TileManifest<max_single_pass_log2<T>() + 1> hk_tiles_##NAME = tile_manifest<T>(SinglePassLs<T>{});

HADAMARD_KERNELS_MANIFEST(float, f32)
HADAMARD_KERNELS_MANIFEST(double, f64)
HADAMARD_KERNELS_MANIFEST(__half, f16)
HADAMARD_KERNELS_MANIFEST(__nv_bfloat16, bf16)

#undef HADAMARD_KERNELS_MANIFEST

// The same for kn_transform_kernel<T, L> (orders.cuh) and kn_quantize_kernel<T, L>
// (quantize.cuh, the same launch configuration), which launch with RowTile<T, L>::THREADS
// threads and a row buffer whose size depends on the call: listed at max(the K = 1 exchange
// buffer, the kKnTargetSmemBytes that a block of K > 1 rows aims at). A block whose one row
// needs more (a row of over 113 KB of accumulators: float32 rows above 28 * 2^10 entries)
// runs one block per SM instead (docs/DESIGN.md).
template <typename T, int... Ls>
constexpr TileManifest<sizeof...(Ls)> kn_manifest(std::integer_sequence<int, Ls...>) {
  return {{{Ls, RowTile<T, Ls>::THREADS,
            static_cast<int>(RowTile<T, Ls>::kExchangeElems * sizeof(acc_of<T>) > kKnTargetSmemBytes
                                 ? RowTile<T, Ls>::kExchangeElems * sizeof(acc_of<T>)
                                 : kKnTargetSmemBytes)}...}};
}

#define HADAMARD_KERNELS_KN_MANIFEST(T, NAME) \
  __device__ TileManifest<max_single_pass_log2<T>() + 1> hk_kn_tiles_##NAME = kn_manifest<T>(SinglePassLs<T>{});

HADAMARD_KERNELS_KN_MANIFEST(float, f32)
HADAMARD_KERNELS_KN_MANIFEST(double, f64)
HADAMARD_KERNELS_KN_MANIFEST(__half, f16)
HADAMARD_KERNELS_KN_MANIFEST(__nv_bfloat16, bf16)

#undef HADAMARD_KERNELS_KN_MANIFEST

}  // namespace cuda
}  // namespace hadamard_kernels
