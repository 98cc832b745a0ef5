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
// The K-point product (K a multiple of 4, chunks of at least one vector) is the "four
// Russians" one: per vector of columns, the 16 signed sums +-v[4j] +-v[4j+1] +-v[4j+2]
// +-v[4j+3] of every group j of 4 chunks are formed once (kn_combos), and each output chunk
// a adds one of them per group, picked by the sign pattern of H_K[a, 4j:4j+4] (kn_offsets):
// K/4 additions per output instead of K multiply-adds. K = 12 with a Hadamard H_12 on whole
// rows (order12_product, csrc/cpu/order12.h) takes the product of a Williamson-type matrix
// equivalent to it, about 64 additions per column of 12 values in registers, with H_12's
// permutations and signs folded into the chunk pointers and scales; and it takes it first,
// reading x, so that the chunk transforms write the output sequentially (the product's 12
// output streams 4 KB apart cost as much as the whole transform: measured, 12 x 1024
// floats, 1.66x the time of the 2^13 transform with the product last, 1.3x with it first).
// The Paley II matrices of the rotation family (H_28, H_36; paley2_product, csrc/cpu/paley.h)
// take their own product on whole rows the same way: C u + w and C w - u with the conference
// matrix C's circulant in pairs, 8.9 additions per value in registers at K = 28 against the
// four-Russians product's 12 and its table (28 x 512: 1.6x the 2^13 transform's time with
// four Russians, 1.3-1.5x with it, the ratio moving with the memory-bound baseline;
// benchmarks/kn_row.py). Other K, and chunks shorter than a vector, take the plain product
// (k_point_tile).
//
// Pure C++ (no torch): the caller converts H_K and the diagonals to the accumulator type.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/butterfly.h"
#include "cpu/order12.h"
#include "cpu/paley.h"

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
  const uint32_t* offsets;  // K * (K / 4) byte offsets into the combos (kn_offsets), or null
  int64_t K;          // order of H_K (1 when h is null)
  int64_t p;          // power-of-two chunk length
  int64_t n;          // entries read and written, n <= K * p
  const T* pre;       // n factors applied to x before the transform, or null (all ones)
  const T* post;      // n factors applied to the result (scale already multiplied in), or null
  T scale;            // multiplies every output when post is null
  const Order12Map<T>* order12 = nullptr;  // K = 12: H_K as a signed permutation of W, or null
  int paley_q = 0;    // q when H_K is the Paley II matrix of order 2 (q + 1) (paley2_q), else 0
};

// acc[r][:len] = sum_{a' < used} h[(a + r) K + a'] buf[a' stride + b0 : ... + len] for r < rows.
// kLen is len when it is a compile-time tile width (full tiles), else 0 and len is used.
template <int64_t kLen, typename T>
inline void k_point_tile(const T* __restrict buf, int64_t stride, const KnRowArgs<T>& args, int64_t used, int64_t a,
                         int64_t rows, int64_t b0, int64_t len, T (&acc)[kKnRowsPerPass][kKnTile<T>]) {
  const int64_t w = kLen > 0 ? kLen : len;
  for (int64_t r = 0; r < kKnRowsPerPass; ++r)
    for (int64_t j = 0; j < kKnTile<T>; ++j) acc[r][j] = T(0);
  for (int64_t a2 = 0; a2 < used; ++a2) {
    const T* src = buf + a2 * stride + b0;
    for (int64_t r = 0; r < rows; ++r) {
      const T s = args.h[(a + r) * args.K + a2];
#pragma GCC ivdep
      for (int64_t j = 0; j < w; ++j) acc[r][j] += s * src[j];
    }
  }
}

// Inputs per group of the four-Russians product, and the signed sums kept per group.
constexpr int64_t kKnGroup = 4;
constexpr int64_t kKnCombos = 16;

// Distance between chunks in kn_row's buffer: p, plus one cache line once chunks are whole
// vectors. Chunks exactly 4 KB apart (p = 1024 floats) map to one set of the L1 cache and
// the K-point product, which reads one vector of every chunk in turn, evicted its own lines
// (12 ways of an 8-way cache at K = 12).
template <typename T>
constexpr int64_t kn_chunk_stride(int64_t p) {
  return p >= Vec<T>::kLanes ? p + 64 / static_cast<int64_t>(sizeof(T)) : p;
}

// The four-Russians product works on one cache line of columns at a time (so that every
// output line is written whole, once), kKnCols<T> vectors, and kKnRows<T> output chunks at
// once: 8 independent sums, enough to hide the additions' latency without spilling.
template <typename T> constexpr int64_t kKnCols = kVecBytes >= 64 ? 1 : 64 / kVecBytes;
template <typename T> constexpr int64_t kKnRows = 8 / kKnCols<T>;
template <typename T> constexpr int64_t kKnLine = kKnCols<T> * Vec<T>::kLanes;  // columns per step

// Lines of columns ahead that the four-Russians product prefetches when it reads x itself
// (2 measured best of 2, 4 and 8 on the row microbenchmark, benchmarks/kn_row.py).
constexpr int64_t kKnPrefetch = 2;

// Scratch values kn_row needs for a row of K chunks of p (K = 1 when hk is None): the chunks
// and, for the four-Russians product (russians), the combos of one line of columns.
template <typename T>
constexpr int64_t kn_buffer_size(int64_t K, int64_t p, bool russians) {
  return K * kn_chunk_stride<T>(p) + (russians ? K / kKnGroup * kKnCombos * kKnLine<T> : 0);
}

// offsets[a * (K / 4) + j] = byte offset of combo (j, s) in kn_row's combos, s the sign
// pattern of H_K[a, 4j:4j+4] (bit i set where the entry is -1). h: K * K entries +-1, K % 4 == 0.
template <typename T>
inline void kn_offsets(const T* h, int64_t K, uint32_t* offsets) {
  const int64_t groups = K / kKnGroup;
  for (int64_t a = 0; a < K; ++a)
    for (int64_t j = 0; j < groups; ++j) {
      uint32_t pattern = 0;
      for (int64_t i = 0; i < kKnGroup; ++i)
        if (h[a * K + j * kKnGroup + i] < T(0)) pattern |= 1u << i;
      offsets[a * groups + j] = static_cast<uint32_t>((j * kKnCombos + pattern) * kKnLine<T> * sizeof(T));
    }
}

// combos[(16 j + s) * kKnCols + c] = sum_i (bit i of s ? -1 : +1) * v_i over the 4 chunks
// 4j .. 4j+3 of src (chunk a at src + a * stride; times pre's chunk a, pre + a * p, when kPre),
// at vector c of the line of columns b0, for the groups j < groups.
template <bool kPre, typename T>
inline void kn_combos(const T* __restrict src, int64_t stride, const T* __restrict pre, int64_t p, int64_t b0,
                      int64_t groups, typename Vec<T>::type* __restrict combos) {
  using V = typename Vec<T>::type;
  constexpr int64_t C = kKnCols<T>;
  for (int64_t j = 0; j < groups; ++j)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t a0 = j * kKnGroup, b = b0 + c * Vec<T>::kLanes;
      V v[kKnGroup];
      for (int64_t i = 0; i < kKnGroup; ++i) {
        v[i] = Vec<T>::load(src + (a0 + i) * stride + b);
        if constexpr (kPre) v[i] *= Vec<T>::load(pre + (a0 + i) * p + b);
      }
      const V lo[4] = {v[0] + v[1], v[1] - v[0], v[0] - v[1], -(v[0] + v[1])};  // signs of v0, v1: bits 0, 1
      const V hi[4] = {v[2] + v[3], v[3] - v[2], v[2] - v[3], -(v[2] + v[3])};  // signs of v2, v3: bits 2, 3
      V* out = combos + j * kKnCombos * C + c;
#pragma GCC unroll 16
      for (int64_t q = 0; q < kKnCombos; ++q) out[q * C] = lo[q & 3] + hi[q >> 2];
    }
}

// Output chunks a .. a + rows - 1 (rows = kRows), one line of columns: acc[r][c] = sum over
// the groups j < groups of the combo that row a + r of offsets (K / 4 entries a row) picks.
template <int64_t kRows, typename T>
inline void kn_gather(const typename Vec<T>::type* __restrict combos, const uint32_t* __restrict offsets,
                      int64_t offsets_per_row, int64_t groups, int64_t a,
                      typename Vec<T>::type (&acc)[kRows][kKnCols<T>]) {
  using V = typename Vec<T>::type;
  constexpr int64_t C = kKnCols<T>;
  const char* base = reinterpret_cast<const char*>(combos);
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t c = 0; c < C; ++c) acc[r][c] = V{};
  for (int64_t j = 0; j < groups; ++j)
    for (int64_t r = 0; r < kRows; ++r) {
      const V* line = reinterpret_cast<const V*>(base + offsets[(a + r) * offsets_per_row + j]);
      for (int64_t c = 0; c < C; ++c) acc[r][c] += line[c];
    }
}

// buf: kVecBytes-aligned scratch of kn_buffer_size<T>(K, p, offsets != null) values. x: the
// row, entries x[i * xs];
// out: n contiguous outputs of type out_t (x's type unless asked; may equal x when xs == 1:
// the row is read in full first). next: the row the caller passes next (same layout), or null:
// the four-Russians product, when it reads x itself, prefetches it while the chunks of this
// row are transformed (the only phase that reads no x).
template <typename scalar_t, typename T, typename out_t = scalar_t>
inline void kn_row(const scalar_t* x, int64_t xs, out_t* out, T* __restrict buf, const KnRowArgs<T>& args,
                   const scalar_t* next = nullptr) {
  const int64_t n = args.n;
  const int64_t p = args.p;
  constexpr bool kSameTypes = std::is_same_v<scalar_t, T> && std::is_same_v<out_t, T>;
  if constexpr (kSameTypes) {
    // The plain power-of-two transform of a whole contiguous row (fwht_, the common case):
    // straight from x to out, as the out-of-place transform does, without the scratch copy.
    // fwht_row's later sweeps address out as vectors, so out must be vector-aligned.
    if (args.h == nullptr && args.pre == nullptr && args.post == nullptr && n == p && xs == 1 &&
        reinterpret_cast<std::uintptr_t>(out) % kVecBytes == 0) {
      fwht_row(x, out, p, args.scale);
      return;
    }
  }
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::kLanes;
  const int64_t stride = kn_chunk_stride<T>(p);
  const int64_t used = (n + p - 1) / p;  // chunks holding any of the n entries
  const bool russians = args.offsets != nullptr && p % kKnLine<T> == 0;
  // The four-Russians product reads whole groups of 4 chunks: zeros up to the last group.
  const int64_t groups = (used + kKnGroup - 1) / kKnGroup;
  const int64_t chunks = russians ? groups * kKnGroup : used;
  // Chunks start kVecBytes-aligned (p * sizeof(T) and the padding are multiples of it once
  // p >= one vector; shorter chunks take fwht_row's scalar path, which needs no alignment).
  // Chunk a of buf = pre . x's chunk a, zero beyond n.
  auto load_chunk = [&](int64_t a) {
    T* c = buf + a * stride;
    const int64_t len = std::clamp<int64_t>(n - a * p, 0, p);  // entries of x in chunk a
    const scalar_t* xa = x + a * p * xs;
    if (args.pre != nullptr) {
      const T* f = args.pre + a * p;
      for (int64_t i = 0; i < len; ++i) c[i] = static_cast<T>(xa[i * xs]) * f[i];
    } else if (xs == 1) {
      for (int64_t i = 0; i < len; ++i) c[i] = static_cast<T>(xa[i]);
    } else {
      for (int64_t i = 0; i < len; ++i) c[i] = static_cast<T>(xa[i * xs]);
    }
    std::fill(c + len, c + p, T(0));
  };
  // The products leave the scale to the chunk transforms, which multiply by it as they load
  // (the same rounding; in-cache 28 x 512, 3% less time than a multiply after the product);
  // post, when present, carries it instead.
  const T chunk_scale = args.post != nullptr ? T(1) : args.scale;
  // After a product in place in buf: each of the first `count` chunks' transform, written to
  // the output in order (straight from buf where the output allows), with post and the cast;
  // with `prefetch`, the n values at prefetch are fetched into L2 meanwhile, a share per chunk.
  auto transform_chunks_to_out = [&](int64_t count, const scalar_t* prefetch) {
    const int64_t lines = prefetch != nullptr ? (n * static_cast<int64_t>(sizeof(scalar_t)) + 63) / 64 : 0;
    const int64_t lines_per_chunk = (lines + count - 1) / count;
    for (int64_t a = 0; a < count; ++a) {
      const char* ahead = reinterpret_cast<const char*>(prefetch);
      for (int64_t l = a * lines_per_chunk; l < std::min(lines, (a + 1) * lines_per_chunk); ++l)
        __builtin_prefetch(ahead + 64 * l, 0, 2);
      T* c = buf + a * stride;
      const int64_t len = std::min(p, n - a * p);
      out_t* o = out + a * p;
      if constexpr (std::is_same_v<out_t, T>) {
        // fwht_row's later sweeps address its output as vectors: o must be vector-aligned.
        if (len == p && args.post == nullptr && reinterpret_cast<std::uintptr_t>(o) % kVecBytes == 0) {
          fwht_row(c, o, p, chunk_scale);
          continue;
        }
      }
      fwht_row(c, c, p, chunk_scale);
      if (args.post != nullptr) {
        const T* f = args.post + a * p;
        for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(c[j] * f[j]);
      } else {
        for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(c[j]);
      }
    }
  };
  // The products read whole contiguous rows of the accumulator type straight from x (pre
  // applied as they load), other rows from the chunks loaded into buf. The structured ones
  // (order 12, Paley II) take whole rows of whole vectors only.
  const bool direct = std::is_same_v<scalar_t, T> && xs == 1 && n == args.K * p;
  const bool structured = (args.order12 != nullptr || args.paley_q != 0) && n == args.K * p && p % W == 0;
  const T* src = reinterpret_cast<const T*>(x);
  int64_t src_stride = p;
  const T* pre = args.pre;
  if (structured && !direct) {
    for (int64_t a = 0; a < args.K; ++a) load_chunk(a);
    src = buf;
    src_stride = stride;
    pre = nullptr;  // load_chunk applied it
  }
  if (structured && args.order12 != nullptr) {  // K = 12 (order12.h)
    if (pre != nullptr) {
      order12_product<true>(src, src_stride, pre, buf, stride, p, *args.order12);
    } else {
      order12_product<false>(src, src_stride, pre, buf, stride, p, *args.order12);
    }
    transform_chunks_to_out(args.K, nullptr);  // a prefetch of the next row measured slower here
    return;
  }
  if (structured) {  // Paley II (paley.h), K = 28 and 36 of the rotation family
    auto product = [&]<int q>() {
      if (pre != nullptr) {
        paley2_product<q, true>(src, src_stride, pre, buf, stride, p, direct);
      } else {
        paley2_product<q, false>(src, src_stride, pre, buf, stride, p, direct);
      }
    };
    if (args.paley_q == 13) {
      product.template operator()<13>();
    } else {
      product.template operator()<17>();
    }
    transform_chunks_to_out(args.K, direct ? next : nullptr);
    return;
  }
  if (russians) {
    // The product first, into buf (in place when it reads buf: every read of a line of
    // columns, in kn_combos, precedes its writes), then each chunk's transform, writing the
    // output in order: the product's K output streams p apart, written in column order, had
    // cost more than the transforms (thread-time microbenchmark over 2^22 floats: 28 x 512
    // from 2.2x to 1.8x the 2^13 transform's time, 172 x 64 from 4.4x to 3.9x). On whole
    // contiguous rows of the accumulator type it reads x itself (pre applied there): the
    // copy into buf had cost a fifth of the total.
    if (!direct) {
      for (int64_t a = 0; a < chunks; ++a) load_chunk(a);
      src = buf;
      src_stride = stride;
    }
    constexpr int64_t C = kKnCols<T>;
    constexpr int64_t R = kKnRows<T>;
    V* combos = reinterpret_cast<V*>(buf + args.K * stride);
    auto put = [&](int64_t a, int64_t b, V v) { Vec<T>::store(buf + a * stride + b, v); };
    const int64_t per_row = args.K / kKnGroup;
    for (int64_t b0 = 0; b0 < p; b0 += kKnLine<T>) {
      // K streams p apart are more than the hardware prefetcher follows: fetch each chunk's
      // line kKnPrefetch steps ahead (measured on 28 x 512 when it took this product: 1.6x the
      // 2^13 transform's time, 1.9x without).
      if (direct && b0 + kKnPrefetch * kKnLine<T> < p)
        for (int64_t a = 0; a < args.K; ++a) __builtin_prefetch(src + a * src_stride + b0 + kKnPrefetch * kKnLine<T>);
      if (direct && args.pre != nullptr) {
        kn_combos<true>(src, src_stride, args.pre, p, b0, groups, combos);
      } else {
        kn_combos<false>(src, src_stride, args.pre, p, b0, groups, combos);
      }
      int64_t a = 0;
      for (; a + R <= used; a += R) {
        V acc[R][C];
        kn_gather<R, T>(combos, args.offsets, per_row, groups, a, acc);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < C; ++c) put(a + r, b0 + c * W, acc[r][c]);
      }
      for (; a < used; ++a) {
        V acc[1][C];
        kn_gather<1, T>(combos, args.offsets, per_row, groups, a, acc);
        for (int64_t c = 0; c < C; ++c) put(a, b0 + c * W, acc[0][c]);
      }
    }
    // The next row's prefetch: 172 x 64 from about 4.2x to 3.7x the 2^13 transform's time,
    // 28 x 512 (then on this product) from 1.6x to 1.5x (benchmarks/kn_row.py).
    transform_chunks_to_out(used, direct ? next : nullptr);
    return;
  }
  const T unit = args.h == nullptr && args.post == nullptr ? args.scale : T(1);
  for (int64_t a = 0; a < chunks; ++a) {
    T* c = buf + a * stride;
    const int64_t len = std::clamp<int64_t>(n - a * p, 0, p);  // entries of x in chunk a
    if constexpr (std::is_same_v<scalar_t, T>) {
      if (len == p && xs == 1 && args.pre == nullptr) {  // straight from x: one read, no copy
        fwht_row(x + a * p, c, p, unit);
        continue;
      }
    }
    load_chunk(a);
    if (len > 0) fwht_row(c, c, p, unit);
  }
  auto store = [&](int64_t base, const T* v, int64_t len) {
    out_t* o = out + base;
    if (args.post != nullptr) {
      const T* f = args.post + base;
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(v[j] * f[j]);
    } else if (args.h != nullptr) {
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(v[j] * args.scale);
    } else {
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(v[j]);  // scale applied above
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
        k_point_tile<tile>(buf, stride, args, used, a, rows, b0, len, acc);
      } else {
        k_point_tile<0>(buf, stride, args, used, a, rows, b0, len, acc);
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
