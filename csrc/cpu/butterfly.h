// Fast Walsh-Hadamard transform of one row: out = scale * H_m @ in (fwht_row).
//
// Pure C++ (GCC/Clang vector extensions, no torch): 64-byte vectors map to one
// AVX-512 register, two AVX2 registers or four SSE registers, whichever the
// compiler targets. For a row of m = 2^k values:
//   * the log2(W) stages with stride < W (W = lanes per vector) run inside each
//     register: one lane shuffle and one multiply-add by a +-1 sign vector each;
//   * the remaining stages run between registers, 3 or 4 levels per sweep, on
//     blocks small enough to stay in L1 (then L2), see fwht_row.
// The result is in Sylvester order, unnormalised; every stage is the exact butterfly
// (a, b) -> (a + b, a - b), and every output is a sum of the same terms in an order
// fixed by m alone, so results are bitwise reproducible.
#pragma once

#include <cstdint>

namespace hadamard_kernels {
namespace cpu {

constexpr int kVecBytes = 64;

typedef float f32v __attribute__((vector_size(kVecBytes), may_alias));
typedef double f64v __attribute__((vector_size(kVecBytes), may_alias));

template <typename T> struct Vec;

template <> struct Vec<float> {
  using type = f32v;
  static constexpr int kLanes = 16;
  // One in-register stage of stride h: lane i pairs with lane i ^ h; the lane
  // with bit h clear keeps a + b, the other b' - a' (sign -1 on its own value).
  static inline type stages(type v) {
    const type s1 = {1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1};
    const type s2 = {1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1};
    const type s4 = {1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1};
    const type s8 = {1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1};
    v = v * s1 + __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    v = v * s2 + __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    v = v * s4 + __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    v = v * s8 + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    return v;
  }
};

template <> struct Vec<double> {
  using type = f64v;
  static constexpr int kLanes = 8;
  static inline type stages(type v) {
    const type s1 = {1, -1, 1, -1, 1, -1, 1, -1};
    const type s2 = {1, 1, -1, -1, 1, 1, -1, -1};
    const type s4 = {1, 1, 1, 1, -1, -1, -1, -1};
    v = v * s1 + __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
    v = v * s2 + __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    v = v * s4 + __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    return v;
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
      V a;
      __builtin_memcpy(&a, in + (i + t) * W, sizeof(V));
      r[t] = Vec<T>::stages(a * scale);
    }
    levels<K>(r);
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) __builtin_memcpy(out + (i + t) * W, &r[t], sizeof(V));
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
  const int levels_left = log2_exact(nv);
  switch (levels_left) {
    case 0: first_sweep<0>(in, out, nv, scale); return;
    case 1: first_sweep<1>(in, out, nv, scale); return;
    case 2: first_sweep<2>(in, out, nv, scale); return;
    default: first_sweep<3>(in, out, nv, scale); break;
  }
  remaining_levels<4>(reinterpret_cast<V*>(out), nv, 8, levels_left - 3);
}

}  // namespace cpu
}  // namespace hadamard_kernels
