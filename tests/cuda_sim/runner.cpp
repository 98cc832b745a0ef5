// CPU-run CUDA harness: the runner executable that tests/cuda_sim/harness.py drives.
//
//     runner DIR
//
// reads DIR/request.txt (one "key value" pair per line, written by harness.py) and the input
// files it names (raw storage bytes), copies the inputs into device allocations of exactly
// their storage's size, then runs the launcher once per schedule: outputs and workspace
// poisoned (0xFF) before each run, the outputs of every run bit-identical to the first
// (otherwise the result depends on the thread order: a race). Writes DIR/y.bin (and
// DIR/contrib.bin for the backward, DIR/scales.bin for quantize) and DIR/counters.json (the
// first run's launches).
// Exit codes: 0 ok, 2 bad request, 3 a check of sim.cpp failed, 4 a launcher returned an
// error, 5 schedule-dependent results; AddressSanitizer / UBSan report with their own.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "request.h"
#include "sim.h"

namespace hk_sim {

#define HK_SIM_DECLARE(tag)                        \
  size_t workspace_bytes_##tag(const Request& r); \
  cudaError_t run_##tag(const Request& r);
HK_SIM_DECLARE(float32)
HK_SIM_DECLARE(float64)
HK_SIM_DECLARE(float16)
HK_SIM_DECLARE(bfloat16)
#undef HK_SIM_DECLARE

size_t workspace_bytes(const Request& r) {
  if (r.dtype == "float32") return workspace_bytes_float32(r);
  if (r.dtype == "float64") return workspace_bytes_float64(r);
  if (r.dtype == "float16") return workspace_bytes_float16(r);
  return workspace_bytes_bfloat16(r);
}

cudaError_t run(const Request& r) {
  if (r.dtype == "float32") return run_float32(r);
  if (r.dtype == "float64") return run_float64(r);
  if (r.dtype == "float16") return run_float16(r);
  return run_bfloat16(r);
}

}  // namespace hk_sim

namespace {

[[noreturn]] void die(int code, const std::string& msg) {
  std::fprintf(stderr, "runner: %s\n", msg.c_str());
  std::exit(code);
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) die(2, "cannot read " + path);
  std::vector<char> bytes(static_cast<size_t>(f.tellg()));
  f.seekg(0);
  f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

void write_file(const std::string& path, const void* p, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
  if (!f) die(2, "cannot write " + path);
}

size_t element_size(const std::string& dtype) {
  if (dtype == "float32") return 4;
  if (dtype == "float64") return 8;
  if (dtype == "float16" || dtype == "bfloat16") return 2;
  die(2, "unknown dtype " + dtype);
}

// A device copy of DIR/<file>, the view starting `offset` elements in (null if absent).
const void* device_input(const std::map<std::string, std::string>& kv, const std::string& dir,
                         const std::string& name, size_t elem) {
  auto it = kv.find(name + "_file");
  if (it == kv.end()) return nullptr;
  const std::vector<char> bytes = read_file(dir + "/" + it->second);
  char* p = static_cast<char*>(hk_sim::device_alloc(bytes.size(), name.c_str()));
  if (!bytes.empty()) std::memcpy(p, bytes.data(), bytes.size());
  return p + std::stoll(kv.at(name + "_offset")) * static_cast<long long>(elem);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) die(2, "usage: runner DIR");
  const std::string dir = argv[1];
  std::map<std::string, std::string> kv;
  {
    std::ifstream f(dir + "/request.txt");
    if (!f) die(2, "no request.txt in " + dir);
    std::string line;
    while (std::getline(f, line)) {
      const size_t sp = line.find(' ');
      if (sp != std::string::npos) kv[line.substr(0, sp)] = line.substr(sp + 1);
    }
  }
  auto get = [&](const char* k) {
    auto it = kv.find(k);
    if (it == kv.end()) die(2, std::string("request lacks ") + k);
    return it->second;
  };
  hk_sim::Request r;
  r.op = get("op");
  r.dtype = get("dtype");
  const size_t elem = element_size(r.dtype);
  const size_t acc = r.dtype == "float64" ? 8 : 4;
  r.rows = std::stoll(get("rows"));
  r.in = std::stoll(get("in"));
  r.out = std::stoll(get("out"));
  r.x = device_input(kv, dir, "x", elem);
  r.x_row_stride = std::stoll(get("x_row_stride"));
  r.x_col_stride = std::stoll(get("x_col_stride"));
  r.scale = std::stod(get("scale"));
  r.normalize = get("normalize") == "1";
  r.eps = std::stod(get("eps"));
  r.etf = kv.count("etf") && kv.at("etf") == "1";
  if (r.op == "backward") {
    r.g = device_input(kv, dir, "g", elem);
    r.g_row_stride = std::stoll(get("g_row_stride"));
    r.g_col_stride = std::stoll(get("g_col_stride"));
  }
  if (r.op == "forward" || r.op == "backward") {
    r.bias = device_input(kv, dir, "bias", elem);
    r.alpha = device_input(kv, dir, "alpha", acc);
  }
  // In place (kn): the output is x's view (contiguous rows); x's bytes are restored before
  // each schedule instead of poisoning the output.
  std::vector<char> x_bytes;
  char* x_base = nullptr;
  const bool quantize = r.op == "quantize";
  if (r.op == "kn" || quantize) {
    r.K = std::stoll(get("K"));
    r.pow2 = std::stoll(get("pow2"));
    r.inplace = !quantize && get("inplace") == "1";
    r.hk = device_input(kv, dir, "hk", 1);
    r.pre = device_input(kv, dir, "pre", acc);
    r.post = device_input(kv, dir, "post", acc);
    if (r.inplace) {
      x_bytes = read_file(dir + "/" + get("x_file"));
      x_base = static_cast<char*>(const_cast<void*>(r.x)) - std::stoll(get("x_offset")) * static_cast<long long>(elem);
    }
  }
  if (quantize) {
    r.code = std::stoi(get("code"));
    r.group = std::stoll(get("group"));
    if (r.group < 1 || r.in % r.group != 0) die(2, "group must divide n");
  }
  const int64_t y_cols = r.op == "backward" ? r.in : r.out;
  const size_t y_bytes = static_cast<size_t>(r.rows * y_cols) * (quantize ? 1 : elem);  // quantize: 1-byte codes
  if (r.inplace) {
    if (r.x_row_stride != r.in || r.x_col_stride != 1) die(2, "in place needs contiguous rows");
    r.y = const_cast<void*>(r.x);
  } else {
    r.y = hk_sim::device_alloc(y_bytes, quantize ? "q" : "out");
  }
  const size_t scales_bytes = quantize ? static_cast<size_t>(r.rows * (r.in / r.group)) * 4 : 0;
  if (scales_bytes > 0) r.scales = hk_sim::device_alloc(scales_bytes, "scales");
  const size_t contrib_bytes = r.op == "backward" ? static_cast<size_t>(r.rows) * acc : 0;
  if (contrib_bytes > 0) r.contrib = hk_sim::device_alloc(contrib_bytes, "contrib");
  const size_t ws_bytes = hk_sim::workspace_bytes(r);
  if (ws_bytes > 0) r.workspace = hk_sim::device_alloc(ws_bytes, "workspace");

  std::vector<char> first_y, first_contrib, first_scales;
  std::vector<hk_sim::LaunchRecord> first_launches;
  std::istringstream schedules(get("schedules"));
  std::string token;
  bool first = true;
  while (schedules >> token) {
    // policy:seed[:max_grid]
    hk_sim::Schedule s;
    const size_t c1 = token.find(':');
    const size_t c2 = token.find(':', c1 + 1);
    const std::string policy = token.substr(0, c1);
    if (policy == "random") {
      s.policy = hk_sim::Policy::kRandom;
    } else if (policy == "ahead") {
      s.policy = hk_sim::Policy::kWarpAhead;
    } else {
      die(2, "unknown schedule policy " + policy);
    }
    s.seed = std::stoull(token.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1));
    s.max_grid = c2 == std::string::npos ? 0 : static_cast<unsigned>(std::stoul(token.substr(c2 + 1)));
    s.count = first;  // the counters of the first schedule are reported
    hk_sim::set_schedule(s);
    if (r.inplace) {
      if (!x_bytes.empty()) std::memcpy(x_base, x_bytes.data(), x_bytes.size());
    } else {
      hk_sim::poison(r.y);
    }
    if (r.contrib) hk_sim::poison(r.contrib);
    if (r.scales) hk_sim::poison(r.scales);
    if (r.workspace) hk_sim::poison(r.workspace);
    hk_sim::clear_launches();
    const cudaError_t err = hk_sim::run(r);
    if (err != cudaSuccess) die(4, "the launcher returned error " + std::to_string(err) + " (schedule " + token + ")");
    std::vector<char> y(static_cast<char*>(r.y), static_cast<char*>(r.y) + y_bytes);
    std::vector<char> contrib(static_cast<char*>(r.contrib), static_cast<char*>(r.contrib) + contrib_bytes);
    std::vector<char> scales(static_cast<char*>(r.scales), static_cast<char*>(r.scales) + scales_bytes);
    if (first) {
      first_y = std::move(y);
      first_contrib = std::move(contrib);
      first_scales = std::move(scales);
      first_launches = hk_sim::launches();
      first = false;
    } else if (y != first_y || contrib != first_contrib || scales != first_scales) {
      die(5, "schedule " + token + " gives other results than the first schedule: the kernel races");
    }
  }
  if (first) die(2, "no schedules");
  write_file(dir + "/y.bin", first_y.data(), first_y.size());
  if (contrib_bytes > 0) write_file(dir + "/contrib.bin", first_contrib.data(), first_contrib.size());
  if (scales_bytes > 0) write_file(dir + "/scales.bin", first_scales.data(), first_scales.size());

  std::ofstream js(dir + "/counters.json");
  js << "[\n";
  for (size_t i = 0; i < first_launches.size(); ++i) {
    const hk_sim::LaunchRecord& l = first_launches[i];
    js << "  {\"kernel\": \"" << l.kernel << "\", \"grid\": " << l.grid << ", \"block\": " << l.block
       << ", \"dynamic_smem\": " << l.dynamic_smem << ", \"global_load_requests\": " << l.global_load_requests
       << ", \"global_load_sectors\": " << l.global_load_sectors
       << ", \"global_load_sectors_ideal\": " << l.global_load_sectors_ideal
       << ", \"global_store_requests\": " << l.global_store_requests
       << ", \"global_store_sectors\": " << l.global_store_sectors
       << ", \"global_store_sectors_ideal\": " << l.global_store_sectors_ideal
       << ", \"shared_requests\": " << l.shared_requests << ", \"shared_wavefronts\": " << l.shared_wavefronts
       << ", \"shared_wavefronts_ideal\": " << l.shared_wavefronts_ideal << ", \"barriers\": " << l.barriers
       << ", \"shuffles\": " << l.shuffles << ", \"buffers\": {";
    for (size_t k = 0; k < l.buffers.size(); ++k) {
      const hk_sim::BufferTraffic& b = l.buffers[k];
      js << (k ? ", " : "") << "\"" << b.name << "\": {\"read\": " << b.read_bytes
         << ", \"written\": " << b.write_bytes << ", \"read_unique\": " << b.read_unique_bytes
         << ", \"written_unique\": " << b.write_unique_bytes << ", \"load_sectors\": " << b.load_sectors
         << ", \"load_sectors_ideal\": " << b.load_sectors_ideal << ", \"store_sectors\": " << b.store_sectors
         << ", \"store_sectors_ideal\": " << b.store_sectors_ideal << "}";
    }
    js << "}}" << (i + 1 < first_launches.size() ? "," : "") << "\n";
  }
  js << "]\n";
  hk_sim::free_all();
  return 0;
}
