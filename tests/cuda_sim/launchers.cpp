// CPU-run CUDA harness: the launchers of csrc/cuda/*.cuh for one storage type, compiled with
// -DHK_SIM_TYPE=<float|double|__half|__nv_bfloat16> -DHK_SIM_TAG=<dtype name> (one object
// each, so the four compile in parallel), with AddressSanitizer's out-of-line checks so that
// sim.cpp sees every access of the kernels.
#include "request.h"

#include "classifier.cuh"
#include "fwht.cuh"
#include "orders.cuh"
#include "quantize.cuh"

namespace hk_sim {

#define HK_SIM_CAT2(a, b) a##b
#define HK_SIM_CAT(a, b) HK_SIM_CAT2(a, b)

namespace cu = hadamard_kernels::cuda;
using T = HK_SIM_TYPE;
using A = cu::acc_of<T>;

static hadamard_kernels::ClassifierParams classifier_params(const Request& r, bool backward) {
  hadamard_kernels::ClassifierParams cp{};
  cp.t.rows = r.rows;
  cp.t.in_features = backward ? r.out : r.in;
  cp.t.out_features = backward ? r.in : r.out;
  cp.t.m = hadamard_kernels::next_pow2(std::max(r.in, r.out));
  cp.t.x_row_stride = backward ? r.g_row_stride : r.x_row_stride;
  cp.t.x_col_stride = backward ? r.g_col_stride : r.x_col_stride;
  cp.t.out_row_stride = cp.t.out_features;
  cp.t.scale = 1.0;
  cp.normalize = r.normalize;
  cp.eps = r.eps;
  cp.etf = r.etf;
  return cp;
}

static hadamard_kernels::TransformParams transform_params(const Request& r) {
  hadamard_kernels::TransformParams p{};
  p.rows = r.rows;
  p.in_features = r.in;
  p.out_features = r.out;
  p.m = hadamard_kernels::next_pow2(std::max(r.in, r.out));
  p.x_row_stride = r.x_row_stride;
  p.x_col_stride = r.x_col_stride;
  p.out_row_stride = r.out;
  p.scale = r.scale;
  return p;
}

static hadamard_kernels::cuda::KnParams kn_params(const Request& r) {
  hadamard_kernels::cuda::KnParams p{};
  p.rows = r.rows;
  p.n = r.in;
  p.K = r.K;
  p.pow2 = r.pow2;
  p.x_row_stride = r.x_row_stride;
  p.out_row_stride = r.inplace ? r.x_row_stride : r.in;
  p.scale = r.scale;
  return p;
}

size_t HK_SIM_CAT(workspace_bytes_, HK_SIM_TAG)(const Request& r) {
  if (r.op == "kn" || r.op == "quantize") return cu::kn_workspace_bytes(r.K);
  if (r.op == "transform") return cu::transform_workspace_bytes<T>(transform_params(r));
  return cu::classifier_workspace_bytes<T>(classifier_params(r, r.op == "backward"), r.op == "backward");
}

cudaError_t HK_SIM_CAT(run_, HK_SIM_TAG)(const Request& r) {
  if (r.op == "kn") {
    return cu::launch_kn<T>(static_cast<const T*>(r.x), static_cast<T*>(r.y), static_cast<const int8_t*>(r.hk),
                            static_cast<const A*>(r.pre), static_cast<const A*>(r.post), kn_params(r), r.workspace,
                            nullptr);
  }
  if (r.op == "quantize") {
    const cu::QuantParams qp{static_cast<cu::QuantCode>(r.code), r.group};
    return cu::launch_kn_quantize<T>(static_cast<const T*>(r.x), static_cast<uint8_t*>(r.y),
                                     static_cast<float*>(r.scales), static_cast<const int8_t*>(r.hk),
                                     static_cast<const A*>(r.pre), kn_params(r), qp, r.workspace, nullptr);
  }
  if (r.op == "transform") {
    return cu::launch_transform<T>(static_cast<const T*>(r.x), static_cast<T*>(r.y), transform_params(r),
                                   r.workspace, nullptr);
  }
  if (r.op == "forward") {
    return cu::launch_classifier_forward<T>(static_cast<const T*>(r.x), static_cast<const A*>(r.alpha),
                                            static_cast<const T*>(r.bias), static_cast<T*>(r.y),
                                            classifier_params(r, false), r.workspace, nullptr);
  }
  return cu::launch_classifier_backward<T>(static_cast<const T*>(r.g), static_cast<const T*>(r.x), r.x_row_stride,
                                           r.x_col_stride, static_cast<const A*>(r.alpha), static_cast<T*>(r.y),
                                           static_cast<A*>(r.contrib), classifier_params(r, true), r.workspace,
                                           nullptr);
}

}  // namespace hk_sim
