// CUDA implementations of the hadamard_kernels ops (schemas in csrc/ops.cpp): argument checks,
// output allocation and the launches of the kernels in fwht.cuh / classifier.cuh, registered
// as the CUDA backend. Semantics, shapes and dtypes mirror the CPU implementations exactly.
// The stream comes from c10/cuda/CUDAStream.h (what at::cuda::getCurrentCUDAStream forwards
// to), so this file needs no cuBLAS / cuSPARSE headers.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>
#include <tuple>

#include "../checks.h"
#include "classifier.cuh"
#include "fwht.cuh"

namespace hadamard_kernels {
namespace {

// at:: scalar type -> the CUDA type the kernels are written for (same size and layout).
template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
using cuda_t = typename CudaType<scalar_t>::type;

template <typename scalar_t>
const cuda_t<scalar_t>* cptr(const at::Tensor& t) {
  return reinterpret_cast<const cuda_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
cuda_t<scalar_t>* mptr(at::Tensor& t) {
  return reinterpret_cast<cuda_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

// A workspace of at least `bytes` bytes on x's device (undefined tensor if 0).
at::Tensor workspace(size_t bytes, const at::Tensor& x) {
  if (bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

void* ws_ptr(at::Tensor& ws) { return ws.defined() ? ws.mutable_data_ptr() : nullptr; }

// The classifier's scale, a device scalar in the accumulator type; converted on the stream
// (no host synchronisation).
at::Tensor alpha_on_device(const at::Tensor& scale, at::ScalarType acc_type) {
  return scale.reshape({}).to(acc_type).contiguous();
}

at::Tensor hadamard_transform_cuda(const at::Tensor& x, int64_t out_features, double scale) {
  constexpr const char* op = "hadamard_kernels::hadamard_transform";
  check_float_input(x, op, "x");
  check_sizes(x.size(-1), out_features, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty(with_last_dim(x, out_features), x.options());
  if (out.numel() == 0) return out;
  if (x.size(-1) == 0) return out.zero_();  // H_M[:out, :0] @ (empty) = 0
  const at::Tensor rows = as_rows(x);
  const TransformParams p = make_params(rows, out_features, scale);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hadamard_transform_cuda", [&] {
    using T = cuda_t<scalar_t>;
    at::Tensor ws = workspace(cuda::transform_workspace_bytes<T>(p), x);
    C10_CUDA_CHECK(cuda::launch_transform<T>(cptr<scalar_t>(rows), mptr<scalar_t>(out), p, ws_ptr(ws), stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Same checks as the CPU op (csrc/ops.cpp).
at::Tensor classifier_forward_cuda(const at::Tensor& x, const at::Tensor& scale,
                                   const std::optional<at::Tensor>& bias, int64_t num_classes, bool normalize,
                                   double eps) {
  constexpr const char* op = "hadamard_kernels::classifier_forward";
  check_classifier_args(x, scale, num_classes, eps, op);
  const at::Tensor bias_c = checked_bias(bias, x, num_classes, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor y = at::empty(with_last_dim(x, num_classes), x.options());
  if (y.numel() == 0) return y;
  const at::Tensor rows = as_rows(x);
  const ClassifierParams cp{make_params(rows, num_classes, 1.0), normalize, eps};
  const at::Tensor alpha = alpha_on_device(scale, at::toOpMathType(x.scalar_type()));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "classifier_forward_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = cuda::acc_of<T>;
    at::Tensor ws = workspace(cuda::classifier_workspace_bytes<T>(cp, /*backward=*/false), x);
    C10_CUDA_CHECK(cuda::launch_classifier_forward<T>(
        cptr<scalar_t>(rows), alpha.const_data_ptr<A>(), bias_c.defined() ? cptr<scalar_t>(bias_c) : nullptr,
        mptr<scalar_t>(y), cp, ws_ptr(ws), stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                        const at::Tensor& scale, bool normalize,
                                                                        double eps) {
  constexpr const char* op = "hadamard_kernels::classifier_backward";
  check_backward_args(grad_y, x, scale, eps, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor g_rows = as_rows(grad_y);
  const at::Tensor x_rows = as_rows(x);
  // dL/dbias = sum_r g[r]: a torch reduction (deterministic), as on CPU.
  const at::Tensor grad_bias = g_rows.sum(0, /*keepdim=*/false, acc_type);
  const int64_t rows = x_rows.size(0);
  // dL/dalpha: one contribution per row from the kernel, summed in float64 by torch
  // (deterministic: no atomics), then cast to scale's dtype and shape like the CPU op.
  at::Tensor contrib = at::empty({rows}, x.options().dtype(acc_type));
  if (rows > 0) {
    const ClassifierParams cp{make_params(g_rows, x.size(-1), 1.0), normalize, eps};
    const at::Tensor alpha = alpha_on_device(scale, acc_type);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "classifier_backward_cuda", [&] {
      using T = cuda_t<scalar_t>;
      using A = cuda::acc_of<T>;
      at::Tensor ws = workspace(cuda::classifier_workspace_bytes<T>(cp, /*backward=*/true), x);
      C10_CUDA_CHECK(cuda::launch_classifier_backward<T>(
          cptr<scalar_t>(g_rows), cptr<scalar_t>(x_rows), x_rows.stride(0), x_rows.stride(1),
          alpha.const_data_ptr<A>(), mptr<scalar_t>(grad_x), contrib.mutable_data_ptr<A>(), cp, ws_ptr(ws),
          stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor grad_scale = contrib.sum(at::kDouble).to(scale.scalar_type()).reshape(scale.sizes()).contiguous();
  return {grad_x, grad_scale, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(hadamard_kernels, CUDA, m) {
  m.impl("hadamard_transform", &hadamard_transform_cuda);
  m.impl("classifier_forward", &classifier_forward_cuda);
  m.impl("classifier_backward", &classifier_backward_cuda);
}

}  // namespace hadamard_kernels
