// moe_align (SPEC section 5), deterministic: a pair's slot is its expert's region start plus the
// number of valid pairs of that expert before it, counted per lane (match_any), per warp and per
// chunk in a fixed order; no atomic decides a position. Small inputs run in one block (one launch);
// larger ones count per chunk, finalize in one block, then place.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "align/params.h"
#include "common/device.cuh"
#include "common/team.cuh"

namespace moekit {
namespace align {

// The id of pair i (-1 past the end).
__device__ __forceinline__ int64_t pair_id(const Params& p, int64_t i) {
  if (i >= p.pairs) return -1;
  return p.ids_i64 ? static_cast<const int64_t*>(p.ids)[i] : static_cast<const int32_t*>(p.ids)[i];
}

// The local expert of an id, or -1 when it is skipped (outside [0, E), or unmapped).
__device__ __forceinline__ int local_of(const Params& p, int64_t id) {
  if (p.expert_map != nullptr) id = id >= 0 && id < p.map_size ? (int64_t)p.expert_map[id] : -1;
  return id >= 0 && id < p.E ? (int)id : -1;
}


// This thread's kRounds pairs of chunk c: their experts and their ranks among the earlier pairs of
// the same expert in the warp's share; hist[w * E + e] ends as warp w's count of e.
__device__ __forceinline__ void chunk_ranks(const Params& p, int64_t c, int* hist, int (&e)[kRounds],
                                            int (&rank)[kRounds]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t first = c * kChunk + (int64_t)warp * kWarpPairs + lane;
  // every id load of the thread first, then the map: two memory round trips, not one per pair
  int64_t id[kRounds];
#pragma unroll
  for (int r = 0; r < kRounds; ++r) id[r] = pair_id(p, first + r * 32);
#pragma unroll
  for (int r = 0; r < kRounds; ++r) e[r] = local_of(p, id[r]);
  int* h = hist + warp * p.E;
  const unsigned below = (1u << lane) - 1u;
  const int64_t warp_first = first - lane;
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    if (warp_first + r * 32 >= p.pairs) {  // the warp's rounds past the end (uniform): nothing to rank
      rank[r] = 0;
      continue;
    }
    const unsigned peers = __match_any_sync(kFullMask, e[r]);
    const int base = e[r] >= 0 ? h[e[r]] : 0;
    __syncwarp();
    if (e[r] >= 0 && (peers & below) == 0) h[e[r]] = base + __popc(peers);
    __syncwarp();
    rank[r] = base + __popc(peers & below);
  }
}

__device__ __forceinline__ void zero(int* a, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) a[i] = 0;
}

// Turns the per-warp counts into per-warp bases (exclusive, warp order); chunk_total[e] = the sum.
__device__ __forceinline__ void warp_bases(int* hist, int E, int* chunk_total) {
  for (int x = threadIdx.x; x < E; x += blockDim.x) {
    int run = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int v = hist[w * E + x];
      hist[w * E + x] = run;
      run += v;
    }
    if (chunk_total != nullptr) chunk_total[x] = run;
  }
}

// Exclusive prefix over the block of one value per thread (thread order); `total` = the sum. 64-bit
// words, so that two 32-bit sums (counts low, padded counts high) share one scan. Called once per
// block: warp_sums is not reused after it.
__device__ __forceinline__ uint64_t block_exclusive_scan(uint64_t v, uint64_t* warp_sums, uint64_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  const uint64_t incl = warp_inclusive_scan(v);
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  uint64_t base = 0;
  total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) base += warp_sums[w];
    total += warp_sums[w];
  }
  return base + incl - v;
}

// The sentinel in all of sorted[0, max_pad), 16-byte stores where aligned (one block).
__device__ __forceinline__ void fill_sentinel(const Params& p) {
  const int32_t v = (int32_t)p.pairs;
  int32_t* s = p.sorted;
  const int64_t lead = (int64_t)(((16 - ((uintptr_t)s & 15)) & 15) / 4);  // ints before a 16-byte boundary
  const int64_t head = lead < p.max_pad ? lead : p.max_pad;
  if (threadIdx.x < head) s[threadIdx.x] = v;
  const int64_t vecs = (p.max_pad - head) / 4;
  int4* body = reinterpret_cast<int4*>(s + head);
  for (int64_t i = threadIdx.x; i < vecs; i += blockDim.x) body[i] = make_int4(v, v, v, v);
  for (int64_t i = head + vecs * 4 + threadIdx.x; i < p.max_pad; i += blockDim.x) s[i] = v;
}

// The sentinel in the padding of every region and past the last one.
__device__ __forceinline__ void pad_regions(const Params& p, const int* count, const int* region_start,
                                            uint32_t total_pad) {
  const int32_t sentinel = (int32_t)p.pairs;
  // The padding of up to 32 regions per warp, strided over the warps (every warp gets some even when
  // E < 32 x warps): lane i reads one region's bounds, then the warp writes each region's padding 32
  // consecutive slots per store (one thread looping over its own region stored to 32 scattered lines
  // per instruction, and set the kernel's time).
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int w0 = threadIdx.x >> 5; w0 < p.E; w0 += 32 * warps) {
    const int e = w0 + lane * warps;
    int first = 0, end = 0;
    if (e < p.E) {
      const int c = count[e];
      first = region_start[e] + c;
      end = region_start[e] + (c + p.BM - 1) / p.BM * p.BM;
    }
#pragma unroll 4
    for (int i = 0; i < 32; ++i) {
      const int f = __shfl_sync(kFullMask, first, i), n = __shfl_sync(kFullMask, end, i);
      for (int s = f + lane; s < n; s += 32) p.sorted[s] = sentinel;
    }
  }
  for (int64_t s = (int64_t)total_pad + threadIdx.x; s < p.max_pad; s += blockDim.x) p.sorted[s] = sentinel;
}

// From the expert counts (count[e], any memory): the region starts (region_start[e]), the outputs
// counts, offsets, num_tokens_post_padded and expert_ids, and (PAD) the sentinel in every slot no
// pair takes. One block; thread t owns experts [t * per, (t + 1) * per).
template <bool PAD>
__device__ void finalize(const Params& p, const int* count, int* region_start) {
  __shared__ uint64_t warp_sums[32];
  const int per = (p.E + blockDim.x - 1) / blockDim.x;
  const int e0 = min((int)threadIdx.x * per, p.E), e1 = min(e0 + per, p.E);
  uint32_t mine = 0, mine_pad = 0;
  for (int e = e0; e < e1; ++e) {
    mine += count[e];
    mine_pad += (count[e] + p.BM - 1) / p.BM * p.BM;
  }
  uint64_t both;  // pairs < 2^31 and padded slots < 2^32: the halves never carry into each other
  const uint64_t before = block_exclusive_scan(((uint64_t)mine_pad << 32) | mine, warp_sums, both);
  const uint32_t total = (uint32_t)both, total_pad = (uint32_t)(both >> 32);
  int off = (int)(uint32_t)before, start = (int)(before >> 32);
  for (int e = e0; e < e1; ++e) {
    const int c = count[e], pad = (c + p.BM - 1) / p.BM * p.BM;
    p.counts[e] = c;
    p.offsets[e] = off;
    region_start[e] = start;
    off += c;
    start += pad;
  }
  if (threadIdx.x == 0) {
    p.offsets[p.E] = (int32_t)total;
    p.post_padded[0] = (int32_t)total_pad;
  }
  __syncthreads();  // region_start complete (shared or global memory of this block)
  if constexpr (PAD) pad_regions(p, count, region_start, total_pad);
  for (int64_t b = threadIdx.x; b < p.num_blocks; b += blockDim.x) {
    const int64_t pos = b * p.BM;
    // the largest e with region_start[e] <= pos: an empty expert shares its start with the next one
    p.expert_ids[b] = pos < (int64_t)total_pad ? last_at_most(region_start, p.E, pos) : -1;
  }
}

__device__ __forceinline__ void place(const Params& p, int64_t c, const int* hist, const int* base,
                                      const int (&e)[kRounds], const int (&rank)[kRounds]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t first = c * kChunk + (int64_t)warp * kWarpPairs + lane;
#pragma unroll
  for (int r = 0; r < kRounds; ++r)
    if (e[r] >= 0) p.sorted[base[e[r]] + hist[warp * p.E + e[r]] + rank[r]] = (int32_t)(first + r * 32);
}

// One block, one chunk: everything in one launch.
__global__ void __launch_bounds__(kThreads) align_single_kernel(const Params p) {
  extern __shared__ int smem[];
  int* hist = smem;                     // [kWarps][E]
  int* count = smem + kWarps * p.E;     // [E]
  int* start = count + p.E;             // [E]
  pdl_wait_then_release_next();
  // the sentinel everywhere first (the pairs overwrite theirs after the barriers below): at small T
  // nearly every slot is padding, and one coalesced sweep is cheaper than region by region
  fill_sentinel(p);
  zero(hist, kWarps * p.E);
  __syncthreads();
  int e[kRounds], rank[kRounds];
  chunk_ranks(p, 0, hist, e, rank);
  __syncthreads();
  warp_bases(hist, p.E, count);
  __syncthreads();
  finalize<false>(p, count, start);
  __syncthreads();
  place(p, 0, hist, start, e, rank);
}

// Multi-chunk, step 1: each chunk's count per expert.
__global__ void __launch_bounds__(kThreads) align_count_kernel(const Params p) {
  extern __shared__ int smem[];
  pdl_wait_then_release_next();
  zero(smem, p.E);
  __syncthreads();
  const int64_t first = blockIdx.x * (int64_t)kChunk + threadIdx.x;
  int64_t id[kChunk / kThreads];  // the loads first, as in chunk_ranks
#pragma unroll
  for (int r = 0; r < kChunk / kThreads; ++r) id[r] = pair_id(p, first + r * kThreads);
#pragma unroll
  for (int r = 0; r < kChunk / kThreads; ++r) {
    const int e = local_of(p, id[r]);
    if (e >= 0) atomicAdd(&smem[e], 1);  // integer counts: the same result in any order
  }
  __syncthreads();
  for (int x = threadIdx.x; x < p.E; x += blockDim.x) p.block_hist[(int64_t)blockIdx.x * p.E + x] = smem[x];
}

// Step 2 (one block): each chunk's base per expert (chunk order), the totals, then finalize.
__global__ void __launch_bounds__(kFinalizeThreads) align_finalize_kernel(const Params p) {
  extern __shared__ int count[];  // [E]
  pdl_wait_then_release_next();
  // Loads in batches ahead of the stores: one L2 round trip per batch, not per chunk (a load after
  // the previous chunk's store waited for it; at 256 chunks that chain was most of the kernel).
  constexpr int kBatch = 16;
  for (int x = threadIdx.x; x < p.E; x += blockDim.x) {
    int run = 0;
    int* h = p.block_hist + x;
    for (int64_t c0 = 0; c0 < p.chunks; c0 += kBatch) {
      int v[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) v[k] = c0 + k < p.chunks ? h[(c0 + k) * p.E] : 0;
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        if (c0 + k < p.chunks) h[(c0 + k) * p.E] = run;
        run += v[k];
      }
    }
    count[x] = run;
  }
  __syncthreads();
  finalize<true>(p, count, p.region_start);
}

// Step 3: each chunk ranks its pairs again and places them.
__global__ void __launch_bounds__(kThreads) align_place_kernel(const Params p) {
  extern __shared__ int smem[];  // [kWarps][E], then [E] bases
  int* hist = smem;
  int* base = smem + kWarps * p.E;
  pdl_wait_then_release_next();
  zero(hist, kWarps * p.E);
  __syncthreads();
  int e[kRounds], rank[kRounds];
  chunk_ranks(p, blockIdx.x, hist, e, rank);
  __syncthreads();
  warp_bases(hist, p.E, nullptr);
  for (int x = threadIdx.x; x < p.E; x += blockDim.x)
    base[x] = p.region_start[x] + p.block_hist[(int64_t)blockIdx.x * p.E + x];
  __syncthreads();
  place(p, blockIdx.x, hist, base, e, rank);
}

}  // namespace align
}  // namespace moekit
