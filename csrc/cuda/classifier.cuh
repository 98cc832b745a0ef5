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
};

template <typename T, int L, bool kStrided>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<kStrided>(RowTile<T, L>::THREADS))
    classifier_forward_kernel(const ClassifierForwardArgs<T> p) {
  using Tile = RowTile<T, L>;
  using A = acc_of<T>;
  HK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* smem = reinterpret_cast<A*>(smem_raw);
  A* red = smem + Tile::kExchangeElems;
  Tile tile;
  const A alpha = *p.alpha;
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
    if (valid) {
      // a = alpha * inv_norm, as the CPU kernel: alpha * (1 / max(||x||, eps)).
      const A a = p.normalize ? classifier_coefficient(alpha, ss, k, p.eps) : alpha;
      const T* bias = p.bias;
      if (bias != nullptr) {
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

template <typename T, int L, bool kStrided>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<kStrided>(RowTile<T, L>::THREADS))
    classifier_backward_kernel(const ClassifierBackwardArgs<T> p) {
  using Tile = RowTile<T, L>;
  using A = acc_of<T>;
  constexpr int KV = Tile::KV;
  HK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* smem = reinterpret_cast<A*>(smem_raw);
  A* red = smem + Tile::kExchangeElems;
  Tile tile;
  const A alpha = *p.alpha;
  const int64_t groups = (p.rows + Tile::RPB - 1) / Tile::RPB;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t r = g * Tile::RPB + tile.rib;
    const bool valid = r < p.rows;
    const int64_t rr = valid ? r : 0;
    tile.template load<false, kStrided>(p.g + rr * p.g_row_stride, p.g_col_stride, 0, p.c, p.vec_g, valid);
    tile.transform(smem);  // tile.a = u = H_M[:, :C] @ g in the final layout
    // u . x and x . x over this thread's columns < N.
    const int lim = valid ? Tile::clamp_limit(p.n, 0) : -1;
    const int c_thread = tile.q_final_thread() * KV;
    const T* xr = p.x + rr * p.x_row_stride;
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
        tile.template load_final<kStrided>(xr, p.x_col_stride, lim, p.vec_x, v, xv);
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
      if (tile.t == 0) p.contrib[r] = co.contrib;
      // x again (from L1/L2: keeping it in registers would double their number) if needed.
      const int xlim = co.cb != A(0) ? lim : -1;
      T* gr = p.gx + r * p.n + c_thread;
#pragma unroll
      for (int v = 0; v < Tile::V; ++v) {
        const int c = Tile::q_final_offset(v) * KV;  // compile-time: an immediate offset from gr
        A xv[KV];
        tile.template load_final<kStrided>(xr, p.x_col_stride, xlim, p.vec_x, v, xv);
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

template <typename T>
__global__ void __launch_bounds__(kBackwardRowThreads) classifier_backward_rows_kernel(const BackwardRowArgs<T> p) {
  using A = acc_of<T>;
  constexpr int kWarps = kBackwardRowThreads / 32;
  __shared__ A red[3 * kWarps];
  const int tid = static_cast<int>(threadIdx.x);
  const A alpha = *p.alpha;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const A* u = p.u + r * p.m;
    const T* x = p.x + r * p.x_row_stride;
    A ux = 0, xx = 0, amax = 0;
    for (int64_t i = tid; i < p.n; i += kBackwardRowThreads) {
      const A xv = Num<T>::load(x[i * p.x_col_stride]);
      ux += u[i] * xv;
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
        ux += u[i] * xv;
        xx += xv * xv;
      }
      __syncthreads();  // every thread has read red
      block_reduce_row(ux, xx, amax, red);
    }
    const BackwardCoefficients<A> co = backward_coefficients(alpha, ux, xx, p.normalize, p.eps, k);
    const A s = scale2(A(1), k);  // x' = s * x, exactly
    if (tid == 0) p.contrib[r] = co.contrib;
    T* gx = p.gx + r * p.n;
    for (int64_t i = tid; i < p.n; i += kBackwardRowThreads) {
      const A xv = co.cb != A(0) ? Num<T>::load(x[i * p.x_col_stride]) * s : A(0);
      gx[i] = Num<T>::store(co.ca * (u[i] - xv * co.cb));
    }
    __syncthreads();  // red is rewritten by the next row
  }
}

// Between the classifier's pass 1 and pass 2 (normalised, M > 2^15): pass 1 left each chunk c
// transformed as 2^k_c x (k_c = 0 unless the chunk needed a rescale) and its (sum of squares,
// k_c) in chunks[rows, 2^L2, 2]. Per row: K = min_c k_c (the largest chunk's scale), the row's
// (sum of squares of 2^K x, K) into row_norm[rows, 2], and, only where the chunks' scales
// differ, chunk c multiplied by 2^(K - k_c) <= 1 in ws (what that flushes to 0 is below the
// rounding of the largest chunk). Every thread of a block computes the same row values in the
// same order (no reduction). Fast path: 2^L2 pairs read and one pair written per row.
constexpr int kChunkScaleThreads = 256;

template <typename A>
__global__ void __launch_bounds__(kChunkScaleThreads)
    classifier_chunk_scale_kernel(A* ws, const A* chunks, A* row_norm, int64_t rows, int log2_chunks, int log2_m1) {
  const int H = 1 << log2_chunks;
  const int64_t m = int64_t{H} << log2_m1;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const A* sq = chunks + r * (2 * H);
    A kmin = sq[1], kmax = sq[1];
    for (int h = 1; h < H; ++h) {
      kmin = fmin(kmin, sq[2 * h + 1]);
      kmax = fmax(kmax, sq[2 * h + 1]);
    }
    const int K = static_cast<int>(kmin);
    A ss = 0;
    for (int h = 0; h < H; ++h) {
      const A f = pow2_nonpositive<A>(K - static_cast<int>(sq[2 * h + 1]));  // 1 on the fast path
      ss += sq[2 * h] * f * f;
    }
    if (tid == 0) {
      row_norm[2 * r] = ss;
      row_norm[2 * r + 1] = kmin;
    }
    if (kmin != kmax) {
      A* w = ws + r * m;
      for (int64_t i = tid; i < m; i += kChunkScaleThreads) {
        w[i] *= pow2_nonpositive<A>(K - static_cast<int>(sq[2 * (i >> log2_m1) + 1]));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side.

// Launches kernel<Tile, kStrided> (one block per Tile::RPB rows, grid-stride beyond 2^31 - 1).
// (Tile, kStrided, Args) identifies the kernel, so smem_done is per kernel.
template <typename Tile, bool kStrided, typename Args>
inline cudaError_t launch_tile_kernel(void (*kernel)(Args), const Args& a, int64_t rows, cudaStream_t stream) {
  static unsigned long long smem_done = 0;
  cudaError_t err = allow_smem(kernel, Tile::kSmemBytes, smem_done);
  if (err != cudaSuccess) return err;
  HK_LAUNCH(kernel, grid_for((rows + Tile::RPB - 1) / Tile::RPB), Tile::THREADS, Tile::kSmemBytes, stream, a);
  return cudaGetLastError();
}

// The classifier's sizes: cp.t.in_features = N, out_features = C (forward) or the reverse
// (backward), cp.t.m = M. Workspace bytes needed (0 when M fits one pass).
template <typename T>
inline size_t classifier_workspace_bytes(const ClassifierParams& cp, bool backward) {
  const int L = ilog2(cp.t.m);
  if (L <= max_single_pass_log2<T>()) return 0;
  const size_t rows = static_cast<size_t>(cp.t.rows);
  size_t elems = rows * static_cast<size_t>(cp.t.m);
  // (sum of squares, k) per chunk and per row
  if (!backward && cp.normalize) elems += 2 * (rows << (L - pass1_log2<T>(L))) + 2 * rows;
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
      return p.x_col_stride == 1
                 ? launch_tile_kernel<Tile, false>(classifier_forward_kernel<T, kL, false>, a, p.rows, stream)
                 : launch_tile_kernel<Tile, true>(classifier_forward_kernel<T, kL, true>, a, p.rows, stream);
    });
  }
  A* ws = static_cast<A*>(workspace);
  const int L1 = pass1_log2<T>(L);
  A* chunks = cp.normalize ? ws + static_cast<size_t>(p.rows) * static_cast<size_t>(p.m) : nullptr;
  A* row_norm = cp.normalize ? chunks + (static_cast<size_t>(p.rows) << (L - L1)) * 2 : nullptr;
  cudaError_t err = launch_pass1<T>(x, p, L1, ws, chunks, stream);
  if (err != cudaSuccess) return err;
  if (cp.normalize) {
    auto scale_kernel = classifier_chunk_scale_kernel<A>;
    HK_LAUNCH(scale_kernel, grid_for(p.rows), kChunkScaleThreads, 0, stream, ws, chunks, row_norm, p.rows, L - L1, L1);
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
  c.scale = A(1);
  c.alpha = alpha;
  c.bias = bias;
  c.sumsq = row_norm;
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
      const bool strided = p.x_col_stride != 1 || x_col_stride != 1;
      return strided ? launch_tile_kernel<Tile, true>(classifier_backward_kernel<T, kL, true>, a, p.rows, stream)
                     : launch_tile_kernel<Tile, false>(classifier_backward_kernel<T, kL, false>, a, p.rows, stream);
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
  auto rows_kernel = classifier_backward_rows_kernel<T>;
  HK_LAUNCH(rows_kernel, grid_for(p.rows), kBackwardRowThreads, 0, stream, b);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace hadamard_kernels
