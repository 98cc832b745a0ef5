// hadamard_kernels: CUDA device code of the transforms of order K * 2^k (no torch here).
//
//     out[r, :n] = scale * post . [(H_K (x) H_p) @ pad(pre . x[r, :n], K p)][:n]      p = 2^L
//     out[r, a p + b] = scale * post[a p + b] * sum_{a' < used} H_K[a, a'] * (H_p @ c_a')[b]
//
// x, out: rows of n <= K p entries (unit column stride); c_a' = (pre . x[r])[a' p : a' p + p],
// zero beyond n: chunk a' of the padded row. H_K (int8 K x K, +-1) acts on the high digit a
// of the index a p + b (docs/orders.md); only the used = ceil(n / p) chunks holding any of
// the n entries are read or written, so only H_K[:used, :used] matters. pre and post (the
// randomised transform's diagonals, scale folded into post) are optional.
//
// One kernel, kn_transform_kernel<T, L>, one read of x and one write of out (in place too:
// a block reads all of its rows before it writes any). A block owns R rows at a time:
//
//   1. chunks: the block's RowTile<T, L> tiles (fwht.cuh: RPB tiles of TPR threads) loop
//      over the R * used (row, chunk a') items; each loads its chunk, multiplies by pre,
//      transforms it in registers (butterflies, shuffles, and for tiles spanning several
//      warps the exchange through shared memory, done in the chunk's own slot of the row
//      buffer) and stores the accumulators into the block's shared-memory row buffer,
//      R rows of used * p accumulators in natural column order;
//   2. __syncthreads, then the K-point product: thread j takes CW consecutive columns b of
//      one row (lanes on consecutive column groups: 16-byte shared loads without bank
//      conflicts, coalesced global stores) and a group of G = 8 outputs a0 .. a0 + 7, reads
//      the used values of its columns from shared memory once and accumulates
//      acc[g] += sign(H_K[a0 + g, a']) * c_a' (exact +-; H_K as bit masks, one word per a'
//      read by all lanes at once), then writes scale * post . acc for a0 + g < used.
//      G * CW accumulators per thread (32 registers) for any K <= kMaxK;
//   3. __syncthreads before the next rows overwrite the buffer (grid-stride loop).
//
// K = 1 (hk None, used = 1): no K-point stage, each tile is a whole row and is stored
// straight from registers with scale and post (the row kernel of fwht.cuh plus the signs).
//
// The body is kn_rows<T, L, Epi>, shared with the fused rotate-and-quantise kernel
// (quantize.cuh): its epilogue is buffered (KnStore's comment), so stage 2 writes y over the
// row buffer (kn_k_point_in_place; K = 1: the tile's chunk is stored there) and the epilogue
// quantises the rows from shared memory.
//
// R aims at kKnTargetSmemBytes of row buffer (enough items for both stages) and is 1 for
// large rows; a row of used * p accumulators must fit the shared memory a block of the
// device may opt into (kn_smem_limit; sm_90: 227 KB, float32 / float16 / bfloat16 rows up
// to 58112 entries, every K * 2^k <= 40 * 2^10 and 172 * 2^8; float64 up to 29056), and p
// must be within the single-pass tiles of fwht.cuh, with the K-point stage up to
// kn_max_k_point_log2 (kn_single_pass). Other rows are not this kernel's: the torch glue
// composes them from several passes (csrc/cuda/ops_cuda.cu).
//
// Shared-memory bank conflicts: none for chunks of >= 512 bytes of accumulators (the
// harness's counters). Smaller chunks have some: row tiles of fewer than 8 threads store
// several rows' vectors per warp instruction, and K-point warps read several rows at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "fwht.cuh"

namespace hadamard_kernels {
namespace cuda {

// Outputs a per thread of the K-point product (a0 = 8 j: one byte of a mask word).
constexpr int kKnGroup = 8;
// Row buffer a block aims at (R rows of used * p accumulators, at least one row).
constexpr size_t kKnTargetSmemBytes = 32 * 1024;
// Dynamic shared memory of one sm_90 block (the most any device gives; see kn_smem_limit).
constexpr size_t kKnMaxSmemBytes = 227 * 1024;

// Columns per thread of the K-point product: one 16-byte vector of accumulators.
template <typename T, int L>
__host__ __device__ constexpr int kn_columns_per_thread() {
  return cmin(16 / static_cast<int>(sizeof(acc_of<T>)), 1 << L);
}

// Largest L whose kernel has the K-point stage (K > 1). Beyond it a row of K > 1 chunks
// rarely fits in shared memory anyway (float32: only n <= 3 * 2^14), and the stage's code
// beside the largest tiles made ptxas spill: such rows take the composed path.
template <typename T>
__host__ __device__ constexpr int kn_max_k_point_log2() {
  return sizeof(T) == 2 ? 12 : 13;
}

// Words of one H_K mask row: bits over a < K.
__host__ __device__ constexpr int kn_mask_words(int64_t K) { return static_cast<int>((K + 31) / 32); }

template <typename T>
struct KnArgs {
  const T* x;                // rows of n entries, row stride x_row_stride, unit column stride
  T* out;                    // rows of n entries, row stride out_row_stride (may be x)
  int64_t rows;
  int64_t n;
  int64_t x_row_stride;
  int64_t out_row_stride;
  const uint32_t* masks;     // [K][words]: bit j of masks[a' * words + w] = (H_K[32 w + j, a'] < 0);
                             // null for K = 1 (the direct path)
  int words;                 // kn_mask_words(K)
  int used;                  // ceil(n / 2^L) chunks holding any of the n entries (1 for K = 1)
  int rows_per_block;        // R (RowTile::RPB for K = 1)
  const acc_of<T>* pre;      // n factors on x, or null
  const acc_of<T>* post;     // n factors on the result, scale multiplied in, or null
  acc_of<T> scale;           // multiplies every output when post is null
  bool vec_load;             // x rows allow KV-entry vectors (can_vectorize)
  bool vec_store;            // out rows allow vector stores: KV entries (K = 1), CW entries (K > 1)
};

// a[v][k] *= pre[col0 + column of a[v][k]] for the loaded columns < lim (Tile::load's layout).
template <typename Tile, typename A>
__device__ __forceinline__ void kn_apply_pre(Tile& tile, const A* pre, int64_t col0, int lim, bool vec) {
  constexpr int KV = Tile::KV;
  const int c_thread = tile.q_load_thread() * KV;
  const A* base = pre + col0 + c_thread;
#pragma unroll
  for (int v = 0; v < Tile::V; ++v) {
    const int c = Tile::q_load_offset(v) * KV;
    if (vec) {
      if (c + c_thread < lim) {
        A s[KV];
        load_vec<A, KV>(base + c, s);
#pragma unroll
        for (int k = 0; k < KV; ++k) tile.a[v][k] *= s[k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < KV; ++k)
        if (c + c_thread + k < lim) tile.a[v][k] *= base[c + k];
    }
  }
}

// The transformed chunk from the tile's registers (final layout) into dst[0, M), natural
// column order. 16-byte stores, consecutive lanes on consecutive vectors; where a vector is
// 32 bytes (float16 / bfloat16 storage: 8 float accumulators), lanes 4-7 of every 8 write
// their second half first, so each 8-lane phase of a 16-byte store covers all 32 banks.
template <typename Tile, typename A>
__device__ __forceinline__ void kn_store_chunk(const Tile& tile, A* dst) {
  constexpr int KV = Tile::KV;
  constexpr int AV = 16 / static_cast<int>(sizeof(A));
  const int c_thread = tile.q_final_thread() * KV;
#pragma unroll
  for (int v = 0; v < Tile::V; ++v) {
    A* p = dst + Tile::q_final_offset(v) * KV + c_thread;
    if constexpr (KV * sizeof(A) == 16) {
      st_shared16(p, tile.a[v]);
    } else if constexpr (KV * sizeof(A) == 32) {
      const int swap = (tile.lane >> 2) & 1;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        A part[AV];
#pragma unroll
        for (int e = 0; e < AV; ++e) part[e] = (h ^ swap) ? tile.a[v][AV + e] : tile.a[v][e];
        st_shared16(p + (h ^ swap) * AV, part);
      }
    } else {
      static_assert(KV * sizeof(A) < 16, "a tile vector is 16 or 32 bytes of accumulators, or less");
#pragma unroll
      for (int k = 0; k < KV; ++k) p[k] = tile.a[v][k];
    }
  }
}

// acc[g][c] = sum_{a' < used} sign(H_K[a0 + g, a']) * c_a'[b + c]: the K-point product of
// outputs a0 .. a0 + G - 1 at the CW columns b .. b + CW - 1 of one row, src = the row's
// buffer + b (stage 2; shared by kn_k_point and kn_k_point_in_place).
template <typename T, int L>
__device__ __forceinline__ void kn_accumulate(const KnArgs<T>& p, const acc_of<T>* src, int a0,
                                              acc_of<T> (&acc)[kKnGroup][kn_columns_per_thread<T, L>()]) {
  using A = acc_of<T>;
  constexpr int M = 1 << L;
  constexpr int CW = kn_columns_per_thread<T, L>();
  constexpr int G = kKnGroup;
  const int used = p.used;
  const uint32_t* mask = p.masks + (a0 >> 5);
  const int shift = a0 & 31;
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int c = 0; c < CW; ++c) acc[g][c] = A(0);
  for (int a2 = 0; a2 < used; ++a2) {
    A v[CW];
    if constexpr (CW * sizeof(A) == 16) {
      ld_shared16(src + static_cast<size_t>(a2) * M, v);
    } else {
#pragma unroll
      for (int c = 0; c < CW; ++c) v[c] = src[static_cast<size_t>(a2) * M + c];
    }
    const uint32_t bits = mask[a2 * p.words] >> shift;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const A s = ((bits >> g) & 1u) ? A(-1) : A(1);
#pragma unroll
      for (int c = 0; c < CW; ++c) acc[g][c] = signed_add(s, v[c], acc[g][c]);
    }
  }
}

// Stage 2: out[row0 + r, a p + b] for the nrows rows of the block's buffer (see the file
// comment). Every thread of the block may call it; no barrier inside.
template <typename T, int L>
__device__ __forceinline__ void kn_k_point(const KnArgs<T>& p, const acc_of<T>* buf, int64_t row0, int nrows) {
  using A = acc_of<T>;
  constexpr int M = 1 << L;
  constexpr int CW = kn_columns_per_thread<T, L>();
  constexpr int NCG = M / CW;  // column groups per chunk
  constexpr int G = kKnGroup;
  const int used = p.used;
  const int per_group = nrows * NCG;
  const int items = per_group * ((used + G - 1) / G);
  for (int j = static_cast<int>(threadIdx.x); j < items; j += static_cast<int>(blockDim.x)) {
    const int og = j / per_group;
    const int rem = j - og * per_group;
    const int rl = rem / NCG;
    const int b = (rem - rl * NCG) * CW;
    const int a0 = og * G;
    A acc[G][CW];
    kn_accumulate<T, L>(p, buf + static_cast<size_t>(rl) * used * M + b, a0, acc);
    T* orow = p.out + (row0 + rl) * p.out_row_stride;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t col = int64_t{a0 + g} * M + b;
      if (a0 + g >= used || col >= p.n) break;
      A f[CW];
      if (p.post == nullptr) {
#pragma unroll
        for (int c = 0; c < CW; ++c) f[c] = p.scale;
      } else if (p.vec_store) {
        load_vec<A, CW>(p.post + col, f);
      } else {
#pragma unroll
        for (int c = 0; c < CW; ++c) f[c] = col + c < p.n ? p.post[col + c] : A(0);
      }
      if (p.vec_store) {  // n % CW == 0: all CW columns or none
        T o[CW];
#pragma unroll
        for (int c = 0; c < CW; ++c) o[c] = Num<T>::store(f[c] * acc[g][c]);
        store_vec<T, CW>(orow + col, o);
      } else {
#pragma unroll
        for (int c = 0; c < CW; ++c)
          if (col + c < p.n) orow[col + c] = Num<T>::store(f[c] * acc[g][c]);
      }
    }
  }
}

// Stage 2 of a buffered epilogue (the quantising kernel, quantize.cuh): the K-point product
// written over the block's buffer, y[r][a p + b] (unscaled) in place of c_a[b], for the
// epilogue to read. Every output group reads all chunks of its columns, so a column group b
// of a row must be read by all of its OG = ceil(used / 8) output groups before any of them
// writes it: the work goes in rounds of CS column groups (a multiple of 8 lanes, so that
// 16-byte accesses stay conflict-free) times OG output groups, each round's reads, a barrier,
// then its writes; later rounds read other columns. Every thread of the block must call it
// (block-uniform loop); the caller synchronises before reading the buffer.
template <typename T, int L>
__device__ __forceinline__ void kn_k_point_in_place(const KnArgs<T>& p, acc_of<T>* buf, int nrows) {
  using A = acc_of<T>;
  constexpr int M = 1 << L;
  constexpr int CW = kn_columns_per_thread<T, L>();
  constexpr int NCG = M / CW;
  constexpr int G = kKnGroup;
  static_assert(RowTile<T, L>::THREADS >= 8 * ((kMaxK + G - 1) / G), "a round holds 8 column groups of every output group");
  const int used = p.used;
  const int og_count = (used + G - 1) / G;
  const int per_round = (static_cast<int>(blockDim.x) / og_count) & ~7;
  const int og = static_cast<int>(threadIdx.x) / per_round;  // >= og_count: idle
  const int cg = static_cast<int>(threadIdx.x) - og * per_round;
  const int sets = nrows * NCG;
  for (int s0 = 0; s0 < sets; s0 += per_round) {
    const int set = s0 + cg;
    const bool active = og < og_count && set < sets;
    const int rl = set / NCG;
    A* col = buf + static_cast<size_t>(rl) * used * M + (set - rl * NCG) * CW;
    A acc[G][CW] = {};
    if (active) kn_accumulate<T, L>(p, col, og * G, acc);
    __syncthreads();  // the round's columns read by all of their output groups
    if (active) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (og * G + g >= used) break;
        A* dst = col + static_cast<size_t>(og * G + g) * M;
        if constexpr (CW * sizeof(A) == 16) {
          st_shared16(dst, acc[g]);
        } else {
#pragma unroll
          for (int c = 0; c < CW; ++c) dst[c] = acc[g][c];
        }
      }
    }
  }
}

// What kn_rows does with a block's transformed rows. KnStore (kn_transform_kernel): writes
// scale * post . y to p.out, from the tiles' registers (K = 1) or from stage 2. A buffered
// epilogue (kBuffered, e.g. quantize.cuh's KnQuantize) instead gets every row's y, unscaled,
// in the shared-memory row buffer, for any K: its call
//     epi(p, buf, row_stride, row0, nrows)
// reads row r < nrows (output row row0 + r) at buf + r * row_stride, columns [0, n); every
// thread of the block calls it (it may synchronise the block); kn_rows synchronises after it.
struct KnStore {
  static constexpr bool kBuffered = false;
};

// The body of the K * 2^k kernels: stages 1 and 2 (file comment) over the block's rows, then
// the epilogue's stores.
template <typename T, int L, typename Epi>
__device__ __forceinline__ void kn_rows(const KnArgs<T>& p, const Epi& epi) {
  using Tile = RowTile<T, L>;
  using A = acc_of<T>;
  constexpr int M = Tile::M;
  constexpr bool kKPoint = L <= kn_max_k_point_log2<T>();
  constexpr bool kBuffered = Epi::kBuffered;
  HK_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* buf = reinterpret_cast<A*>(smem_raw);
  Tile tile;
  const int used = p.used;
  const int R = p.rows_per_block;
  // K = 1 or tiles beyond kn_max_k_point_log2 (no K-point stage compiled in), when storing
  // from the registers; a buffered epilogue always takes the row buffer.
  const bool direct = !kBuffered && (!kKPoint || p.masks == nullptr);
  const int64_t groups = (p.rows + R - 1) / R;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t row0 = g * R;
    const int nrows = static_cast<int>(p.rows - row0 < R ? p.rows - row0 : R);
    const int items = nrows * used;
    // Stage 1, a block-uniform loop (the tiles shuffle and may synchronise the block).
    for (int i0 = 0; i0 < items; i0 += Tile::RPB) {
      const int i = i0 + tile.rib;
      const bool valid = i < items;
      const int rl = valid ? i / used : 0;
      const int a2 = valid ? i - rl * used : 0;
      const int64_t row = row0 + rl;
      const int64_t col0 = int64_t{a2} * M;
      tile.template load<false, false>(p.x + row * opaque(p.x_row_stride), 1, col0, p.n, p.vec_load, valid);
      if (p.pre != nullptr) kn_apply_pre(tile, p.pre, col0, valid ? Tile::clamp_limit(p.n, col0) : -1, p.vec_load);
      // The exchange (W > 1) uses the slots of items i0 .. i0 + RPB - 1 of the buffer (sized
      // for whole RPB-item steps): each tile its own chunk's slot.
      tile.transform(Tile::W > 1 ? buf + static_cast<size_t>(i0) * M : buf);
      if (direct) {
        if constexpr (!kBuffered) {
          if (valid) {
            T* orow = p.out + row * p.out_row_stride;
            if (p.post != nullptr) {
              const A* post = p.post;
              tile.store(orow, p.n, p.vec_store, [post](A v, int64_t c) { return v * post[c]; });
            } else {
              const A s = p.scale;
              tile.store(orow, p.n, p.vec_store, [s](A v, int64_t) { return s * v; });
            }
          }
          if constexpr (Tile::W > 1) __syncthreads();  // the next rows' exchange reuses the buffer
        }
      } else if constexpr (kKPoint || kBuffered) {
        // The chunk's threads have read the exchange (float16 / bfloat16: its layout is not
        // the natural one, the store below overwrites entries others still read).
        if constexpr (Tile::W > 1) __syncthreads();
        // A buffered epilogue's 16-bit tiles spanning several warps store past the rows too
        // (zeros, into the slots of their whole RPB-item step, never read): with the row
        // predicate kn_quantize_kernel<float16 / bfloat16, 13 / 14> spilled 4 bytes, without
        // it <float32, 14> did (ptxas 13.0, sm_90).
        constexpr bool kStoreAll = kBuffered && Tile::W > 1 && sizeof(T) == 2;
        if (valid || kStoreAll) kn_store_chunk(tile, buf + static_cast<size_t>(i) * M);
      }
    }
    if constexpr (kKPoint || kBuffered) {
      if (direct) continue;
      __syncthreads();  // stage 2 reads every chunk of the rows
      if constexpr (kBuffered) {
        if constexpr (kKPoint) {
          if (p.masks != nullptr) {
            kn_k_point_in_place<T, L>(p, buf, nrows);
            __syncthreads();  // the epilogue reads what stage 2 wrote
          }
        }
        epi(p, buf, static_cast<int64_t>(used) * M, row0, nrows);
      } else {
        kn_k_point<T, L>(p, buf, row0, nrows);
      }
      __syncthreads();  // before the next rows' chunks overwrite the buffer
    }
  }
}

template <typename T, int L>
__global__ void __launch_bounds__(RowTile<T, L>::THREADS, tile_min_blocks<false>(RowTile<T, L>::THREADS))
    kn_transform_kernel(const KnArgs<T> p) {
  kn_rows<T, L>(p, KnStore{});
}

// masks[a' * words + w] bit j = (hk[(32 w + j) * K + a'] < 0) for a' < K (zero bits past K).
// H is int8_t (a template only so that the header can be included by several translation units).
template <typename H>
__global__ void __launch_bounds__(256) kn_masks_kernel(const H* hk, int K, int words, uint32_t* masks) {
  const int total = K * words;
  for (int j = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); j < total;
       j += static_cast<int>(gridDim.x * blockDim.x)) {
    const int a2 = j / words;
    const int w = j - a2 * words;
    uint32_t m = 0;
    for (int bit = 0; bit < 32; ++bit) {
      const int a = w * 32 + bit;
      if (a < K && hk[static_cast<int64_t>(a) * K + a2] < 0) m |= 1u << bit;
    }
    masks[j] = m;
  }
}

// ------------------------------------------------------------------------------------------
// Host side (no torch).

struct KnParams {
  int64_t rows;
  int64_t n;               // entries per row, n <= K * pow2
  int64_t K;               // order of hk (1: hk is null)
  int64_t pow2;            // 2^L
  int64_t x_row_stride;    // x: unit column stride
  int64_t out_row_stride;  // out: unit column stride
  double scale;
};

// Rows per block and dynamic shared memory of kn_transform_kernel<T, L> (direct: K = 1
// stored from the registers; otherwise R rows of used chunks in the row buffer).
struct KnShape {
  int rows_per_block;
  size_t smem_bytes;
};

template <typename T, int L>
inline KnShape kn_shape(int64_t rows, int64_t used, bool direct) {
  using Tile = RowTile<T, L>;
  constexpr size_t kChunkBytes = size_t{Tile::M} * sizeof(acc_of<T>);
  if (direct) return {Tile::RPB, Tile::W > 1 ? Tile::RPB * kChunkBytes : 0};
  const size_t row_bytes = static_cast<size_t>(used) * kChunkBytes;
  int64_t r = static_cast<int64_t>(kKnTargetSmemBytes / row_bytes);
  r = std::max<int64_t>(1, std::min<int64_t>(r, rows));
  int64_t chunks = r * used;
  if (Tile::W > 1) chunks = (chunks + Tile::RPB - 1) / Tile::RPB * Tile::RPB;  // whole exchange steps
  return {static_cast<int>(r), static_cast<size_t>(chunks) * kChunkBytes};
}

// Dynamic shared memory a block of the current device may opt into (227 KB on sm_90, 163 KB
// on sm_80, 99 KB on sm_86 / sm_89), at most kKnMaxSmemBytes; queried once per device.
inline size_t kn_smem_limit() {
  constexpr int kDefault = 48 * 1024;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return kDefault;
  static std::atomic<int> cache[64] = {};  // 0: not queried yet
  if (dev >= 0 && dev < 64) {
    const int c = cache[dev].load(std::memory_order_relaxed);
    if (c > 0) return static_cast<size_t>(c);
  }
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || v < kDefault) {
    v = kDefault;
  }
  v = static_cast<int>(std::min<size_t>(static_cast<size_t>(v), kKnMaxSmemBytes));
  if (dev >= 0 && dev < 64) cache[dev].store(v, std::memory_order_relaxed);
  return static_cast<size_t>(v);
}

// Whether launch_kn does (K, pow2, n) in one pass for storage type T on a device whose blocks
// may have smem_limit bytes of dynamic shared memory (kn_smem_limit): pow2 within the
// single-pass row tiles and, for K > 1, one row of used chunks in shared memory. buffered:
// for a buffered epilogue (launch_kn_quantize), whose rows are always in the row buffer.
template <typename T>
inline bool kn_single_pass(int64_t K, int64_t pow2, int64_t n, size_t smem_limit, bool buffered = false) {
  const int L = ilog2(pow2);
  if ((int64_t{1} << L) != pow2 || L > max_single_pass_log2<T>() || n > K * pow2) return false;
  if (K > 1 && L > kn_max_k_point_log2<T>()) return false;
  const int64_t used = std::max<int64_t>((n + pow2 - 1) / pow2, 1);
  size_t bytes = 0;  // one row's buffer (K > 1 or buffered), the exchange buffer (K = 1)
  dispatch_log2<0, max_single_pass_log2<T>()>(L, [&](auto lc) {
    bytes = kn_shape<T, decltype(lc)::value>(1, used, K == 1 && !buffered).smem_bytes;
    return cudaSuccess;
  });
  return bytes <= smem_limit;
}

// Workspace of launch_kn: the H_K masks (none for K = 1). 256-byte multiple.
inline size_t kn_workspace_bytes(int64_t K) {
  if (K <= 1) return 0;
  const size_t bytes = static_cast<size_t>(K) * kn_mask_words(K) * sizeof(uint32_t);
  return (bytes + 255) / 256 * 256;
}

// H_K's sign masks into the workspace (kn_masks_kernel); null for K = 1 (hk null).
inline cudaError_t kn_launch_masks(const int8_t* hk, int64_t K, void* workspace, cudaStream_t stream,
                                   uint32_t** masks) {
  *masks = nullptr;
  if (K <= 1) return cudaSuccess;
  *masks = static_cast<uint32_t*>(workspace);
  const int words = kn_mask_words(K);
  const int total = static_cast<int>(K) * words;
  HK_LAUNCH(kn_masks_kernel<int8_t>, grid_for((total + 255) / 256), 256, 0, stream, hk, static_cast<int>(K), words,
            *masks);
  return cudaGetLastError();
}

// The arguments of kn_rows<T, L> common to both kernels (out, post and vec_store left unset).
template <typename T, int L>
inline KnArgs<T> kn_args(const T* x, const uint32_t* masks, const acc_of<T>* pre, const KnParams& p, int64_t used,
                         const KnShape& shape) {
  using A = acc_of<T>;
  using Tile = RowTile<T, L>;
  KnArgs<T> a{};
  a.x = x;
  a.rows = p.rows;
  a.n = p.n;
  a.x_row_stride = p.x_row_stride;
  a.out_row_stride = p.out_row_stride;
  a.masks = masks;
  a.words = kn_mask_words(p.K);
  a.used = static_cast<int>(used);
  a.rows_per_block = shape.rows_per_block;
  a.pre = pre;
  a.scale = static_cast<A>(p.scale);
  a.vec_load = can_vectorize<T>(x, p.x_row_stride, 1, p.n, Tile::KV) &&
               (pre == nullptr || aligned_to(pre, int64_t{Tile::KV} * static_cast<int64_t>(sizeof(A))));
  return a;
}

// out[r, :n] = the formula of the file comment for p.rows rows, in one pass; hk: int8 K x K
// on the device (null iff K = 1); pre / post: n accumulators or null (post with the scale
// multiplied in); workspace: kn_workspace_bytes(K). cudaErrorInvalidValue if
// !kn_single_pass<T>(K, pow2, n, kn_smem_limit()).
template <typename T>
cudaError_t launch_kn(const T* x, T* out, const int8_t* hk, const acc_of<T>* pre, const acc_of<T>* post,
                      const KnParams& p, void* workspace, cudaStream_t stream) {
  using A = acc_of<T>;
  const size_t smem_limit = kn_smem_limit();
  if (!kn_single_pass<T>(p.K, p.pow2, p.n, smem_limit) || (p.K > 1) != (hk != nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0 || p.n == 0) return cudaSuccess;
  const int L = ilog2(p.pow2);
  const int64_t used = (p.n + p.pow2 - 1) / p.pow2;
  uint32_t* masks = nullptr;
  const cudaError_t mask_err = kn_launch_masks(hk, p.K, workspace, stream, &masks);
  if (mask_err != cudaSuccess) return mask_err;
  return dispatch_log2<0, max_single_pass_log2<T>()>(L, [&](auto lc) {
    constexpr int kL = decltype(lc)::value;
    using Tile = RowTile<T, kL>;
    const bool direct = p.K == 1;
    const KnShape shape = kn_shape<T, kL>(p.rows, used, direct);
    KnArgs<T> a = kn_args<T, kL>(x, masks, pre, p, used, shape);
    a.out = out;
    a.post = post;
    const int kv_out = direct ? Tile::KV : kn_columns_per_thread<T, kL>();
    a.vec_store = can_vectorize<T>(out, p.out_row_stride, 1, p.n, kv_out) &&
                  (direct || post == nullptr || aligned_to(post, int64_t{kv_out} * static_cast<int64_t>(sizeof(A))));
    auto kernel = kn_transform_kernel<T, kL>;
    // The limit is raised once per device, to the most any launch of this kernel may ask for.
    static unsigned long long smem_done = 0;
    cudaError_t err = allow_smem(kernel, shape.smem_bytes > 48 * 1024 ? smem_limit : 0, smem_done);
    if (err != cudaSuccess) return err;
    const int64_t blocks = (p.rows + shape.rows_per_block - 1) / shape.rows_per_block;
    HK_LAUNCH(kernel, grid_for(blocks), Tile::THREADS, shape.smem_bytes, stream, a);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace hadamard_kernels
