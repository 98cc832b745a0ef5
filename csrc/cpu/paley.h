// The K-point product of a Paley II matrix in Sloane's layout (kn_row's path for the rotation
// family's H_28 = had.28.pal2, q = 13, and H_36 = had.36.pal2, q = 17; csrc/cpu/orders.h runs
// it before the chunks' 2^k-point transforms, as it does the order-12 product).
//
// For a prime q = 1 mod 4 and m = q + 1, with chi the quadratic character mod q (chi(0) = 0,
// chi(-k) = chi(k)) and the symmetric conference matrix C of order m,
//
//     C[0][0] = 0,  C[0][j] = C[i][0] = 1,  C[i][j] = chi(i - j)  (i, j >= 1),
//     H = [[C + I, C - I], [C - I, -C - I]]   (order K = 2m, symmetric; orders.py's _paley2),
//
// so with x = (x_t, x_b) in halves of m, u = x_t + x_b and w = x_t - x_b:
//
//     y_t = C u + w,   y_b = C w - u.
//
// C v costs 2q + (q - 1) / 2 + q (q - 1) / 2 additions (110 at q = 13) instead of m (m - 1): with v'_i = v[1 + i] (i mod q),
// s_i = v'_i + v'_{i+1} and t_i = v'_i - v'_{i+1},
//
//     (C v)_0 = sum_{j >= 1} v_j,
//     (C v)_{1+a} = v_0 + sum_{k = 1, 3, .., q - 2} chi(k) (chi(k) == chi(k+1) ? s : t)_{a+k},
//
// the pairs (k, k+1) covering k = 1 .. q - 1 once. Every input enters every output exactly once
// (C's zero diagonal leaves u_i out of (C u)_i, which w_i then brings in), so one infinite input
// gives +-inf outputs, as the dense product does, never inf - inf = NaN. At K = 28: 248
// additions per column of 28 values (8.9 per value) against the four-Russians product's 12 per
// value, and no table stored and gathered (measured: 28 x 512, benchmarks/kn_row.py, see orders.h).
//
// Pure C++ (no torch).
#pragma once

#include <cstdint>

#include "cpu/butterfly.h"

namespace hadamard_kernels {
namespace cpu {

// The primes q whose Paley II matrix (order 2 (q + 1)) has this product.
constexpr int kPaleyQs[] = {13, 17};

constexpr int paley_chi(int q, int k) {
  k = ((k % q) + q) % q;
  if (k == 0) return 0;
  for (int r = 1; r < q; ++r)
    if ((r * r) % q == k) return 1;
  return -1;
}

// C[i][j] of order q + 1 (see the header comment).
constexpr int paley_conference(int q, int i, int j) {
  if (i == 0 || j == 0) return i == j ? 0 : 1;
  return paley_chi(q, i - j);
}

// H[r][c] of order 2 (q + 1), Sloane's layout.
constexpr int paley2_entry(int q, int r, int c) {
  const int m = q + 1, R = r / m, S = c / m, i = r % m, j = c % m;
  const int z = R == 0 && S == 0 ? 1 : -1;  // Z = [[1, -1], [-1, -1]]
  const int h2 = R == 1 && S == 1 ? -1 : 1;  // H_2 = [[1, 1], [1, -1]]
  return (i == j ? z : 0) + h2 * paley_conference(q, i, j);
}

constexpr bool paley2_is_hadamard(int q) {
  const int K = 2 * (q + 1);
  for (int a = 0; a < K; ++a)
    for (int c = 0; c < K; ++c) {
      int dot = 0;
      for (int b = 0; b < K; ++b) dot += paley2_entry(q, a, b) * paley2_entry(q, c, b);
      if (dot != (a == c ? K : 0)) return false;
    }
  return true;
}
static_assert(paley2_is_hadamard(13) && paley2_is_hadamard(17), "Paley II matrices must be Hadamard");

// The q of kPaleyQs with h (K x K row-major, entries +-1) equal to its Paley II matrix, else 0.
template <typename T>
inline int paley2_q(const T* h, int64_t K) {
  for (const int q : kPaleyQs) {
    if (K != 2 * (q + 1)) continue;
    bool same = true;
    for (int r = 0; r < K && same; ++r)
      for (int c = 0; c < K && same; ++c) same = h[r * K + c] == static_cast<T>(paley2_entry(q, r, c));
    return same ? q : 0;
  }
  return 0;
}

// store(i, (C v)_i + kSign * e_i) for i <= q, on one vector of columns (q + 1 entries each):
// y_t = C u + w is (v, e) = (u, w) with kSign = 1, y_b = C w - u is (w, u) with -1. Each
// output is formed and stored in turn: C v's outputs kept in an array had doubled the spills.
template <int q, int kSign, typename V, typename Store>
inline void paley_conference_rows(const V (&v)[q + 1], const V (&e)[q + 1], Store&& store) {
  auto with_e = [&](V y, int i) { return kSign > 0 ? y + e[i] : y - e[i]; };
  V s[q], t[q];
#pragma GCC unroll 32
  for (int i = 0; i < q; ++i) {
    const V a = v[1 + i], b = v[1 + (i + 1) % q];
    s[i] = a + b;
    t[i] = a - b;
  }
  V sum = v[q];  // sum_{j >= 1} v_j = s_0 + s_2 + .. + s_{q-3} + v'_{q-1}
#pragma GCC unroll 32
  for (int i = 0; i + 1 < q; i += 2) sum += s[i];
  store(0, with_e(sum, 0));
#pragma GCC unroll 32
  for (int a = 0; a < q; ++a) {
    V y = with_e(v[0], 1 + a);
#pragma GCC unroll 32
    for (int k = 1; k < q; k += 2) {  // the signs and the choice are constants once unrolled
      const V& term = paley_chi(q, k) == paley_chi(q, k + 1) ? s[(a + k) % q] : t[(a + k) % q];
      y = paley_chi(q, k) > 0 ? y + term : y - term;
    }
    store(1 + a, y);
  }
}

// dst chunk r (at dst + r * dst_stride) = (H x')_r, x' = pre-times-src chunks (chunk c
// at src + c * src_stride; pre: the row's K p factors, or null), over the p columns (p a
// multiple of the vector width). Each step reads every input of its vector of columns before
// it stores, so dst may be src (with the same stride). When prefetch, each step also fetches
// the chunks' line kPrefetchLines lines ahead (the K streams are more than the hardware
// prefetcher follows).
template <int q, bool kPre, typename T>
inline void paley2_product(const T* src, int64_t src_stride, const T* pre, T* dst, int64_t dst_stride, int64_t p,
                           bool prefetch) {
  using V = typename Vec<T>::type;
  constexpr int m = q + 1;
  constexpr int64_t W = Vec<T>::kLanes;
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  constexpr int64_t kPrefetchLines = 2;
  for (int64_t b = 0; b < p; b += W) {
    if (prefetch && b % kLine == 0 && b + kPrefetchLines * kLine < p)
      for (int r = 0; r < 2 * m; ++r) __builtin_prefetch(src + r * src_stride + b + kPrefetchLines * kLine);
    // Chunks are reached by pointers stepped one stride at a time, kept opaque to the
    // compiler: it had precomputed all 4m chunk addresses, spilled them and reloaded one per
    // access (row kernel, 28 x 512 in cache: 2.60 to 2.41 ms per 2^22 values; stack accesses
    // per step from 432 to 198).
    const T* top = src + b;
    const T* bottom = src + m * src_stride + b;
    const T* pre_top = kPre ? pre + b : nullptr;
    const T* pre_bottom = kPre ? pre + m * p + b : nullptr;
    V u[m], w[m];
#pragma GCC unroll 32
    for (int i = 0; i < m; ++i) {
      V t = Vec<T>::load(top), d = Vec<T>::load(bottom);
      if constexpr (kPre) {
        t *= Vec<T>::load(pre_top);
        d *= Vec<T>::load(pre_bottom);
        pre_top += p;
        pre_bottom += p;
        asm("" : "+r"(pre_top), "+r"(pre_bottom));
      }
      u[i] = t + d;
      w[i] = t - d;
      top += src_stride;
      bottom += src_stride;
      asm("" : "+r"(top), "+r"(bottom));
    }
    T* out = dst + b;
    auto store = [&](int, V y) {
      Vec<T>::store(out, y);
      out += dst_stride;
      asm("" : "+r"(out));
    };
    paley_conference_rows<q, 1>(u, w, store);  // rows 0 .. m - 1 in order, then m .. 2m - 1
    paley_conference_rows<q, -1>(w, u, store);
  }
}

}  // namespace cpu
}  // namespace hadamard_kernels
