// CPU implementations of the transforms of order K * 2^k (schemas in csrc/ops.cpp):
//
//   hadamard_transform_kn(x, hk, pow2, scale, pre_signs, post_signs) -> y
//   hadamard_transform_kn_(x, hk, pow2, scale, pre_signs, post_signs)   (x overwritten by y)
//
//   y = scale * post . [(H_K (x) H_pow2) @ pad(pre . x, K * pow2)][:n]   over the last dim,
//
// n = x.size(-1) <= K * pow2, H_K = hk (int8, +-1 entries, K = 1 when hk is None) acting on
// the high digit of the index (docs/orders.md), absent signs meaning all ones. The row
// kernel is csrc/cpu/orders.h; autograd is in csrc/autograd.cpp.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <type_traits>

#include "checks.h"
#include "cpu/orders.h"
#include "cpu/rows.h"
#include "kn_args.h"

namespace hadamard_kernels {
namespace {

// Transforms every row of rows (a (R, n) view, any strides) into out (R rows of n, contiguous;
// out may be rows' own storage when rows is contiguous).
void kn_cpu(const at::Tensor& rows, at::Tensor& out, const std::optional<at::Tensor>& hk, int64_t K, int64_t pow2,
            double scale, const std::optional<at::Tensor>& pre_signs, const std::optional<at::Tensor>& post_signs,
            const char* op) {
  const int64_t n = rows.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "hadamard_transform_kn_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KnSetup<acc_t> setup(hk, K, pow2, n, scale, pre_signs, post_signs, op);
    const cpu::KnRowArgs<acc_t>& args = setup.args();
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t rs = rows.stride(0), cs = rows.stride(1);
    at::parallel_for(0, rows.size(0), cpu::grain_rows(K * pow2), [&](int64_t begin, int64_t end) {
      // The plain transform of short whole contiguous rows (fwht_): the task's rows swept
      // several at a time (cpu::fwht_rows; rows of over 16 vectors need a vector-aligned y,
      // as fwht_row does, else kn_row takes them through its buffer). float32 / float64 only.
      constexpr int64_t W = cpu::Vec<acc_t>::kLanes;
      const bool aligned = reinterpret_cast<std::uintptr_t>(y) % cpu::kVecBytes == 0;
      if (std::is_same_v<scalar_t, acc_t> && args.h == nullptr && args.pre == nullptr && args.post == nullptr &&
          n == pow2 && cs == 1 && rs == n && n >= W && n * static_cast<int64_t>(sizeof(acc_t)) <= cpu::kL1Block &&
          (n <= 16 * W || aligned)) {
        cpu::fwht_rows(reinterpret_cast<const acc_t*>(x + begin * n), n, reinterpret_cast<acc_t*>(y + begin * n), n,
                       end - begin, n, args.scale);
        return;
      }
      cpu::RowBuffer<acc_t> buf(setup.buffer_size());
      for (int64_t r = begin; r < end; ++r)
        cpu::kn_row(x + r * rs, cs, y + r * n, buf.get(), args, r + 1 < end ? x + (r + 1) * rs : nullptr);
    });
  });
}

at::Tensor hadamard_transform_kn_cpu(const at::Tensor& x, const std::optional<at::Tensor>& hk, int64_t pow2,
                                     double scale, const std::optional<at::Tensor>& pre_signs,
                                     const std::optional<at::Tensor>& post_signs) {
  constexpr const char* op = "hadamard_kernels::hadamard_transform_kn";
  const int64_t K = check_kn_args(x, hk, pow2, pre_signs, post_signs, op);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  kn_cpu(as_rows(x), out, hk, K, pow2, scale, pre_signs, post_signs, op);
  return out;
}

void hadamard_transform_kn_inplace_cpu(at::Tensor& x, const std::optional<at::Tensor>& hk, int64_t pow2,
                                       double scale, const std::optional<at::Tensor>& pre_signs,
                                       const std::optional<at::Tensor>& post_signs) {
  constexpr const char* op = "hadamard_kernels::hadamard_transform_kn_";
  const int64_t K = check_kn_args(x, hk, pow2, pre_signs, post_signs, op);
  check_inplace_target(x, op);
  if (x.numel() == 0) return;
  at::Tensor rows = x.view({-1, x.size(-1)});
  kn_cpu(rows, rows, hk, K, pow2, scale, pre_signs, post_signs, op);
}

}  // namespace

TORCH_LIBRARY_IMPL(hadamard_kernels, CPU, m) {
  m.impl("hadamard_transform_kn", &hadamard_transform_kn_cpu);
  m.impl("hadamard_transform_kn_", &hadamard_transform_kn_inplace_cpu);
}

}  // namespace hadamard_kernels
