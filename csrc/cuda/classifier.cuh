// hadamard_kernels: CUDA device code of the fused fixed Hadamard classifier (no torch here).
//
// Forward, per row r (N = in_features, C = num_classes, M = next_pow2(max(N, C))):
//     y[r] = alpha * (H_M[:C, :N] @ x[r]) / max(||x[r]||, eps) + bias      (no norm if !normalize)
// Backward (g = dL/dy[r], u = H_M[:N, :C] @ g, formulas of csrc/hadamard.h):
//     grad_x[r] = alpha / ||x|| * (u - x (u . x) / ||x||^2),  contrib[r] = u . x / ||x||
// (alpha / eps * u and u . x / eps where the norm is clamped to eps; alpha * u and u . x
// without normalisation). dL/dalpha = sum_r contrib[r] and dL/dbias = sum_r g[r] are summed
// by the caller (torch reductions: deterministic, no atomics).
//
// M <= 2^15 (2^14 for float64): one kernel, the row tile of fwht.cuh plus a row reduction
// (the sum of squares before the transform in the forward; u . x and x . x after it in the
// backward). Larger M: the two passes of fwht.cuh (pass 1 also writes each chunk's sum of
// squares; a small kernel between them sums them per row; pass 2 applies alpha, the norm and
// the bias), and in the backward a third kernel that reduces each row (one block a row) and
// writes grad_x.
//
// The norm never overflows or underflows where the result is finite: a row whose sum of
// squares leaves the safe range is rescaled to x' = 2^k x, exactly (see norm_safe_low in
// fwht.cuh); u . x / ||x|| and x (u . x) / ||x||^2 are the same in x', alpha / ||x|| is
// 2^k alpha / ||x'||. In the forward the row is in registers; the backward reads x again (from
// L1/L2) only for rescaled rows.
//
// The simplex ETF head (ClassifierParams::etf; N = M a power of two, 2 <= C <= N) replaces
// H_M[:C, :N] by W = f P H_N[:C, :N], P = I - 11^T / C, f = etf_factor(C, N): alpha * f stands
// for alpha, contrib[r] is multiplied by f, and
//   - forward, one kernel: the mean of the row's C outputs, already in registers, is reduced
//     over the row's threads (row_sum1) and subtracted before the coefficient (the kEtf
//     instantiations of classifier_forward_kernel);
//   - backward, one kernel: the mean of the C entries of g is subtracted right after the load,
//     before the transform (P is symmetric: its adjoint is itself) (kEtf instantiations);
//   - forward, two passes: the C outputs of a row are spread over the whole grid of pass 2, so
//     pass 1 (row_transform_centre_kernel) also writes, per chunk h of M1 columns, the sums of
//     its transformed entries z_h (all, and those at columns < C mod M1), and
//     classifier_chunk_scale_kernel forms the row's sum of outputs below C = q M1 + rem:
//         sum_{i<C} y_i = sum_h [ S_q(h) sum_j z_h[j] + H[q, h] sum_{j<rem} z_h[j] ],
//     S_q(h) = sum_{i<q} H[i, h] (hadamard_prefix_sum); pass 2 subtracts the mean (no extra
//     pass over x or the workspace);
//   - backward, two passes: u = H P g = H g - mean(g) H 1_C with mean(g) = (H g)[0] / C and
//     (H 1_C)[i] = hadamard_prefix_sum(C, i), applied by classifier_backward_rows_etf_kernel as
//     it reads u.
// Registers: the kEtf tiles stay within the plain ones' budget (no spills, same occupancy:
// scripts/cuda_resources.py); what that took is noted where it is done (tile_mean, the loads
// of x in the backward).
#pragma once

#include "fwht.cuh"

namespace hadamard_kernels {
namespace cuda {

template <typename T>
struct ClassifierForwardArgs {
  const T* x;
  T* y;                   // rows of C, contiguous
  const acc_of<T>* alpha; // device scalar
  const T* bias;          // (C,) contiguous, or null
  int64_t rows;
  int64_t n;              // N
  int64_t c;              // C
  int64_t x_row_stride;
  int64_t x_col_stride;
  bool vec_load;
  bool vec_store;
  bool normalize;
  acc_of<T> eps;
  acc_of<T> factor;  // kEtf: f, multiplies alpha
  acc_of<T> inv_c;   // kEtf: 1 / C
};

// The ETF head's mean of the forward's outputs (a transformed row tile's entries at columns
// < c), summed over the row's threads (row_sum1: every thread of the block must call it).
// inv_c = 1 / C from the launcher: a division here had its reciprocal hoisted out of the row
// loop, and tiles at 128 registers spilled.
template <typename Tile>
__device__ __forceinline__ typename Tile::A tile_mean(const Tile& tile, int64_t c, typename Tile::A inv_c,
                                                     typename Tile::A* red) {
  using A = typename Tile::A;
  A sum = tile.sum_below(Tile::clamp_limit(c, 0));
  tile.row_sum1(sum, red);
  return sum * inv_c;
}

// The backward's centring of g over its C classes: g - mean(g) at columns < c (g is loaded,
// zero at columns >= c, which must stay zero); as tile_mean, every thread of the block.
template <typename Tile>
__device__ __forceinline__ void centre_loaded(Tile& tile, int64_t c, typename Tile::A inv_c,
                                              typename Tile::A* red) {
  using A = typename Tile::A;
  A sum = 0;  // of every entry, those at columns >= c being zero (masked, float16 tiles spilled)
#pragma unroll
  for (int v = 0; v < Tile::V; ++v)
#pragma unroll
    for (int k = 0; k < Tile::KV; ++k) sum += tile.a[v][k];
  tile.row_sum1(sum, red);
  const A mean = sum * inv_c;
  const int rel = tile.template relative_limit<false>(Tile::clamp_limit(c, 0));
#pragma unroll
  for (int v = 0; v < Tile::V; ++v)
#pragma unroll
    for (int k = 0; k < Tile::KV; ++k)
      if (Tile::q_load_offset(v) * Tile::KV + k < rel) tile.a[v][k] -= mean;
}

template <typename T, int L, bool kStrided, bool kEtf>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<kStrided>(RowTile<T, L>::THREADS))
    classifier_forward_kernel(const ClassifierForwardArgs<T> p) {
  using Tile = RowTile<T, L>;
  using A = acc_of<T>;
  HK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* smem = reinterpret_cast<A*>(smem_raw);
  A* red = smem + Tile::kExchangeElems;
  Tile tile;
  const A alpha = kEtf ? *p.alpha * p.factor : *p.alpha;
  const int64_t groups = (p.rows + Tile::RPB - 1) / Tile::RPB;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t r = g * Tile::RPB + tile.rib;
    const bool valid = r < p.rows;
    const T* xr = p.x + (valid ? r : 0) * p.x_row_stride;
    tile.template load<false, kStrided>(xr, p.x_col_stride, 0, p.n, p.vec_load, valid);
    A ss = 0;
    int k = 0;
    if (p.normalize) k = tile.rescale_for_norm(ss, red);  // the registers now hold 2^k x
    tile.transform(smem);
    // The ETF head: the outputs minus their mean (red is free: the exchange's barrier, W > 1,
    // separates this from the reads of rescale_for_norm).
    A mean = 0;
    if constexpr (kEtf) mean = tile_mean(tile, p.c, p.inv_c, red);
    if (valid) {
      // a = alpha * inv_norm, as the CPU kernel: alpha * (1 / max(||x||, eps)).
      const A a = p.normalize ? classifier_coefficient(alpha, ss, k, p.eps) : alpha;
      const T* bias = p.bias;
      if constexpr (kEtf) {
        if (bias != nullptr) {
          tile.store(p.y + r * p.c, p.c, p.vec_store,
                     [a, mean, bias](A v, int64_t col) { return a * (v - mean) + Num<T>::load(bias[col]); });
        } else {
          tile.store(p.y + r * p.c, p.c, p.vec_store, [a, mean](A v, int64_t) { return a * (v - mean); });
        }
      } else if (bias != nullptr) {
        tile.store(p.y + r * p.c, p.c, p.vec_store,
                   [a, bias](A v, int64_t col) { return a * v + Num<T>::load(bias[col]); });
      } else {
        tile.store(p.y + r * p.c, p.c, p.vec_store, [a](A v, int64_t) { return a * v; });
      }
    }
    if constexpr (Tile::W > 1) __syncthreads();
  }
}

template <typename T>
struct ClassifierBackwardArgs {
  const T* g;  // grad_y rows of C
  int64_t g_row_stride;
  int64_t g_col_stride;
  const T* x;  // rows of N
  int64_t x_row_stride;
  int64_t x_col_stride;
  T* gx;                   // grad_x, rows of N, contiguous
  acc_of<T>* contrib;      // (rows,): this row's dL/dalpha
  const acc_of<T>* alpha;  // device scalar
  int64_t rows;
  int64_t n;  // N
  int64_t c;  // C
  bool vec_g;
  bool vec_x;
  bool vec_gx;
  bool normalize;
  acc_of<T> eps;
  acc_of<T> factor;  // kEtf: f, multiplies alpha and contrib
  acc_of<T> inv_c;   // kEtf: 1 / C
};

// Coefficients of one backward row: grad_x = ca * (u - cb * x'), dL/dalpha share = contrib,
// for x' = 2^k x (k = 0: x itself), ux = u . x', xx = x' . x'.
template <typename A>
struct BackwardCoefficients {
  A ca, cb, contrib;
};

template <typename A>
__device__ __forceinline__ BackwardCoefficients<A> backward_coefficients(A alpha, A ux, A xx, bool normalize,
                                                                         A eps, int k) {
  if (!normalize) return {alpha, A(0), ux};
  const A norm = sqrt(xx);
  if (norm >= scale2(eps, k)) return {scale2(alpha / norm, k), ux / (norm * norm), ux / norm};
  // The norm is clamped to eps: x_hat = x / eps is linear in x (2^-k / eps < 1 here).
  return {alpha / eps, A(0), k == 0 ? ux / eps : ux * scale2(A(1) / eps, -k)};
}

template <typename T, int L, bool kStrided, bool kEtf>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<kStrided>(RowTile<T, L>::THREADS))
    classifier_backward_kernel(const ClassifierBackwardArgs<T> p) {
  using Tile = RowTile<T, L>;
  using A = acc_of<T>;
  constexpr int KV = Tile::KV;
  HK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* smem = reinterpret_cast<A*>(smem_raw);
  A* red = smem + Tile::kExchangeElems;
  Tile tile;
  const A alpha = kEtf ? *p.alpha * p.factor : *p.alpha;
  const int64_t groups = (p.rows + Tile::RPB - 1) / Tile::RPB;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t r = g * Tile::RPB + tile.rib;
    const bool valid = r < p.rows;
    const int64_t rr = valid ? r : 0;
    tile.template load<false, kStrided>(p.g + rr * p.g_row_stride, p.g_col_stride, 0, p.c, p.vec_g, valid);
    // The ETF head: g minus its mean over the C classes (red: the previous row's last reads
    // of it are before the loop's last barrier; the exchange's barrier follows).
    if constexpr (kEtf) centre_loaded(tile, p.c, p.inv_c, red);
    tile.transform(smem);  // tile.a = u = H_M[:, :C] @ g in the final layout
    // u . x and x . x over this thread's columns < N.
    const int lim = valid ? Tile::clamp_limit(p.n, 0) : -1;
    const int c_thread = tile.q_final_thread() * KV;
    const T* xr = p.x + rr * p.x_row_stride;
    // x's entries at the columns of register vector v. kEtf: c_thread anew in every row
    // (opaque), so that the columns of x's entries are not all hoisted out of the row loop
    // (tiles at 128 registers spilled them).
    const int x_thread = kEtf ? static_cast<int>(opaque(int64_t{c_thread})) : c_thread;
    auto load_x = [&](int lim_x, int v, A (&xv)[KV]) {
      if constexpr (kEtf) {
        tile.template load_final_at<kStrided>(xr, p.x_col_stride, lim_x, p.vec_x, v, xv, x_thread);
      } else {
        tile.template load_final<kStrided>(xr, p.x_col_stride, lim_x, p.vec_x, v, xv);
      }
    };
    // u . x' and x' . x' for x' = 2^e x: e = 0 first; rows whose x . x left the safe range
    // (normalize) go round once more with their e, reading x again (only they do). Cost on the
    // fast path: one max and one multiplication (by 1) per entry, the reduction of
    // (x . x, max|x|) (log2(LANES) shuffles of two values; one barrier if W > 1) and one
    // barrier more if W > 1. One loop body for both rounds: two unrolled copies kept the first
    // round's x in registers for the second, and the largest tiles spilled.
    A ux, xx;
    int e = 0;
#pragma unroll 1
    for (int round = 0;; ++round) {
      const A scale = pow2<A>(e);
      A amax = 0;
      ux = 0;
      xx = 0;
#pragma unroll
      for (int v = 0; v < Tile::V; ++v) {
        A xv[KV];
        load_x(lim, v, xv);
#pragma unroll
        for (int k = 0; k < KV; ++k) {
          amax = fmax(amax, fabs(xv[k]));
          const A xs = xv[k] * scale;
          ux += tile.a[v][k] * xs;
          xx += xs * xs;
        }
      }
      if (round == 1 || !p.normalize) break;  // every thread does round 0 to the end
      A xx_row = xx;
      tile.template row_sum2<true>(xx_row, amax, red);
      if (!needs_rescale(xx_row, amax)) break;
      e = rescale_exponent(amax);
    }
    if (p.normalize) {
      if constexpr (Tile::W > 1) __syncthreads();  // every thread has read red
    }
    tile.row_sum2(ux, xx, red);
    const BackwardCoefficients<A> co = backward_coefficients(alpha, ux, xx, p.normalize, p.eps, e);
    const A s = scale2(A(1), e);  // x' = s * x, exactly
    if (valid) {
      if (tile.t == 0) p.contrib[r] = kEtf ? co.contrib * p.factor : co.contrib;
      // x again (from L1/L2: keeping it in registers would double their number) if needed.
      const int xlim = co.cb != A(0) ? lim : -1;
      T* gr = p.gx + r * p.n + c_thread;
#pragma unroll
      for (int v = 0; v < Tile::V; ++v) {
        const int c = Tile::q_final_offset(v) * KV;  // compile-time: an immediate offset from gr
        A xv[KV];
        load_x(xlim, v, xv);
        if (p.vec_gx) {
          if (c + c_thread < lim) {
            T o[KV];
#pragma unroll
            for (int k = 0; k < KV; ++k) o[k] = Num<T>::store(co.ca * (tile.a[v][k] - (xv[k] * s) * co.cb));
            store_vec<T, KV>(gr + c, o);
          }
        } else {
#pragma unroll
          for (int k = 0; k < KV; ++k)
            if (c + c_thread + k < lim) gr[c + k] = Num<T>::store(co.ca * (tile.a[v][k] - (xv[k] * s) * co.cb));
        }
      }
    }
    if constexpr (Tile::W > 1) __syncthreads();
  }
}

// sum_{i<c} H[i, j] for the Sylvester H (H[i, j] = (-1)^popcount(i & j)), 0 <= c, j: the
// column sums of the first c rows, or (H symmetric) (H 1_c)[j]. In O(1): for j > 0 with lowest
// set bit 2^t, the sign of row i depends on its bits >= t only, and rows that differ only in
// bit t cancel; [0, c) less such pairs is the c mod 2^t rows below c, whose sign is that of
// c, (-1)^popcount(c & j), and where bit t of c is set the 2^t rows below those, of the other
// sign: (-1)^popcount(c & j) ((c mod 2^t) - (c & 2^t)). For j = 0 (2^t read as 0) that is c.
__host__ __device__ __forceinline__ int64_t hadamard_prefix_sum(int64_t c, int64_t j) {
  const uint64_t cu = static_cast<uint64_t>(c), ju = static_cast<uint64_t>(j);
  const uint64_t low = ju & (~ju + 1);  // 2^t, or 0 for j = 0
  const int64_t s = static_cast<int64_t>(cu & (low - 1)) - static_cast<int64_t>(cu & low);
  uint64_t v = cu & ju;  // its popcount's parity
  v ^= v >> 32;
  v ^= v >> 16;
  v ^= v >> 8;
  v ^= v >> 4;
  v ^= v >> 2;
  v ^= v >> 1;
  return (v & 1) ? -s : s;
}

// Backward for M > 2^15 after the two transform passes: u (rows of M accumulators in ws) and
// x -> grad_x and contrib, one block a row.
constexpr int kBackwardRowThreads = 512;

template <typename T>
struct BackwardRowArgs {
  const acc_of<T>* u;  // rows of m
  int64_t m;
  const T* x;
  int64_t x_row_stride;
  int64_t x_col_stride;
  T* gx;
  acc_of<T>* contrib;
  const acc_of<T>* alpha;
  int64_t rows;
  int64_t n;
  bool normalize;
  acc_of<T> eps;
  // The ETF head (classifier_backward_rows_etf_kernel): u is H g, the kernel reads
  // H P g = u - (u[0] / C) H 1_C; f multiplies alpha and contrib.
  int64_t etf_c;     // C
  acc_of<T> inv_c;   // 1 / C
  acc_of<T> factor;  // f
};

// Sums ux and xx and the max of amax over the block (kBackwardRowThreads threads), in a fixed
// order, into every thread. red: 3 * kWarps accumulators; the caller must __syncthreads()
// before it is written again.
template <typename A>
__device__ __forceinline__ void block_reduce_row(A& ux, A& xx, A& amax, A* red) {
  constexpr int kWarps = kBackwardRowThreads / 32;
  const int tid = static_cast<int>(threadIdx.x);
#pragma unroll
  for (int h = 1; h < 32; h <<= 1) {
    ux += __shfl_xor_sync(0xffffffffu, ux, h);
    xx += __shfl_xor_sync(0xffffffffu, xx, h);
    amax = fmax(amax, __shfl_xor_sync(0xffffffffu, amax, h));
  }
  if (tid % 32 == 0) {
    red[3 * (tid / 32)] = ux;
    red[3 * (tid / 32) + 1] = xx;
    red[3 * (tid / 32) + 2] = amax;
  }
  __syncthreads();
  ux = red[0];
  xx = red[1];
  amax = red[2];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    ux += red[3 * w];
    xx += red[3 * w + 1];
    amax = fmax(amax, red[3 * w + 2]);
  }
}

// The body of the two row kernels below; kEtf: the ETF head's (p.etf_c, p.inv_c, p.factor).
template <typename T, bool kEtf>
__device__ __forceinline__ void backward_rows(const BackwardRowArgs<T>& p) {
  using A = acc_of<T>;
  constexpr int kWarps = kBackwardRowThreads / 32;
  __shared__ A red[3 * kWarps];
  const int tid = static_cast<int>(threadIdx.x);
  const A alpha = kEtf ? *p.alpha * p.factor : *p.alpha;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const A* u = p.u + r * p.m;
    const T* x = p.x + r * p.x_row_stride;
    // The ETF head: g's mean over the classes is (H g)[0] / C (row 0 of H is all ones). Read
    // anew in each loop (from L1): kept live across backward_coefficients' calls (float64
    // division and square root), it spilled.
    auto u_at = [&](int64_t i) {
      if constexpr (kEtf) {
        return u[i] - u[0] * p.inv_c * static_cast<A>(hadamard_prefix_sum(p.etf_c, i));
      } else {
        return u[i];
      }
    };
    A ux = 0, xx = 0, amax = 0;
    for (int64_t i = tid; i < p.n; i += kBackwardRowThreads) {
      const A xv = Num<T>::load(x[i * p.x_col_stride]);
      ux += u_at(i) * xv;
      xx += xv * xv;
      amax = fmax(amax, fabs(xv));
    }
    block_reduce_row(ux, xx, amax, red);
    // A row whose x . x left the safe range: again on x' = 2^k x (one block a row: the
    // condition is uniform over the block).
    int k = 0;
    if (p.normalize && needs_rescale(xx, amax)) {
      k = rescale_exponent(amax);
      ux = 0;
      xx = 0;
      for (int64_t i = tid; i < p.n; i += kBackwardRowThreads) {
        const A xv = scale2(Num<T>::load(x[i * p.x_col_stride]), k);
        ux += u_at(i) * xv;
        xx += xv * xv;
      }
      __syncthreads();  // every thread has read red
      block_reduce_row(ux, xx, amax, red);
    }
    // kEtf: eps anew in every row (opaque), else 1 / eps is hoisted out of the row loop and
    // kept live: float64 spilled it.
    const A eps = kEtf ? opaque(p.eps) : p.eps;
    const BackwardCoefficients<A> co = backward_coefficients(alpha, ux, xx, p.normalize, eps, k);
    const A s = scale2(A(1), k);  // x' = s * x, exactly
    if (tid == 0) p.contrib[r] = kEtf ? co.contrib * p.factor : co.contrib;
    T* gx = p.gx + r * p.n;
    for (int64_t i = tid; i < p.n; i += kBackwardRowThreads) {
      const A xv = co.cb != A(0) ? Num<T>::load(x[i * p.x_col_stride]) * s : A(0);
      gx[i] = Num<T>::store(co.ca * (u_at(i) - xv * co.cb));
    }
    __syncthreads();  // red is rewritten by the next row
  }
}

template <typename T>
__global__ void __launch_bounds__(kBackwardRowThreads) classifier_backward_rows_kernel(const BackwardRowArgs<T> p) {
  backward_rows<T, false>(p);
}

// The ETF head's (its own kernel: the plain one with the centring under a runtime branch took
// 58 registers instead of 40, 50% occupancy instead of 75%).
template <typename T>
__global__ void __launch_bounds__(kBackwardRowThreads)
    classifier_backward_rows_etf_kernel(const BackwardRowArgs<T> p) {
  backward_rows<T, true>(p);
}

// Between the classifier's pass 1 and pass 2 (M > 2^15), normalised or with the ETF head.
// Normalised: pass 1 left each chunk c transformed as 2^k_c x (k_c = 0 unless the chunk needed
// a rescale) and its (sum of squares, k_c) in chunks[rows, 2^L2, 2]. Per row: K = min_c k_c
// (the largest chunk's scale), the row's (sum of squares of 2^K x, K) into row_norm[rows, 2],
// and, only where the chunks' scales differ, chunk c multiplied by 2^(K - k_c) <= 1 in ws (what
// that flushes to 0 is below the rounding of the largest chunk). ETF head (centre not null):
// pass 1 left (sum of chunk h's outputs, sum of those at columns < C mod M1) in
// centre[rows, 2^L2, 2]; the row's mean of its outputs below C (file comment), at the scale
// 2^K of ws, into row_mean[rows]. Every thread of a block computes the same row values in the
// same order (no reduction). Fast path: 2^L2 pairs (and 2^L2 more with the ETF head) read and
// one pair (and one mean) written per row.
constexpr int kChunkScaleThreads = 256;

template <typename A>
struct ChunkScaleArgs {
  A* ws;
  const A* chunks;  // or null (not normalised: every chunk at scale 1)
  A* row_norm;
  const A* centre;  // or null (no ETF head)
  A* row_mean;
  int64_t rows;
  int64_t c;        // the ETF head's C
  int log2_chunks;
  int log2_m1;
};

template <typename A>
__global__ void __launch_bounds__(kChunkScaleThreads) classifier_chunk_scale_kernel(const ChunkScaleArgs<A> p) {
  const int H = 1 << p.log2_chunks;
  const int64_t m = int64_t{H} << p.log2_m1;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const A* sq = p.chunks != nullptr ? p.chunks + r * (2 * H) : nullptr;
    A kmin = 0, kmax = 0;
    if (sq != nullptr) {
      kmin = kmax = sq[1];
      for (int h = 1; h < H; ++h) {
        kmin = fmin(kmin, sq[2 * h + 1]);
        kmax = fmax(kmax, sq[2 * h + 1]);
      }
    }
    const int K = static_cast<int>(kmin);
    // Chunk h's factor to the row's scale 2^K: 1 on the fast path.
    auto factor = [&](int h) {
      return sq != nullptr ? pow2_nonpositive<A>(K - static_cast<int>(sq[2 * h + 1])) : A(1);
    };
    if (sq != nullptr) {
      A ss = 0;
      for (int h = 0; h < H; ++h) {
        const A f = factor(h);
        ss += sq[2 * h] * f * f;
      }
      if (tid == 0) {
        p.row_norm[2 * r] = ss;
        p.row_norm[2 * r + 1] = kmin;
      }
    }
    if (p.centre != nullptr) {
      // sum_{i<C} y_i = sum_h [S_q(h) all_h + H[q, h] below_h], C = q M1 + rem (below_h = 0
      // where rem = 0); H[q, h] = S_{q+1}(h) - S_q(h).
      const A* ce = p.centre + r * (2 * H);
      const int64_t q = p.c >> p.log2_m1;
      A sum = 0;
      for (int h = 0; h < H; ++h) {
        const int64_t s_q = hadamard_prefix_sum(q, h);
        const int64_t h_qh = hadamard_prefix_sum(q + 1, h) - s_q;
        sum += factor(h) * (static_cast<A>(s_q) * ce[2 * h] + static_cast<A>(h_qh) * ce[2 * h + 1]);
      }
      if (tid == 0) p.row_mean[r] = sum / static_cast<A>(p.c);
    }
    if (kmin != kmax) {
      A* w = p.ws + r * m;
      for (int64_t i = tid; i < m; i += kChunkScaleThreads) {
        w[i] *= pow2_nonpositive<A>(K - static_cast<int>(sq[2 * (i >> p.log2_m1) + 1]));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side.

// Launches kKernel (one block per Tile::RPB rows, grid-stride beyond 2^31 - 1); smem_done is
// per kernel.
template <typename Tile, auto kKernel, typename Args>
inline cudaError_t launch_tile_kernel(const Args& a, int64_t rows, cudaStream_t stream) {
  static unsigned long long smem_done = 0;
  cudaError_t err = allow_smem(kKernel, Tile::kSmemBytes, smem_done);
  if (err != cudaSuccess) return err;
  HK_LAUNCH(kKernel, grid_for((rows + Tile::RPB - 1) / Tile::RPB), Tile::THREADS, Tile::kSmemBytes, stream, a);
  return cudaGetLastError();
}

// The single-pass forward or backward (kForward) for tile L, strided or not, with the ETF head
// or not. No ETF instantiation at L = 0 (the head needs C >= 2 and C <= N = M).
template <typename T, int L, bool kForward, typename Args>
inline cudaError_t launch_classifier_tile(const Args& a, bool strided, bool etf, cudaStream_t stream) {
  using Tile = RowTile<T, L>;
  auto launch = [&](auto strided_c, auto etf_c) {
    constexpr bool kS = decltype(strided_c)::value, kE = decltype(etf_c)::value;
    if constexpr (kForward) {
      return launch_tile_kernel<Tile, classifier_forward_kernel<T, L, kS, kE>>(a, a.rows, stream);
    } else {
      return launch_tile_kernel<Tile, classifier_backward_kernel<T, L, kS, kE>>(a, a.rows, stream);
    }
  };
  using False = std::false_type;
  using True = std::true_type;
  if (etf) {
    if constexpr (L == 0) {
      return cudaErrorInvalidValue;
    } else {
      return strided ? launch(True{}, True{}) : launch(False{}, True{});
    }
  }
  return strided ? launch(True{}, False{}) : launch(False{}, False{});
}

// Whether the ETF head's sizes hold (N = M, 2 <= C <= N): the glue checks them (checks.h).
inline bool etf_sizes_ok(int64_t n, int64_t c, int64_t m) { return n == m && c >= 2 && c <= n; }

// The classifier's sizes: cp.t.in_features = N, out_features = C (forward) or the reverse
// (backward), cp.t.m = M. Workspace bytes needed (0 when M fits one pass): rows of M
// accumulators; the forward's per-chunk pairs and per-row values after them (normalised: the
// chunks' (sum of squares, k), the rows' (sum of squares, K); ETF head: the chunks' sums, the
// rows' means).
template <typename T>
inline size_t classifier_workspace_bytes(const ClassifierParams& cp, bool backward) {
  const int L = ilog2(cp.t.m);
  if (L <= max_single_pass_log2<T>()) return 0;
  const size_t rows = static_cast<size_t>(cp.t.rows);
  const size_t chunks = rows << (L - pass1_log2<T>(L));
  size_t elems = rows * static_cast<size_t>(cp.t.m);
  if (!backward && cp.normalize) elems += 2 * chunks + 2 * rows;
  if (!backward && cp.etf) elems += 2 * chunks + rows;
  return elems * sizeof(acc_of<T>);
}

// y (rows of C, contiguous) = the forward for x (cp.t: rows, N, C, M and x's strides).
// alpha: device pointer to the scale in the accumulator type; bias: (C,) contiguous or null.
template <typename T>
cudaError_t launch_classifier_forward(const T* x, const acc_of<T>* alpha, const T* bias, T* y,
                                      const ClassifierParams& cp, void* workspace, cudaStream_t stream) {
  using A = acc_of<T>;
  const TransformParams& p = cp.t;
  if (p.rows == 0) return cudaSuccess;
  const int L = ilog2(p.m);
  if (L > kMaxLogM || (int64_t{1} << L) != p.m) return cudaErrorInvalidValue;
  if (cp.etf && !etf_sizes_ok(p.in_features, p.out_features, p.m)) return cudaErrorInvalidValue;
  const A factor = cp.etf ? static_cast<A>(etf_factor(p.out_features, p.in_features)) : A(1);
  if (L <= max_single_pass_log2<T>()) {
    return dispatch_log2<0, max_single_pass_log2<T>()>(L, [&](auto lc) {
      constexpr int kL = decltype(lc)::value;
      using Tile = RowTile<T, kL>;
      ClassifierForwardArgs<T> a{};
      a.x = x;
      a.y = y;
      a.alpha = alpha;
      a.bias = bias;
      a.rows = p.rows;
      a.n = p.in_features;
      a.c = p.out_features;
      a.x_row_stride = p.x_row_stride;
      a.x_col_stride = p.x_col_stride;
      a.vec_load = can_vectorize<T>(x, p.x_row_stride, p.x_col_stride, p.in_features, Tile::KV);
      a.vec_store = can_vectorize<T>(y, p.out_features, 1, p.out_features, Tile::KV);
      a.normalize = cp.normalize;
      a.eps = static_cast<A>(cp.eps);
      a.factor = factor;
      a.inv_c = static_cast<A>(1.0 / static_cast<double>(p.out_features));
      return launch_classifier_tile<T, kL, true>(a, p.x_col_stride != 1, cp.etf, stream);
    });
  }
  A* ws = static_cast<A*>(workspace);
  const int L1 = pass1_log2<T>(L);
  const size_t chunk_count = static_cast<size_t>(p.rows) << (L - L1);
  A* tail = ws + static_cast<size_t>(p.rows) * static_cast<size_t>(p.m);  // see classifier_workspace_bytes
  A* chunks = nullptr;
  A* row_norm = nullptr;
  if (cp.normalize) {
    chunks = tail;
    row_norm = chunks + 2 * chunk_count;
    tail = row_norm + 2 * static_cast<size_t>(p.rows);
  }
  A* centre = cp.etf ? tail : nullptr;
  A* row_mean = cp.etf ? centre + 2 * chunk_count : nullptr;
  cudaError_t err = launch_pass1<T>(x, p, L1, ws, chunks, stream, centre, p.out_features & ((int64_t{1} << L1) - 1));
  if (err != cudaSuccess) return err;
  if (cp.normalize || cp.etf) {
    ChunkScaleArgs<A> s{ws, chunks, row_norm, centre, row_mean, p.rows, p.out_features, L - L1, L1};
    auto scale_kernel = classifier_chunk_scale_kernel<A>;
    HK_LAUNCH(scale_kernel, grid_for(p.rows), kChunkScaleThreads, 0, stream, s);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  ColumnArgs<T, T> c{};
  c.ws = ws;
  c.out = y;
  c.rows = p.rows;
  c.m1 = int64_t{1} << L1;
  c.out_features = p.out_features;
  c.out_row_stride = p.out_features;
  c.scale = factor;
  c.alpha = alpha;
  c.bias = bias;
  c.sumsq = row_norm;
  c.mean = row_mean;
  c.normalize = cp.normalize;
  c.eps = static_cast<A>(cp.eps);
  return launch_pass2<T, T, ColumnEpilogue::kClassifier>(c, L - L1, stream);
}

// grad_x (rows of N, contiguous) and contrib (rows,) of the backward. cp.t describes grad_y:
// rows, in_features = C, out_features = N, M, grad_y's strides; x has N columns with strides
// (x_row_stride, x_col_stride). alpha: device pointer in the accumulator type.
template <typename T>
cudaError_t launch_classifier_backward(const T* g, const T* x, int64_t x_row_stride, int64_t x_col_stride,
                                       const acc_of<T>* alpha, T* gx, acc_of<T>* contrib,
                                       const ClassifierParams& cp, void* workspace, cudaStream_t stream) {
  using A = acc_of<T>;
  const TransformParams& p = cp.t;
  if (p.rows == 0) return cudaSuccess;
  const int L = ilog2(p.m);
  if (L > kMaxLogM || (int64_t{1} << L) != p.m) return cudaErrorInvalidValue;
  const int64_t n = p.out_features;
  if (cp.etf && !etf_sizes_ok(n, p.in_features, p.m)) return cudaErrorInvalidValue;
  const A factor = cp.etf ? static_cast<A>(etf_factor(p.in_features, n)) : A(1);
  if (L <= max_single_pass_log2<T>()) {
    return dispatch_log2<0, max_single_pass_log2<T>()>(L, [&](auto lc) {
      constexpr int kL = decltype(lc)::value;
      using Tile = RowTile<T, kL>;
      ClassifierBackwardArgs<T> a{};
      a.g = g;
      a.g_row_stride = p.x_row_stride;
      a.g_col_stride = p.x_col_stride;
      a.x = x;
      a.x_row_stride = x_row_stride;
      a.x_col_stride = x_col_stride;
      a.gx = gx;
      a.contrib = contrib;
      a.alpha = alpha;
      a.rows = p.rows;
      a.n = n;
      a.c = p.in_features;
      a.vec_g = can_vectorize<T>(g, p.x_row_stride, p.x_col_stride, p.in_features, Tile::KV);
      a.vec_x = can_vectorize<T>(x, x_row_stride, x_col_stride, n, Tile::KV);
      a.vec_gx = can_vectorize<T>(gx, n, 1, n, Tile::KV);
      a.normalize = cp.normalize;
      a.eps = static_cast<A>(cp.eps);
      a.factor = factor;
      a.inv_c = static_cast<A>(1.0 / static_cast<double>(p.in_features));
      return launch_classifier_tile<T, kL, false>(a, p.x_col_stride != 1 || x_col_stride != 1, cp.etf, stream);
    });
  }
  // u = H_M[:, :C] @ g into ws (pass 1 and pass 2 in place), then the row epilogue.
  A* ws = static_cast<A*>(workspace);
  const int L1 = pass1_log2<T>(L);
  cudaError_t err = launch_pass1<T>(g, p, L1, ws, nullptr, stream);
  if (err != cudaSuccess) return err;
  ColumnArgs<T, A> c{};
  c.ws = ws;
  c.out = ws;
  c.rows = p.rows;
  c.m1 = int64_t{1} << L1;
  c.out_features = p.m;
  c.out_row_stride = p.m;
  c.scale = A(1);
  err = launch_pass2<T, A, ColumnEpilogue::kScale>(c, L - L1, stream);
  if (err != cudaSuccess) return err;
  BackwardRowArgs<T> b{};
  b.u = ws;
  b.m = p.m;
  b.x = x;
  b.x_row_stride = x_row_stride;
  b.x_col_stride = x_col_stride;
  b.gx = gx;
  b.contrib = contrib;
  b.alpha = alpha;
  b.rows = p.rows;
  b.n = n;
  b.normalize = cp.normalize;
  b.eps = static_cast<A>(cp.eps);
  b.etf_c = p.in_features;
  b.inv_c = static_cast<A>(1.0 / static_cast<double>(p.in_features));
  b.factor = factor;
  auto rows_kernel = cp.etf ? classifier_backward_rows_etf_kernel<T> : classifier_backward_rows_kernel<T>;
  HK_LAUNCH(rows_kernel, grid_for(p.rows), kBackwardRowThreads, 0, stream, b);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace hadamard_kernels
