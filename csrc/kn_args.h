// The arguments of the K * 2^k row kernel (csrc/cpu/orders.h) read from the ops' tensors,
// shared by the transform ops (csrc/orders.cpp) and the fused rotate-and-quantise op
// (csrc/quantize.cpp): H_K, its four-Russians table and the diagonals, converted to the
// accumulator type and owned here, and the KnRowArgs that point into them.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "cpu/orders.h"

namespace hadamard_kernels {

// cpu::find_order12_map of h (12 x 12, +-1) into map, searched once per distinct matrix (a
// search costs tens of microseconds; the library passes four matrices: two families, each
// also transposed; the first 64 are kept). False when h has no map.
template <typename acc_t>
bool order12_map(const std::vector<acc_t>& h, cpu::Order12Map<acc_t>& map) {
  using Key = std::array<uint64_t, 3>;  // bit i: entry i is -1
  static std::mutex mutex;
  static std::vector<std::pair<Key, std::optional<cpu::Order12Map<acc_t>>>> cache;
  Key key{};
  for (size_t i = 0; i < h.size(); ++i) key[i / 64] |= static_cast<uint64_t>(h[i] < acc_t(0)) << (i % 64);
  const std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [k, found] : cache)
    if (k == key) {
      if (found.has_value()) map = *found;
      return found.has_value();
    }
  const bool found = cpu::find_order12_map(h.data(), map);
  if (cache.size() < 64) cache.emplace_back(key, found ? std::optional(map) : std::nullopt);
  return found;
}

template <typename acc_t>
class KnSetup {
 public:
  KnSetup(const std::optional<at::Tensor>& hk, int64_t K, int64_t pow2, int64_t n, double scale,
          const std::optional<at::Tensor>& pre_signs, const std::optional<at::Tensor>& post_signs, const char* op)
      : h_(hk.has_value() ? read_hk(*hk, op) : std::vector<acc_t>()),
        pre_(read_signs(pre_signs, 1.0)),
        post_(read_signs(post_signs, scale)) {
    has_order12_ = K == cpu::kOrder12 && !h_.empty() && order12_map(h_, order12_);
    const int paley_q = h_.empty() ? 0 : cpu::paley2_q(h_.data(), K);
    if (!h_.empty() && K % cpu::kKnGroup == 0) {  // rows that the order-12 product does not take
      offsets_.resize(static_cast<size_t>(K * (K / cpu::kKnGroup)));
      cpu::kn_offsets(h_.data(), K, offsets_.data());
    }
    args_ = cpu::KnRowArgs<acc_t>{h_.empty() ? nullptr : h_.data(),
                                  offsets_.empty() ? nullptr : offsets_.data(),
                                  K,
                                  pow2,
                                  n,
                                  pre_.empty() ? nullptr : pre_.data(),
                                  post_.empty() ? nullptr : post_.data(),
                                  static_cast<acc_t>(scale),
                                  has_order12_ ? &order12_ : nullptr,
                                  paley_q};
  }
  KnSetup(const KnSetup&) = delete;
  KnSetup& operator=(const KnSetup&) = delete;

  const cpu::KnRowArgs<acc_t>& args() const { return args_; }
  // Scratch values kn_row needs per row (one cpu::RowBuffer of this size per worker).
  int64_t buffer_size() const { return cpu::kn_buffer_size<acc_t>(args_.K, args_.p, !offsets_.empty()); }

 private:
  // hk as a row-major acc_t matrix, checking that every entry is +1 or -1.
  static std::vector<acc_t> read_hk(const at::Tensor& hk, const char* op) {
    const at::Tensor h = hk.contiguous();
    const int8_t* v = h.const_data_ptr<int8_t>();
    std::vector<acc_t> out(static_cast<size_t>(h.numel()));
    for (int64_t i = 0; i < h.numel(); ++i) {
      TORCH_CHECK_VALUE(v[i] == 1 || v[i] == -1, op, ": hk must have entries +1 or -1, found ",
                        static_cast<int>(v[i]), " at (", i / h.size(1), ", ", i % h.size(1), ")");
      out[static_cast<size_t>(i)] = static_cast<acc_t>(v[i]);
    }
    return out;
  }

  // signs converted to acc_t and multiplied by factor (empty when absent).
  static std::vector<acc_t> read_signs(const std::optional<at::Tensor>& signs, double factor) {
    if (!signs.has_value()) return {};
    const at::Tensor s = signs->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* v = s.const_data_ptr<acc_t>();
    std::vector<acc_t> out(v, v + s.numel());
    if (factor != 1.0)
      for (acc_t& e : out) e *= static_cast<acc_t>(factor);
    return out;
  }

  std::vector<acc_t> h_;
  std::vector<acc_t> pre_;
  std::vector<acc_t> post_;
  std::vector<uint32_t> offsets_;  // the four-Russians product's table (csrc/cpu/orders.h)
  cpu::Order12Map<acc_t> order12_{};  // K = 12: H_K as a signed permutation of W (csrc/cpu/order12.h)
  bool has_order12_ = false;
  cpu::KnRowArgs<acc_t> args_{};
};

}  // namespace hadamard_kernels
