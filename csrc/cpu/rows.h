// Helpers for CPU kernels that work row by row: an aligned scratch row and the number of
// rows per parallel task. Shared by csrc/ops.cpp and csrc/orders.cpp.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "cpu/butterfly.h"

namespace hadamard_kernels {
namespace cpu {

// A kVecBytes-aligned scratch row of m accumulator values, one per worker chunk: inside the
// object up to kInlineBytes (no allocation at batch 1, where a malloc/free pair is a visible
// share of the call), on the heap beyond.
template <typename acc_t>
class RowBuffer {
 public:
  explicit RowBuffer(int64_t m) {
    const size_t bytes = (static_cast<size_t>(m) * sizeof(acc_t) + kVecBytes - 1) /
                         kVecBytes * kVecBytes;
    if (bytes <= kInlineBytes) {
      ptr_ = reinterpret_cast<acc_t*>(inline_);
      return;
    }
    heap_.reset(static_cast<acc_t*>(std::aligned_alloc(kVecBytes, bytes)));
    TORCH_CHECK(heap_ != nullptr, "hadamard_kernels: out of memory for a row buffer of ", bytes, " bytes");
    ptr_ = heap_.get();
  }
  RowBuffer(const RowBuffer&) = delete;
  RowBuffer& operator=(const RowBuffer&) = delete;
  acc_t* get() { return ptr_; }

 private:
  static constexpr size_t kInlineBytes = 4096;
  struct Free {
    void operator()(acc_t* p) const { std::free(p); }
  };
  alignas(kVecBytes) unsigned char inline_[kInlineBytes];
  std::unique_ptr<acc_t[], Free> heap_;
  acc_t* ptr_;
};

// Rows per parallel task: enough that a task moves >= 32K values (rows of m values).
inline int64_t grain_rows(int64_t m) { return std::max<int64_t>(1, (int64_t{1} << 15) / m); }

}  // namespace cpu
}  // namespace hadamard_kernels
