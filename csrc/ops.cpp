// Op schemas of the hadamard_kernels namespace and their CPU implementations.
//
// Schemas (the Python side adds fake kernels and autograd in hadamard_kernels/ops.py):
//   hadamard_transform(x, out_features, scale) = scale * H_M[:out, :in] @ x   (last dim)
//   classifier_forward(x, scale, bias, C, normalize, eps, etf) = alpha * W @ x_hat + bias,
//       W = H_M[:C, :N], or the simplex ETF sqrt(C / ((C-1) N)) (I - 11^T / C) H_N[:C, :N] (etf)
//   classifier_backward(grad_y, x, scale, normalize, eps, etf) -> (grad_x, grad_scale, grad_bias)
//   hadamard_transform_kn(x, hk, pow2, scale, pre_signs, post_signs)
//       = scale * post . [(H_K (x) H_pow2) @ pad(pre . x)][:n]     (CPU kernel: csrc/orders.cpp)
//   hadamard_transform_kn_(x, ...): the same, written into x (contiguous x)
#include <Python.h>

#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/butterfly.h"
#include "cpu/rows.h"

extern "C" {
// Importing hadamard_kernels._C runs the static registrations below; the module
// itself is empty (no pybind, so every op stays visible to torch.compile).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace hadamard_kernels {
namespace {

using cpu::grain_rows;
using cpu::RowBuffer;

// Only t = next_pow2(min(in, out)) points of the size-M transform are ever needed
// (M = next_pow2(max(in, out))). Split an index of H_M as (k, j) with j < t, so that
// H_M = H_{M/t} (x) H_t and H_M[kt + j', kt' + j] = H_{M/t}[k, k'] H_t[j', j]:
//   * in > out: outputs j' < t use row k = 0 of H_{M/t} (all ones), so
//     y = H_t @ fold(x), fold(x)[j] = sum_k x[k t + j]: the input is folded onto t points;
//   * in < out: x lives on column block k' = 0, so y[k t + j'] = (H_t @ x)[j']: the
//     size-t transform is repeated across the outputs.
// The classifier with C = 10, N = 512 thus costs one pass over x and a 16-point transform.
inline int64_t reduced_size(int64_t in_features, int64_t out_features) {
  return next_pow2(std::min(in_features, out_features));
}

// Reductions run on kPartials<T> independent lanes held in one vector variable: vectorised,
// and in a fixed order (deterministic for a build), which strict IEEE summation would not
// allow. One native register wide (cpu::kVecBytes): a wider generic vector is split by GCC
// into pieces that travel through the stack and general registers (measured: 16 float
// lanes on AVX2 made the classifier's fold 4x slower than the transform itself).
constexpr int kPartialBytes = cpu::kVecBytes;
template <typename T> constexpr int64_t kPartials = kPartialBytes / sizeof(T);
template <typename T> struct Partials { typedef T type __attribute__((vector_size(kPartialBytes))); };
template <typename T> using PartialsT = typename Partials<T>::type;

template <typename acc_t>
inline acc_t lane_sum(PartialsT<acc_t> v) {
  acc_t s = 0;
  for (int64_t j = 0; j < kPartials<acc_t>; ++j) s += v[j];
  return s;
}

// kPartials<acc_t> values of src starting at i, converted to acc_t.
template <bool kContiguous, typename scalar_t, typename acc_t>
inline PartialsT<acc_t> load_lanes(const scalar_t* src, int64_t i, int64_t stride) {
  PartialsT<acc_t> v;
  if constexpr (kContiguous && std::is_same_v<scalar_t, acc_t>) {
    __builtin_memcpy(&v, src + i, sizeof(v));
  } else {
    for (int64_t j = 0; j < kPartials<acc_t>; ++j) v[j] = static_cast<acc_t>(src[kContiguous ? i + j : (i + j) * stride]);
  }
  return v;
}

// dst[:len] (=|+=) src[0 : len*stride : stride] in acc_t; sumsq += lane-wise squares when kSumSq.
template <bool kAdd, bool kSumSq, bool kContiguous, typename scalar_t, typename acc_t>
inline void load_block(const scalar_t* src, int64_t stride, int64_t len, acc_t* dst, PartialsT<acc_t>& sumsq) {
  using P = PartialsT<acc_t>;
  int64_t i = 0;
  for (; i + kPartials<acc_t> <= len; i += kPartials<acc_t>) {
    P v = load_lanes<kContiguous, scalar_t, acc_t>(src, i, stride);
    if (kSumSq) sumsq += v * v;
    if (kAdd) {
      P d;
      __builtin_memcpy(&d, dst + i, sizeof(P));
      v += d;
    }
    __builtin_memcpy(dst + i, &v, sizeof(P));
  }
  for (int64_t j = 0; i < len; ++i, ++j) {
    const acc_t v = static_cast<acc_t>(src[kContiguous ? i : i * stride]);
    dst[i] = kAdd ? dst[i] + v : v;
    if (kSumSq) sumsq[j] += v * v;
  }
}

template <bool kSumSq, bool kContiguous, typename scalar_t, typename acc_t>
inline acc_t load_folded_impl(const scalar_t* row, int64_t stride, int64_t n, acc_t* buf, int64_t t) {
  PartialsT<acc_t> sumsq = {};
  const int64_t first = std::min(n, t);
  load_block<false, kSumSq, kContiguous>(row, stride, first, buf, sumsq);
  std::fill(buf + first, buf + t, acc_t(0));
  for (int64_t base = t; base < n; base += t)
    load_block<true, kSumSq, kContiguous>(row + base * stride, stride, std::min(t, n - base), buf, sumsq);
  return lane_sum<acc_t>(sumsq);
}

// buf[:t] = fold of row[0 : n*stride : stride] onto t points (zero-padded when n < t) in
// acc_t; returns the sum of squares of the row when kSumSq.
template <typename scalar_t, typename acc_t, bool kSumSq>
inline acc_t load_folded(const scalar_t* row, int64_t stride, int64_t n, acc_t* buf, int64_t t) {
  return stride == 1 ? load_folded_impl<kSumSq, true>(row, stride, n, buf, t)
                     : load_folded_impl<kSumSq, false>(row, stride, n, buf, t);
}

// sum_i a[i] * b[i] on kPartials<acc_t> lanes.
template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  using P = PartialsT<acc_t>;
  P sum = {};
  int64_t i = 0;
  for (; i + kPartials<acc_t> <= n; i += kPartials<acc_t>) {
    P va, vb;
    __builtin_memcpy(&va, a + i, sizeof(P));
    __builtin_memcpy(&vb, b + i, sizeof(P));
    sum += va * vb;
  }
  for (int64_t j = 0; i < n; ++i, ++j) sum[j] += a[i] * b[i];
  return lane_sum<acc_t>(sum);
}

// o[i] = a * buf[i mod t] (+ bias[i]) for i < n: the size-t result repeated over n outputs.
template <typename scalar_t, typename acc_t>
inline void store_repeated(const acc_t* __restrict buf, int64_t t, acc_t a, const scalar_t* __restrict bias,
                           scalar_t* __restrict o, int64_t n) {
  for (int64_t base = 0; base < n; base += t) {
    const int64_t len = std::min(t, n - base);
    if (bias != nullptr) {
      for (int64_t i = 0; i < len; ++i)
        o[base + i] = static_cast<scalar_t>(a * buf[i] + static_cast<acc_t>(bias[base + i]));
    } else {
      for (int64_t i = 0; i < len; ++i) o[base + i] = static_cast<scalar_t>(a * buf[i]);
    }
  }
}

template <typename scalar_t>
void transform_kernel(const scalar_t* x, scalar_t* out, const TransformParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t t = reduced_size(p.in_features, p.out_features);
  // Fast path: rows read and written in place in the output, no scratch buffer.
  const bool direct = std::is_same_v<scalar_t, acc_t> && p.x_col_stride == 1 &&
                      p.in_features == t && p.out_features == t;
  at::parallel_for(0, p.rows, grain_rows(std::max(p.in_features, p.out_features)), [&](int64_t begin, int64_t end) {
    if (direct) {
      cpu::fwht_rows(reinterpret_cast<const acc_t*>(x + begin * p.x_row_stride), p.x_row_stride,
                     reinterpret_cast<acc_t*>(out + begin * p.out_row_stride), p.out_row_stride, end - begin, t,
                     scale);
      return;
    }
    RowBuffer<acc_t> row(t);
    acc_t* buf = row.get();
    for (int64_t r = begin; r < end; ++r) {
      load_folded<scalar_t, acc_t, false>(x + r * p.x_row_stride, p.x_col_stride, p.in_features, buf, t);
      cpu::fwht_row(buf, buf, t, scale);
      scalar_t* o = out + r * p.out_row_stride;
      store_repeated<scalar_t, acc_t>(buf, t, acc_t(1), nullptr, o, p.out_features);
    }
  });
}

at::Tensor hadamard_transform_cpu(const at::Tensor& x, int64_t out_features, double scale) {
  constexpr const char* op = "hadamard_kernels::hadamard_transform";
  check_float_input(x, op, "x");
  check_sizes(x.size(-1), out_features, op);
  at::Tensor out = at::detail::empty_cpu(with_last_dim(x, out_features), x.scalar_type());
  if (out.numel() == 0) return out;
  if (x.size(-1) == 0) return out.zero_();  // H_M @ (all-zero padding)
  const at::Tensor rows = as_rows(x);
  const TransformParams p = make_params(rows, out_features, scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hadamard_transform_cpu", [&] {
    transform_kernel<scalar_t>(rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), p);
  });
  return out;
}

// The norm without overflow or underflow. The kernels sum the squares of a row in acc_t
// as they load it; a sum in [kSafeLow, max] is accurate (the squares lost to underflow,
// < min() each and at most kMaxM of them, are below its rounding) and the transform of the
// row cannot have overflowed (|entries| <= ||x|| sqrt(M)). Any other row (||x|| above about
// 1.8e19 or below about 3e-13 for float) is rescaled by 2^k, exactly, so that its largest
// entry lies in [1, 2) (LAPACK's nrm2 does the same with one pass), and recomputed. Zero
// rows and finite rows of normal size, i.e. nearly all of them, take the fast path.
template <typename acc_t>
inline bool sumsq_is_safe(acc_t sumsq) {
  constexpr acc_t kSafeLow =
      std::numeric_limits<acc_t>::min() / std::numeric_limits<acc_t>::epsilon() * static_cast<acc_t>(kMaxM);
  return sumsq >= kSafeLow && sumsq <= std::numeric_limits<acc_t>::max();
}

// The k with max|v| * 2^k in [1, 2) for the n entries v[i * stride]; 0 when they are all
// zero or any is not finite (inf / NaN inputs give inf / NaN results as they are).
template <typename scalar_t>
inline int rescale_exponent(const scalar_t* v, int64_t stride, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t amax = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = std::abs(static_cast<acc_t>(v[i * stride]));
    if (!(a <= std::numeric_limits<acc_t>::max())) return 0;
    amax = std::max(amax, a);
  }
  return amax > 0 ? -std::ilogb(amax) : 0;
}

// 1 / max(||x||, eps) for a row whose entries were multiplied by 2^k, sumsq being the sum
// of their squares, as the factor on those scaled entries; in double, since 2^-k sqrt(sumsq)
// may lie outside acc_t's range. 0 for a zero row (x_hat = 0 for any eps).
inline double scaled_inv_norm(double sumsq, int k, double eps) {
  if (sumsq == 0) return 0;
  const double norm = std::sqrt(sumsq);
  return norm >= std::ldexp(eps, k) ? 1 / norm : std::ldexp(1 / eps, -k);
}

// The value of the one-element CPU tensor scale, read in place (Tensor::item() costs a
// dispatcher round trip, comparable to the whole kernel at batch 1).
inline double scale_value(const at::Tensor& scale) {
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scale.scalar_type(), "scale_value", [&] {
    v = static_cast<double>(*scale.const_data_ptr<scalar_t>());
  });
  return v;
}

// v[:c] -= mean(v[:c]): the centring of the simplex ETF head (etf_factor).
template <typename acc_t>
inline void subtract_mean(acc_t* v, int64_t c) {
  acc_t sum = 0;
  for (int64_t i = 0; i < c; ++i) sum += v[i];
  const acc_t mean = sum / static_cast<acc_t>(c);
  for (int64_t i = 0; i < c; ++i) v[i] -= mean;
}

template <typename scalar_t>
void classifier_forward_kernel(const scalar_t* x, const scalar_t* bias, scalar_t* y,
                               const ClassifierParams cp) {
  using acc_t = at::opmath_type<scalar_t>;
  const TransformParams& p = cp.t;
  const acc_t alpha = static_cast<acc_t>(p.scale);
  const int64_t t = reduced_size(p.in_features, p.out_features);
  const int64_t n = p.in_features;
  at::parallel_for(0, p.rows, grain_rows(std::max(p.in_features, p.out_features)), [&](int64_t begin, int64_t end) {
    RowBuffer<acc_t> row(t);
    acc_t* buf = row.get();
    std::unique_ptr<RowBuffer<acc_t>> scaled;  // a rescaled row, allocated on first need
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * p.x_row_stride;
      acc_t sumsq = load_folded<scalar_t, acc_t, true>(xr, p.x_col_stride, n, buf, t);
      int k = 0;
      if (cp.normalize && !sumsq_is_safe(sumsq) && (k = rescale_exponent(xr, p.x_col_stride, n)) != 0) {
        if (!scaled) scaled = std::make_unique<RowBuffer<acc_t>>(n);
        acc_t* s = scaled->get();
        for (int64_t i = 0; i < n; ++i) s[i] = std::ldexp(static_cast<acc_t>(xr[i * p.x_col_stride]), k);
        sumsq = load_folded<acc_t, acc_t, true>(s, 1, n, buf, t);
      }
      cpu::fwht_row(buf, buf, t, acc_t(1));
      if (cp.etf) subtract_mean(buf, p.out_features);
      const acc_t a = cp.normalize ? static_cast<acc_t>(p.scale * scaled_inv_norm(sumsq, k, cp.eps)) : alpha;
      store_repeated<scalar_t, acc_t>(buf, t, a, bias, y + r * p.out_row_stride, p.out_features);
    }
  });
}

at::Tensor classifier_forward_cpu(const at::Tensor& x, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& bias, int64_t num_classes,
                                  bool normalize, double eps, bool etf) {
  constexpr const char* op = "hadamard_kernels::classifier_forward";
  check_classifier_args(x, scale, num_classes, eps, etf, op);
  const at::Tensor bias_c = checked_bias(bias, x, num_classes, op);
  at::Tensor y = at::detail::empty_cpu(with_last_dim(x, num_classes), x.scalar_type());
  if (y.numel() == 0) return y;
  const at::Tensor rows = as_rows(x);
  const double s = scale_value(scale) * (etf ? etf_factor(num_classes, x.size(-1)) : 1.0);
  ClassifierParams cp{make_params(rows, num_classes, s), normalize, eps, etf};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "classifier_forward_cpu", [&] {
    classifier_forward_kernel<scalar_t>(rows.const_data_ptr<scalar_t>(),
                                        bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                                        y.mutable_data_ptr<scalar_t>(), cp);
  });
  return y;
}

// One row of the backward pass; returns this row's contribution u . x_hat to dL/dalpha.
template <typename scalar_t, typename acc_t>
inline acc_t classifier_backward_row(const scalar_t* g, int64_t g_stride, const scalar_t* x,
                                     int64_t x_stride, scalar_t* gx, acc_t* u, acc_t* xr,
                                     acc_t alpha, const ClassifierParams& cp) {
  const TransformParams& p = cp.t;  // in_features = C (rows of g), out_features = N
  const int64_t n = p.out_features;
  const int64_t t = reduced_size(p.in_features, n);
  load_folded<scalar_t, acc_t, false>(g, g_stride, p.in_features, u, t);
  if (cp.etf) subtract_mean(u, p.in_features);  // the centring is symmetric: its adjoint is itself
  cpu::fwht_row(u, u, t, acc_t(1));
  for (int64_t base = t; base < n; base += t)  // u[:N] = H_M[:N, :C] @ g, period t
    std::copy(u, u + std::min(t, n - base), u + base);
  acc_t sumsq = load_folded<scalar_t, acc_t, true>(x, x_stride, n, xr, n);
  if (!cp.normalize) {
    for (int64_t i = 0; i < n; ++i) gx[i] = static_cast<scalar_t>(alpha * u[i]);
    return dot(u, xr, n);
  }
  // xr <- 2^k x where the sum of squares left its safe range (see sumsq_is_safe).
  int k = 0;
  if (!sumsq_is_safe(sumsq) && (k = rescale_exponent(xr, 1, n)) != 0) {
    for (int64_t i = 0; i < n; ++i) xr[i] = std::ldexp(xr[i], k);
    sumsq = dot(xr, xr, n);
  }
  const acc_t ux = dot(u, xr, n);  // 2^k u . x
  const double norm = std::sqrt(static_cast<double>(sumsq));  // 2^k ||x||
  if (sumsq > 0 && norm >= std::ldexp(cp.eps, k)) {
    // d x_hat / d x = (I - x_hat x_hat^T) / ||x||
    const acc_t a = static_cast<acc_t>(std::ldexp(static_cast<double>(alpha) / norm, k));
    const acc_t b = static_cast<acc_t>(ux / (norm * norm));
    for (int64_t i = 0; i < n; ++i) gx[i] = static_cast<scalar_t>(a * (u[i] - xr[i] * b));
    return static_cast<acc_t>(ux / norm);
  }
  // The norm is clamped to eps: x_hat = x / eps is linear in x.
  const acc_t a = static_cast<acc_t>(alpha / cp.eps);
  for (int64_t i = 0; i < n; ++i) gx[i] = static_cast<scalar_t>(a * u[i]);
  return static_cast<acc_t>(std::ldexp(static_cast<double>(ux), -k) / cp.eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scale, bool normalize, double eps, bool etf) {
  constexpr const char* op = "hadamard_kernels::classifier_backward";
  check_backward_args(grad_y, x, scale, eps, etf, op);
  const double factor = etf ? etf_factor(grad_y.size(-1), x.size(-1)) : 1.0;
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor g_rows = as_rows(grad_y);
  const at::Tensor x_rows = as_rows(x);
  const at::Tensor grad_bias = g_rows.sum(0, /*keepdim=*/false, acc_type);
  const int64_t rows = x_rows.size(0);
  // Fixed chunking (not per-thread) so that dL/dalpha is summed in the same order on every run.
  const int64_t chunks = std::min<int64_t>(rows, 64);
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(chunks, 1)), 0.0);
  if (rows > 0) {
    ClassifierParams cp{make_params(g_rows, x.size(-1), scale_value(scale) * factor), normalize, eps, etf};
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "classifier_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* g = g_rows.const_data_ptr<scalar_t>();
      const scalar_t* xp = x_rows.const_data_ptr<scalar_t>();
      scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
      const acc_t alpha = static_cast<acc_t>(cp.t.scale);
      const int64_t n = x_rows.size(1);
      at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
        RowBuffer<acc_t> u(std::max(n, reduced_size(cp.t.in_features, n)));
        RowBuffer<acc_t> xr(n);
        for (int64_t c = cbegin; c < cend; ++c) {
          double acc = 0;
          for (int64_t r = c * per_chunk; r < std::min(rows, (c + 1) * per_chunk); ++r) {
            acc += classifier_backward_row(g + r * g_rows.stride(0), g_rows.stride(1), xp + r * x_rows.stride(0),
                                           x_rows.stride(1), gx + r * n, u.get(), xr.get(), alpha, cp);
          }
          partial[static_cast<size_t>(c)] = acc;
        }
      });
    });
  }
  double total = 0;
  for (double v : partial) total += v;
  total *= factor;
  at::Tensor grad_scale = at::full(scale.sizes(), total, scale.options());
  return {grad_x, grad_scale, grad_bias};
}

}  // namespace

TORCH_LIBRARY(hadamard_kernels, m) {
  m.def("hadamard_transform(Tensor x, int out_features, float scale) -> Tensor");
  m.def("classifier_forward(Tensor x, Tensor scale, Tensor? bias, int num_classes, bool normalize, "
        "float eps, bool etf=False) -> Tensor");
  m.def("classifier_backward(Tensor grad_y, Tensor x, Tensor scale, bool normalize, float eps, bool etf=False) "
        "-> (Tensor, Tensor, Tensor)");
  // Transforms of order K * 2^k (csrc/orders.cpp): y = scale * post . [(H_K (x) H_pow2) pad(pre . x)][:n].
  m.def("hadamard_transform_kn(Tensor x, Tensor? hk, int pow2, float scale, Tensor? pre_signs, "
        "Tensor? post_signs) -> Tensor");
  m.def("hadamard_transform_kn_(Tensor(a!) x, Tensor? hk, int pow2, float scale, Tensor? pre_signs, "
        "Tensor? post_signs) -> ()");
  // The transform (hadamard_transform_kn's y, no post signs) quantised per group, fused
  // (csrc/quantize.cpp): (q, float32 scales).
  m.def("hadamard_quantize(Tensor x, Tensor? hk, int pow2, float scale, Tensor? pre_signs, ScalarType dtype, "
        "int group_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hadamard_kernels, CPU, m) {
  m.impl("hadamard_transform", &hadamard_transform_cpu);
  m.impl("classifier_forward", &classifier_forward_cpu);
  m.impl("classifier_backward", &classifier_backward_cpu);
}

}  // namespace hadamard_kernels
