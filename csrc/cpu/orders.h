// Transform of order K * p (p = 2^k) of one row, with optional diagonal factors (the
// randomised transform's signs) fused in (kn_row):
//
//     out[:n] = scale * post . [(H_K (x) H_p) @ pad(pre . x[:n], K p)][:n]
//     out[a p + b] = scale * post[a p + b] * sum_{a', b'} H_K[a, a'] H_p[b, b'] (pre . x)[a' p + b']
//
// H_K acts on the high digit a of the index a p + b (docs/orders.md): view the padded row as
// K chunks of p values; transform every chunk by H_p (fwht_row), then combine the chunks by
// H_K: chunk a of the output is sum_a' H_K[a, a'] * chunk a'. Entries beyond n are zero on
// input and dropped on output, so only the first ceil(n / p) chunks are ever touched.
//
// Pure C++ (no torch): the caller converts H_K and the diagonals to the accumulator type.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/butterfly.h"

namespace hadamard_kernels {
namespace cpu {

// Accumulator values per tile of the K-point product: two native vectors, so that
// kKnRowsPerPass tiles of sums stay in registers (4 x 2 of them).
template <typename T> constexpr int64_t kKnTile = 2 * kVecBytes / sizeof(T);
constexpr int64_t kKnRowsPerPass = 4;

// What one kn_row call needs besides the row itself; pointers may be null (see below).
template <typename T>
struct KnRowArgs {
  const T* h;         // K * K row-major H_K in T (entries +-1), or null for K = 1
  int64_t K;          // order of H_K (1 when h is null)
  int64_t p;          // power-of-two chunk length
  int64_t n;          // entries read and written, n <= K * p
  const T* pre;       // n factors applied to x before the transform, or null (all ones)
  const T* post;      // n factors applied to the result (scale already multiplied in), or null
  T scale;            // multiplies every output when post is null
};

// acc[r][:len] = sum_{a' < used} h[(a + r) K + a'] buf[a' p + b0 : ... + len] for r < rows.
// kLen is len when it is a compile-time tile width (full tiles), else 0 and len is used.
template <int64_t kLen, typename T>
inline void k_point_tile(const T* __restrict buf, const KnRowArgs<T>& args, int64_t used, int64_t a,
                         int64_t rows, int64_t b0, int64_t len, T (&acc)[kKnRowsPerPass][kKnTile<T>]) {
  const int64_t w = kLen > 0 ? kLen : len;
  for (int64_t r = 0; r < kKnRowsPerPass; ++r)
    for (int64_t j = 0; j < kKnTile<T>; ++j) acc[r][j] = T(0);
  for (int64_t a2 = 0; a2 < used; ++a2) {
    const T* src = buf + a2 * args.p + b0;
    for (int64_t r = 0; r < rows; ++r) {
      const T s = args.h[(a + r) * args.K + a2];
#pragma GCC ivdep
      for (int64_t j = 0; j < w; ++j) acc[r][j] += s * src[j];
    }
  }
}

// buf: kVecBytes-aligned scratch of at least K * p values. x: the row, entries x[i * xs];
// out: n contiguous outputs (may equal x when xs == 1: the row is read in full first).
template <typename scalar_t, typename T>
inline void kn_row(const scalar_t* x, int64_t xs, scalar_t* out, T* __restrict buf, const KnRowArgs<T>& args) {
  const int64_t n = args.n;
  const int64_t p = args.p;
  if constexpr (std::is_same_v<scalar_t, T>) {
    // The plain power-of-two transform of a whole contiguous row (fwht_, the common case):
    // straight from x to out, as the out-of-place transform does, without the scratch copy.
    // fwht_row's later sweeps address out as vectors, so out must be vector-aligned.
    if (args.h == nullptr && args.pre == nullptr && args.post == nullptr && n == p && xs == 1 &&
        reinterpret_cast<std::uintptr_t>(out) % kVecBytes == 0) {
      fwht_row(x, out, p, args.scale);
      return;
    }
  }
  const int64_t used = (n + p - 1) / p;  // chunks holding any of the n entries
  if (args.pre != nullptr) {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(x[i * xs]) * args.pre[i];
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(x[i * xs]);
  }
  std::fill(buf + n, buf + used * p, T(0));
  // Chunks start kVecBytes-aligned (p * sizeof(T) is a multiple of it once p >= one vector;
  // shorter chunks take fwht_row's scalar path, which needs no alignment).
  const T unit = args.h == nullptr && args.post == nullptr ? args.scale : T(1);
  for (int64_t a = 0; a < used; ++a) fwht_row(buf + a * p, buf + a * p, p, unit);
  auto store = [&](int64_t base, const T* v, int64_t len) {
    scalar_t* o = out + base;
    if (args.post != nullptr) {
      const T* f = args.post + base;
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<scalar_t>(v[j] * f[j]);
    } else if (args.h != nullptr) {
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<scalar_t>(v[j] * args.scale);
    } else {
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<scalar_t>(v[j]);  // scale applied above
    }
  };
  if (args.h == nullptr) {  // K = 1: the chunk is the row
    store(0, buf, n);
    return;
  }
  constexpr int64_t tile = kKnTile<T>;
  T acc[kKnRowsPerPass][tile];
  for (int64_t b0 = 0; b0 < p; b0 += tile) {
    const int64_t len = std::min(tile, p - b0);
    for (int64_t a = 0; a < used; a += kKnRowsPerPass) {
      const int64_t rows = std::min(kKnRowsPerPass, used - a);
      if (len == tile) {
        k_point_tile<tile>(buf, args, used, a, rows, b0, len, acc);
      } else {
        k_point_tile<0>(buf, args, used, a, rows, b0, len, acc);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t base = (a + r) * p + b0;
        if (base < n) store(base, acc[r], std::min(len, n - base));
      }
    }
  }
}

}  // namespace cpu
}  // namespace hadamard_kernels
