// Microbenchmark of the CPU row kernel alone (csrc/cpu/butterfly.h, no torch): float32
// fwht_row in place over 2^22 values (rows of m = 2^6 .. 2^20), thread CPU time, best of 7,
// against a memcpy of the same bytes. Build and run from the repository root:
//
//   g++ -O3 -march=native -std=c++20 -Icsrc benchmarks/butterfly_row.cpp -o /tmp/butterfly_row
//   /tmp/butterfly_row
//
// Thread CPU time (not wall time) so that other processes on the machine change it less.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

#include "cpu/butterfly.h"

namespace {

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

template <typename F>
double best_of(int reps, F f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double t0 = thread_seconds();
    f();
    best = std::min(best, thread_seconds() - t0);
  }
  return best;
}

}  // namespace

int main() {
  using hadamard_kernels::cpu::fwht_row;
  constexpr int64_t kTotal = int64_t{1} << 22;
  std::printf("kVecBytes = %d\n%8s %12s %12s %8s\n", hadamard_kernels::cpu::kVecBytes, "m", "fwht ns/val",
              "copy ns/val", "ratio");
  float* x = static_cast<float*>(std::aligned_alloc(64, kTotal * sizeof(float)));
  std::vector<float> y(kTotal);
  for (int64_t i = 0; i < kTotal; ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  for (int log2m = 6; log2m <= 20; log2m += 2) {
    const int64_t m = int64_t{1} << log2m;
    const int64_t rows = kTotal / m;
    auto transform = [&] {
      for (int64_t r = 0; r < rows; ++r) fwht_row(x + r * m, x + r * m, m, 1.0f);
    };
    transform();  // warm up
    const double t = best_of(7, transform);
    const double c = best_of(7, [&] { std::copy(x, x + kTotal, y.data()); });
    std::printf("%8lld %12.3f %12.3f %8.2f\n", static_cast<long long>(m), 1e9 * t / kTotal, 1e9 * c / kTotal, t / c);
  }
  std::free(x);
  return 0;
}
