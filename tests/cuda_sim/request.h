// CPU-run CUDA harness: one request to the runner (runner.cpp parses it, launchers.cpp runs it).
#pragma once

#include <cstdint>
#include <string>

#include "include/cuda_runtime.h"

namespace hk_sim {

struct Request {
  std::string op;     // "transform", "forward", "backward", "kn" or "quantize"
  std::string dtype;  // "float32", "float64", "float16" or "bfloat16"
  int64_t rows = 0;
  int64_t in = 0;   // transform: in_features; classifier: N
  int64_t out = 0;  // transform: out_features; classifier: C
  // Device pointers (already offset to the view's first element) and element strides.
  const void* x = nullptr;
  int64_t x_row_stride = 0, x_col_stride = 1;
  const void* g = nullptr;  // backward: grad_y, rows of C
  int64_t g_row_stride = 0, g_col_stride = 1;
  const void* bias = nullptr;   // forward: (C,) or null
  const void* alpha = nullptr;  // classifier: device scalar in the accumulator type
  double scale = 1.0;
  // kn: n = in = out entries per row, K (1: hk null), pow2; hk int8 K x K; pre / post: n
  // accumulators or null (post with the scale multiplied in); inplace: y is x (contiguous).
  // quantize: the same without post, plus the code format (cuda::QuantCode) and the group.
  int64_t K = 1, pow2 = 1;
  int code = 0;
  int64_t group = 0;
  const void* hk = nullptr;
  const void* pre = nullptr;
  const void* post = nullptr;
  bool inplace = false;
  bool normalize = true;
  double eps = 1e-12;
  bool etf = false;  // classifier: the simplex ETF head
  // Outputs: out (transform: rows x out; forward: rows x C; backward: grad_x rows x N;
  // quantize: the codes, rows x n bytes), contrib (backward: rows accumulators), scales
  // (quantize: rows x n / group float32), workspace (ws_bytes, sized by the launcher's rule).
  void* y = nullptr;
  void* contrib = nullptr;
  void* scales = nullptr;
  void* workspace = nullptr;
};

// Bytes of workspace the launcher needs, and the launch itself, for each storage type.
size_t workspace_bytes(const Request& r);
cudaError_t run(const Request& r);

}  // namespace hk_sim
