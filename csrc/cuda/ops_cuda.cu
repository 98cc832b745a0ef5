// CUDA implementations of the hadamard_kernels ops (schemas in csrc/ops.cpp): argument checks,
// output allocation and the launches of the kernels in fwht.cuh / classifier.cuh / orders.cuh /
// quantize.cuh,
// registered as the CUDA backend. Semantics, shapes and dtypes mirror the CPU implementations exactly.
// The stream comes from c10/cuda/CUDAStream.h (what at::cuda::getCurrentCUDAStream forwards
// to), so this file needs no cuBLAS / cuSPARSE headers.
#include <ATen/ATen.h>
#include <ATen/Context.h>
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
#include "orders.cuh"
#include "quantize.cuh"

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
                                   double eps, bool etf) {
  constexpr const char* op = "hadamard_kernels::classifier_forward";
  check_classifier_args(x, scale, num_classes, eps, etf, op);
  const at::Tensor bias_c = checked_bias(bias, x, num_classes, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor y = at::empty(with_last_dim(x, num_classes), x.options());
  if (y.numel() == 0) return y;
  const at::Tensor rows = as_rows(x);
  const ClassifierParams cp{make_params(rows, num_classes, 1.0), normalize, eps, etf};
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
                                                                        double eps, bool etf) {
  constexpr const char* op = "hadamard_kernels::classifier_backward";
  check_backward_args(grad_y, x, scale, eps, etf, op);
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
    const ClassifierParams cp{make_params(g_rows, x.size(-1), 1.0), normalize, eps, etf};
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

// ------------------------------------------------------------------------------------------
// Transforms of order K * 2^k (csrc/orders.cpp has the CPU twins and the formula):
//   y = scale * post . [(H_K (x) H_pow2) @ pad(pre . x, K * pow2)][:n]   over the last dim.
// One pass (orders.cuh: launch_kn) where cuda::kn_single_pass holds: pow2 up to 2^15 (2^14 in
// float64) and, for K > 1, one row of ceil(n / pow2) transformed chunks in the device's
// shared memory (sm_90, float32 / float16 / bfloat16: every K * 2^k up to 40 * 2^10, and
// more; float64 up to 29056 entries). K = 1 without signs (fwht_) is fwht.cuh's transform. Otherwise the
// composed path below, several passes.
// Rows with a column stride other than 1 are copied to contiguous rows first (one
// instantiation per tile instead of two). hk's entries are not checked for +-1 on CUDA (that
// would synchronise with the device); the one-pass kernel reads a negative entry as -1 and
// any other as +1.

using OptTensor = std::optional<at::Tensor>;

// A sign vector (n,) in the accumulator type, times factor, contiguous and 16-byte aligned
// for the kernel's vector loads (undefined when absent).
at::Tensor kn_signs(const OptTensor& s, at::ScalarType acc, double factor) {
  if (!s.has_value()) return at::Tensor();
  at::Tensor t = s->to(acc);
  if (factor != 1.0) t = t * factor;
  t = t.contiguous();
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) t = t.clone();
  return t;
}

// The composed transform, several passes, for the rows launch_kn does not take: in the
// accumulator type, pre signs, zero padding to used * pow2, the CUDA transform of each chunk
// (hadamard_transform_cuda: two passes beyond 2^15), the K-point product as a batched matmul
// (in float64 where cuBLAS may use TF32 for float32), then scale and post. Returns the
// (R, n) result in the accumulator type.
at::Tensor kn_composed(const at::Tensor& rows, const OptTensor& hk, int64_t pow2, double scale, const OptTensor& pre,
                       const OptTensor& post) {
  const int64_t r = rows.size(0), n = rows.size(1);
  const int64_t used = (n + pow2 - 1) / pow2;
  const at::ScalarType acc = at::toOpMathType(rows.scalar_type());
  at::Tensor w = rows.to(acc);
  if (pre.has_value()) w = w * pre->to(acc);
  w = at::constant_pad_nd(w, {0, used * pow2 - n}).reshape({r * used, pow2});
  at::Tensor t = hadamard_transform_cuda(w, pow2, 1.0).view({r, used, pow2});
  if (hk.has_value()) {
    const at::ScalarType mm = acc == at::kFloat && at::globalContext().allowTF32CuBLAS() ? at::kDouble : acc;
    const at::Tensor h = hk->narrow(0, 0, used).narrow(1, 0, used).to(mm);
    t = at::matmul(h, t.to(mm)).to(acc);
  }
  at::Tensor y = t.reshape({r, used * pow2}).narrow(1, 0, n);
  return post.has_value() ? y * kn_signs(post, acc, scale) : y * scale;
}

// Transforms the (R, n) rows of x_rows (unit column stride) into out_rows (R, n, unit column
// stride; may be x_rows itself: in place).
void kn_cuda(const at::Tensor& x_rows, at::Tensor& out_rows, const OptTensor& hk, int64_t K, int64_t pow2,
             double scale, const OptTensor& pre, const OptTensor& post) {
  const int64_t n = x_rows.size(1);
  const at::ScalarType acc = at::toOpMathType(x_rows.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_rows.scalar_type(), "hadamard_transform_kn_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = cuda::acc_of<T>;
    if (K == 1 && !pre.has_value() && !post.has_value()) {
      // The plain transform (fwht_): the kernels of fwht.cuh, one pass up to 2^15 (2^14 in
      // float64), two above; in place too (a row tile, or pass 1, reads its whole row or
      // chunk before anything of it is written).
      TransformParams p = make_params(x_rows, n, scale);
      p.m = pow2;
      p.out_row_stride = out_rows.stride(0);
      at::Tensor ws = workspace(cuda::transform_workspace_bytes<T>(p), x_rows);
      C10_CUDA_CHECK(
          cuda::launch_transform<T>(cptr<scalar_t>(x_rows), mptr<scalar_t>(out_rows), p, ws_ptr(ws), stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    if (!cuda::kn_single_pass<T>(K, pow2, n, cuda::kn_smem_limit())) {
      out_rows.copy_(kn_composed(x_rows, hk, pow2, scale, pre, post));
      return;
    }
    const at::Tensor pre_t = kn_signs(pre, acc, 1.0);
    const at::Tensor post_t = kn_signs(post, acc, scale);
    const at::Tensor hk_t = hk.has_value() ? hk->contiguous() : at::Tensor();
    at::Tensor ws = workspace(cuda::kn_workspace_bytes(K), x_rows);
    cuda::KnParams p{};
    p.rows = x_rows.size(0);
    p.n = n;
    p.K = K;
    p.pow2 = pow2;
    p.x_row_stride = x_rows.stride(0);
    p.out_row_stride = out_rows.stride(0);
    p.scale = scale;
    C10_CUDA_CHECK(cuda::launch_kn<T>(
        cptr<scalar_t>(x_rows), mptr<scalar_t>(out_rows), hk_t.defined() ? hk_t.const_data_ptr<int8_t>() : nullptr,
        pre_t.defined() ? pre_t.const_data_ptr<A>() : nullptr, post_t.defined() ? post_t.const_data_ptr<A>() : nullptr,
        p, ws_ptr(ws), stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// (R, n) rows of x with unit column stride: a view where one exists, else a contiguous copy.
at::Tensor kn_rows(const at::Tensor& x) {
  at::Tensor rows = as_rows(x);
  return rows.stride(1) == 1 || rows.size(1) <= 1 ? rows : rows.contiguous();
}

at::Tensor hadamard_transform_kn_cuda(const at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale,
                                      const OptTensor& pre_signs, const OptTensor& post_signs) {
  constexpr const char* op = "hadamard_kernels::hadamard_transform_kn";
  const int64_t K = check_kn_args(x, hk, pow2, pre_signs, post_signs, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  at::Tensor out_rows = out.view({-1, x.size(-1)});
  kn_cuda(kn_rows(x), out_rows, hk, K, pow2, scale, pre_signs, post_signs);
  return out;
}

void hadamard_transform_kn_inplace_cuda(at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale,
                                        const OptTensor& pre_signs, const OptTensor& post_signs) {
  constexpr const char* op = "hadamard_kernels::hadamard_transform_kn_";
  const int64_t K = check_kn_args(x, hk, pow2, pre_signs, post_signs, op);
  check_inplace_target(x, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  if (x.numel() == 0) return;
  at::Tensor rows = x.view({-1, x.size(-1)});
  kn_cuda(rows, rows, hk, K, pow2, scale, pre_signs, post_signs);
}

// ------------------------------------------------------------------------------------------
// The fused rotate-and-quantise op (csrc/quantize.cpp has the CPU twin and the formula):
//   y = scale * [(H_K (x) H_pow2) @ pad(pre . x, K * pow2)][:n], then per group of g entries
//   scales = float32(absmax / qmax), q = encode(clamp(y / scales, -qmax, qmax)).
// One pass (quantize.cuh: launch_kn_quantize) where cuda::kn_quantize_single_pass holds:
// the transform kernel's rows (kn_single_pass), and for K = 1 pow2 up to 2^15 (2^14 in
// float64) with the row in shared memory. Other rows take the composed path: kn_composed's y
// (several passes, in the accumulator type), then the quantisation in torch ops
// (quantize_composed, the formula of reference.quantize_reference; torch's float8 casts on
// CUDA are c10's conversions, as on the CPU). hk's entries are not checked for +-1 (as above).

// The kernel's code format of a checked code dtype (check_quantize_args).
cuda::QuantCode quant_code(at::ScalarType code) {
  if (code == at::kChar) return cuda::QuantCode::kInt8;
  return code == at::kFloat8_e4m3fn ? cuda::QuantCode::kE4M3 : cuda::QuantCode::kE5M2;
}

// The float32 scales and codes of y (R, n) in the accumulator type, per group of g, written
// into q (R, n) and scales (R, n / g).
void quantize_composed(const at::Tensor& y, int64_t g, at::ScalarType code, at::Tensor& q, at::Tensor& scales) {
  const int64_t r = y.size(0), n = y.size(1);
  const double qmax = cuda::quant_max(quant_code(code));
  const at::Tensor v = y.view({r, n / g, g});
  const at::Tensor amax = v.abs().amax(-1, /*keepdim=*/true);  // NaN if the group has one
  const at::Tensor s = (amax / qmax).to(at::kFloat);
  at::Tensor t = at::where(s == 0, at::zeros({}, v.options()), v / s.to(v.scalar_type())).clamp(-qmax, qmax);
  t = code == at::kChar ? t.round().nan_to_num(0.0).to(at::kChar) : t.to(at::kFloat).to(code);
  q.view({r, n}).copy_(t.view({r, n}));
  scales.view({r, n / g}).copy_(s.view({r, n / g}));
}

std::tuple<at::Tensor, at::Tensor> hadamard_quantize_cuda(const at::Tensor& x, const OptTensor& hk, int64_t pow2,
                                                          double scale, const OptTensor& pre_signs,
                                                          at::ScalarType dtype, int64_t group_size) {
  constexpr const char* op = "hadamard_kernels::hadamard_quantize";
  const int64_t K = check_kn_args(x, hk, pow2, pre_signs, std::nullopt, op);
  const int64_t n = x.size(-1);
  const int64_t g = check_quantize_args(n, dtype, group_size, op);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
  at::Tensor scales = at::empty(with_last_dim(x, n / g), x.options().dtype(at::kFloat));
  if (x.numel() == 0) return {q, scales};
  const at::Tensor rows = kn_rows(x);
  const int64_t r = rows.size(0);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hadamard_quantize_cuda", [&] {
    using T = cuda_t<scalar_t>;
    using A = cuda::acc_of<T>;
    if (!cuda::kn_quantize_single_pass<T>(K, pow2, n, cuda::kn_smem_limit())) {
      at::Tensor q_rows = q.view({r, n});
      at::Tensor s_rows = scales.view({r, n / g});
      quantize_composed(kn_composed(rows, hk, pow2, scale, pre_signs, std::nullopt), g, dtype, q_rows, s_rows);
      return;
    }
    const at::Tensor pre_t = kn_signs(pre_signs, acc, 1.0);
    const at::Tensor hk_t = hk.has_value() ? hk->contiguous() : at::Tensor();
    at::Tensor ws = workspace(cuda::kn_workspace_bytes(K), rows);
    cuda::KnParams p{};
    p.rows = r;
    p.n = n;
    p.K = K;
    p.pow2 = pow2;
    p.x_row_stride = rows.stride(0);
    p.out_row_stride = n;
    p.scale = scale;
    const cuda::QuantParams qp{quant_code(dtype), g};
    C10_CUDA_CHECK(cuda::launch_kn_quantize<T>(
        cptr<scalar_t>(rows), static_cast<uint8_t*>(q.mutable_data_ptr()), scales.mutable_data_ptr<float>(),
        hk_t.defined() ? hk_t.const_data_ptr<int8_t>() : nullptr, pre_t.defined() ? pre_t.const_data_ptr<A>() : nullptr,
        p, qp, ws_ptr(ws), stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {q, scales};
}

}  // namespace

TORCH_LIBRARY_IMPL(hadamard_kernels, CUDA, m) {
  m.impl("hadamard_transform", &hadamard_transform_cuda);
  m.impl("classifier_forward", &classifier_forward_cuda);
  m.impl("classifier_backward", &classifier_backward_cuda);
  m.impl("hadamard_transform_kn", &hadamard_transform_kn_cuda);
  m.impl("hadamard_transform_kn_", &hadamard_transform_kn_inplace_cuda);
  m.impl("hadamard_quantize", &hadamard_quantize_cuda);
}

}  // namespace hadamard_kernels
