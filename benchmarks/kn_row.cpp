// Microbenchmark of the CPU K * 2^k row kernel alone (csrc/cpu/orders.h, no torch, no
// allocation): float32 rows of n = K * p over about 2^22 values, kn_row into a preallocated
// output, against fwht_row of 2^13 over 2^22 values, in interleaved rounds of thread CPU time;
// the ratio is the median over rounds of (time per value / the 2^13 transform's). Run by
// benchmarks/kn_row.py, which builds it and feeds it the library's H_K on stdin:
//
//   rounds
//   K p                 (then K * K entries +-1, row-major), repeated; a line "0 0" ends
//
// and prints one line per order: K p rows ms ratio q25 q75 (plus the baseline's line, K = 1).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <vector>

#include "cpu/orders.h"

namespace {

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

struct Order {
  int64_t K, p, rows;
  std::vector<float> h;
  std::vector<uint32_t> offsets;
  hadamard_kernels::cpu::Order12Map<float> map;
  bool has_map = false;
  float* buf = nullptr;
};

}  // namespace

int main() {
  namespace cpu = hadamard_kernels::cpu;
  constexpr int64_t kTotal = int64_t{1} << 22;
  constexpr int64_t kBase = int64_t{1} << 13;
  int rounds = 0;
  if (std::scanf("%d", &rounds) != 1 || rounds < 3) return 2;
  std::vector<Order> orders;
  for (;;) {
    Order o;
    if (std::scanf("%lld %lld", reinterpret_cast<long long*>(&o.K), reinterpret_cast<long long*>(&o.p)) != 2) return 2;
    if (o.K == 0) break;
    o.h.resize(o.K * o.K);
    for (float& e : o.h) {
      int v;
      if (std::scanf("%d", &v) != 1) return 2;
      e = static_cast<float>(v);
    }
    orders.push_back(std::move(o));
  }
  float* x = static_cast<float*>(std::aligned_alloc(64, (kTotal + 4096) * sizeof(float)));
  float* y = static_cast<float*>(std::aligned_alloc(64, (kTotal + 4096) * sizeof(float)));
  for (int64_t i = 0; i < kTotal + 4096; ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  // The kernel's arguments as csrc/kn_args.h sets them up (four-Russians table, order-12 map).
  std::vector<cpu::KnRowArgs<float>> args;
  args.reserve(orders.size());
  for (Order& o : orders) {
    const int64_t n = o.K * o.p;
    o.rows = std::max<int64_t>(1, kTotal / n);
    o.has_map = o.K == cpu::kOrder12 && cpu::find_order12_map(o.h.data(), o.map);
    o.offsets.resize(o.K * (o.K / cpu::kKnGroup));
    cpu::kn_offsets(o.h.data(), o.K, o.offsets.data());
    o.buf = static_cast<float*>(std::aligned_alloc(64, (cpu::kn_buffer_size<float>(o.K, o.p, true) * 4 + 4095) / 4096 * 4096));
    args.push_back(cpu::KnRowArgs<float>{o.h.data(), o.offsets.data(), o.K, o.p, n, nullptr, nullptr, 0.5f,
                                         o.has_map ? &o.map : nullptr, cpu::paley2_q(o.h.data(), o.K)});
  }
  std::vector<std::function<void()>> fns;
  fns.push_back([&] {
    for (int64_t r = 0; r < kTotal / kBase; ++r) cpu::fwht_row(x + r * kBase, y + r * kBase, kBase, 0.5f);
  });
  for (size_t i = 0; i < orders.size(); ++i) {
    fns.push_back([&, i] {
      const Order& o = orders[i];
      const int64_t n = o.K * o.p;
      for (int64_t r = 0; r < o.rows; ++r)
        cpu::kn_row(x + r * n, 1, y + r * n, o.buf, args[i], r + 1 < o.rows ? x + (r + 1) * n : nullptr);
    });
  }
  for (auto& f : fns) f();  // warm up
  std::vector<std::vector<double>> t(fns.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < fns.size(); ++i) {
      const double t0 = thread_seconds();
      fns[i]();
      t[i].push_back(thread_seconds() - t0);
    }
  for (size_t i = 0; i < fns.size(); ++i) {
    const int64_t K = i == 0 ? 1 : orders[i - 1].K, p = i == 0 ? kBase : orders[i - 1].p;
    const int64_t values = i == 0 ? kTotal : orders[i - 1].rows * K * p;
    std::vector<double> ratio;
    for (int r = 0; r < rounds; ++r) ratio.push_back((t[i][r] / values) / (t[0][r] / kTotal));
    std::printf("%lld %lld %lld %.4f %.4f %.4f %.4f\n", static_cast<long long>(K), static_cast<long long>(p),
                static_cast<long long>(values / (K * p)), 1e3 * quantile(t[i], 0.5), quantile(ratio, 0.5),
                quantile(ratio, 0.25), quantile(ratio, 0.75));
  }
  return 0;
}
