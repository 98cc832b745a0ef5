// hadamard_kernels: CUDA device code of the row-wise Hadamard transform (no torch here).
//
//     out[r, :out] = scale * H_M[:out, :in] @ x[r, :in]      M = next_pow2(max(in, out)) = 2^L
//
// H_M is the Kronecker product of L copies of [[1, 1], [1, -1]], one per bit of the column
// index, and the L butterfly levels commute: they can run in any order. A row of M entries is
// spread over the registers of TPR threads, and each bit of the column index is handled where
// it lives:
//
//   column = (v * TPR + t) * KV + k      k < KV: the entries of one 16-byte vector (registers)
//                                        t < TPR: thread of the row = (warp w, lane)
//                                        v < V:   which of the thread's V vectors (registers)
//
//   1. k bits and v bits: butterflies inside each thread's registers;
//   2. the lane bits: __shfl_xor_sync, one shuffle per entry and bit;
//   3. the warp bits (only when a row spans W > 1 warps): one exchange through shared memory
//      that swaps the warp bits with the low bits of v, then butterflies in registers again.
//
// The exchange leaves every thread holding whole KV-vectors with the lanes on consecutive
// vectors, so the result is stored straight from registers with coalesced 16-byte stores:
// one read and one write of global memory per entry, for every M <= 2^15 (2^14 in float64,
// whose 8-byte accumulators would need 256 KB of shared memory at 2^15).
//
// Larger M (up to 2^20) takes two passes over an accumulator-typed workspace, M = M1 * M2:
//   pass 1: the same row kernel transforms each contiguous chunk of M1 columns (low bits);
//   pass 2: a column kernel transforms, for every column j < M1, the M2 entries j + i * M1
//           (high bits) in registers (float64 at 2^20: the highest bit across a lane pair),
//           lanes on consecutive j (coalesced), and writes the output.
// Why not thread block clusters: a float32 row of 2^20 entries is 4 MB, more than the 16
// largest CTAs of a cluster hold in shared memory together, so some multi-pass scheme is
// needed anyway; two passes over an L2-resident workspace keep one code path for all types.
//
// Everything accumulates in float32 (float64 for double). Sizes and strides are int64.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../hadamard.h"

// The two pieces of CUDA syntax a host compiler cannot read, as macros, so that the CPU-run
// harness (tests/cuda_sim/) compiles this unchanged source with its own definitions; under
// nvcc they expand to the launch and the dynamic shared-memory declaration.
#ifndef HK_LAUNCH
#define HK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif
#ifndef HK_DYNAMIC_SHARED
#define HK_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace hadamard_kernels {
namespace cuda {

// ------------------------------------------------------------------------------------------
// Number types: storage T, accumulator Num<T>::acc, conversions.

template <typename T>
struct Num;
template <>
struct Num<float> {
  using acc = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <>
struct Num<double> {
  using acc = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};
template <>
struct Num<__half> {
  using acc = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
using acc_of = typename Num<T>::acc;

// sign * x + p with sign = +-1: exactly x + p or p - x (the multiplication is exact).
__device__ __forceinline__ float signed_add(float sign, float x, float p) { return fmaf(sign, x, p); }
__device__ __forceinline__ double signed_add(double sign, double x, double p) { return fma(sign, x, p); }

// ------------------------------------------------------------------------------------------
// The classifier's norm without overflow or underflow (tests/test_cuda_sim_extremes.py).
//
// A sum of squares in [norm_safe_low, norm_safe_high] is accurate (the squares lost to
// underflow, < min() each and at most 2^20 of them, lie below its rounding) and leaves room
// for adding 2^6 of them (the chunks of pass 2) and for H @ x (|entries| <= sqrt(M) ||x||).
// Any other nonzero finite row (or pass-1 chunk) is rescaled by 2^k, exactly, k bringing its
// largest entry into [1, 2) (at most the largest exponent, for subnormal rows), and y comes
// from x' = 2^k x:  y = alpha * H x' / max(||x'||, 2^k eps)  (the CPU kernel does the same).
// Scaling by a power of two changes no rounding: a rescaled row gives, bit for bit, what the
// fast path gives for the same row scaled into the safe range. Zero rows and nearly all
// others take the fast path (k = 0).

template <typename A>
__host__ __device__ constexpr A norm_safe_low() {
  if constexpr (sizeof(A) == 4) {
    return 0x1p-83f;  // min() / epsilon() * 2^20
  } else {
    return 0x1p-950;
  }
}
template <typename A>
__host__ __device__ constexpr A norm_safe_high() {
  if constexpr (sizeof(A) == 4) {
    return 0x1p120f;  // below max() / 2^6
  } else {
    return 0x1p1016;
  }
}
// Largest |k| of a rescale: 2^k and 2^-k are normal numbers.
template <typename A>
__host__ __device__ constexpr int max_rescale_exponent() {
  return sizeof(A) == 4 ? 126 : 1022;
}

// 2^k for |k| <= max_rescale_exponent, from its bits (no libm call: ldexp / ilogb calls made
// the largest tiles spill).
template <typename A>
__device__ __forceinline__ A pow2(int k) {
  if constexpr (sizeof(A) == 4) {
    const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
  } else {
    const uint64_t bits = static_cast<uint64_t>(k + 1023) << 52;
    double f;
    memcpy(&f, &bits, sizeof f);
    return f;
  }
}

// x * 2^k, |k| <= max_rescale_exponent: exact unless the result leaves the normal range.
template <typename A>
__device__ __forceinline__ A scale2(A x, int k) {
  return x * pow2<A>(k);
}

// floor(log2(x)) for a finite x > 0, subnormals included.
template <typename A>
__device__ __forceinline__ int exponent_of(A x) {
  if constexpr (sizeof(A) == 4) {
    const int sub = x < 0x1p-126f ? 64 : 0;
    const float y = sub ? x * 0x1p64f : x;
    uint32_t bits;
    memcpy(&bits, &y, sizeof bits);
    return static_cast<int>((bits >> 23) & 0xff) - 127 - sub;
  } else {
    const int sub = x < 0x1p-1022 ? 64 : 0;
    const double y = sub ? x * 0x1p64 : x;
    uint64_t bits;
    memcpy(&bits, &y, sizeof bits);
    return static_cast<int>((bits >> 52) & 0x7ff) - 1023 - sub;
  }
}

template <typename A>
__device__ __forceinline__ bool norm_is_safe(A sumsq) {
  return sumsq >= norm_safe_low<A>() && sumsq <= norm_safe_high<A>();
}

// Whether a row with this sum of squares and largest |entry| must be rescaled: nonzero,
// finite (inf and NaN rows give inf / NaN as they are), sum of squares outside the safe range.
template <typename A>
__device__ __forceinline__ bool needs_rescale(A sumsq, A amax) {
  return amax > A(0) && amax - amax == A(0) && !norm_is_safe(sumsq);
}

// The k with max|x| * 2^k in [1, 2), clamped to +-max_rescale_exponent (amax > 0, finite):
// then max|x| * 2^k lies in [2^-23, 4) for float (subnormal rows; rows near max()), whose
// squares are still safe.
template <typename A>
__device__ __forceinline__ int rescale_exponent(A amax) {
  const int k = -exponent_of(amax);
  constexpr int kMax = max_rescale_exponent<A>();
  return k < -kMax ? -kMax : (k > kMax ? kMax : k);
}

// 2^d for d <= 0, exactly; 0 below the normal range (pass 2 aligns chunk scales with it:
// what it then drops is below the rounding of the largest chunk).
template <typename A>
__device__ __forceinline__ A pow2_nonpositive(int d) {
  if constexpr (sizeof(A) == 4) {
    const uint32_t bits = d < -126 ? 0u : static_cast<uint32_t>(d + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
  } else {
    const uint64_t bits = d < -1022 ? 0ull : static_cast<uint64_t>(d + 1023) << 52;
    double f;
    memcpy(&f, &bits, sizeof f);
    return f;
  }
}

// The factor on H x' of a row x = 2^-k x' with ss = ||x'||^2: alpha / max(||x||, eps). 0 for
// a zero row (x_hat = 0 for any eps, and alpha / eps may overflow). For k = 0 this is
// alpha * (1 / max(||x||, eps)) as in the CPU kernel, NaN propagating.
template <typename A>
__device__ __forceinline__ A classifier_coefficient(A alpha, A ss, int k, A eps) {
  if (ss == A(0)) return A(0);
  const A norm = sqrt(ss);
  return norm < scale2(eps, k) ? alpha * scale2(A(1) / eps, -k) : alpha * (A(1) / norm);
}

// Sentinel exponent of an all-zero pass-1 chunk: above every k, so that pass 2 takes the
// scale of the other chunks.
template <typename A>
__host__ __device__ constexpr A zero_chunk_exponent() {
  return A(1 << 14);
}

// x, hidden from the optimiser (no instruction), anew in every iteration of a grid-stride
// loop. The kernels take loop-invariant strides and column offsets through it where each
// entry's address derives from them: otherwise the compiler hoists every entry's 64-bit
// address (or offset) out of the loop and keeps them all live, two registers per entry, which
// spilled. (Not for pointers: the loads through them would lose the global address space.)
__device__ __forceinline__ int64_t opaque(int64_t x) {
#ifdef __CUDA_ARCH__
  asm volatile("" : "+l"(x));
#endif
  return x;
}
// The same for an accumulator: values derived from it (1 / eps) are not hoisted either.
__device__ __forceinline__ float opaque(float x) {
#ifdef __CUDA_ARCH__
  asm volatile("" : "+f"(x));
#endif
  return x;
}
__device__ __forceinline__ double opaque(double x) {
#ifdef __CUDA_ARCH__
  asm volatile("" : "+d"(x));
#endif
  return x;
}

// ------------------------------------------------------------------------------------------
// Vector memory access: N consecutive T as one 2/4/8/16-byte load or store.

template <int kBytes>
struct RawVec;
template <>
struct RawVec<2> {
  using type = unsigned short;
};
template <>
struct RawVec<4> {
  using type = unsigned int;
};
template <>
struct RawVec<8> {
  using type = uint2;
};
template <>
struct RawVec<16> {
  using type = uint4;
};

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, acc_of<T> (&dst)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  constexpr int kPiece = kBytes < 16 ? kBytes : 16;  // wider vectors go in 16-byte pieces
  using R = typename RawVec<kPiece>::type;
  T v[N];
#pragma unroll
  for (int i = 0; i < kBytes / kPiece; ++i) {
    const R raw = reinterpret_cast<const R*>(p)[i];
    memcpy(reinterpret_cast<unsigned char*>(v) + i * kPiece, &raw, kPiece);
  }
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = Num<T>::load(v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const T (&src)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  constexpr int kPiece = kBytes < 16 ? kBytes : 16;
  using R = typename RawVec<kPiece>::type;
#pragma unroll
  for (int i = 0; i < kBytes / kPiece; ++i) {
    R raw;
    memcpy(&raw, reinterpret_cast<const unsigned char*>(src) + i * kPiece, kPiece);
    reinterpret_cast<R*>(p)[i] = raw;
  }
}

// 16 bytes of accumulators to / from shared memory.
template <typename A>
__device__ __forceinline__ void st_shared16(A* p, const A* src) {
  if constexpr (std::is_same_v<A, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(src[0], src[1], src[2], src[3]);
  } else {
    *reinterpret_cast<double2*>(p) = make_double2(src[0], src[1]);
  }
}
template <typename A>
__device__ __forceinline__ void ld_shared16(const A* p, A* dst) {
  if constexpr (std::is_same_v<A, float>) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
  } else {
    const double2 v = *reinterpret_cast<const double2*>(p);
    dst[0] = v.x, dst[1] = v.y;
  }
}

inline bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// Whether a row of n columns at ptr with row stride rs can use KV-entry vectors.
template <typename T>
inline bool can_vectorize(const void* ptr, int64_t row_stride, int64_t col_stride, int64_t n, int kv) {
  return col_stride == 1 && n % kv == 0 && row_stride % kv == 0 &&
         aligned_to(ptr, int64_t{kv} * static_cast<int64_t>(sizeof(T)));
}

// ------------------------------------------------------------------------------------------
// Tile shape of the single-pass row kernel for M = 2^L entries of t_size bytes.

struct TileConfig {
  int kv;       // entries per vector (16 bytes, fewer when the row is shorter or see below)
  int v;        // vectors per thread and row
  int tpr;      // threads per row
  int w;        // warps per row (1 if tpr <= 32)
  int lanes;    // lanes of a row within one warp: min(tpr, 32)
  int rpb;      // rows per block
  int threads;  // tpr * rpb
};

__host__ __device__ constexpr int cmin(int a, int b) { return a < b ? a : b; }
__host__ __device__ constexpr int cmax(int a, int b) { return a < b ? b : a; }

__host__ __device__ constexpr int ilog2(int64_t n) {
  int l = 0;
  while ((int64_t{1} << l) < n) ++l;
  return l;
}

// The rules, in order:
//  - one vector a row: one thread per row, everything in registers, no shuffles;
//  - 2 to 4 vectors: 2 threads per row, so that each warp-wide load or store covers whole
//    32-byte sectors (one thread per row reading its 16-byte vectors in turn touched twice the
//    sectors per instruction: 50% coalescing in the CPU-run harness's counters);
//  - up to 128 vectors: 4 vectors per thread, up to 32 threads per row (1 warp);
//  - more: W warps per row with V >= W vectors per thread (the exchange swaps W warp bits
//    with log2(W) bits of v), aiming at 32 entries per thread and allowing 64; if only more
//    would do, the vectors are halved (float16 at 2^15: 8-byte vectors, 512 threads).
//  - 256 threads a block, several rows per block below 256 threads per row.
// Registers: at most 64 accumulators of data per thread.
__host__ __device__ constexpr TileConfig make_tile_config(int L, int t_size) {
  const int m = 1 << L;
  int kv = cmin(16 / t_size, m);
  TileConfig c{};
  for (;;) {
    const int nvec = m / kv;
    c.kv = kv;
    if (nvec == 1) {
      c.v = 1;
      c.tpr = 1;
    } else if (nvec <= 4) {
      c.v = nvec / 2;
      c.tpr = 2;
    } else if (nvec <= 128) {
      c.v = 4;
      c.tpr = nvec / 4;
    } else {
      const int p = nvec / 32;             // v * w
      const int target_v = cmax(1, 32 / kv);
      int w = cmax(1, p / target_v);
      int s = 1;                           // largest power of two with s * s <= p
      while (4 * s * s <= p) s *= 2;
      w = cmin(cmin(w, s), 32);
      const int v = p / w;
      if (kv * v > 64 && kv > 1) {
        kv /= 2;
        continue;
      }
      c.v = v;
      c.tpr = 32 * w;
    }
    break;
  }
  c.w = c.tpr >= 32 ? c.tpr / 32 : 1;
  c.lanes = c.tpr < 32 ? c.tpr : 32;
  c.rpb = c.tpr >= 256 ? 1 : 256 / c.tpr;
  c.threads = c.tpr * c.rpb;
  return c;
}

// Blocks per SM that a row-tile kernel's __launch_bounds__ promises. Contiguous path: 16
// resident warps (tiles have 256 or 512 threads), so ptxas keeps every tile at <= 128 registers
// and 25% occupancy on sm_90; the classifier tiles of 2^10 - 2^14 entries took up to 234 without
// (12.5%). ptxas takes the promise as its target and spends registers up to it, so small tiles
// use more than their minimum (row_transform_kernel<float, float, 8, false>: 53 registers, 35
// without, 50% instead of 75% occupancy); without any promise its heuristic spilled a few bytes
// in half a dozen tiles. Strided instantiations: 1, the whole register file for their 64-bit
// addresses (see RowTile::load).
template <bool kStrided>
__host__ __device__ constexpr int tile_min_blocks(int threads) {
  return kStrided ? 1 : cmax(1, 512 / threads);
}

// Largest L done in one pass for storage type T (the exchange buffer, M accumulators, must
// fit in the 227 KB of shared memory of an sm_90 block).
template <typename T>
__host__ __device__ constexpr int max_single_pass_log2() {
  return sizeof(acc_of<T>) == 8 ? 14 : 15;
}

// ------------------------------------------------------------------------------------------
// One row (or chunk) held in the registers of TPR threads; see the file comment.

template <typename T, int L>
struct RowTile {
  using A = acc_of<T>;
  static constexpr TileConfig kCfg = make_tile_config(L, static_cast<int>(sizeof(T)));
  static constexpr int KV = kCfg.kv, V = kCfg.v, TPR = kCfg.tpr, W = kCfg.w, LANES = kCfg.lanes;
  static constexpr int RPB = kCfg.rpb, THREADS = kCfg.threads;
  static constexpr int M = 1 << L;
  static constexpr int NVEC = M / KV;
  static_assert(KV * V * TPR == M, "tile must cover the row");
  static_assert(W == 1 || (V % W == 0 && TPR == 32 * W), "the exchange needs V >= W");
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps, at most 1024 threads");
  // Shared memory of a block: the exchange buffer (RPB rows of M accumulators, only if
  // W > 1) followed by the reduction scratch (RPB * W pairs of accumulators).
  static constexpr size_t kExchangeElems = W > 1 ? size_t(RPB) * M : 0;
  static constexpr size_t kSmemBytes = (kExchangeElems + (W > 1 ? size_t(RPB) * W * 2 : 0)) * sizeof(A);

  A a[V][KV];
  int t;     // thread within the row
  int warp;  // warp within the row (0 if TPR <= 32)
  int lane;  // lane within the warp
  int rib;   // row within the block

  __device__ __forceinline__ RowTile()
      : t(static_cast<int>(threadIdx.x) % TPR),
        warp(t / 32),
        lane(static_cast<int>(threadIdx.x) % 32),
        rib(static_cast<int>(threadIdx.x) / TPR) {}

  // Vector index (column / KV) of register vector v before / after the transform, split in
  // a per-thread part and a compile-time part (so loads and stores use immediate offsets).
  __device__ __forceinline__ int q_load_thread() const { return t; }
  static __device__ __forceinline__ constexpr int q_load_offset(int v) { return v * TPR; }
  __device__ __forceinline__ int q_final_thread() const {
    if constexpr (W > 1) {
      return warp * W * 32 + lane;  // ((vh * W + warp) * W + vl) * 32 + lane, v = vh * W + vl
    } else {
      return t;
    }
  }
  static __device__ __forceinline__ constexpr int q_final_offset(int v) {
    if constexpr (W > 1) {
      return ((v / W) * W * W + v % W) * 32;
    } else {
      return v * TPR;
    }
  }
  __device__ __forceinline__ int q_load(int v) const { return q_load_offset(v) + q_load_thread(); }
  __device__ __forceinline__ int q_final(int v) const { return q_final_offset(v) + q_final_thread(); }

  // Columns [0, n - col0) clamped to [-1, M]: the bound of a column relative to col0.
  static __device__ __forceinline__ int clamp_limit(int64_t n, int64_t col0) {
    const int64_t lim = n - col0;
    return lim < 0 ? -1 : (lim > M ? M : static_cast<int>(lim));
  }

  // Loads columns col0 + [0, M) of one row (entries at columns >= n read as 0; all 0 if
  // !valid). kStrided: any col_stride, one scalar load per entry. Otherwise col_stride must be
  // 1, and vec picks KV-entry vectors, which need n % KV == 0, col0 % KV == 0 and a
  // KV * sizeof(T)-aligned row. (Strided loads are a separate instantiation: their per-entry
  // 64-bit addresses would raise the register count of the fast kernel by 2-3x.)
  // Returns this thread's sum of squares if kSumSq.
  template <bool kSumSq, bool kStrided>
  __device__ __forceinline__ A load(const T* row, int64_t col_stride, int64_t col0, int64_t n, bool vec,
                                    bool valid) {
    const int lim = valid ? clamp_limit(n, col0) : -1;
    const int c_thread = q_load_thread() * KV;
    if constexpr (kStrided) {
      const int64_t cs = opaque(col_stride);
      const T* base = row + (col0 + c_thread) * cs;
#pragma unroll
      for (int v = 0; v < V; ++v)
#pragma unroll
        for (int k = 0; k < KV; ++k) {
          const int c = q_load_offset(v) * KV + k;
          a[v][k] = c + c_thread < lim ? Num<T>::load(base[c * cs]) : A(0);
        }
    } else {
      const T* base = row + col0 + c_thread;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int c = q_load_offset(v) * KV;
        if (vec) {
          if (c + c_thread < lim) {
            load_vec<T, KV>(base + c, a[v]);
          } else {
#pragma unroll
            for (int k = 0; k < KV; ++k) a[v][k] = A(0);
          }
        } else {
#pragma unroll
          for (int k = 0; k < KV; ++k) a[v][k] = c + c_thread + k < lim ? Num<T>::load(base[c + k]) : A(0);
        }
      }
    }
    A ss = 0;
    if constexpr (kSumSq) {
#pragma unroll
      for (int v = 0; v < V; ++v)
#pragma unroll
        for (int k = 0; k < KV; ++k) ss += a[v][k] * a[v][k];
    }
    return ss;
  }

  // Loads the KV entries of another row at the columns of register vector v of the final
  // layout (0 at columns >= lim, lim from clamp_limit); same kStrided / vec rules as load.
  template <bool kStrided>
  __device__ __forceinline__ void load_final(const T* row, int64_t col_stride, int lim, bool vec, int v,
                                             A (&dst)[KV]) const {
    load_final_at<kStrided>(row, col_stride, lim, vec, v, dst, q_final_thread() * KV);
  }

  // load_final with c_thread = q_final_thread() * KV from the caller (which may pass it through
  // opaque: the classifier's ETF backward).
  template <bool kStrided>
  __device__ __forceinline__ void load_final_at(const T* row, int64_t col_stride, int lim, bool vec, int v,
                                                A (&dst)[KV], int c_thread) const {
    const int c = q_final_offset(v) * KV;  // compile-time: an immediate offset from base
    if constexpr (kStrided) {
      const int64_t cs = opaque(col_stride);
      const T* base = row + c_thread * cs;
#pragma unroll
      for (int k = 0; k < KV; ++k) dst[k] = c + c_thread + k < lim ? Num<T>::load(base[(c + k) * cs]) : A(0);
    } else {
      const T* base = row + c_thread;
      if (vec) {
        if (c + c_thread < lim) {
          load_vec<T, KV>(base + c, dst);
        } else {
#pragma unroll
          for (int k = 0; k < KV; ++k) dst[k] = A(0);
        }
      } else {
#pragma unroll
        for (int k = 0; k < KV; ++k) dst[k] = c + c_thread + k < lim ? Num<T>::load(base[c + k]) : A(0);
      }
    }
  }

  __device__ __forceinline__ static void bfly(A& x, A& y) {
    const A s = x + y, d = x - y;
    x = s;
    y = d;
  }

  // Steps 1-3 of the file comment. Every thread of the block must call it (it shuffles and,
  // if W > 1, synchronises the block); smem is the block's exchange buffer. The caller must
  // __syncthreads() before the next call reuses smem.
  __device__ __forceinline__ void transform(A* smem) {
#pragma unroll
    for (int h = 1; h < KV; h <<= 1)
#pragma unroll
      for (int v = 0; v < V; ++v)
#pragma unroll
        for (int k = 0; k < KV; ++k)
          if (!(k & h)) bfly(a[v][k], a[v][k | h]);
#pragma unroll
    for (int h = 1; h < V; h <<= 1)
#pragma unroll
      for (int v = 0; v < V; ++v)
        if (!(v & h))
#pragma unroll
          for (int k = 0; k < KV; ++k) bfly(a[v][k], a[v | h][k]);
#pragma unroll
    for (int h = 1; h < LANES; h <<= 1) {
      const A sign = (t & h) ? A(-1) : A(1);
#pragma unroll
      for (int v = 0; v < V; ++v)
#pragma unroll
        for (int k = 0; k < KV; ++k) {
          const A p = __shfl_xor_sync(0xffffffffu, a[v][k], h);
          a[v][k] = signed_add(sign, a[v][k], p);
        }
    }
    if constexpr (W > 1) {
      exchange(smem);
#pragma unroll
      for (int h = 1; h < W; h <<= 1)
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (!(v & h))
#pragma unroll
            for (int k = 0; k < KV; ++k) bfly(a[v][k], a[v | h][k]);
    }
  }

  // Natural layout -> final layout through shared memory. Layout: 16-byte chunk c of vector
  // q at (c * NVEC + q) * AV, so a warp's 32 lanes (consecutive q) touch 512 consecutive
  // bytes on both sides: no bank conflicts.
  __device__ __forceinline__ void exchange(A* smem) {
    constexpr int AV = 16 / static_cast<int>(sizeof(A));
    constexpr int CH = KV / AV;
    static_assert(KV % AV == 0, "exchange works on 16-byte chunks of accumulators");
    A* base = smem + size_t(rib) * M;
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int c = 0; c < CH; ++c) st_shared16(base + (c * NVEC + q_load(v)) * AV, &a[v][c * AV]);
    __syncthreads();
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int c = 0; c < CH; ++c) ld_shared16(base + (c * NVEC + q_final(v)) * AV, &a[v][c * AV]);
  }

  // Sum of x and of y (max of y if kMaxY) over the row's threads, identical in every thread of
  // the row (xor butterflies combine the same two numbers on both sides; the warps' partials
  // are combined in warp order). red: the block's reduction scratch. Synchronises the block if
  // W > 1; the caller must __syncthreads() before red is written again.
  template <bool kMaxY = false>
  __device__ __forceinline__ void row_sum2(A& x, A& y, A* red) const {
#pragma unroll
    for (int h = 1; h < LANES; h <<= 1) {
      x += __shfl_xor_sync(0xffffffffu, x, h);
      const A yo = __shfl_xor_sync(0xffffffffu, y, h);
      y = kMaxY ? fmax(y, yo) : y + yo;
    }
    if constexpr (W > 1) {
      if (lane == 0) {
        red[(rib * W + warp) * 2] = x;
        red[(rib * W + warp) * 2 + 1] = y;
      }
      __syncthreads();
      x = red[rib * W * 2];
      y = red[rib * W * 2 + 1];
      // Not all 2 * (W - 1) loads at once: classifier_forward<float64, 14> spilled.
#pragma unroll 4
      for (int i = 1; i < W; ++i) {
        x += red[(rib * W + i) * 2];
        y = kMaxY ? fmax(y, red[(rib * W + i) * 2 + 1]) : y + red[(rib * W + i) * 2 + 1];
      }
    }
  }

  // Sum of x over the row's threads, as row_sum2 (red: its first slots).
  __device__ __forceinline__ void row_sum1(A& x, A* red) const {
#pragma unroll
    for (int h = 1; h < LANES; h <<= 1) x += __shfl_xor_sync(0xffffffffu, x, h);
    if constexpr (W > 1) {
      if (lane == 0) red[(rib * W + warp) * 2] = x;
      __syncthreads();
      x = red[rib * W * 2];
#pragma unroll
      for (int i = 1; i < W; ++i) x += red[(rib * W + i) * 2];
    }
  }

  // lim (from clamp_limit) relative to this thread's first column of the final layout
  // (kFinal: after transform) or of the load layout, through opaque: each entry's test against
  // it has a compile-time column, and nothing per entry is hoisted out of the caller's row loop
  // (the classifier's ETF kernels spilled such hoisted bounds).
  template <bool kFinal>
  __device__ __forceinline__ int relative_limit(int lim) const {
    return static_cast<int>(opaque(int64_t{lim - (kFinal ? q_final_thread() : q_load_thread()) * KV}));
  }

  // This thread's sum of its entries at columns < lim (lim from clamp_limit) of the final
  // layout (the classifier's ETF head).
  __device__ __forceinline__ A sum_below(int lim) const {
    const int rel = relative_limit<true>(lim);
    A s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int k = 0; k < KV; ++k)
        if (q_final_offset(v) * KV + k < rel) s += a[v][k];
    return s;
  }

  // The classifier's rescale (see norm_safe_low) of the loaded row or chunk: on return ss is
  // the row's sum of squares of x' = 2^k x, identical in every thread of the row, and the
  // registers hold x'. Returns k (0 on the fast path). Every thread of the block must call it
  // (it shuffles; it synchronises the block if W > 1).
  // Cost on the fast path: per entry one max, one multiplication (by 1) and one square more;
  // the first row reduction carries max|x| beside the sum of squares (the same shuffles as
  // the sum alone with its idle second value), then one more reduction of one value
  // (log2(LANES) shuffles; if W > 1 two barriers more). The second reduction is
  // unconditional: under a branch (uniform, but ptxas cannot know) the largest tiles spilled.
  __device__ __forceinline__ int rescale_for_norm(A& ss, A* red) {
    A amax = 0;
    ss = 0;
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int k = 0; k < KV; ++k) {
        ss += a[v][k] * a[v][k];
        amax = fmax(amax, fabs(a[v][k]));
      }
    row_sum2<true>(ss, amax, red);
    const bool rescale = needs_rescale(ss, amax);
    const int e = rescale ? rescale_exponent(amax) : 0;
    const A scale = pow2<A>(e);
    A ss2 = 0;
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int k = 0; k < KV; ++k) {
        a[v][k] *= scale;
        ss2 += a[v][k] * a[v][k];
      }
    if constexpr (W > 1) __syncthreads();  // every thread has read red
    row_sum1(ss2, red);
    ss = rescale ? ss2 : ss;
    return e;
  }

  // Writes f(a, column) as O to row[column] for the columns < n of the final layout.
  // vec: KV-entry vector stores, requires n % KV == 0 and a KV * sizeof(O)-aligned row.
  template <typename O, typename F>
  __device__ __forceinline__ void store(O* row, int64_t n, bool vec, F f) const {
    const int lim = clamp_limit(n, 0);
    // Through opaque: f may index a loop-invariant array by the column (the classifier's bias).
    const int c_thread = static_cast<int>(opaque(int64_t{q_final_thread() * KV}));
    O* base = row + c_thread;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int c = q_final_offset(v) * KV;
      if (vec) {
        if (c + c_thread < lim) {
          O o[KV];
#pragma unroll
          for (int k = 0; k < KV; ++k) o[k] = Num<O>::store(f(a[v][k], c + c_thread + k));
          store_vec<O, KV>(base + c, o);
        }
      } else {
#pragma unroll
        for (int k = 0; k < KV; ++k)
          if (c + c_thread + k < lim) base[c + k] = Num<O>::store(f(a[v][k], c + c_thread + k));
      }
    }
  }
};

// ------------------------------------------------------------------------------------------
// Row kernel: the transform, or pass 1 of the two-pass scheme.

template <typename T, typename O>
struct RowArgs {
  const T* x;
  O* out;
  int64_t rows;            // tiles to do: input rows, times 2^log2_chunks in pass 1
  int log2_chunks;         // pass 1: each input row is cut in 2^log2_chunks chunks of M
  int64_t in_features;     // input columns (zero beyond)
  int64_t out_features;    // output columns written per tile (<= M)
  int64_t x_row_stride;
  int64_t x_col_stride;
  int64_t out_row_stride;  // output columns are contiguous
  bool vec_load;
  bool vec_store;
  acc_of<T> scale;
  acc_of<T>* sumsq;        // pass 1 of the classifier: per tile (sum of squares of 2^k x, k), else null
  // Pass 1 of the classifier's ETF head: per tile (the sum of its M outputs, the sum of those at
  // columns < centre_cols), from which classifier_chunk_scale_kernel forms the row's mean; else null.
  acc_of<T>* centre;
  int64_t centre_cols;
};

// The row kernels' body. kCentre: pass 1 of the classifier's ETF head (p.centre), in its own
// kernel so that the plain transform's code stays as it was (the reduction under a runtime
// branch raised its registers, 80 -> 96 for float32 L = 11, occupancy 37.5% -> 25%).
template <typename T, typename O, int L, bool kStrided, bool kCentre>
__device__ __forceinline__ void row_transform_rows(const RowArgs<T, O>& p) {
  using Tile = RowTile<T, L>;
  using A = acc_of<T>;
  HK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* smem = reinterpret_cast<A*>(smem_raw);
  A* red = smem + Tile::kExchangeElems;
  Tile tile;
  const int64_t groups = (p.rows + Tile::RPB - 1) / Tile::RPB;
  const int64_t chunk_mask = (int64_t{1} << p.log2_chunks) - 1;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t r = g * Tile::RPB + tile.rib;
    const bool valid = r < p.rows;
    const int64_t row = valid ? r >> p.log2_chunks : 0;
    const int64_t col0 = (r & chunk_mask) * Tile::M;
    const T* xr = p.x + row * p.x_row_stride;
    if (p.sumsq != nullptr) {
      // The classifier's pass 1: the chunk rescaled by 2^k if needed (see norm_safe_low);
      // pass 2 brings the chunks to one scale.
      tile.template load<false, kStrided>(xr, p.x_col_stride, col0, p.in_features, p.vec_load, valid);
      A ss;
      const int k = tile.rescale_for_norm(ss, red);
      if (valid && tile.t == 0) {
        p.sumsq[2 * r] = ss;
        p.sumsq[2 * r + 1] = ss == A(0) ? zero_chunk_exponent<A>() : A(k);
      }
    } else {
      tile.template load<false, kStrided>(xr, p.x_col_stride, col0, p.in_features, p.vec_load, valid);
    }
    tile.transform(smem);
    if constexpr (kCentre) {
      A below = tile.sum_below(Tile::clamp_limit(p.centre_cols, 0));
      A all = tile.sum_below(Tile::M);
      tile.row_sum2(below, all, red);
      if (valid && tile.t == 0) {
        p.centre[2 * r] = all;
        p.centre[2 * r + 1] = below;
      }
    }
    if (valid) {
      const A s = p.scale;
      tile.store(p.out + r * p.out_row_stride, p.out_features, p.vec_store,
                 [s](A v, int64_t) { return s * v; });
    }
    if constexpr (Tile::W > 1) __syncthreads();
  }
}

template <typename T, typename O, int L, bool kStrided>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<kStrided>(RowTile<T, L>::THREADS))
    row_transform_kernel(const RowArgs<T, O> p) {
  row_transform_rows<T, O, L, kStrided, false>(p);
}

// Pass 1 of the classifier's ETF head: the row kernel, and per tile the sums of p.centre.
template <typename T, typename O, int L, bool kStrided>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<kStrided>(RowTile<T, L>::THREADS))
    row_transform_centre_kernel(const RowArgs<T, O> p) {
  row_transform_rows<T, O, L, kStrided, true>(p);
}

// ------------------------------------------------------------------------------------------
// Pass 2: the high bits. ws holds rows of M = M1 * 2^L2 accumulators, each a stack of 2^L2
// chunks transformed by pass 1; the 2^S threads of a column group own columns j*CPT ..
// j*CPT+CPT-1 of every chunk, each thread 2^(L2-S) * CPT registers, and transform across chunks:
// the low L2 - S bits of the chunk index in registers, the S high ones across lanes (one
// shuffle per entry). Lanes on consecutive j: a warp reads and writes 32 / 2^S consecutive
// column groups of 2^S chunks (whole 32-byte sectors).

enum class ColumnEpilogue { kScale, kClassifier };

template <typename T, typename O>
struct ColumnArgs {
  const acc_of<T>* ws;
  O* out;                  // may be ws itself (in place, O = acc)
  int64_t rows;
  int64_t m1;              // chunk size (a power of two >= 2^11)
  int64_t out_features;    // columns written
  int64_t out_row_stride;
  acc_of<T> scale;         // multiplies every output (kClassifier: alpha's factor)
  // kClassifier: y = scale * alpha / max(||x||, eps) * (h - mean) + bias; ws holds 2^K x
  // transformed, sumsq the row's (||2^K x||^2, K), mean the row's mean of its C outputs at
  // that scale (the ETF head) (classifier.cuh: classifier_chunk_scale_kernel).
  const acc_of<T>* alpha;  // device scalar
  const T* bias;           // or null
  const acc_of<T>* sumsq;  // [rows, 2]: (sum of squares of 2^K x, K)
  const acc_of<T>* mean;   // [rows], or null (no centring)
  bool normalize;
  acc_of<T> eps;
  bool vec_store;          // set by launch_column_kernel: CPT-entry vector stores
};

template <typename A, int L2>
__host__ __device__ constexpr int columns_per_thread() {
  constexpr int by_vector = 16 / static_cast<int>(sizeof(A));
  constexpr int by_registers = 64 / ((1 << L2) * static_cast<int>(sizeof(A)) / 4);
  return cmax(1, cmin(by_vector, by_registers));
}

// S: 1 where one thread's column group would need more than 64 registers of data (float64 at
// 2^6: 128, which held the kernel at 255 registers and 12.5% occupancy), else 0.
template <typename A, int L2>
__host__ __device__ constexpr int column_split_log2() {
  return (1 << L2) * columns_per_thread<A, L2>() * static_cast<int>(sizeof(A)) / 4 > 64 ? 1 : 0;
}

constexpr int kColumnThreads = 256;

// Blocks per SM promised by the split kernels' __launch_bounds__ (0: none): 2 caps them at 128
// registers (25% occupancy; 216 without). Not asked of the others, which stay below 128 by
// themselves: ptxas takes a promise as its target and spends registers up to it.
template <typename A, int L2>
__host__ __device__ constexpr int column_min_blocks() {
  return column_split_log2<A, L2>() > 0 ? 2 : 0;
}

template <typename T, typename O, int L2, ColumnEpilogue kEpi>
__global__ void __launch_bounds__(kColumnThreads, (column_min_blocks<acc_of<T>, L2>()))
    column_transform_kernel(const ColumnArgs<T, O> p) {
  using A = acc_of<T>;
  constexpr int S = column_split_log2<A, L2>();
  constexpr int H = 1 << L2;
  constexpr int HT = H >> S;         // chunks per thread
  constexpr int SPAN = 32 >> S;      // column groups per warp
  constexpr int CPT = columns_per_thread<A, L2>();
  const int m1 = static_cast<int>(p.m1);  // <= 2^15
  const int per_row = m1 / CPT;
  const int64_t total = p.rows * per_row;
  const int out_cols = static_cast<int>(p.out_features);  // <= 2^20
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int part = lane / SPAN;      // the S high bits of this thread's chunks
  const int h0 = part * HT;
  // Warp-uniform loop (the shuffles need the whole warp): lanes past the end idle.
  const int64_t warp = (int64_t{blockIdx.x} * kColumnThreads + threadIdx.x) / 32;
  for (int64_t g0 = warp * SPAN; g0 < total; g0 += int64_t{gridDim.x} * (kColumnThreads >> S)) {
    const int64_t g = g0 + lane % SPAN;
    const bool valid = g < total;
    const int64_t row = valid ? g / per_row : 0;
    const int j = valid ? static_cast<int>(g - row * per_row) * CPT : 0;
    // The row's coefficient first, while the registers of a are free.
    A coef = p.scale;
    A mean = 0;
    if constexpr (kEpi == ColumnEpilogue::kClassifier) {
      coef = *p.alpha * p.scale;
      if (p.normalize) {
        coef = classifier_coefficient(coef, p.sumsq[2 * row], static_cast<int>(p.sumsq[2 * row + 1]), p.eps);
      }
      if (p.mean != nullptr) mean = p.mean[row];
    }
    const A* src = p.ws + row * (int64_t{m1} * H) + int64_t{h0} * m1 + j;
    A a[HT][CPT];
#pragma unroll
    for (int h = 0; h < HT; ++h) {
      if (valid) {
        load_vec<A, CPT>(src + h * m1, a[h]);
      } else {
#pragma unroll
        for (int c = 0; c < CPT; ++c) a[h][c] = A(0);
      }
    }
#pragma unroll
    for (int s = 1; s < HT; s <<= 1)
#pragma unroll
      for (int h = 0; h < HT; ++h)
        if (!(h & s))
#pragma unroll
          for (int c = 0; c < CPT; ++c) {
            const A x = a[h][c], y = a[h | s][c];
            a[h][c] = x + y;
            a[h | s][c] = x - y;
          }
#pragma unroll
    for (int s = SPAN; s < 32; s <<= 1) {
      const A sign = (lane & s) ? A(-1) : A(1);
#pragma unroll
      for (int h = 0; h < HT; ++h)
#pragma unroll
        for (int c = 0; c < CPT; ++c) {
          const A q = __shfl_xor_sync(0xffffffffu, a[h][c], s);
          a[h][c] = signed_add(sign, a[h][c], q);
        }
    }
    if (!valid) continue;
    O* dst = p.out + row * p.out_row_stride + int64_t{h0} * m1 + j;
    auto value = [&](int h, int c) {
      A y;
      if constexpr (kEpi == ColumnEpilogue::kClassifier) {
        y = coef * (a[h][c] - mean);  // exactly coef * a[h][c] where mean = 0
        if (p.bias != nullptr) y += Num<T>::load(p.bias[(h0 + h) * m1 + j + c]);
      } else {
        y = coef * a[h][c];
      }
      return Num<O>::store(y);
    };
#pragma unroll
    for (int h = 0; h < HT; ++h) {
      const int col = (h0 + h) * m1 + j;
      if (p.vec_store) {
        // One CPT-entry vector a chunk: the lanes' stores cover whole sectors (scalar stores
        // CPT entries apart touched CPT times the sectors: the CPU-run harness's counters).
        if (col < out_cols) {  // out_features % CPT == 0: all of the vector or none
          O o[CPT];
#pragma unroll
          for (int c = 0; c < CPT; ++c) o[c] = value(h, c);
          store_vec<O, CPT>(dst + h * m1, o);
        }
      } else {
#pragma unroll
        for (int c = 0; c < CPT; ++c)
          if (col + c < out_cols) dst[h * m1 + c] = value(h, c);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side: launch helpers on raw pointers (no torch).

// Calls f(std::integral_constant<int, L>{}) for the runtime L in [kLo, kHi].
template <int kLo, int kHi, typename F>
inline cudaError_t dispatch_log2(int L, F&& f) {
  if constexpr (kLo > kHi) {
    return cudaErrorInvalidValue;
  } else {
    if (L == kLo) return f(std::integral_constant<int, kLo>{});
    return dispatch_log2<kLo + 1, kHi>(L, std::forward<F>(f));
  }
}

// Opts a kernel into more than 48 KB of dynamic shared memory, once per device: done is the
// kernel's own bit set of devices already done (a static of the kernel's launcher).
template <typename Kernel>
inline cudaError_t allow_smem(Kernel kernel, size_t bytes, unsigned long long& done) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const unsigned long long bit = dev < 64 ? (1ull << dev) : 0;
  if (bit != 0 && (__atomic_load_n(&done, __ATOMIC_ACQUIRE) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess && bit != 0) __atomic_fetch_or(&done, bit, __ATOMIC_ACQ_REL);
  return err;
}

inline unsigned grid_for(int64_t blocks) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, INT_MAX)));
}

// Launches the row kernel for tile L on args p (kCentre: row_transform_centre_kernel).
template <typename T, typename O, int L, bool kStrided, bool kCentre = false>
inline cudaError_t launch_row_kernel(const RowArgs<T, O>& p, cudaStream_t stream) {
  using Tile = RowTile<T, L>;
  auto kernel = [] {
    if constexpr (kCentre) {
      return row_transform_centre_kernel<T, O, L, kStrided>;
    } else {
      return row_transform_kernel<T, O, L, kStrided>;
    }
  }();
  static unsigned long long smem_done = 0;
  cudaError_t err = allow_smem(kernel, Tile::kSmemBytes, smem_done);
  if (err != cudaSuccess) return err;
  const int64_t blocks = (p.rows + Tile::RPB - 1) / Tile::RPB;
  HK_LAUNCH(kernel, grid_for(blocks), Tile::THREADS, Tile::kSmemBytes, stream, p);
  return cudaGetLastError();
}

template <typename T, typename O, int L2, ColumnEpilogue kEpi>
inline cudaError_t launch_column_kernel(const ColumnArgs<T, O>& p, cudaStream_t stream) {
  constexpr int CPT = columns_per_thread<acc_of<T>, L2>();
  const int64_t threads = (p.rows * (p.m1 / CPT)) << column_split_log2<acc_of<T>, L2>();
  ColumnArgs<T, O> a = p;
  a.vec_store = can_vectorize<O>(p.out, p.out_row_stride, 1, p.out_features, CPT);
  auto kernel = column_transform_kernel<T, O, L2, kEpi>;
  HK_LAUNCH(kernel, grid_for((threads + kColumnThreads - 1) / kColumnThreads), kColumnThreads, 0, stream, a);
  return cudaGetLastError();
}

// Pass 2 handles 4 to 6 bits (float64 at 2^20: 2^14 x 2^6).
constexpr int kMaxPass2Log2 = 6;

// Split of L > max_single_pass_log2<T>() into pass 1 (L1 low bits) and pass 2 (L - L1 high
// bits): at least 4 bits in pass 2, so pass 1 runs at a size with good occupancy.
template <typename T>
inline int pass1_log2(int L) {
  return L - std::max(L - max_single_pass_log2<T>(), 4);
}

// Bytes of device workspace launch_transform needs (0 for one pass). Aligned to 256 bytes.
template <typename T>
inline size_t transform_workspace_bytes(const TransformParams& p) {
  const int L = ilog2(p.m);
  if (L <= max_single_pass_log2<T>()) return 0;
  return static_cast<size_t>(p.rows) * static_cast<size_t>(p.m) * sizeof(acc_of<T>);
}

// Pass 1 over chunks of 2^L1: x (with p's strides and in_features) -> ws, unscaled; if sumsq
// is not null, the classifier's: chunks rescaled by 2^k where needed, and (sum of squares, k)
// of each chunk written to sumsq (see classifier_chunk_scale_kernel); if centre is not null,
// the ETF head's sums of each chunk's outputs (all, and those at columns < centre_cols).
template <typename T>
inline cudaError_t launch_pass1(const T* x, const TransformParams& p, int L1, acc_of<T>* ws,
                                acc_of<T>* sumsq, cudaStream_t stream, acc_of<T>* centre = nullptr,
                                int64_t centre_cols = 0) {
  using A = acc_of<T>;
  const int L = ilog2(p.m);
  return dispatch_log2<11, max_single_pass_log2<T>()>(L1, [&](auto lc) {
    constexpr int kL1 = decltype(lc)::value;
    using Tile = RowTile<T, kL1>;
    RowArgs<T, A> a{};
    a.x = x;
    a.out = ws;
    a.rows = p.rows << (L - kL1);
    a.log2_chunks = L - kL1;
    a.in_features = p.in_features;
    a.out_features = Tile::M;
    a.x_row_stride = p.x_row_stride;
    a.x_col_stride = p.x_col_stride;
    a.out_row_stride = Tile::M;
    a.vec_load = can_vectorize<T>(x, p.x_row_stride, p.x_col_stride, p.in_features, Tile::KV);
    a.vec_store = aligned_to(ws, 16);
    a.scale = A(1);
    a.sumsq = sumsq;
    a.centre = centre;
    a.centre_cols = centre_cols;
    if (centre != nullptr) {
      return p.x_col_stride == 1 ? launch_row_kernel<T, A, kL1, false, true>(a, stream)
                                 : launch_row_kernel<T, A, kL1, true, true>(a, stream);
    }
    return p.x_col_stride == 1 ? launch_row_kernel<T, A, kL1, false>(a, stream)
                               : launch_row_kernel<T, A, kL1, true>(a, stream);
  });
}

// Pass 2: dispatch on the number of high bits L2.
template <typename T, typename O, ColumnEpilogue kEpi>
inline cudaError_t launch_pass2(const ColumnArgs<T, O>& a, int L2, cudaStream_t stream) {
  return dispatch_log2<4, kMaxPass2Log2>(L2, [&](auto lc) {
    constexpr int kL2 = decltype(lc)::value;
    return launch_column_kernel<T, O, kL2, kEpi>(a, stream);
  });
}

// out[r, :out] = scale * H_M[:out, :in] @ x[r, :in] for p.rows rows (p.m = M, a power of two
// <= 2^20). out: rows of p.out_features entries, row stride p.out_row_stride. workspace:
// transform_workspace_bytes<T>(p) bytes (may be null if 0). Returns the first launch error.
template <typename T>
cudaError_t launch_transform(const T* x, T* out, const TransformParams& p, void* workspace,
                             cudaStream_t stream) {
  using A = acc_of<T>;
  if (p.rows == 0 || p.out_features == 0) return cudaSuccess;
  const int L = ilog2(p.m);
  if (L > kMaxLogM || (int64_t{1} << L) != p.m) return cudaErrorInvalidValue;
  if (L <= max_single_pass_log2<T>()) {
    return dispatch_log2<0, max_single_pass_log2<T>()>(L, [&](auto lc) {
      constexpr int kL = decltype(lc)::value;
      using Tile = RowTile<T, kL>;
      RowArgs<T, T> a{};
      a.x = x;
      a.out = out;
      a.rows = p.rows;
      a.log2_chunks = 0;
      a.in_features = p.in_features;
      a.out_features = p.out_features;
      a.x_row_stride = p.x_row_stride;
      a.x_col_stride = p.x_col_stride;
      a.out_row_stride = p.out_row_stride;
      a.vec_load = can_vectorize<T>(x, p.x_row_stride, p.x_col_stride, p.in_features, Tile::KV);
      a.vec_store = can_vectorize<T>(out, p.out_row_stride, 1, p.out_features, Tile::KV);
      a.scale = static_cast<A>(p.scale);
      a.sumsq = nullptr;
      return p.x_col_stride == 1 ? launch_row_kernel<T, T, kL, false>(a, stream)
                                 : launch_row_kernel<T, T, kL, true>(a, stream);
    });
  }
  A* ws = static_cast<A*>(workspace);
  const int L1 = pass1_log2<T>(L);
  cudaError_t err = launch_pass1<T>(x, p, L1, ws, nullptr, stream);
  if (err != cudaSuccess) return err;
  ColumnArgs<T, T> c{};
  c.ws = ws;
  c.out = out;
  c.rows = p.rows;
  c.m1 = int64_t{1} << L1;
  c.out_features = p.out_features;
  c.out_row_stride = p.out_row_stride;
  c.scale = static_cast<A>(p.scale);
  return launch_pass2<T, T, ColumnEpilogue::kScale>(c, L - L1, stream);
}

}  // namespace cuda
}  // namespace hadamard_kernels
