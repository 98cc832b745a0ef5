// Argument checks shared by every device implementation of the ops (torch-facing).
// The Python layer (hadamard_kernels/ops.py) repeats them with friendlier wording;
// these guard direct calls through torch.ops.hadamard_kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <optional>

#include "hadamard.h"

namespace hadamard_kernels {

// The storage dtypes every kernel handles (float8 and complex types are not among them).
inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_input(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()), op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": ", name, " must have at least 1 dimension, got a 0-d tensor");
}

inline void check_sizes(int64_t in_features, int64_t out_features, const char* op) {
  TORCH_CHECK_VALUE(in_features >= 0 && out_features >= 0, op, ": feature sizes must be >= 0, got in=",
                    in_features, ", out=", out_features);
  const int64_t m = next_pow2(std::max(in_features, out_features));
  TORCH_CHECK_VALUE(m <= kMaxM, op, ": transform size next_pow2(max(", in_features, ", ", out_features,
                    ")) = ", m, " exceeds the supported maximum 2^", kMaxLogM, " = ", kMaxM);
}

inline void check_scale(const at::Tensor& scale, const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(scale.numel() == 1, op, ": scale must have exactly one element, got shape ",
                    scale.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(scale.scalar_type()), op,
                   ": scale must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                   scale.scalar_type());
  TORCH_CHECK_VALUE(scale.device() == x.device(), op, ": scale is on ", scale.device(),
                    " but x is on ", x.device());
}

// etf (the simplex ETF head): its C rows are a simplex ETF only for N a power of two and
// 2 <= C <= N (then H_N[:C, :N] has orthogonal rows), so other sizes are refused.
inline void check_classifier_args(const at::Tensor& x, const at::Tensor& scale, int64_t num_classes, double eps,
                                  bool etf, const char* op) {
  check_float_input(x, op, "x");
  TORCH_CHECK_VALUE(num_classes >= 1, op, ": num_classes must be >= 1, got ", num_classes);
  TORCH_CHECK_VALUE(x.size(-1) >= 1, op, ": x must have at least one feature, got shape ", x.sizes());
  TORCH_CHECK_VALUE(eps > 0, op, ": eps must be > 0, got ", eps);
  check_sizes(x.size(-1), num_classes, op);
  check_scale(scale, x, op);
  if (etf) {
    const int64_t n = x.size(-1);
    TORCH_CHECK_VALUE((n & (n - 1)) == 0 && num_classes >= 2 && num_classes <= n, op,
                      ": the simplex ETF head needs N a power of two and 2 <= C <= N, got N=", n,
                      ", C=", num_classes);
  }
}

// Returns bias made contiguous (undefined when absent) after checking shape, dtype, device.
inline at::Tensor checked_bias(const std::optional<at::Tensor>& bias, const at::Tensor& x, int64_t num_classes,
                               const char* op) {
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == num_classes, op,
                    ": bias must have shape (num_classes,) = (", num_classes, ",), got ", bias->sizes());
  TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                   " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": bias is on ", bias->device(), " but x is on ",
                    x.device());
  return bias->contiguous();
}

inline void check_backward_args(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scale,
                                double eps, bool etf, const char* op) {
  check_classifier_args(x, scale, grad_y.size(-1), eps, etf, op);
  TORCH_CHECK_VALUE(grad_y.sizes().slice(0, grad_y.dim() - 1) == x.sizes().slice(0, x.dim() - 1), op,
                    ": grad_y shape ", grad_y.sizes(), " does not match x shape ", x.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), op, ": grad_y dtype ", grad_y.scalar_type(),
                   " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_y.device() == x.device(), op, ": grad_y is on ", grad_y.device(), " but x is on ",
                    x.device());
}

// Checks of hadamard_transform_kn(_)(x, hk, pow2, scale, pre_signs, post_signs); returns K
// (1 when hk is None). hk: int8 (K, K) on x's device (its +-1 entries are checked where it
// is read); pow2 a power of two <= kMaxM; K <= kMaxK; n = x.size(-1) <= K * pow2; each
// sign vector a floating (n,) tensor on x's device.
inline int64_t check_kn_args(const at::Tensor& x, const std::optional<at::Tensor>& hk, int64_t pow2,
                             const std::optional<at::Tensor>& pre_signs, const std::optional<at::Tensor>& post_signs,
                             const char* op) {
  check_float_input(x, op, "x");
  TORCH_CHECK_VALUE(pow2 >= 1 && (pow2 & (pow2 - 1)) == 0 && pow2 <= kMaxM, op,
                    ": pow2 must be a power of two in [1, 2^", kMaxLogM, "], got ", pow2);
  int64_t K = 1;
  if (hk.has_value()) {
    TORCH_CHECK_TYPE(hk->scalar_type() == at::kChar, op, ": hk must be an int8 tensor of +-1 entries, got ",
                     hk->scalar_type());
    TORCH_CHECK_VALUE(hk->dim() == 2 && hk->size(0) == hk->size(1) && hk->size(0) >= 1, op,
                      ": hk must be a square (K, K) matrix, got shape ", hk->sizes());
    K = hk->size(0);
    TORCH_CHECK_VALUE(K <= kMaxK, op, ": the order K of hk must be <= ", kMaxK, ", got ", K);
    TORCH_CHECK_VALUE(hk->device() == x.device(), op, ": hk is on ", hk->device(), " but x is on ", x.device());
  }
  const int64_t n = x.size(-1);
  TORCH_CHECK_VALUE(n <= K * pow2, op, ": x has n=", n, " features, more than K * pow2 = ", K, " * ", pow2, " = ",
                    K * pow2);
  for (const auto* signs : {&pre_signs, &post_signs}) {
    if (!signs->has_value()) continue;
    const char* name = signs == &pre_signs ? "pre_signs" : "post_signs";
    const at::Tensor& s = signs->value();
    TORCH_CHECK_TYPE(is_supported_dtype(s.scalar_type()), op, ": ", name,
                     " must be float32, float64, float16 or bfloat16, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == n, op, ": ", name, " must have shape (n,) = (", n, ",), got ",
                      s.sizes());
    TORCH_CHECK_VALUE(s.device() == x.device(), op, ": ", name, " is on ", s.device(), " but x is on ", x.device());
  }
  return K;
}

// The quantisation arguments of hadamard_quantize: dtype int8 / float8_e4m3fn / float8_e5m2,
// group_size 0 (one group a row) or a divisor of n >= 1. Returns the group size.
inline int64_t check_quantize_args(int64_t n, at::ScalarType dtype, int64_t group_size, const char* op) {
  TORCH_CHECK_TYPE(dtype == at::kChar || dtype == at::kFloat8_e4m3fn || dtype == at::kFloat8_e5m2, op,
                   ": dtype must be int8, float8_e4m3fn or float8_e5m2, got ", dtype);
  TORCH_CHECK_VALUE(n >= 1, op, ": x must have at least one feature to quantise");
  TORCH_CHECK_VALUE(group_size >= 0, op, ": group_size must be >= 0 (0: one group a row), got ", group_size);
  const int64_t g = group_size == 0 ? n : group_size;
  TORCH_CHECK_VALUE(n % g == 0, op, ": group_size ", g, " does not divide n = ", n);
  return g;
}

// An in-place transform writes each row where it read it: x must be contiguous (hence
// without overlapping entries; an expanded or strided x would be written through aliases).
inline void check_inplace_target(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.is_contiguous() && at::has_internal_overlap(x) != at::MemOverlap::Yes, op,
                    ": x must be contiguous and without overlapping entries to be transformed in place, got shape ",
                    x.sizes(), " and strides ", x.strides(), "; use the out-of-place transform for other layouts");
}

// (rows, n) view of x with n = x.size(-1); copies only if no such view exists. A 2-d x is
// returned as it is (no new view: a batch-1 call is dominated by such fixed costs).
inline at::Tensor as_rows(const at::Tensor& x) {
  if (x.dim() == 2) return x;
  return x.reshape({-1, x.size(-1)});
}

// x.shape[:-1] + [last].
inline std::vector<int64_t> with_last_dim(const at::Tensor& x, int64_t last) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = last;
  return shape;
}

inline TransformParams make_params(const at::Tensor& rows_view, int64_t out_features, double scale) {
  TransformParams p;
  p.rows = rows_view.size(0);
  p.in_features = rows_view.size(1);
  p.out_features = out_features;
  p.m = next_pow2(std::max(p.in_features, p.out_features));
  p.x_row_stride = rows_view.stride(0);
  p.x_col_stride = rows_view.stride(1);
  p.out_row_stride = out_features;
  p.scale = scale;
  return p;
}

}  // namespace hadamard_kernels
