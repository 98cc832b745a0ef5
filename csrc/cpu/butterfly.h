// Fast Walsh-Hadamard transform of one row: out = scale * H_m @ in (fwht_row).
//
// Pure C++ (GCC vector extensions, no torch), vectors one native register wide
// (kVecBytes). For a row of m = 2^k values:
//   * the log2(W) stages with stride < W (W = lanes per vector) run inside each
//     register: one lane shuffle and one multiply-add by a +-1 sign vector each;
//   * the remaining stages run between registers, 3 or 4 levels per sweep, on
//     blocks small enough to stay in L1 (then L2), see fwht_row.
// The result is in Sylvester order, unnormalised; every stage is the exact butterfly
// (a, b) -> (a + b, a - b), and every output is a sum of the same terms in an order
// fixed by m alone, so results are bitwise reproducible.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace hadamard_kernels {
namespace cpu {

// One native vector register: 64 bytes with AVX-512, 32 with AVX, 16 otherwise. A wider
// generic vector is split by GCC into several registers, and the radix-8/16 sweeps below
// then need more registers than exist: measured on AVX2, 64-byte vectors made fwht_row 2.7x
// (2^6 floats) to 3.6x (2^14) slower than 32-byte ones (benchmarks/butterfly_row.cpp).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

// kLanes = kVecBytes / sizeof(T) values of T (float or double) in one vector variable.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes), may_alias));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> index __attribute__((vector_size(kVecBytes)));
  static constexpr int kLanes = kVecBytes / sizeof(T);
  // The same vector at any address (one unaligned load or store instruction; a memcpy into
  // an array element was split into 16-byte halves, whose reload then stalled store forwarding).
  typedef T unaligned __attribute__((vector_size(kVecBytes), aligned(alignof(T)), may_alias));
  static inline type load(const T* p) { return *reinterpret_cast<const unaligned*>(p); }
  static inline void store(T* p, type v) { *reinterpret_cast<unaligned*>(p) = v; }

  // One in-register stage of stride H: lane i pairs with lane i ^ H; the lane with bit H
  // clear keeps a + b, the other b' - a' (sign -1 on its own value). The masks are
  // compile-time constants once the loop is folded.
  template <int H>
  static inline type stage(type v) {
    index partner;
    type sign;
    for (int i = 0; i < kLanes; ++i) {
      partner[i] = i ^ H;
      sign[i] = (i & H) ? T(-1) : T(1);
    }
    return v * sign + __builtin_shuffle(v, partner);
  }

  // The log2(kLanes) stages of strides 1, 2, .., kLanes / 2.
  template <int H = 1>
  static inline type stages(type v) {
    if constexpr (H < kLanes) {
      return stages<2 * H>(stage<H>(v));
    } else {
      return v;
    }
  }
};

// Textbook transform, for rows shorter than one vector.
template <typename T>
inline void fwht_scalar(T* buf, int64_t m) {
  for (int64_t h = 1; h < m; h <<= 1) {
    for (int64_t i = 0; i < m; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const T a = buf[j];
        const T b = buf[j + h];
        buf[j] = a + b;
        buf[j + h] = a - b;
      }
    }
  }
}

// K butterfly levels (strides 1, 2, .., 2^(K-1)) on 2^K vectors held in registers.
template <int K, typename V>
inline void levels(V (&r)[1 << K]) {
#pragma GCC unroll 16
  for (int h = 1; h < (1 << K); h <<= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < (1 << K); i += 2 * h) {
#pragma GCC unroll 16
      for (int j = i; j < i + h; ++j) {
        const V a = r[j];
        const V b = r[j + h];
        r[j] = a + b;
        r[j + h] = a - b;
      }
    }
  }
}

// One in-place sweep doing K levels of vector strides h, 2h, .., 2^(K-1) h over nv vectors.
template <int K, typename V>
inline void sweep(V* v, int64_t nv, int64_t h) {
  constexpr int R = 1 << K;
  for (int64_t i = 0; i < nv; i += R * h) {
    for (int64_t j = i; j < i + h; ++j) {
      V r[R];
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) r[t] = v[j + t * h];
      levels<K>(r);
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) v[j + t * h] = r[t];
    }
  }
}

// First sweep, reading `in` (unaligned, may equal out): scale, the in-register stages,
// and K levels between neighbouring vectors, written to `out`.
template <int K, typename T>
inline void first_sweep(const T* in, T* out, int64_t nv, T scale) {
  using V = typename Vec<T>::type;
  constexpr int R = 1 << K;
  constexpr int64_t W = Vec<T>::kLanes;
  for (int64_t i = 0; i < nv; i += R) {
    V r[R];
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) {
      r[t] = Vec<T>::stages(Vec<T>::load(in + (i + t) * W) * scale);
    }
    levels<K>(r);
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) Vec<T>::store(out + (i + t) * W, r[t]);
  }
}

// `count` levels of vector strides h, 2h, 4h, .. in place: radix-8 sweeps, the last one
// taking up to kMaxLast levels. Sweeps between blocks use kMaxLast = 3: 16 streams 8 KB
// apart overflow the 12-way L1 (measured: 2^15 floats 2.2x x.clone(), 1.6x with radix 8).
template <int kMaxLast, typename V>
inline void remaining_levels(V* v, int64_t nv, int64_t h, int count) {
  for (; count > kMaxLast; count -= 3, h *= 8) sweep<3>(v, nv, h);
  switch (count) {
    case 1: sweep<1>(v, nv, h); break;
    case 2: sweep<2>(v, nv, h); break;
    case 3: sweep<3>(v, nv, h); break;
    case 4: sweep<4>(v, nv, h); break;
    default: break;
  }
}

inline int log2_exact(int64_t n) {
  int k = 0;
  while ((int64_t{1} << k) < n) ++k;
  return k;
}

// Rows of up to kL1Block bytes are transformed while they stay in L1 (8 KB measured
// fastest here among 4/8/16/32/64 KB: 2^14 floats 0.92 ms vs 1.0-1.3 ms on one core);
// rows over kL2Block bytes are first transformed in kL2Block pieces that stay in L2.
constexpr int64_t kL1Block = 8192;
constexpr int64_t kL2Block = 131072;

// The transform, in L1, of nv vectors taken as consecutive groups of 2^levels vectors each
// (one row of up to kL1Block bytes, or several such rows: no sweep's group of vectors crosses
// a group, so each row comes out as it would alone, bit for bit): a first sweep fusing load,
// scale, in-register stages and up to 4 levels, then radix-8/16 sweeps. Sixteen vectors take
// all four levels in the first sweep (one pass: 2^7 floats in place over 2^22 values, 1.0 ms
// against 1.15 ms with a second sweep). out must be vector-aligned when levels > 4.
template <typename T>
inline void fwht_in_l1(const T* in, T* out, int64_t nv, int levels, T scale) {
  using V = typename Vec<T>::type;
  switch (levels) {
    case 0: first_sweep<0>(in, out, nv, scale); return;
    case 1: first_sweep<1>(in, out, nv, scale); return;
    case 2: first_sweep<2>(in, out, nv, scale); return;
    case 4: first_sweep<4>(in, out, nv, scale); return;
    default: break;
  }
  first_sweep<3>(in, out, nv, scale);
  remaining_levels<4>(reinterpret_cast<V*>(out), nv, 8, levels - 3);
}

// out = scale * H_m @ in for one row of m = 2^k values; `in` may equal `out`.
// Rows of up to kL1Block: a first sweep fusing load, scale, in-register stages and 3
// levels, then radix-8/16 sweeps. Longer rows: each block (kL1Block, or kL2Block for
// rows over kL2Block) is transformed on its own while cached, then the levels between
// blocks are swept over the whole row. Stages commute, so any such order is exact.
template <typename T>
inline void fwht_row(const T* in, T* out, int64_t m, T scale) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::kLanes;
  if (m < W) {
    for (int64_t i = 0; i < m; ++i) out[i] = in[i] * scale;
    fwht_scalar(out, m);
    return;
  }
  const int64_t nv = m / W;
  constexpr int64_t l1_vecs = kL1Block / sizeof(V);
  constexpr int64_t l2_vecs = kL2Block / sizeof(V);
  if (nv > l1_vecs) {
    const int64_t block_vecs = nv > l2_vecs ? l2_vecs : l1_vecs;
    for (int64_t b = 0; b < nv; b += block_vecs) fwht_row(in + b * W, out + b * W, block_vecs * W, scale);
    remaining_levels<3>(reinterpret_cast<V*>(out), nv, block_vecs, log2_exact(nv / block_vecs));
    return;
  }
  fwht_in_l1(in, out, nv, log2_exact(nv), scale);
}

// fwht_row on `rows` rows of m values (row r at in + r * in_stride, out + r * out_stride);
// out vector-aligned when m is over 16 vectors (as fwht_row needs for its later sweeps).
// Short contiguous rows (both strides m, one vector to kL1Block bytes) are transformed
// kL1Block bytes of rows at a time (fwht_in_l1), without a call and its branches per row, bit
// for bit as row by row (in place over 2^22 floats: 2^8 from 1.08 to 0.94 ms).
template <typename T>
inline void fwht_rows(const T* in, int64_t in_stride, T* out, int64_t out_stride, int64_t rows, int64_t m, T scale) {
  constexpr int64_t W = Vec<T>::kLanes;
  if (in_stride == m && out_stride == m && m >= W && m * static_cast<int64_t>(sizeof(T)) <= kL1Block) {
    const int levels = log2_exact(m / W);
    const int64_t block_rows = kL1Block / (m * static_cast<int64_t>(sizeof(T)));
    for (int64_t r = 0; r < rows; r += block_rows)
      fwht_in_l1(in + r * m, out + r * m, std::min(block_rows, rows - r) * (m / W), levels, scale);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) fwht_row(in + r * in_stride, out + r * out_stride, m, scale);
}

}  // namespace cpu
}  // namespace hadamard_kernels
