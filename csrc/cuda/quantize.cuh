// hadamard_kernels: CUDA device code of the fused rotate-and-quantise op (no torch here).
//
//     y = scale * [(H_K (x) H_p) @ pad(pre . x[r, :n], K p)][:n]           (orders.cuh, no post)
//     per group of g consecutive entries of y (g divides n; g = n: the row):
//       amax = max |y| (NaN if the group has a NaN)
//       s    = float32(amax / qmax)         qmax = 127 (int8), 448 (e4m3fn), 57344 (e5m2)
//       q    = encode(clamp(y / s, -qmax, qmax)),  y / s in the accumulator type; q = 0 if s == 0
//
// exactly as the CPU kernel (csrc/cpu/quantize.h): encode rounds half to even and maps NaN
// to 0 for int8; for float8 it is c10's round-to-nearest-even conversion from float32 (what
// torch's .to() does), keeping NaN, here computed with integer operations (fp8_bits), so that
// the harness's host compiler and nvcc run the same code on every GPU architecture.
//
// One kernel, kn_quantize_kernel<T, L>: orders.cuh's kn_rows (the K * 2^k transform) with a
// buffered epilogue. After stage 1 (and, for K > 1, the K-point stage written over the row
// buffer: kn_k_point_in_place) a block holds its R rows of y, unscaled, in shared memory;
// KnQuantize quantises them from there: one read of x, one write of the codes and of the
// scales, no intermediate tensor. The code format is a runtime argument (a block-uniform
// branch per value) rather than a template argument: three times fewer instantiations.
//
// Quantising the rows in shared memory: every group is taken by a segment of SW = 2^seg_log2
// threads (quant_segment_log2: SW = next_pow2(U) for U <= 32 units a group, up to 8 units a
// thread beyond, at most the block), blockDim / SW groups at a time in a block-uniform loop.
// A unit is QV = 16 / sizeof(acc) consecutive entries (one 16-byte shared load, QV codes in
// one store) where g, n and the row buffer allow it, else one entry. The segment's lanes take
// consecutive units (conflict-free shared loads, coalesced code stores), reduce max |y| with
// xor shuffles inside a warp and, for segments of several warps, through a small static
// shared array (double-buffered: one barrier a step), then encode their units again from
// shared memory; the segment's first thread writes the scale.
#pragma once

#include <cstdint>
#include <cstring>

#include "orders.cuh"

namespace hadamard_kernels {
namespace cuda {

enum class QuantCode : int { kInt8 = 0, kE4M3 = 1, kE5M2 = 2 };

__host__ __device__ constexpr float quant_max(QuantCode c) {
  return c == QuantCode::kInt8 ? 127.0f : (c == QuantCode::kE4M3 ? 448.0f : 57344.0f);
}

// The float8 bits of f, |f| <= the format's largest finite value or NaN (the clamp guarantees
// it): kMant mantissa bits, exponent bias kBias (e4m3fn: 3, 7; e5m2: 2, 15), rounded to
// nearest even as c10::Float8_e4m3fn / Float8_e5m2 (torch's .to()): NaN -> 0x7f | sign.
template <int kMant, int kBias>
__host__ __device__ __forceinline__ uint8_t fp8_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  uint32_t code;
  if (a > 0x7f800000u) {
    code = 0x7fu;
  } else if (a < (static_cast<uint32_t>(128 - kBias) << 23)) {
    // Below the smallest normal 2^(1 - kBias): the count of subnormal quanta 2^(1 - kBias - kMant),
    // rounded half to even (scaling by a power of two is exact); 2^kMant is the smallest normal.
    constexpr float kQuanta = static_cast<float>(1u << (kMant + kBias - 1));
    code = static_cast<uint32_t>(rintf(fabsf(f) * kQuanta));
  } else {
    // Round the float32 mantissa to kMant bits, half to even (a carry moves into the
    // exponent), then rebias the exponent.
    constexpr int kShift = 23 - kMant;
    code = ((a + ((1u << (kShift - 1)) - 1u) + ((a >> kShift) & 1u)) >> kShift) -
           (static_cast<uint32_t>(127 - kBias) << kMant);
  }
  return static_cast<uint8_t>(code | sign);
}

// The code of r, already divided by the scale and clamped to +-qmax (NaN passes), as bits.
template <typename A>
__device__ __forceinline__ uint8_t quant_encode(A r, QuantCode code) {
  if (code == QuantCode::kInt8) {
    if (r != r) return 0;
    if constexpr (sizeof(A) == 4) {
      return static_cast<uint8_t>(static_cast<int8_t>(static_cast<int>(rintf(r))));
    } else {
      return static_cast<uint8_t>(static_cast<int8_t>(static_cast<int>(rint(r))));
    }
  }
  const float f = static_cast<float>(r);  // float64 x: through float32, as the CPU op
  return code == QuantCode::kE4M3 ? fp8_bits<3, 7>(f) : fp8_bits<2, 15>(f);
}

// max |y| that keeps NaN: m becomes NaN once either is.
template <typename A>
__device__ __forceinline__ A nan_max(A m, A a) {
  return (a > m || a != a) ? a : m;
}

__device__ __forceinline__ float quiet_nan_f32() {
  const uint32_t bits = 0x7fc00000u;  // the CPU op's NAN
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

struct QuantArgs {
  uint8_t* q;          // codes: rows of n, row stride q_row_stride
  float* scales;       // rows of n / group scales, contiguous
  int64_t q_row_stride;
  int group;           // g: divides n
  int seg_log2;        // threads a group: quant_segment_log2
  QuantCode code;
  bool vec;            // units of QV entries: g % QV == 0, n % QV == 0, 16-byte-aligned buffer rows, q aligned
};

// Quantises the nrows rows of y (unscaled, row r at buf + r * buf_row) into output rows
// row0 + r: units of QV entries (see the file comment). Every thread of the block must call it.
template <typename T, int QV>
__device__ __forceinline__ void quantize_rows(const KnArgs<T>& p, const QuantArgs& q, const acc_of<T>* buf,
                                              int64_t buf_row, int64_t row0, int nrows) {
  using A = acc_of<T>;
  __shared__ A red[2][32];  // per-warp maxima of segments of several warps, by step parity
  const int g = q.group;
  const int units = g / QV;
  const int per_row = static_cast<int>(p.n / g);
  const int total = nrows * per_row;
  const int sw = 1 << q.seg_log2;
  const int lanes = sw < 32 ? sw : 32;
  const int t = static_cast<int>(threadIdx.x);
  const int seg = t >> q.seg_log2;
  const int l = t & (sw - 1);
  const int step = static_cast<int>(blockDim.x) >> q.seg_log2;  // groups a step
  const A qmax = static_cast<A>(quant_max(q.code));
  const A scale = p.scale;
  int parity = 0;
  for (int g0 = 0; g0 < total; g0 += step, parity ^= 1) {
    const int grp = g0 + seg;
    const bool valid = grp < total;
    const int rl = valid ? grp / per_row : 0;
    const int j = valid ? grp - rl * per_row : 0;
    const A* src = buf + rl * buf_row + int64_t{j} * g;
    A m = 0;
    if (valid) {
      for (int u = l; u < units; u += sw) {
        A v[QV];
        if constexpr (QV * sizeof(A) == 16) {
          ld_shared16(src + u * QV, v);
        } else {
          v[0] = src[u];
        }
#pragma unroll
        for (int k = 0; k < QV; ++k) m = nan_max(m, fabs(scale * v[k]));
      }
    }
    for (int h = 1; h < lanes; h <<= 1) m = nan_max(m, __shfl_xor_sync(0xffffffffu, m, h));
    if (sw > 32) {  // block-uniform
      const int warp = t >> 5;
      if ((t & 31) == 0) red[parity][warp] = m;
      __syncthreads();  // every warp's maximum of this step is in red[parity]
      const int w0 = (seg << q.seg_log2) >> 5;
      m = red[parity][w0];
      for (int w = 1; w < (sw >> 5); ++w) m = nan_max(m, red[parity][w0 + w]);
    }
    if (!valid) continue;
    const float s = m != m ? quiet_nan_f32() : static_cast<float>(m / qmax);
    const int64_t row = row0 + rl;
    if (l == 0) q.scales[row * per_row + j] = s;
    const A sd = static_cast<A>(s);
    uint8_t* dst = q.q + row * q.q_row_stride + int64_t{j} * g;
    for (int u = l; u < units; u += sw) {
      A v[QV];
      if constexpr (QV * sizeof(A) == 16) {
        ld_shared16(src + u * QV, v);
      } else {
        v[0] = src[u];
      }
      uint8_t c[QV];
#pragma unroll
      for (int k = 0; k < QV; ++k) {
        if (s == 0.0f) {
          c[k] = 0;  // an all-zero group (or amax / qmax below float32's range)
        } else {
          const A r = (scale * v[k]) / sd;
          c[k] = quant_encode(r < -qmax ? -qmax : (r > qmax ? qmax : r), q.code);  // NaN passes
        }
      }
      if constexpr (QV > 1) {
        store_vec<uint8_t, QV>(dst + u * QV, c);
      } else {
        dst[u] = c[0];
      }
    }
  }
}

// kn_rows's buffered epilogue (orders.cuh, KnStore's comment): quantise the block's rows.
template <typename T>
struct KnQuantize {
  static constexpr bool kBuffered = true;
  static constexpr int kQV = 16 / static_cast<int>(sizeof(acc_of<T>));
  QuantArgs q;

  __device__ __forceinline__ void operator()(const KnArgs<T>& p, const acc_of<T>* buf, int64_t buf_row, int64_t row0,
                                             int nrows) const {
    if (q.vec) {
      quantize_rows<T, kQV>(p, q, buf, buf_row, row0, nrows);
    } else {
      quantize_rows<T, 1>(p, q, buf, buf_row, row0, nrows);
    }
  }
};

template <typename T, int L>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<false>(RowTile<T, L>::THREADS))
    kn_quantize_kernel(const KnArgs<T> p, const QuantArgs q) {
  kn_rows<T, L>(p, KnQuantize<T>{q});
}

// ------------------------------------------------------------------------------------------
// Host side (no torch).

// log2 of the threads a group of `units` units takes (the file comment): all of a small
// group's units at once, about 8 units a thread for larger ones, at most the block.
inline int quant_segment_log2(int64_t units, int threads) {
  if (units <= 32) return ilog2(units);
  constexpr int64_t kPerThread = 8;
  const int64_t sw = int64_t{1} << ilog2((units + kPerThread - 1) / kPerThread);
  return ilog2(std::min<int64_t>(threads, std::max<int64_t>(32, sw)));
}

// Whether launch_kn_quantize does (K, pow2, n) in one pass (kn_single_pass for a buffered
// epilogue: for K = 1 a row of pow2 accumulators in shared memory too).
template <typename T>
inline bool kn_quantize_single_pass(int64_t K, int64_t pow2, int64_t n, size_t smem_limit) {
  return kn_single_pass<T>(K, pow2, n, smem_limit, /*buffered=*/true);
}

struct QuantParams {
  QuantCode code;
  int64_t group;  // g, a divisor of n (n for one group a row)
};

// q[r, :n] (codes as bits: int8 or float8, rows of n, contiguous) and scales[r, :n / g]
// (float32, contiguous) of the p.rows rows of x (p.out_row_stride unused), in one pass; hk,
// pre, workspace as launch_kn (no post signs). cudaErrorInvalidValue if
// !kn_quantize_single_pass<T>(K, pow2, n, kn_smem_limit()) or g does not divide n.
template <typename T>
cudaError_t launch_kn_quantize(const T* x, uint8_t* q, float* scales, const int8_t* hk, const acc_of<T>* pre,
                               const KnParams& p, const QuantParams& qp, void* workspace, cudaStream_t stream) {
  const size_t smem_limit = kn_smem_limit();
  if (!kn_quantize_single_pass<T>(p.K, p.pow2, p.n, smem_limit) || (p.K > 1) != (hk != nullptr) || qp.group < 1 ||
      p.n % qp.group != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0 || p.n == 0) return cudaSuccess;
  const int L = ilog2(p.pow2);
  const int64_t used = (p.n + p.pow2 - 1) / p.pow2;
  uint32_t* masks = nullptr;
  const cudaError_t mask_err = kn_launch_masks(hk, p.K, workspace, stream, &masks);
  if (mask_err != cudaSuccess) return mask_err;
  return dispatch_log2<0, max_single_pass_log2<T>()>(L, [&](auto lc) {
    constexpr int kL = decltype(lc)::value;
    using Tile = RowTile<T, kL>;
    constexpr int QV = KnQuantize<T>::kQV;
    const KnShape shape = kn_shape<T, kL>(p.rows, used, /*direct=*/false);
    const KnArgs<T> a = kn_args<T, kL>(x, masks, pre, p, used, shape);
    QuantArgs qa{};
    qa.q = q;
    qa.scales = scales;
    qa.q_row_stride = p.n;
    qa.group = static_cast<int>(qp.group);
    qa.code = qp.code;
    qa.vec = qp.group % QV == 0 && p.n % QV == 0 && (used * p.pow2) % QV == 0 && aligned_to(q, QV);
    qa.seg_log2 = quant_segment_log2(qp.group / (qa.vec ? QV : 1), Tile::THREADS);
    auto kernel = kn_quantize_kernel<T, kL>;
    static unsigned long long smem_done = 0;
    cudaError_t err = allow_smem(kernel, shape.smem_bytes > 48 * 1024 ? smem_limit : 0, smem_done);
    if (err != cudaSuccess) return err;
    const int64_t blocks = (p.rows + shape.rows_per_block - 1) / shape.rows_per_block;
    HK_LAUNCH(kernel, grid_for(blocks), Tile::THREADS, shape.smem_bytes, stream, a, qa);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace hadamard_kernels
