// The K-point product of order 12 through a Williamson-type matrix (kn_row's K = 12 path,
// csrc/cpu/orders.h, which runs it before the chunks' 2^k-point transforms).
//
// Every Hadamard matrix of order 12 is equivalent to every other: H = P D W E Q for signed
// permutations. We use the Williamson array W of order 12 (four 3 x 3 circulants
// A = J, B = C = D = J - 2I in the quaternion pattern S below):
//
//     W[3r + i][3s + j] = S[r][s] * (r == s || i != j ? 1 : -1),   r, s < 4, i, j < 3,
//     (W x)[3r + i] = u_r + sum_{s != r} S[r][s] (u_s - 2 x[3s + i]),   u_s = sum_j x[3s + j],
//
// about 64 additions per column of 12 values instead of 144 multiply-adds (order12_columns). find_order12_map
// finds, for a given H of order 12 (any family, transposed or not), rows sigma, columns tau
// and signs e, f with
//
//     H[sigma(i)][tau(j)] = e_i f_j W[i][j]   for all i, j < 12,
//
// so that (H x)[sigma(i)] = e_i (W x')_i with x'_j = f_j x[tau(j)]: the product reads chunk
// tau(j) times f_j and stores output i of W, times e_i, to chunk sigma(i). The search is a
// backtracking over sigma with column-signature pruning (16 us here, once per matrix: see
// order12_map in csrc/kn_args.h); its result is verified entry by entry, so a wrong map is
// impossible, and a matrix that is not Hadamard (or a search over its node budget) gets no
// map and takes the four-Russians product of orders.h.
//
// Pure C++ (no torch).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "cpu/butterfly.h"

namespace hadamard_kernels {
namespace cpu {

constexpr int kOrder12 = 12;

// The quaternion sign pattern of the Williamson array [[A, B, C, D], [-B, A, -D, C],
// [-C, D, A, -B], [-D, -C, B, A]].
constexpr int kWillS[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};

constexpr int will12(int a, int b) {
  const int r = a / 3, i = a % 3, s = b / 3, j = b % 3;
  return kWillS[r][s] * (r == s || i != j ? 1 : -1);
}

// W W^T = 12 I: the map's search assumes it (and would otherwise find no map at all).
constexpr bool will12_is_hadamard() {
  for (int a = 0; a < kOrder12; ++a)
    for (int c = 0; c < kOrder12; ++c) {
      int dot = 0;
      for (int b = 0; b < kOrder12; ++b) dot += will12(a, b) * will12(c, b);
      if (dot != (a == c ? kOrder12 : 0)) return false;
    }
  return true;
}
static_assert(will12_is_hadamard(), "the Williamson array of order 12 must be a Hadamard matrix");
static_assert(kWillS[0][0] == 1 && kWillS[1][1] == 1 && kWillS[2][2] == 1 && kWillS[3][3] == 1,
              "order12_columns takes S[r][r] = 1");

// H = signed permutation of W (see the header comment): W's output i goes to chunk out_chunk[i]
// times out_sign[i]; W's input j is buffer chunk in_chunk[j], whose transform carries
// chunk_sign[in_chunk[j]] = f_j.
template <typename T>
struct Order12Map {
  int32_t in_chunk[kOrder12];
  int32_t out_chunk[kOrder12];
  T out_sign[kOrder12];
  T chunk_sign[kOrder12];  // indexed by buffer chunk
};

// Finds the map of h (12 x 12 row-major, entries +-1) onto W; false when there is none
// within the search's budget (h not Hadamard, say).
template <typename T>
inline bool find_order12_map(const T* h, Order12Map<T>& map) {
  constexpr int K = kOrder12;
  auto H = [&](int a, int b) { return h[a * K + b] < T(0) ? -1 : 1; };
  for (int a = 0; a < K; ++a)  // H H^T = K I, else no equivalence exists
    for (int c = a; c < K; ++c) {
      int dot = 0;
      for (int b = 0; b < K; ++b) dot += H(a, b) * H(c, b);
      if (dot != (a == c ? K : 0)) return false;
    }
  // Normalised around (r0, c0): the row r0 and column c0 all +1. An equivalence taking W's
  // (0, 0) to H's (r0, c0) is then a pair of plain permutations fixing them.
  int budget = 1 << 16;  // search nodes in all (order 12 needs a few hundred)
  for (int r0 = 0; r0 < K; ++r0)
    for (int c0 = 0; c0 < K; ++c0) {
      int hn[K][K], wn[K][K];
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < K; ++b) {
          hn[a][b] = H(a, b) * H(a, c0) * H(r0, b) * H(r0, c0);
          wn[a][b] = will12(a, b) * will12(a, 0) * will12(0, b) * will12(0, 0);
        }
      int hcols[K - 1], wcols[K - 1];
      for (int b = 0, t = 0; b < K; ++b)
        if (b != c0) hcols[t++] = b;
      for (int b = 1; b < K; ++b) wcols[b - 1] = b;
      int sigma[K] = {r0};
      bool used[K] = {};
      used[r0] = true;
      // The multisets of column signatures (bit i: the entry in row i, or sigma(i), is -1)
      // over rows 0..depth must agree, else no column permutation can match them.
      auto signatures_agree = [&](int depth) {
        std::array<uint32_t, K - 1> sh{}, sw{};
        for (int t = 0; t < K - 1; ++t)
          for (int i = 0; i <= depth; ++i) {
            sh[t] |= static_cast<uint32_t>(hn[sigma[i]][hcols[t]] < 0) << i;
            sw[t] |= static_cast<uint32_t>(wn[i][wcols[t]] < 0) << i;
          }
        std::sort(sh.begin(), sh.end());
        std::sort(sw.begin(), sw.end());
        return sh == sw;
      };
      auto search = [&](auto&& self, int depth) -> bool {
        if (depth == K) return true;
        for (int a = 0; a < K; ++a) {
          if (used[a] || --budget < 0) continue;
          sigma[depth] = a;
          used[a] = true;
          if (signatures_agree(depth) && self(self, depth + 1)) return true;
          used[a] = false;
        }
        return false;
      };
      if (!search(search, 1)) {
        if (budget < 0) return false;
        continue;
      }
      // Columns: H's with the same full signature as W's (all distinct: the rows are orthogonal).
      int tau[K] = {c0};
      for (int j = 1; j < K; ++j) {
        tau[j] = -1;
        for (int b = 0; b < K && tau[j] < 0; ++b) {
          bool same = b != c0;
          for (int i = 0; i < K && same; ++i) same = hn[sigma[i]][b] == wn[i][j];
          if (same) tau[j] = b;
        }
        if (tau[j] < 0) return false;
      }
      int e[K], f[K];
      for (int i = 0; i < K; ++i) e[i] = H(sigma[i], tau[0]) * will12(i, 0);
      for (int j = 0; j < K; ++j) f[j] = H(sigma[0], tau[j]) * will12(0, j) * e[0];
      for (int i = 0; i < K; ++i)
        for (int j = 0; j < K; ++j)
          if (H(sigma[i], tau[j]) != e[i] * f[j] * will12(i, j)) return false;
      for (int i = 0; i < K; ++i) {
        map.in_chunk[i] = tau[i];
        map.out_chunk[i] = sigma[i];
        map.out_sign[i] = static_cast<T>(e[i]);
        map.chunk_sign[tau[i]] = static_cast<T>(f[i]);
      }
      return true;
    }
  return false;
}

// The product of W on one vector of columns of the 12 signed inputs x[j] (x[j] = f_j times
// input chunk tau(j)), stored times c[i] (out_sign[i]) to dst[i] + b:
//
//     (W x)[3r + i] = u_r + sum_{s != r} S[r][s] t_{s,i},   u_s = x[3s] + x[3s+1] + x[3s+2],
//                     t_{s,i} = u_s - 2 x[3s + i] = (the other two of x[3s..3s+2]) - x[3s + i],
//
// (S[r][r] = 1). Each t is formed from the other two inputs, never as u_s - 2 x: every input
// then enters every output exactly once, so one infinite input gives +-inf outputs, as the
// dense product does, not inf - inf = NaN.
template <typename T>
inline void order12_columns(const typename Vec<T>::type (&x)[kOrder12], T* const (&dst)[kOrder12],
                            const T (&c)[kOrder12], int64_t b) {
  using V = typename Vec<T>::type;
  V u[4], t[4][3];
  for (int s = 0; s < 4; ++s) {
    const V a0 = x[3 * s], a1 = x[3 * s + 1], a2 = x[3 * s + 2];
    const V p12 = a1 + a2, p02 = a0 + a2, p01 = a0 + a1;
    u[s] = p12 + a0;
    t[s][0] = p12 - a0;
    t[s][1] = p02 - a1;
    t[s][2] = p01 - a2;
  }
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      V y = u[r];
#pragma GCC unroll 4
      for (int s = 0; s < 4; ++s) {  // the signs are constants once unrolled
        if (s != r) y = kWillS[r][s] > 0 ? y + t[s][i] : y - t[s][i];
      }
      const int o = 3 * r + i;
      Vec<T>::store(dst[o] + b, y * c[o]);
    }
}

// dst chunk sigma(i) (at dst + sigma(i) * dst_stride) = e_i * (W x')_i, x'_j = f_j *
// pre-times-src chunk tau(j) (at src + tau(j) * src_stride; pre: the row's 12 p factors, or
// null), over the p columns (p a multiple of the vector width). Each step reads every input
// of two vectors of columns (a whole cache line of the 12 chunks, which may share one L1 set)
// before it stores, so dst may be src (with the same stride).
template <bool kPre, typename T>
inline void order12_product(const T* src, int64_t src_stride, const T* pre, T* dst, int64_t dst_stride, int64_t p,
                            const Order12Map<T>& map) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::kLanes;
  const T* in[kOrder12];
  const T* pin[kOrder12];
  T* out[kOrder12];
  T f[kOrder12], c[kOrder12];
  for (int j = 0; j < kOrder12; ++j) {
    in[j] = src + map.in_chunk[j] * src_stride;
    pin[j] = kPre ? pre + map.in_chunk[j] * p : nullptr;
    f[j] = map.chunk_sign[map.in_chunk[j]];
    out[j] = dst + map.out_chunk[j] * dst_stride;
    c[j] = map.out_sign[j];
  }
  auto load = [&](int j, int64_t b) {
    const V v = Vec<T>::load(in[j] + b) * f[j];
    if constexpr (kPre) return v * Vec<T>::load(pin[j] + b);
    return v;
  };
  int64_t b = 0;
  for (; b + 2 * W <= p; b += 2 * W) {
    V lo[kOrder12], hi[kOrder12];
    for (int j = 0; j < kOrder12; ++j) {
      lo[j] = load(j, b);
      hi[j] = load(j, b + W);
    }
    order12_columns<T>(lo, out, c, b);
    order12_columns<T>(hi, out, c, b + W);
  }
  for (; b < p; b += W) {
    V lo[kOrder12];
    for (int j = 0; j < kOrder12; ++j) lo[j] = load(j, b);
    order12_columns<T>(lo, out, c, b);
  }
}

}  // namespace cpu
}  // namespace hadamard_kernels
