// hadamard_kernels: shared declarations for the CPU and CUDA kernels.
//
// Every kernel computes, row by row over a (rows, in_features) input,
//     out[r, :out_features] = scale * H_M[:out_features, :in_features] @ x[r, :]
// where M = next power of two >= max(in_features, out_features) and H_M is the
// Sylvester Hadamard matrix (H_1 = [1], H_2m = [[H_m, H_m], [H_m, -H_m]]), i.e.
// the input row is zero-padded to M, transformed, and truncated to out_features.
#pragma once

#include <cmath>
#include <cstdint>

namespace hadamard_kernels {

// Largest supported transform size M (2^20 = 1,048,576 entries per row).
constexpr int64_t kMaxLogM = 20;
constexpr int64_t kMaxM = int64_t{1} << kMaxLogM;

// Largest order K of the transforms by H_K (x) H_{2^k} (the largest in orders.ORDERS is 172).
constexpr int64_t kMaxK = 256;

// Smallest power of two >= n (1 for n <= 1).
inline int64_t next_pow2(int64_t n) {
  int64_t m = 1;
  while (m < n) m <<= 1;
  return m;
}

// One row-wise transform: sizes and strides in elements, all 64-bit.
struct TransformParams {
  int64_t rows;            // number of independent rows
  int64_t in_features;     // N: entries read per row
  int64_t out_features;    // entries written per row
  int64_t m;               // transform size, next_pow2(max(in, out))
  int64_t x_row_stride;    // elements between consecutive input rows
  int64_t x_col_stride;    // elements between consecutive entries of one input row
  int64_t out_row_stride;  // elements between consecutive output rows (output entries contiguous)
  double scale;            // multiplies every output
};

// The fused fixed classifier, forward:
//     y[r, c] = alpha * (H_M[:C, :N] @ x_hat[r])[c] + bias[c],
//     x_hat[r] = x[r] / max(||x[r]||_2, eps) if normalize else x[r].
// Backward (g = dL/dy, u = H_M[:N, :C] @ g[r], the adjoint since H is symmetric):
//     dL/dalpha = sum_r u . x_hat[r],   dL/dbias = sum_r g[r],
//     dL/dx_hat = alpha * u,  dL/dx = (dL/dx_hat - x_hat (x_hat . dL/dx_hat)) / ||x||
//     (or dL/dx_hat / eps where the norm is clamped, or dL/dx_hat without normalize).
// The simplex ETF head (etf) replaces H_M[:C, :N] by W = f (I - 11^T / C) H_N[:C, :N],
// f = sqrt(C / ((C - 1) N)) (N a power of two, 2 <= C <= N): the forward subtracts the mean
// over the C outputs before the scale, the backward subtracts the mean of g over the
// classes before the transform (the centring is symmetric); f is folded into alpha and
// multiplies dL/dalpha.
// sqrt(C / ((C - 1) N)): the factor that makes the centred rows (I - 11^T / C) H_N[:C, :N]
// unit vectors, so that W = etf_factor * (I - 11^T / C) H_N[:C, :N] is the simplex ETF
// (unit rows, pairwise cosine -1 / (C - 1)). Host code (the CPU kernels, the CUDA launchers).
inline double etf_factor(int64_t num_classes, int64_t n) {
  return std::sqrt(static_cast<double>(num_classes) / (static_cast<double>(num_classes - 1) * n));
}

struct ClassifierParams {
  TransformParams t;  // in_features = N, out_features = C (backward: swapped)
  bool normalize;
  double eps;
  bool etf;
};

}  // namespace hadamard_kernels
