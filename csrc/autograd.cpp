// Autograd of the hadamard_kernels ops, in C++ for every device (one Autograd-key kernel
// each, redispatching to the CPU or CUDA kernel below it). In C++ rather than through
// torch.library.register_autograd so that an eager call costs a few microseconds, not the
// ~10 us of a Python autograd.Function (issue 10, item 4).
//
//   hadamard_transform: y = s H_M[:out, :in] x, so dL/dx = s H_M[:in, :out] g (H_M is
//     symmetric): the same op with in and out swapped, itself differentiable, so every
//     order of derivative is exact.
//   hadamard_transform_kn: y = s P E^T (H_K (x) H_p) E Q x (P, Q the diagonal post and pre
//     signs, E zero-pads n to K p, E^T truncates), so dL/dx = s Q E^T (H_K^T (x) H_p) E P g:
//     the same op with hk transposed and the two sign vectors swapped, itself
//     differentiable, so every order of derivative is exact. hk is int8 (never requires
//     grad); signs that require grad are refused (the op gives no gradient for them).
//   hadamard_transform_kn_ (in place): the same formula. Without a graph it only bumps x's
//     version (the ADInplaceOrView kernel below), so tensors saved earlier from x are
//     detected as modified; with one, a Function marks x dirty, which rebases x's history
//     onto the transform's node as torch's own in-place ops do (and, as they do, refuses a
//     leaf that requires grad).
//   hadamard_quantize: not differentiable (rounded codes); a graph is refused at the call.
//   classifier_forward: for a plain backward, the fused classifier_backward op (formulas in
//     hadamard.h). When the backward is itself differentiated (create_graph=True: gradient
//     penalties, gradgradcheck), the same formulas are computed with differentiable ATen ops
//     around the transform op instead (classifier_grads_differentiable below). The fused
//     backward op has no derivative: differentiating it raises.
//
// No input requiring grad, or grad mode off: the kernel is called directly, with no graph
// node. The Triton ops (Python custom ops) keep their autograd in hadamard_kernels/ops.py,
// whose classifier_grads_differentiable is the Python twin of the function below.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

#include "checks.h"

namespace hadamard_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor transform_op(const at::Tensor& x, int64_t out_features, double scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("hadamard_kernels::hadamard_transform", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, double)>();
  return op.call(x, out_features, scale);
}

at::Tensor classifier_forward_op(const at::Tensor& x, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                 int64_t num_classes, bool normalize, double eps, bool etf) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("hadamard_kernels::classifier_forward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool,
                            double, bool)>();
  return op.call(x, scale, bias, num_classes, normalize, eps, etf);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_backward_op(const at::Tensor& grad_y, const at::Tensor& x,
                                                                      const at::Tensor& scale, bool normalize,
                                                                      double eps, bool etf) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("hadamard_kernels::classifier_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double, bool)>();
  return op.call(grad_y, x, scale, normalize, eps, etf);
}

// The last dimension as an int: a guard under torch.compile when it is symbolic (the
// schemas take plain ints, so the feature size is specialised anyway).
int64_t last_dim(const at::Tensor& x) { return x.sym_size(-1).guard_int(__FILE__, __LINE__); }

bool needs_graph(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

class TransformFunction : public torch::autograd::Function<TransformFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t out_features, double scale) {
    ctx->saved_data["in_features"] = last_dim(x);
    ctx->saved_data["scale"] = scale;
    at::AutoDispatchBelowADInplaceOrView below;
    return transform_op(x, out_features, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t in_features = ctx->saved_data["in_features"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    return {transform_op(grads[0], in_features, scale), at::Tensor(), at::Tensor()};
  }
};

at::Tensor transform_autograd(const at::Tensor& x, int64_t out_features, double scale) {
  if (!needs_graph({&x})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return transform_op(x, out_features, scale);
  }
  return TransformFunction::apply(x, out_features, scale);
}

using OptTensor = std::optional<at::Tensor>;

at::Tensor transform_kn_op(const at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale, const OptTensor& pre,
                           const OptTensor& post) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("hadamard_kernels::hadamard_transform_kn", "")
          .typed<at::Tensor(const at::Tensor&, const OptTensor&, int64_t, double, const OptTensor&,
                            const OptTensor&)>();
  return op.call(x, hk, pow2, scale, pre, post);
}

void transform_kn_inplace_op(at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale, const OptTensor& pre,
                             const OptTensor& post) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("hadamard_kernels::hadamard_transform_kn_", "")
          .typed<void(at::Tensor&, const OptTensor&, int64_t, double, const OptTensor&, const OptTensor&)>();
  op.call(x, hk, pow2, scale, pre, post);
}

OptTensor as_optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

void refuse_grad_of_signs(const OptTensor& pre, const OptTensor& post, const char* op) {
  for (const OptTensor* s : {&pre, &post})
    TORCH_CHECK(!at::GradMode::is_enabled() || !s->has_value() || !(*s)->requires_grad(), op,
                ": the sign vectors are constants, not differentiable; pass them detached (signs.detach())");
}

// Shared by the out-of-place and in-place Functions: saves what the backward needs and
// returns the gradient with respect to x (see the formula at the top of this file).
void save_kn(AutogradContext* ctx, const OptTensor& hk, int64_t pow2, double scale, const OptTensor& pre,
             const OptTensor& post) {
  ctx->save_for_backward({hk.value_or(at::Tensor()), pre.value_or(at::Tensor()), post.value_or(at::Tensor())});
  ctx->saved_data["pow2"] = pow2;
  ctx->saved_data["scale"] = scale;
}

variable_list kn_backward(AutogradContext* ctx, const variable_list& grads) {
  const variable_list saved = ctx->get_saved_variables();
  const at::Tensor& hk = saved[0];
  const at::Tensor hk_t = hk.defined() ? hk.t() : at::Tensor();
  at::Tensor gx = transform_kn_op(grads[0], as_optional(hk_t), ctx->saved_data["pow2"].toInt(),
                                  ctx->saved_data["scale"].toDouble(), as_optional(saved[2]), as_optional(saved[1]));
  return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
}

class TransformKnFunction : public torch::autograd::Function<TransformKnFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& hk, int64_t pow2,
                            double scale, const OptTensor& pre, const OptTensor& post) {
    save_kn(ctx, hk, pow2, scale, pre, post);
    at::AutoDispatchBelowADInplaceOrView below;
    return transform_kn_op(x, hk, pow2, scale, pre, post);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return kn_backward(ctx, grads); }
};

at::Tensor transform_kn_autograd(const at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale,
                                 const OptTensor& pre, const OptTensor& post) {
  refuse_grad_of_signs(pre, post, "hadamard_kernels::hadamard_transform_kn");
  if (!needs_graph({&x})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return transform_kn_op(x, hk, pow2, scale, pre, post);
  }
  return TransformKnFunction::apply(x, hk, pow2, scale, pre, post);
}

class TransformKnInplaceFunction : public torch::autograd::Function<TransformKnInplaceFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, const OptTensor& hk, int64_t pow2, double scale,
                            const OptTensor& pre, const OptTensor& post) {
    save_kn(ctx, hk, pow2, scale, pre, post);
    {
      at::AutoDispatchBelowADInplaceOrView below;
      transform_kn_inplace_op(x, hk, pow2, scale, pre, post);
    }
    ctx->mark_dirty({x});
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return kn_backward(ctx, grads); }
};

void transform_kn_inplace_autograd(at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale,
                                   const OptTensor& pre, const OptTensor& post) {
  refuse_grad_of_signs(pre, post, "hadamard_kernels::hadamard_transform_kn_");
  if (!needs_graph({&x})) {
    at::AutoDispatchBelowAutograd below;  // still through ADInplaceOrView: x's version is bumped
    transform_kn_inplace_op(x, hk, pow2, scale, pre, post);
    return;
  }
  TransformKnInplaceFunction::apply(x, hk, pow2, scale, pre, post);
}

void transform_kn_inplace_view(at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale, const OptTensor& pre,
                               const OptTensor& post) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    transform_kn_inplace_op(x, hk, pow2, scale, pre, post);
  }
  x.unsafeGetTensorImpl()->bump_version();
}

// ||x||_2 over the last dim (keepdim) without overflow or underflow: a ||x / a|| with
// a = max |x| (LAPACK's nrm2 scaling). It equals ||x|| for every a > 0, so its derivatives
// of every order with respect to a vanish and autograd through it is exact.
at::Tensor row_norm(const at::Tensor& x) {
  at::Tensor a = x.abs().amax({-1}, /*keepdim=*/true);
  a = at::where(a > 0, a, at::ones_like(a));
  return a * at::linalg_vector_norm(x / a, 2, {-1}, /*keepdim=*/true);
}

// (grad_x, grad_scale, grad_bias) of the classifier as classifier_backward returns them,
// computed with differentiable ATen ops. With g = dL/dy, u = W^T g (the adjoint: W = H_M[:C, :N],
// so u = H_M[:N, :C] g; for the simplex ETF W = f P H_N[:C, :N], P = I - 11^T / C, so
// u = f H_N[:N, :C] P g), r = ||x||, d = max(r, eps):
//   dL/dscale = sum u . x_hat,  dL/dbias = sum g,
//   dL/dx = (scale u - [r >= eps] x_hat (x_hat . scale u)) / d   (normalize)
//         = scale u                                             (otherwise).
std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_grads_differentiable(const at::Tensor& grad,
                                                                               const at::Tensor& x,
                                                                               const at::Tensor& scale,
                                                                               bool normalize, double eps, bool etf) {
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t n = last_dim(x);
  const int64_t c = last_dim(grad);
  const at::Tensor g = grad.to(acc);
  const at::Tensor xa = x.to(acc);
  const at::Tensor s = scale.to(acc).reshape({});
  const at::Tensor u = etf ? transform_autograd(g - g.mean({-1}, /*keepdim=*/true), n, etf_factor(c, n))
                           : transform_autograd(g, n, 1.0);
  at::Tensor x_hat, grad_x;
  if (normalize) {
    const at::Tensor r = row_norm(xa);
    const at::Tensor d = r.clamp_min(eps);
    x_hat = xa / d;
    const at::Tensor v = s * u;
    const at::Tensor proj = at::where(r >= eps, (x_hat * v).sum({-1}, /*keepdim=*/true), at::zeros_like(r));
    grad_x = (v - x_hat * proj) / d;
  } else {
    x_hat = xa;
    grad_x = s * u;
  }
  at::Tensor grad_scale = (u * x_hat).sum().to(scale.scalar_type()).reshape(scale.sizes());
  at::Tensor grad_bias = g.reshape({-1, c}).sum(0);
  return {grad_x.to(x.scalar_type()), grad_scale, grad_bias};
}

class ClassifierFunction : public torch::autograd::Function<ClassifierFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, int64_t num_classes, bool normalize, double eps,
                            bool etf) {
    ctx->save_for_backward({x, scale});
    ctx->saved_data["bias_dtype"] = bias.has_value() ? c10::IValue(bias->scalar_type()) : c10::IValue();
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["etf"] = etf;
    at::AutoDispatchBelowADInplaceOrView below;
    return classifier_forward_op(x, scale, bias, num_classes, normalize, eps, etf);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool normalize = ctx->saved_data["normalize"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool etf = ctx->saved_data["etf"].toBool();
    auto [grad_x, grad_scale, grad_bias] =
        at::GradMode::is_enabled() ? classifier_grads_differentiable(grads[0], saved[0], saved[1], normalize, eps, etf)
                                   : classifier_backward_op(grads[0], saved[0], saved[1], normalize, eps, etf);
    const c10::IValue& bias_dtype = ctx->saved_data["bias_dtype"];
    grad_bias = bias_dtype.isNone() ? at::Tensor() : grad_bias.to(bias_dtype.toScalarType());
    return {grad_x, grad_scale, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor classifier_forward_autograd(const at::Tensor& x, const at::Tensor& scale,
                                       const std::optional<at::Tensor>& bias, int64_t num_classes, bool normalize,
                                       double eps, bool etf) {
  const at::Tensor& b = bias.has_value() ? *bias : x;  // x stands in for an absent bias
  if (!needs_graph({&x, &scale, &b})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return classifier_forward_op(x, scale, bias, num_classes, normalize, eps, etf);
  }
  return ClassifierFunction::apply(x, scale, bias, num_classes, normalize, eps, etf);
}

// The fused backward is a first derivative only; without this, torch's fallback would warn
// and return zero gradients through it.
class NotDifferentiable : public torch::autograd::Function<NotDifferentiable> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& scale, bool normalize, double eps, bool etf) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [gx, gs, gb] = classifier_backward_op(grad_y, x, scale, normalize, eps, etf);
    return {gx, gs, gb};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "hadamard_kernels::classifier_backward is not differentiable: it is the fused first derivative "
                "of the classifier. For higher derivatives differentiate hadamard_classifier (create_graph=True), "
                "which then computes its backward with differentiable ops");
    return {};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_backward_autograd(const at::Tensor& grad_y,
                                                                            const at::Tensor& x,
                                                                            const at::Tensor& scale, bool normalize,
                                                                            double eps, bool etf) {
  if (!needs_graph({&grad_y, &x, &scale})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return classifier_backward_op(grad_y, x, scale, normalize, eps, etf);
  }
  variable_list out = NotDifferentiable::apply(grad_y, x, scale, normalize, eps, etf);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> quantize_op(const at::Tensor& x, const OptTensor& hk, int64_t pow2, double scale,
                                               const OptTensor& pre, at::ScalarType dtype, int64_t group_size) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("hadamard_kernels::hadamard_quantize", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&, int64_t,
                                                                       double, const OptTensor&, at::ScalarType,
                                                                       int64_t)>();
  return op.call(x, hk, pow2, scale, pre, dtype, group_size);
}

// Rounding has a zero derivative almost everywhere: a graph through the codes would only
// ever give zero gradients, so one is refused rather than built.
std::tuple<at::Tensor, at::Tensor> quantize_autograd(const at::Tensor& x, const OptTensor& hk, int64_t pow2,
                                                     double scale, const OptTensor& pre, at::ScalarType dtype,
                                                     int64_t group_size) {
  const at::Tensor& signs = pre.has_value() ? *pre : x;
  TORCH_CHECK(!needs_graph({&x, &signs}),
              "hadamard_kernels::hadamard_quantize is not differentiable (its codes are rounded): call it on "
              "x.detach() or under torch.no_grad()");
  at::AutoDispatchBelowADInplaceOrView below;
  return quantize_op(x, hk, pow2, scale, pre, dtype, group_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(hadamard_kernels, Autograd, m) {
  m.impl("hadamard_quantize", &quantize_autograd);
  m.impl("hadamard_transform", &transform_autograd);
  m.impl("classifier_forward", &classifier_forward_autograd);
  m.impl("classifier_backward", &classifier_backward_autograd);
  m.impl("hadamard_transform_kn", &transform_kn_autograd);
  m.impl("hadamard_transform_kn_", &transform_kn_inplace_autograd);
}

TORCH_LIBRARY_IMPL(hadamard_kernels, ADInplaceOrView, m) {
  m.impl("hadamard_transform_kn_", &transform_kn_inplace_view);
}

}  // namespace hadamard_kernels
