// CPU-run CUDA harness: the fiber runtime behind hk_sim.h.
//
// A launch runs its blocks one after another (in a seeded random order); a block's threads
// are fibers (one stack each, with a guard page) on this one host thread, switched by a few
// lines of assembly on x86-64 (ucontext elsewhere: its swapcontext makes a system call, and
// AddressSanitizer's interceptor of it clears the shadow of the whole stack, 10x slower). A fiber
// runs until it reaches __syncthreads() or a shuffle; the scheduler then picks the next
// runnable fiber by the schedule's policy, so at every barrier and shuffle the order in which
// threads resume is seeded-random (or one warp runs ahead of the others as far as it can).
//
// Checked, failing the run with a message (exit code 3):
//   - CUDA's launch limits (threads per block, grid, dynamic shared memory <= 227 KB and, above
//     48 KB, <= what cudaFuncSetAttribute allowed for that kernel);
//   - a barrier every thread of the block reaches; shuffles whose mask names existing lanes
//     that all take part with the same mask, width a power of two, source lanes taking part;
//   - natural alignment of every global and shared access (16 bytes for vector accesses);
//   - no read of a shared-memory byte that this block has not written (shared memory is also
//     poisoned with 0xFF before every block), no global access outside a device allocation
//     (AddressSanitizer reports it first).
// Counted per launch (the kernels' translation units are compiled with AddressSanitizer's
// out-of-line checks, whose __asan_load*/__asan_store* calls are wrapped here, see
// access_hook below): bytes read / written per device allocation, 32-byte sectors per warp
// instruction for global accesses, shared-memory wavefronts per warp instruction.
#include "sim.h"

#include <dlfcn.h>
#include <cxxabi.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "include/hk_sim.h"

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};
dim3 gridDim{1, 1, 1};

extern "C" char __bss_start[];  // the executable's .bss: static __shared__ variables live there
extern "C" char _end[];

namespace hk_sim {
namespace {

constexpr size_t kMaxDynamicShared = 227 * 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kStackBytes = 256 * 1024;

// ------------------------------------------------------------------------------------------
// State.

Schedule g_schedule;
cudaError_t g_last_error = cudaSuccess;
std::map<const void*, int> g_smem_allowed;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
std::vector<LaunchRecord> g_launches;

struct Buffer {
  char* p;
  size_t bytes;
  std::string name;
  std::vector<uint8_t> touched;  // per byte, this launch: 1 read, 2 written
  BufferTraffic traffic;
};
std::vector<std::unique_ptr<Buffer>> g_buffers;

enum class State { kRunnable, kBarrier, kShuffle, kDone };

// ------------------------------------------------------------------------------------------
// Context switch: switch_to(&save, to) saves the callee-saved registers on the current stack,
// stores the stack pointer in save and continues on the stack `to` (made by a previous
// switch_to, or by new_context).

#if defined(__x86_64__)
using Context = void*;
extern "C" void hk_sim_switch(Context* save, Context to);
asm(R"(
  .text
  .globl hk_sim_switch
  .type hk_sim_switch, @function
hk_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size hk_sim_switch, .-hk_sim_switch
)");
void switch_to(Context* save, Context to) { hk_sim_switch(save, to); }
// A context that starts entry() on the stack [stack, stack + bytes).
Context new_context(char* stack, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uintptr_t*>(top - 64);  // six registers, then the return address
  for (int i = 0; i < 6; ++i) sp[i] = 0;
  sp[6] = reinterpret_cast<uintptr_t>(entry);  // at top - 16: entry starts with rsp = 8 mod 16
  return sp;
}
#else
using Context = ucontext_t*;
void switch_to(Context* save, Context to) { swapcontext(*save, to); }
Context new_context(char* stack, size_t bytes, void (*entry)()) {
  static std::map<char*, std::unique_ptr<ucontext_t>> per_stack;
  auto& c_owner = per_stack[stack];
  if (!c_owner) c_owner = std::make_unique<ucontext_t>();
  ucontext_t* c = c_owner.get();
  getcontext(c);
  c->uc_stack.ss_sp = stack;
  c->uc_stack.ss_size = bytes;
  c->uc_link = nullptr;
  makecontext(c, entry, 0);
  return c;
}
#endif

struct Fiber {
  Context ctx;
  char* stack = nullptr;  // kStackBytes above a guard page
  int tid = 0, warp = 0, lane = 0;
  State state = State::kRunnable;
  void* fake_stack = nullptr;
  // The shuffle it waits in.
  ShflKind kind = ShflKind::kXor;
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint64_t value = 0, result = 0;
};

// One access of a thread; accesses are appended in time order, so a thread's accesses from
// one call site are in program order: the k-th of them in each lane of a warp is one warp
// instruction (analyse_block numbers them).
struct Access {
  uintptr_t pc;
  uint32_t occurrence;  // set by analyse_block
  uint64_t seq;         // order of the accesses in time
  int warp, lane;
  uintptr_t addr;
  uint32_t size;
  bool store;
  bool shared;
};

struct Block {
  KernelBody body;
  std::vector<Fiber*> fibers;  // one per thread
  int warps = 0;
  char* smem = nullptr;
  size_t smem_bytes = 0;
  std::vector<uint8_t> smem_written;           // dynamic shared memory, per byte
  std::unordered_set<uintptr_t> static_written;  // static __shared__ bytes
  std::vector<Access> accesses;
  uint64_t barriers = 0, shuffles = 0;
  std::vector<int> at_shuffle;  // per warp: lanes waiting in a shuffle
};

std::vector<std::unique_ptr<Fiber>> g_fiber_pool;
Block* g_block = nullptr;
Fiber* g_cur = nullptr;
#if defined(__x86_64__)
Context g_sched_ctx = nullptr;
#else
ucontext_t g_sched_uctx;
Context g_sched_ctx = &g_sched_uctx;
#endif
const void* g_main_stack_bottom = nullptr;
size_t g_main_stack_size = 0;
std::string g_kernel_name;
unsigned g_block_linear = 0;

[[noreturn]] void fail(const char* fmt, ...) {
  std::fprintf(stderr, "cuda_sim: %s, block %u", g_kernel_name.c_str(), g_block_linear);
  if (g_cur != nullptr) std::fprintf(stderr, ", thread %d", g_cur->tid);
  std::fprintf(stderr, ": ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::_Exit(3);
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string kernel_name(const void* kernel) {
  Dl_info info;
  if (dladdr(kernel, &info) != 0 && info.dli_sname != nullptr) {
    int status = 0;
    char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 && d != nullptr ? d : info.dli_sname;
    std::free(d);
    // Drop the namespaces and the (always identical) parameter list.
    for (const char* ns : {"hadamard_kernels::cuda::", "hadamard_kernels::"}) {
      for (size_t at; (at = name.find(ns)) != std::string::npos;) name.erase(at, std::strlen(ns));
    }
    const size_t paren = name.rfind('(');
    if (paren != std::string::npos) name.erase(paren);
    return name;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "kernel@%p", kernel);
  return buf;
}

// ------------------------------------------------------------------------------------------
// Fibers.

Fiber* fiber(size_t i) {
  while (g_fiber_pool.size() <= i) {
    auto f = std::make_unique<Fiber>();
    const long page = 4096;
    char* mem = static_cast<char*>(mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (mem == MAP_FAILED) fail("out of memory for fiber stacks");
    mprotect(mem, page, PROT_NONE);  // stacks grow down into the guard page
    f->stack = mem + page;
    g_fiber_pool.push_back(std::move(f));
  }
  return g_fiber_pool[i].get();
}

void fiber_entry() {
  __sanitizer_finish_switch_fiber(nullptr, &g_main_stack_bottom, &g_main_stack_size);
  g_block->body.run(g_block->body.ctx);
  g_cur->state = State::kDone;
  __sanitizer_start_switch_fiber(nullptr, g_main_stack_bottom, g_main_stack_size);
  switch_to(&g_cur->ctx, g_sched_ctx);
  std::abort();  // never resumed
}

// From a fiber: back to the scheduler (the fiber's state says why).
void yield() {
  Fiber* f = g_cur;
  __sanitizer_start_switch_fiber(&f->fake_stack, g_main_stack_bottom, g_main_stack_size);
  switch_to(&f->ctx, g_sched_ctx);
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_main_stack_bottom, &g_main_stack_size);
}

void resume(Fiber* f) {
  threadIdx = {static_cast<unsigned>(f->tid), 0, 0};
  g_cur = f;
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, kStackBytes);
  switch_to(&g_sched_ctx, f->ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
  g_cur = nullptr;
}

const char* state_name(State s) {
  switch (s) {
    case State::kRunnable: return "runnable";
    case State::kBarrier: return "at __syncthreads";
    case State::kShuffle: return "at a shuffle";
    case State::kDone: return "exited";
  }
  return "?";
}

// ------------------------------------------------------------------------------------------
// Warp-instruction analysis of one block's accesses.

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// One warp instruction: accesses [first, last) of the block's (sorted) accesses.
void analyse_global(const Access* first, const Access* last, LaunchRecord& rec) {
  // The lanes' byte ranges, sorted and merged: distinct bytes and the sectors they touch.
  std::pair<uintptr_t, uintptr_t> iv[64];  // [begin, end), at most one per lane
  size_t n = 0;
  for (const Access* a = first; a != last && n < 64; ++a) iv[n++] = {a->addr, a->addr + a->size};
  std::sort(iv, iv + n);
  uint64_t unique = 0, sectors = 0;
  uintptr_t last_sector = UINTPTR_MAX, end = 0;
  for (size_t i = 0; i < n; ++i) {
    const uintptr_t b = std::max(iv[i].first, end), e = iv[i].second;
    if (e <= b) continue;
    unique += e - b;
    for (uintptr_t s = b >> 5; s <= (e - 1) >> 5; ++s) {
      if (s != last_sector) ++sectors;
      last_sector = s;
    }
    end = e;
  }
  const uint64_t ideal = ceil_div(unique, 32);
  for (auto& buf : g_buffers) {
    if (first->addr - reinterpret_cast<uintptr_t>(buf->p) < buf->bytes) {
      (first->store ? buf->traffic.store_sectors : buf->traffic.load_sectors) += sectors;
      (first->store ? buf->traffic.store_sectors_ideal : buf->traffic.load_sectors_ideal) += ideal;
      break;
    }
  }
  if (first->store) {
    rec.global_store_requests += 1;
    rec.global_store_sectors += sectors;
    rec.global_store_sectors_ideal += ideal;
  } else {
    rec.global_load_requests += 1;
    rec.global_load_sectors += sectors;
    rec.global_load_sectors_ideal += ideal;
  }
}

void analyse_shared(const Access* first, const Access* last, LaunchRecord& rec) {
  uint32_t size = 4;
  for (const Access* a = first; a != last; ++a) size = std::max(size, a->size);
  const int lanes_per_phase = static_cast<int>(std::max<uint32_t>(1, 128 / size));
  // Per phase: the (bank, word) pairs of its lanes; wavefronts = the most distinct words
  // in one bank.
  uint64_t wavefronts = 0, phases = 0;
  for (int phase = 0; phase * lanes_per_phase < 32; ++phase) {
    std::pair<int, uintptr_t> words[512];
    size_t n = 0;
    for (const Access* a = first; a != last; ++a) {
      if (a->lane / lanes_per_phase != phase) continue;
      for (uintptr_t w = a->addr >> 2; w <= (a->addr + a->size - 1) >> 2 && n < 512; ++w)
        words[n++] = {static_cast<int>(w % 32), w};
    }
    if (n == 0) continue;
    std::sort(words, words + n);
    size_t worst = 0, run = 0;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0 && words[i] == words[i - 1]) continue;  // same word: a broadcast
      run = i > 0 && words[i].first == words[i - 1].first ? run + 1 : 1;
      worst = std::max(worst, run);
    }
    wavefronts += worst;
    ++phases;
  }
  rec.shared_requests += 1;
  rec.shared_wavefronts += wavefronts;
  rec.shared_wavefronts_ideal += phases;
}

void analyse_block(Block& b, LaunchRecord& rec) {
  // Number each lane's accesses per call site in program order (seq), then group them
  // into warp instructions: (space, kind, warp, call site, occurrence).
  auto& acc = b.accesses;
  std::sort(acc.begin(), acc.end(), [](const Access& x, const Access& y) {
    return std::tie(x.warp, x.lane, x.pc, x.seq) < std::tie(y.warp, y.lane, y.pc, y.seq);
  });
  for (size_t i = 0; i < acc.size(); ++i) {
    const bool same = i > 0 && acc[i - 1].warp == acc[i].warp && acc[i - 1].lane == acc[i].lane &&
                      acc[i - 1].pc == acc[i].pc;
    acc[i].occurrence = same ? acc[i - 1].occurrence + 1 : 0;
  }
  auto key = [](const Access& a) { return std::make_tuple(a.shared, a.store, a.warp, a.pc, a.occurrence); };
  std::sort(acc.begin(), acc.end(), [&](const Access& x, const Access& y) { return key(x) < key(y); });
  for (size_t i = 0, j; i < acc.size(); i = j) {
    for (j = i + 1; j < acc.size() && key(acc[j]) == key(acc[i]);) ++j;
    if (acc[i].shared) {
      analyse_shared(&acc[i], &acc[0] + j, rec);
    } else {
      analyse_global(&acc[i], &acc[0] + j, rec);
    }
  }
  rec.barriers += b.barriers;
  rec.shuffles += b.shuffles;
}

// ------------------------------------------------------------------------------------------
// One block.

void run_block(Block& b, const dim3& grid_used, unsigned linear, size_t nthreads, uint64_t rng_seed) {
  g_block_linear = linear;
  blockIdx = {linear % grid_used.x, (linear / grid_used.x) % grid_used.y, linear / (grid_used.x * grid_used.y)};
  if (b.smem_bytes > 0) std::memset(b.smem, 0xFF, b.smem_bytes);
  b.accesses.reserve(1 << 16);
  std::fill(b.smem_written.begin(), b.smem_written.end(), 0);
  b.static_written.clear();
  b.accesses.clear();
  b.barriers = b.shuffles = 0;
  b.at_shuffle.assign(b.warps, 0);
  b.fibers.resize(nthreads);
  for (size_t i = 0; i < nthreads; ++i) {
    Fiber* f = fiber(i);
    f->tid = static_cast<int>(i);
    f->warp = static_cast<int>(i / 32);
    f->lane = static_cast<int>(i % 32);
    f->state = State::kRunnable;
    f->ctx = new_context(f->stack, kStackBytes, fiber_entry);
    b.fibers[i] = f;
  }
  const int lead = static_cast<int>(g_schedule.seed % static_cast<uint64_t>(b.warps));
  std::vector<int> lead_q, other_q;  // runnable fibers, the lead warp's apart
  auto make_runnable = [&](int i) {
    b.fibers[i]->state = State::kRunnable;
    (g_schedule.policy == Policy::kWarpAhead && b.fibers[i]->warp == lead ? lead_q : other_q).push_back(i);
  };
  for (size_t i = 0; i < nthreads; ++i) make_runnable(static_cast<int>(i));
  uint64_t rng = rng_seed;
  size_t done = 0, at_barrier = 0;
  auto pop = [&](std::vector<int>& q) {
    const size_t k = splitmix(rng) % q.size();
    const int i = q[k];
    q[k] = q.back();
    q.pop_back();
    return i;
  };
  while (done < nthreads) {
    if (lead_q.empty() && other_q.empty()) {
      std::string states;
      for (Fiber* f : b.fibers) {
        if (f->state != State::kDone) {
          states += " t" + std::to_string(f->tid) + ":" + state_name(f->state);
          if (states.size() > 400) break;
        }
      }
      fail("deadlock: no thread can go on (a barrier or shuffle that not every thread reaches);%s", states.c_str());
    }
    const int i = pop(lead_q.empty() ? other_q : lead_q);
    Fiber* f = b.fibers[i];
    resume(f);
    switch (f->state) {
      case State::kDone:
        ++done;
        break;
      case State::kBarrier:
        ++at_barrier;
        break;
      case State::kShuffle: {
        // Release the shuffle once every lane of the mask has arrived with the same mask
        // (counted per warp; the lanes are checked once the count is complete).
        const int base = f->warp * 32;
        if (++b.at_shuffle[f->warp] < __builtin_popcount(f->mask)) break;
        bool all = true;
        for (int l = 0; l < 32 && all; ++l) {
          if (!(f->mask >> l & 1u)) continue;
          const Fiber* g = b.fibers[base + l];
          all = g->state == State::kShuffle && g->mask == f->mask;
        }
        if (!all) break;
        ++b.shuffles;
        b.at_shuffle[f->warp] -= __builtin_popcount(f->mask);
        for (int l = 0; l < 32; ++l) {
          if (!(f->mask >> l & 1u)) continue;
          Fiber* g = b.fibers[base + l];
          if (g->kind != f->kind || g->width != f->width) {
            g_cur = g;
            fail("lanes of one shuffle (mask 0x%08x) disagree on its kind or width", f->mask);
          }
          const int w = g->width, seg = l & ~(w - 1);
          int src = l;
          switch (g->kind) {
            case ShflKind::kIdx: src = seg + (g->arg & (w - 1)); break;
            case ShflKind::kUp: src = l - seg >= g->arg ? l - g->arg : l; break;
            case ShflKind::kDown: src = l - seg + g->arg < w ? l + g->arg : l; break;
            case ShflKind::kXor: src = (l ^ g->arg) < seg + w ? (l ^ g->arg) : l; break;
          }
          if (src < 0 || src >= 32 || !(f->mask >> src & 1u)) {
            g_cur = g;
            fail("shuffle reads lane %d, which is not in the mask 0x%08x", src, f->mask);
          }
          g->result = b.fibers[base + src]->value;
        }
        for (int l = 0; l < 32; ++l)
          if (f->mask >> l & 1u) make_runnable(base + l);
        break;
      }
      case State::kRunnable:
        fail("internal: a fiber yielded without a reason");
    }
    if (at_barrier > 0 && at_barrier + done == nthreads) {
      if (done > 0) fail("__syncthreads() not reached by all threads: %zu of %zu exited before it", done, nthreads);
      ++b.barriers;
      at_barrier = 0;
      for (size_t k = 0; k < nthreads; ++k) make_runnable(static_cast<int>(k));
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// The device side of the API (hk_sim.h).

void barrier() {
  if (g_cur == nullptr) fail("__syncthreads() outside a kernel");
  g_cur->state = State::kBarrier;
  yield();
}

uint64_t shuffle(ShflKind kind, unsigned mask, uint64_t bits, int arg, int width) {
  Fiber* f = g_cur;
  if (f == nullptr) fail("shuffle outside a kernel");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width %d is not a power of two <= 32", width);
  if (!(mask >> f->lane & 1u)) fail("shuffle mask 0x%08x does not include the calling lane %d", mask, f->lane);
  const int nthreads = static_cast<int>(g_block->fibers.size());
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && f->warp * 32 + l >= nthreads)
      fail("shuffle mask 0x%08x names lane %d, which does not exist (block of %d threads)", mask, l, nthreads);
  f->kind = kind;
  f->mask = mask;
  f->arg = arg;
  f->width = width;
  f->value = bits;
  f->state = State::kShuffle;
  yield();
  return f->result;
}

bool mutant(int id) {
  static const int on = [] {
    const char* v = std::getenv("HK_SIM_MUTANT");
    return v ? std::atoi(v) : 0;
  }();
  return on == id;
}

void* dynamic_shared() {
  if (g_block == nullptr) fail("dynamic shared memory outside a kernel");
  return g_block->smem;
}

cudaError_t get_last_error() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxDynamicShared) return cudaErrorInvalidValue;
  g_smem_allowed[kernel] = bytes;
  return cudaSuccess;
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem, KernelBody body) {
  g_kernel_name = kernel_name(kernel);
  g_block_linear = 0;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;
    fail("launch configuration out of CUDA's limits: grid (%u, %u, %u), block (%u, %u, %u)", grid.x, grid.y,
         grid.z, block.x, block.y, block.z);
  }
  if (block.y != 1 || block.z != 1 || grid.y != 1 || grid.z != 1) fail("only 1-D launches are simulated");
  size_t allowed = kDefaultDynamicShared;
  if (auto it = g_smem_allowed.find(kernel); it != g_smem_allowed.end()) allowed = std::max<size_t>(allowed, it->second);
  if (smem > kMaxDynamicShared || smem > allowed) {
    g_last_error = cudaErrorInvalidValue;
    fail("%zu bytes of dynamic shared memory requested; allowed: %zu (227 KB at most, above 48 KB only "
         "after cudaFuncSetAttribute)",
         smem, allowed);
  }
  dim3 used = grid;
  if (g_schedule.max_grid > 0) used.x = std::min(used.x, g_schedule.max_grid);
  gridDim = used;
  blockDim = block;

  Block b;
  b.body = body;
  b.warps = static_cast<int>((threads + 31) / 32);
  b.smem_bytes = smem;
  void* smem_mem = nullptr;
  if (posix_memalign(&smem_mem, 16, smem) != 0) fail("out of memory for shared memory");
  b.smem = static_cast<char*>(smem_mem);
  b.smem_written.assign(smem, 0);
  LaunchRecord rec;
  rec.kernel = g_kernel_name;
  rec.grid = used.x;
  rec.block = static_cast<unsigned>(threads);
  rec.dynamic_smem = smem;
  for (auto& buf : g_buffers) {
    if (g_schedule.count) std::fill(buf->touched.begin(), buf->touched.end(), 0);
    buf->traffic = BufferTraffic{buf->name};
  }

  // Blocks in a seeded random order (a permutation of the grid, up to 2^20 blocks).
  uint64_t rng = g_schedule.seed * 0x2545f4914f6cdd1dull + g_launches.size();
  std::vector<unsigned> order(std::min<unsigned>(used.x, 1u << 20));
  for (unsigned i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[splitmix(rng) % i]);
  g_block = &b;
  for (uint64_t k = 0; k < used.x; ++k) {
    const unsigned linear = k < order.size() ? order[k] : static_cast<unsigned>(k);
    run_block(b, used, linear, threads, splitmix(rng));
    if (g_schedule.count) analyse_block(b, rec);
  }
  g_block = nullptr;
  std::free(smem_mem);

  for (auto& buf : g_buffers) {
    if (!g_schedule.count) break;
    BufferTraffic t = buf->traffic;
    for (uint8_t v : buf->touched) {
      t.read_unique_bytes += v & 1;
      t.write_unique_bytes += (v >> 1) & 1;
    }
    if (t.read_bytes + t.write_bytes > 0) rec.buffers.push_back(t);
  }
  g_launches.push_back(std::move(rec));
}

// ------------------------------------------------------------------------------------------
// Host API (sim.h).

void set_schedule(const Schedule& s) { g_schedule = s; }

void* device_alloc(size_t bytes, const char* name) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) fail("out of memory");
  auto buf = std::make_unique<Buffer>();
  buf->p = static_cast<char*>(p);
  buf->bytes = bytes;
  buf->name = name;
  buf->touched.assign(bytes, 0);
  std::memset(p, 0xFF, bytes);
  g_buffers.push_back(std::move(buf));
  return p;
}

void poison(void* p) {
  for (auto& buf : g_buffers)
    if (buf->p == p) std::memset(p, 0xFF, buf->bytes);
}

void free_all() {
  for (auto& buf : g_buffers) std::free(buf->p);
  g_buffers.clear();
}

const std::vector<LaunchRecord>& launches() { return g_launches; }
void clear_launches() { g_launches.clear(); }

// Every load and store of the kernels' code (see the file comment); the kernel's access itself
// is checked by the wrapped __asan_* call right after.
void access_hook(uintptr_t addr, uint32_t size, bool store, uintptr_t pc) {
  Fiber* f = g_cur;
  if (f == nullptr) return;
  if (addr - reinterpret_cast<uintptr_t>(f->stack) < kStackBytes) return;  // its own registers
  const char* space = nullptr;
  bool shared = false;
  Block& b = *g_block;
  if (b.smem_bytes > 0 && addr >= reinterpret_cast<uintptr_t>(b.smem) &&
      addr < reinterpret_cast<uintptr_t>(b.smem) + b.smem_bytes) {
    space = "shared";
    shared = true;
    const size_t off = addr - reinterpret_cast<uintptr_t>(b.smem);
    if (off + size > b.smem_bytes) fail("%u-byte shared access at offset %zu beyond the %zu bytes", size, off, b.smem_bytes);
    for (uint32_t i = 0; i < size; ++i) {
      if (store) {
        b.smem_written[off + i] = 1;
      } else if (!b.smem_written[off + i]) {
        fail("reads dynamic shared memory at byte %zu that this block has not written", off + i);
      }
    }
  } else if (addr >= reinterpret_cast<uintptr_t>(__bss_start) && addr < reinterpret_cast<uintptr_t>(_end)) {
    for (const void* v : {static_cast<const void*>(&threadIdx), static_cast<const void*>(&blockIdx),
                          static_cast<const void*>(&blockDim), static_cast<const void*>(&gridDim)})
      if (addr - reinterpret_cast<uintptr_t>(v) < sizeof(dim3)) return;
    space = "static shared";
    shared = true;
    for (uint32_t i = 0; i < size; ++i) {
      if (store) {
        b.static_written.insert(addr + i);
      } else if (!b.static_written.count(addr + i)) {
        fail("reads a static __shared__ byte that this block has not written");
      }
    }
  } else {
    for (auto& buf : g_buffers) {
      const uintptr_t p = reinterpret_cast<uintptr_t>(buf->p);
      if (addr >= p && addr < p + buf->bytes) {
        space = "global";
        if (addr + size > p + buf->bytes) fail("%u-byte access crosses the end of %s", size, buf->name.c_str());
        if (g_schedule.count) {
          (store ? buf->traffic.write_bytes : buf->traffic.read_bytes) += size;
          for (uint32_t i = 0; i < size; ++i) buf->touched[addr - p + i] |= store ? 2 : 1;
        }
        break;
      }
    }
    if (space == nullptr) return;  // the thread's own stack, kernel parameters, constants
  }
  if ((size & (size - 1)) == 0 && size <= 16 && addr % size != 0)
    fail("misaligned %u-byte %s %s at address %% %u = %u", size, space, store ? "store" : "load", size,
         static_cast<unsigned>(addr % size));
  if (g_schedule.count) b.accesses.push_back(Access{pc, 0, b.accesses.size(), f->warp, f->lane, addr, size, store, shared});
}

__attribute__((noinline)) void vector_copy(void* dst, const void* src, size_t bytes) {
  const uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  access_hook(reinterpret_cast<uintptr_t>(src), static_cast<uint32_t>(bytes), false, pc);
  access_hook(reinterpret_cast<uintptr_t>(dst), static_cast<uint32_t>(bytes), true, pc);
  std::memcpy(dst, src, bytes);  // checked by AddressSanitizer's interceptor
}

}  // namespace hk_sim

// AddressSanitizer's out-of-line checks (kernel code is compiled with
// --param asan-instrumentation-with-call-threshold=0 and linked with --wrap for these).
#define HK_SIM_WRAP(kind, n, store)                                           \
  extern "C" void __real___asan_##kind##n(uintptr_t);                        \
  extern "C" void __wrap___asan_##kind##n(uintptr_t addr) {                  \
    hk_sim::access_hook(addr, n, store,                                      \
                        reinterpret_cast<uintptr_t>(__builtin_return_address(0))); \
    __real___asan_##kind##n(addr);                                           \
  }
HK_SIM_WRAP(load, 1, false)
HK_SIM_WRAP(load, 2, false)
HK_SIM_WRAP(load, 4, false)
HK_SIM_WRAP(load, 8, false)
HK_SIM_WRAP(load, 16, false)
HK_SIM_WRAP(store, 1, true)
HK_SIM_WRAP(store, 2, true)
HK_SIM_WRAP(store, 4, true)
HK_SIM_WRAP(store, 8, true)
HK_SIM_WRAP(store, 16, true)
#undef HK_SIM_WRAP

extern "C" void __real___asan_loadN(uintptr_t, uintptr_t);
extern "C" void __wrap___asan_loadN(uintptr_t addr, uintptr_t size) {
  hk_sim::access_hook(addr, static_cast<uint32_t>(size), false, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
  __real___asan_loadN(addr, size);
}
extern "C" void __real___asan_storeN(uintptr_t, uintptr_t);
extern "C" void __wrap___asan_storeN(uintptr_t addr, uintptr_t size) {
  hk_sim::access_hook(addr, static_cast<uint32_t>(size), true, reinterpret_cast<uintptr_t>(__builtin_return_address(0)));
  __real___asan_storeN(addr, size);
}
