// CPU-run CUDA harness: the CUDA surface that csrc/cuda/*.cuh use, for the host C++ compiler.
//
// The kernel source is compiled unchanged against this header (it stands in for
// <cuda_runtime.h>, <cuda_fp16.h> and <cuda_bf16.h>). Each block's threads run as cooperative
// fibers (sim.cpp) that give way only at __syncthreads() and at the __shfl_*_sync family, where
// the scheduler resumes them in a seeded order (random, or one warp run ahead of the others).
// Launches go through HK_LAUNCH, the dynamic shared-memory declaration through
// HK_DYNAMIC_SHARED (both defined as CUDA syntax by fwht.cuh when nvcc compiles it).
// Static __shared__ variables become function-local statics: blocks run one after another on
// one host thread, so a static is exactly one block's shared variable; sim.cpp checks that a
// block never reads a shared byte it has not written itself.
#pragma once

#include <math.h>  // float overloads of sqrt & co in the global namespace, as in CUDA

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

// ------------------------------------------------------------------------------------------
// Qualifiers.

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

// ------------------------------------------------------------------------------------------
// Built-in types and variables.

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
namespace hk_sim {
// A vector type's copy is one access of its whole size, as the GPU does it (the host compiler
// would split it into scalar moves, which the memory counters would see as scalar accesses).
void vector_copy(void* dst, const void* src, size_t bytes);
}  // namespace hk_sim

#define HK_SIM_VECTOR_COPY(type)                                                   \
  type() = default;                                                                \
  type(const type& o) { hk_sim::vector_copy(this, &o, sizeof(type)); }            \
  type& operator=(const type& o) {                                                 \
    hk_sim::vector_copy(this, &o, sizeof(type));                                   \
    return *this;                                                                  \
  }

struct alignas(8) uint2 {
  unsigned x, y;
  HK_SIM_VECTOR_COPY(uint2)
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
  HK_SIM_VECTOR_COPY(uint4)
};
struct alignas(16) float4 {
  float x, y, z, w;
  HK_SIM_VECTOR_COPY(float4)
  float4(float a, float b, float c, float d) : x(a), y(b), z(c), w(d) {}
};
struct alignas(16) double2 {
  double x, y;
  HK_SIM_VECTOR_COPY(double2)
  double2(double a, double b) : x(a), y(b) {}
};
#undef HK_SIM_VECTOR_COPY
inline float4 make_float4(float x, float y, float z, float w) { return float4(x, y, z, w); }
inline double2 make_double2(double x, double y) { return double2(x, y); }

// Set by the scheduler before each fiber resumes.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

// ------------------------------------------------------------------------------------------
// float16 / bfloat16 storage types and their round-to-nearest-even conversions.

struct __half {
  unsigned short x;
};
struct __nv_bfloat16 {
  unsigned short x;
};

inline float __half2float(__half h) {
  _Float16 f;
  memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // IEEE round to nearest even, as the GPU
  __half h;
  memcpy(&h.x, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = uint32_t{b.x} << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t bits;
  memcpy(&bits, &v, 4);
  __nv_bfloat16 b;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    b.x = 0x7fff;  // NaN, as CUDA returns it
  } else {
    b.x = static_cast<unsigned short>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
  return b;
}

// ------------------------------------------------------------------------------------------
// Runtime API (the part the launchers use).

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace hk_sim {

enum class ShflKind { kIdx, kUp, kDown, kXor };

// The fiber runtime (sim.cpp).
void barrier();
uint64_t shuffle(ShflKind kind, unsigned mask, uint64_t bits, int arg, int width);
void* dynamic_shared();
cudaError_t get_last_error();
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// A kernel body: every thread of every block calls run(ctx).
struct KernelBody {
  void* ctx;
  void (*run)(void* ctx);
};
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem, KernelBody body);

// Whether mutant `id` is switched on (environment HK_SIM_MUTANT=id): the mutation tests of
// tests/test_cuda_sim.py edit a copy of the kernels to consult it.
bool mutant(int id);

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, A&&... args) {
  // The parameters, converted once as the launch converts them; each thread gets copies.
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  using Params = decltype(params);
  struct Ctx {
    void (*kernel)(P...);
    Params* params;
  } ctx{kernel, &params};
  KernelBody body{&ctx, [](void* c) {
                    Ctx* k = static_cast<Ctx*>(c);
                    std::apply(k->kernel, *k->params);
                  }};
  run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem, body);
}

template <typename T>
T shfl(ShflKind kind, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &var, sizeof(T));
  bits = shuffle(kind, mask, bits, arg, width);
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace hk_sim

inline cudaError_t cudaGetLastError() { return hk_sim::get_last_error(); }
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
// The simulated device is an sm_90: 227 KB of dynamic shared memory per block.
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *value = 227 * 1024;
  return cudaSuccess;
}
template <typename K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return hk_sim::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}

// ------------------------------------------------------------------------------------------
// Device intrinsics.

inline void __syncthreads() { hk_sim::barrier(); }

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return hk_sim::shfl(hk_sim::ShflKind::kIdx, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return hk_sim::shfl(hk_sim::ShflKind::kUp, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return hk_sim::shfl(hk_sim::ShflKind::kDown, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return hk_sim::shfl(hk_sim::ShflKind::kXor, mask, var, lane_mask, width);
}

// The two macros fwht.cuh would otherwise define as CUDA syntax.
#define HK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::hk_sim::launch(kernel, (grid), (block), (smem), (stream), __VA_ARGS__)
#define HK_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::hk_sim::dynamic_shared())
