// CPU implementation of the fused rotate-and-quantise op (schema in csrc/ops.cpp):
//
//   hadamard_quantize(x, hk, pow2, scale, pre_signs, dtype, group_size) -> (q, scales)
//
//   y = scale * [(H_K (x) H_pow2) @ pad(pre . x, K * pow2)][:n]   (hadamard_transform_kn's y)
//   then per group of group_size consecutive values of y's last dim (the whole row when 0):
//   scales = float32(absmax / qmax), q = encode(clamp(y / scales, -qmax, qmax))  (csrc/cpu/quantize.h)
//
// q: x's shape, dtype int8, float8_e4m3fn or float8_e5m2; scales: x.shape[:-1] + [n / g],
// float32. Each row is transformed into an accumulator-typed row buffer (never rounded to
// x's dtype) and quantised from it while it is in cache: one read of x, one write of q and
// of the scales. Not differentiable (csrc/autograd.cpp refuses a graph).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "checks.h"
#include "cpu/orders.h"
#include "cpu/quantize.h"
#include "cpu/rows.h"
#include "kn_args.h"

namespace hadamard_kernels {
namespace {

// The codes of one format: the largest magnitude and the conversion from the accumulator.
template <typename code_t>
struct Format;

template <>
struct Format<int8_t> {
  static constexpr double kMax = 127.0;
  template <typename T>
  static int8_t encode(T r) {
    return r != r ? int8_t(0) : static_cast<int8_t>(std::nearbyint(r));  // half to even (default mode)
  }
};

template <>
struct Format<c10::Float8_e4m3fn> {
  static constexpr double kMax = 448.0;
  template <typename T>
  static c10::Float8_e4m3fn encode(T r) {
    return c10::Float8_e4m3fn(static_cast<float>(r));
  }
};

template <>
struct Format<c10::Float8_e5m2> {
  static constexpr double kMax = 57344.0;
  template <typename T>
  static c10::Float8_e5m2 encode(T r) {
    return c10::Float8_e5m2(static_cast<float>(r));
  }
};

template <typename scalar_t, typename code_t>
void quantize_rows(const at::Tensor& rows, at::Tensor& q, at::Tensor& scales, const KnSetup<at::opmath_type<scalar_t>>& setup,
                   int64_t g) {
  using acc_t = at::opmath_type<scalar_t>;
  const cpu::KnRowArgs<acc_t>& args = setup.args();
  const int64_t n = rows.size(1);
  const scalar_t* x = rows.const_data_ptr<scalar_t>();
  code_t* qp = q.mutable_data_ptr<code_t>();
  float* sp = scales.mutable_data_ptr<float>();
  const int64_t rs = rows.stride(0), cs = rows.stride(1), groups = n / g;
  const acc_t qmax = static_cast<acc_t>(Format<code_t>::kMax);
  at::parallel_for(0, rows.size(0), cpu::grain_rows(args.K * args.p), [&](int64_t begin, int64_t end) {
    cpu::RowBuffer<acc_t> buf(setup.buffer_size());
    cpu::RowBuffer<acc_t> y(n);
    for (int64_t r = begin; r < end; ++r) {
      cpu::kn_row<scalar_t, acc_t, acc_t>(x + r * rs, cs, y.get(), buf.get(), args,
                                          r + 1 < end ? x + (r + 1) * rs : nullptr);
      cpu::quantize_groups(y.get(), n, g, qmax, Format<code_t>::template encode<acc_t>, qp + r * n,
                           sp + r * groups);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> hadamard_quantize_cpu(const at::Tensor& x, const std::optional<at::Tensor>& hk,
                                                         int64_t pow2, double scale,
                                                         const std::optional<at::Tensor>& pre_signs,
                                                         at::ScalarType dtype, int64_t group_size) {
  constexpr const char* op = "hadamard_kernels::hadamard_quantize";
  const int64_t K = check_kn_args(x, hk, pow2, pre_signs, std::nullopt, op);
  const int64_t n = x.size(-1);
  const int64_t g = check_quantize_args(n, dtype, group_size, op);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
  at::Tensor scales = at::empty(with_last_dim(x, n / g), x.options().dtype(at::kFloat));
  if (x.numel() == 0) return {q, scales};
  const at::Tensor rows = as_rows(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hadamard_quantize_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KnSetup<acc_t> setup(hk, K, pow2, n, scale, pre_signs, std::nullopt, op);
    if (dtype == at::kChar) {
      quantize_rows<scalar_t, int8_t>(rows, q, scales, setup, g);
    } else if (dtype == at::kFloat8_e4m3fn) {
      quantize_rows<scalar_t, c10::Float8_e4m3fn>(rows, q, scales, setup, g);
    } else {
      quantize_rows<scalar_t, c10::Float8_e5m2>(rows, q, scales, setup, g);
    }
  });
  return {q, scales};
}

}  // namespace

TORCH_LIBRARY_IMPL(hadamard_kernels, CPU, m) { m.impl("hadamard_quantize", &hadamard_quantize_cpu); }

}  // namespace hadamard_kernels
