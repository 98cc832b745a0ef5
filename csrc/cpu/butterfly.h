// In-place fast Walsh-Hadamard transform of one row held in an aligned buffer.
//
// Pure C++ (GCC/Clang vector extensions, no torch): 64-byte vectors map to one
// AVX-512 register, two AVX2 registers or four SSE registers, whichever the
// compiler targets. For a row of m = 2^k values:
//   * the log2(W) stages with stride < W (W = lanes per vector) run inside each
//     register: one lane shuffle and one multiply-add by a +-1 sign vector each;
//   * the remaining stages run between registers, three at a time (radix 8),
//     so a row of 2^14 floats is swept 1 + ceil(10 / 3) = 5 times while in cache.
// The result is H_m @ buf (Sylvester order, unnormalised); every stage is the
// exact butterfly (a, b) -> (a + b, a - b), so the result is identical to the
// textbook loop in any order of stages.
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

// Stages of vector strides h, 2h, 4h on the 8 vectors v[j + t*h], t = 0..7.
template <typename V>
inline void radix8(V* v, int64_t h) {
  V a0 = v[0], a1 = v[h], a2 = v[2 * h], a3 = v[3 * h];
  V a4 = v[4 * h], a5 = v[5 * h], a6 = v[6 * h], a7 = v[7 * h];
  V b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3;
  V b4 = a4 + a5, b5 = a4 - a5, b6 = a6 + a7, b7 = a6 - a7;
  V c0 = b0 + b2, c2 = b0 - b2, c1 = b1 + b3, c3 = b1 - b3;
  V c4 = b4 + b6, c6 = b4 - b6, c5 = b5 + b7, c7 = b5 - b7;
  v[0] = c0 + c4; v[4 * h] = c0 - c4;
  v[h] = c1 + c5; v[5 * h] = c1 - c5;
  v[2 * h] = c2 + c6; v[6 * h] = c2 - c6;
  v[3 * h] = c3 + c7; v[7 * h] = c3 - c7;
}

// Stages of vector strides h, 2h on the 4 vectors v[j + t*h], t = 0..3.
template <typename V>
inline void radix4(V* v, int64_t h) {
  V a0 = v[0], a1 = v[h], a2 = v[2 * h], a3 = v[3 * h];
  V b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3;
  v[0] = b0 + b2; v[2 * h] = b0 - b2;
  v[h] = b1 + b3; v[3 * h] = b1 - b3;
}

// Stage of vector stride h on the 2 vectors v[j], v[j + h].
template <typename V>
inline void radix2(V* v, int64_t h) {
  V a0 = v[0], a1 = v[h];
  v[0] = a0 + a1; v[h] = a0 - a1;
}

// buf <- H_m @ buf for m a power of two; buf aligned to kVecBytes when m >= lanes.
template <typename T>
inline void fwht_inplace(T* buf, int64_t m) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::kLanes;
  if (m < W) {
    fwht_scalar(buf, m);
    return;
  }
  V* v = reinterpret_cast<V*>(buf);
  const int64_t nv = m / W;
  for (int64_t k = 0; k < nv; ++k) v[k] = Vec<T>::stages(v[k]);
  int64_t h = 1;  // stride in vectors
  for (; 8 * h <= nv; h *= 8) {
    for (int64_t i = 0; i < nv; i += 8 * h)
      for (int64_t j = i; j < i + h; ++j) radix8(v + j, h);
  }
  if (4 * h <= nv) {
    for (int64_t i = 0; i < nv; i += 4 * h)
      for (int64_t j = i; j < i + h; ++j) radix4(v + j, h);
  } else if (2 * h <= nv) {
    for (int64_t i = 0; i < nv; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) radix2(v + j, h);
  }
}

}  // namespace cpu
}  // namespace hadamard_kernels
