// Symmetric absmax quantisation of transformed values, per group of g consecutive values
// (quantize_groups), the second half of the fused rotate-and-quantise op (csrc/quantize.cpp):
//
//   amax = max |y| over the group (NaN if any value is NaN)
//   s    = float32(amax / qmax)                      qmax = 127 (int8), 448 (e4m3fn), 57344 (e5m2)
//   q    = encode(clamp(y / s, -qmax, qmax))          y / s in T (float32, or float64 for float64 x)
//   s == 0 (an all-zero group): q = 0.
//
// encode is the format's conversion: int8 rounds half to even and maps NaN to 0; the float8
// formats are c10's round-to-nearest-even conversions (what torch's .to() does), from float32,
// and keep NaN. An infinite value makes s = inf, so its own y / s is NaN (inf / inf) and the
// group's finite values encode to 0.
//
// Pure C++ (no torch): Encode is a functor T -> code_t given by the caller.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/butterfly.h"

namespace hadamard_kernels {
namespace cpu {

// y: n values; q: n codes; scales: n / g float32 scales. g divides n.
template <typename T, typename code_t, typename Encode>
inline void quantize_groups(const T* y, int64_t n, int64_t g, T qmax, Encode encode, code_t* q, float* scales) {
  constexpr int64_t W = Vec<T>::kLanes;
  for (int64_t start = 0; start < n; start += g) {
    const T* v = y + start;
    T amax = 0;
    bool nan = false;
    int64_t i = 0;
    if (g >= W) {  // W lanes of partial maxima (GCC does not vectorise a float max reduction)
      using V = typename Vec<T>::type;
      V m{}, bad{};
      for (; i + W <= g; i += W) {
        const V a = Vec<T>::load(v + i);
        const V abs_a = a < V{} ? -a : a;
        m = abs_a > m ? abs_a : m;
        bad = a != a ? V{} + T(1) : bad;
      }
      for (int64_t j = 0; j < W; ++j) {
        amax = std::max(amax, m[j]);
        nan |= bad[j] != T(0);
      }
    }
    for (; i < g; ++i) {
      amax = std::max(amax, std::abs(v[i]));
      nan |= v[i] != v[i];
    }
    const float s = nan ? NAN : static_cast<float>(amax / qmax);
    scales[start / g] = s;
    code_t* out = q + start;
    if (s == 0.0f) {
      std::fill(out, out + g, encode(T(0)));
      continue;
    }
    const T sd = static_cast<T>(s);
    for (int64_t i = 0; i < g; ++i) {
      const T r = v[i] / sd;
      out[i] = encode(r < -qmax ? -qmax : (r > qmax ? qmax : r));  // NaN passes through
    }
  }
}

}  // namespace cpu
}  // namespace hadamard_kernels
