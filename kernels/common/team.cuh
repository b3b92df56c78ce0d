// A "team" is the group of threads that owns one row: one warp (rows up to ~1K elements) or one
// whole block (larger rows). Row kernels are written once against this interface.
// Every reduction returns the same bits in every thread of the team, in a fixed order, so results
// are deterministic run to run.
#pragma once

#include <cstdint>

#include "common/device.cuh"

namespace moekit {

struct ArgBest {
  uint32_t key;  // ordered key (larger ranks higher)
  uint32_t idx;  // element index; ties go to the lower one
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
__device__ __forceinline__ ArgBest warp_argbest(ArgBest b) {
  uint32_t k = __reduce_max_sync(kFullMask, b.key);
  uint32_t i = __reduce_min_sync(kFullMask, b.key == k ? b.idx : 0xffffffffu);
  return {k, i};
}
// Inclusive prefix sum over the lanes of a warp, for any integer type (64-bit words shuffle as two).
template <typename U>
__device__ __forceinline__ U warp_inclusive_scan(U v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const U n = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += n;
  }
  return v;
}
// Exclusive prefix sum over lanes; `total` gets the warp's sum.
__device__ __forceinline__ uint32_t warp_exclusive_scan(uint32_t v, uint32_t& total) {
  const int lane = threadIdx.x & 31;
  uint32_t incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    uint32_t n = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += n;
  }
  total = __shfl_sync(kFullMask, incl, 31);
  return incl - v;
}

// LANES consecutive lanes of a warp (LANES a power of 2, <= 32) reduce among themselves with xor
// shuffles, so 32 / LANES teams share each instruction. Whole warps and 16-lane teams use redux.sync
// for integers (teams are aligned to warps: blocks are whole warps).
template <int LANES>
struct LaneTeam {
  static constexpr int kLanes = LANES;
  template <bool kMax>
  static __device__ __forceinline__ uint32_t extreme(uint32_t v) {
    if constexpr (LANES == 32) {
      return kMax ? __reduce_max_sync(kFullMask, v) : __reduce_min_sync(kFullMask, v);
    } else if constexpr (LANES == 16) {
      // One whole-warp redux per team, the other team's lanes holding the identity: two independent
      // REDUX in place of a chain of 4 shuffle steps (e256k8g8 0.98-0.99x at T = 65536, bench/NOTES.md
      // v7.7). A redux on a 16-lane mask compiles to a serialized collective (1.09x slower), and at
      // 8 lanes the four REDUX lost to 3 shuffle steps (e128k8 1.01-1.02x).
      constexpr uint32_t kIdentity = kMax ? 0u : 0xffffffffu;
      const bool upper = (threadIdx.x & 16) != 0;
      const uint32_t lo = upper ? kIdentity : v, hi = upper ? v : kIdentity;
      const uint32_t rlo = kMax ? __reduce_max_sync(kFullMask, lo) : __reduce_min_sync(kFullMask, lo);
      const uint32_t rhi = kMax ? __reduce_max_sync(kFullMask, hi) : __reduce_min_sync(kFullMask, hi);
      return upper ? rhi : rlo;
    } else {
#pragma unroll
      for (int o = LANES / 2; o > 0; o >>= 1) {
        const uint32_t u = __shfl_xor_sync(kFullMask, v, o);
        v = kMax ? (u > v ? u : v) : (u < v ? u : v);
      }
      return v;
    }
  }
  static __device__ __forceinline__ uint32_t max(uint32_t v) { return extreme<true>(v); }
  static __device__ __forceinline__ uint32_t min(uint32_t v) { return extreme<false>(v); }
  // `v` of the team's lane `rank`, to every lane of the team.
  static __device__ __forceinline__ uint32_t broadcast(uint32_t v, int rank) {
    return __shfl_sync(kFullMask, v, rank, LANES);
  }
  static __device__ __forceinline__ float maxf(float v) {
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
    return v;
  }
  static __device__ __forceinline__ float sum(float v) {
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
    return v;
  }
};

// The row layout of team kernels: each thread holds VPT = NC * VEC elements of the row in registers,
// chunk c of the thread of team rank r covering elements [(c * team_size + r) * VEC, + VEC), so each
// chunk is one coalesced sweep of the team over the row. Element index of position (c, v):
template <int VEC, class Team>
__device__ __forceinline__ int elem_index(const Team& team, int c, int v) {
  return (c * team.size() + team.rank) * VEC + v;
}

struct WarpTeam {
  static constexpr bool kIsWarp = true;
  int rank;
  __device__ WarpTeam() : rank(threadIdx.x & 31) {}
  __device__ __forceinline__ int size() const { return 32; }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
  __device__ __forceinline__ float sum(float v) const { return warp_sum(v); }
  __device__ __forceinline__ float max(float v) const { return warp_max(v); }
  __device__ __forceinline__ uint32_t add(uint32_t v) const { return __reduce_add_sync(kFullMask, v); }
  __device__ __forceinline__ ArgBest argbest(ArgBest b) const { return warp_argbest(b); }
  __device__ __forceinline__ uint32_t exclusive_scan(uint32_t v, uint32_t& total) const {
    return warp_exclusive_scan(v, total);
  }
  // Value `v` of the team's first thread, to all.
  __device__ __forceinline__ uint32_t from_first(uint32_t v) const { return __shfl_sync(kFullMask, v, 0); }
};

// Whole-block team. `scratch` is 4 * 32 words of shared memory used only by the team's own
// reductions, double-buffered so that one __syncthreads per reduction is enough: a thread can
// only reuse a buffer after the next reduction's barrier, which every reader of it has passed.
struct BlockTeam {
  static constexpr bool kIsWarp = false;
  int rank, lane, warp, nwarps;
  uint32_t* scratch;
  int phase = 0;
  __device__ explicit BlockTeam(uint32_t* smem_scratch)
      : rank(threadIdx.x), lane(threadIdx.x & 31), warp(threadIdx.x >> 5), nwarps(blockDim.x >> 5),
        scratch(smem_scratch) {}
  __device__ __forceinline__ int size() const { return blockDim.x; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ uint32_t* next_buffer() {
    phase ^= 1;
    return scratch + phase * 64;
  }
  __device__ __forceinline__ float sum(float v) {
    uint32_t* buf = next_buffer();
    v = warp_sum(v);
    if (lane == 0) buf[warp] = __float_as_uint(v);
    __syncthreads();
    float r = 0.0f;
    for (int w = 0; w < nwarps; ++w) r += __uint_as_float(buf[w]);
    return r;
  }
  __device__ __forceinline__ float max(float v) {
    uint32_t* buf = next_buffer();
    v = warp_max(v);
    if (lane == 0) buf[warp] = __float_as_uint(v);
    __syncthreads();
    float r = -INFINITY;
    for (int w = 0; w < nwarps; ++w) r = fmaxf(r, __uint_as_float(buf[w]));
    return r;
  }
  __device__ __forceinline__ uint32_t add(uint32_t v) {
    uint32_t* buf = next_buffer();
    v = __reduce_add_sync(kFullMask, v);
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    uint32_t r = 0;
    for (int w = 0; w < nwarps; ++w) r += buf[w];
    return r;
  }
  __device__ __forceinline__ ArgBest argbest(ArgBest b) {
    uint32_t* buf = next_buffer();
    b = warp_argbest(b);
    if (lane == 0) {
      buf[2 * warp] = b.key;
      buf[2 * warp + 1] = b.idx;
    }
    __syncthreads();
    ArgBest r{buf[0], buf[1]};
    for (int w = 1; w < nwarps; ++w) {
      uint32_t k = buf[2 * w], i = buf[2 * w + 1];
      if (k > r.key || (k == r.key && i < r.idx)) r = {k, i};
    }
    return r;
  }
  __device__ __forceinline__ uint32_t exclusive_scan(uint32_t v, uint32_t& total) {
    uint32_t* buf = next_buffer();
    uint32_t wtotal;
    uint32_t ex = warp_exclusive_scan(v, wtotal);
    if (lane == 0) buf[warp] = wtotal;
    __syncthreads();
    uint32_t base = 0, all = 0;
    for (int w = 0; w < nwarps; ++w) {
      if (w < warp) base += buf[w];
      all += buf[w];
    }
    total = all;
    return base + ex;
  }
  __device__ __forceinline__ uint32_t from_first(uint32_t v) {
    uint32_t* buf = next_buffer();
    if (rank == 0) buf[0] = v;
    __syncthreads();
    return buf[0];
  }
};

}  // namespace moekit
