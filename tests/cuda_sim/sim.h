// CPU-run CUDA harness: the host-side API of the fiber runtime (sim.cpp), for runner.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hk_sim {

// How the scheduler picks the next fiber at every barrier and shuffle.
enum class Policy {
  kRandom,      // uniformly among the runnable fibers of the block (seeded)
  kWarpAhead,   // the lead warp (seed % warps) first, as far as it can go; then random
};

struct Schedule {
  Policy policy = Policy::kRandom;
  uint64_t seed = 1;
  // > 0: launch at most this many blocks in x (gridDim.x = min(grid.x, max_grid)). The
  // kernels are grid-stride loops; this runs the iterations that on a GPU only grids beyond
  // 2^31 - 1 blocks reach, with their loop-carried barriers.
  unsigned max_grid = 0;
  // Record the memory counters (LaunchRecord); the checks run either way.
  bool count = true;
};

void set_schedule(const Schedule& s);

// Device memory: aligned to 256 bytes like cudaMalloc, filled with 0xFF (NaN in every float
// type), registered so that kernel accesses to it are counted. free_all() releases all.
void* device_alloc(size_t bytes, const char* name);
void poison(void* p);  // refill a device allocation with 0xFF
void free_all();

// Per launch: what the memory counters saw.
struct BufferTraffic {
  std::string name;
  uint64_t read_bytes = 0, write_bytes = 0;                // requested by the threads
  uint64_t read_unique_bytes = 0, write_unique_bytes = 0;  // distinct bytes touched
  // Warp instructions on this allocation: 32-byte sectors touched and the fewest possible.
  uint64_t load_sectors = 0, load_sectors_ideal = 0, store_sectors = 0, store_sectors_ideal = 0;
};
struct LaunchRecord {
  std::string kernel;
  unsigned grid = 0, block = 0;
  size_t dynamic_smem = 0;
  std::vector<BufferTraffic> buffers;
  // Global accesses per warp instruction: sectors (32 B) touched vs the fewest possible
  // (the distinct bytes packed into aligned sectors).
  uint64_t global_load_requests = 0, global_load_sectors = 0, global_load_sectors_ideal = 0;
  uint64_t global_store_requests = 0, global_store_sectors = 0, global_store_sectors_ideal = 0;
  // Shared accesses per warp instruction: wavefronts (bank-conflict-free passes) used vs
  // the fewest possible (one per 128 bytes phase: 32 lanes x 4 B, 16 x 8 B, 8 x 16 B).
  uint64_t shared_requests = 0, shared_wavefronts = 0, shared_wavefronts_ideal = 0;
  uint64_t barriers = 0, shuffles = 0;  // per block, summed over blocks
};
const std::vector<LaunchRecord>& launches();
void clear_launches();

}  // namespace hk_sim
