// The FP8 quantization kernel (SPEC section 6): one persistent grid of warps. Work item = one warp
// unit (512 columns) of one valid row: load, y = silu(a) * b (or x), group amax by xor shuffles,
// scale, 16 fp8 bytes per lane, the group's scale in its format. Then the scales of the rows that
// hold no data (padding rows, rows past a masked expert's count) are zero-filled. Masked rows are
// enumerated through a prefix sum of the counts, so the grid follows the total, not the largest count.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/device.cuh"
#include "common/team.cuh"
#include "moekit/async_loader.cuh"
#include "quant/math.cuh"
#include "quant/params.h"

namespace moekit {
namespace quant {

// 16 elements of T from 16-byte aligned p, as raw vectors (every load issued before any is used).
template <typename T>
struct LaneLoad {
  static constexpr int kVecs = kLaneCols * (int)sizeof(T) / 16;
  uint4 raw[kVecs];
  __device__ __forceinline__ void load(const T* p) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) raw[k] = __ldcs(reinterpret_cast<const uint4*>(p) + k);
  }
  __device__ __forceinline__ float get(int i) const { return to_float(reinterpret_cast<const T*>(raw)[i]); }
  // The async path: cp.async into this lane's own slot of a shared stage (it alone reads it back,
  // so its own wait is the only synchronization), then the 16-byte reads from there.
  __device__ __forceinline__ static void issue(uint4* slot, const T* p) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) async::copy16(slot + k, reinterpret_cast<const uint4*>(p) + k, 16);
  }
  __device__ __forceinline__ void load_shared(const uint4* slot) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) raw[k] = slot[k];
  }
};

template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// y for one lane's 16 columns from its loaded inputs (a: gate or x, b: up); returns max |y| (NaN
// ignored). FAST: SiLU's division by div_fast; false when a lane found an element it may not cover.
template <typename T, bool SILU, bool FAST>
__device__ __forceinline__ float lane_values(const Params& p, const LaneLoad<T>& a, const LaneLoad<T>& b,
                                             float (&y)[kLaneCols], bool& fast_ok) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kLaneCols; ++i) {
    float v = a.get(i);
    if constexpr (SILU) {
      if constexpr (FAST) fast_ok = fast_ok & silu_fast_ok(v);  // no branch per element
      const float s = FAST ? silu_fast(v) : silu(v);
      if (p.round_act) v = round_to<T>(__fmul_rn(round_to<T>(s), b.get(i)));
      else v = __fmul_rn(s, b.get(i));
    }
    y[i] = v;
    amax = fmaxf(amax, fabsf(v));
  }
  return amax;
}

// lane_values, by the fast division where it is exact for every element of the lane (nearly always:
// zeros, |a| < 2^-38, a < -27 and a > 2^39 are not), else by __fdiv_rn.
template <typename T, bool SILU>
__device__ __forceinline__ float lane_values(const Params& p, const LaneLoad<T>& a, const LaneLoad<T>& b,
                                             float (&y)[kLaneCols]) {
  bool ok = true;
  const float amax = lane_values<T, SILU, SILU>(p, a, b, y, ok);
  if (SILU && !ok) return lane_values<T, SILU, false>(p, a, b, y, ok);
  return amax;
}

// Where work item w is: batch, row, this lane's first column.
struct Unit {
  int b;
  int64_t row, xr;  // row in the batch; row of x and q
  int col;
  bool active;      // H % 32 == 0: a lane's columns are all in or all out
};

__device__ __forceinline__ Unit unit_of(const Params& p, const int64_t* prefix, bool masked, int64_t w, int lane) {
  // 32-bit division where it fits: the common case, and several times cheaper.
  const int64_t v = w <= 0xffffffffLL ? (int64_t)((uint32_t)w / (uint32_t)p.units) : w / p.units;
  Unit u;
  u.b = masked ? last_at_most(prefix, p.B, v) : 0;  // never an empty batch
  u.row = masked ? v - prefix[u.b] : v;
  u.xr = (int64_t)u.b * p.M + u.row;
  u.col = (int)(w - v * p.units) * kWarpCols + lane * kLaneCols;
  u.active = u.col < p.H;
  return u;
}

template <typename T, bool SILU>
__device__ __forceinline__ const T* gate_src(const Params& p, const Unit& u) {
  return static_cast<const T*>(p.x) + u.xr * p.xcols + (SILU ? p.a_off : 0) + u.col;
}
template <typename T>
__device__ __forceinline__ const T* up_src(const Params& p, const Unit& u) {
  return static_cast<const T*>(p.x) + u.xr * p.xcols + p.b_off + u.col;
}

// One warp unit of one valid row, its y computed: q and the scales of its groups.
__device__ __forceinline__ void quantize_unit(const Params& p, const Unit& u, int lane, const float (&y)[kLaneCols],
                                              float amax) {
  const int b = u.b, col = u.col;
  const int64_t row = u.row, xr = u.xr;
  const bool active = u.active;
  for (int o = (1 << p.lane_shift) >> 1; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, o));
  const bool ue8m0 = p.format >= kColUe8m0;
  const uint32_t bits = scale_bits(amax, ue8m0);
  if (active) {
    const float inv = ue8m0 ? pow2_inverse(bits) : 0.0f;
    const float scale = __uint_as_float(bits);
    float v[kLaneCols];
    if (ue8m0) {
#pragma unroll
      for (int i = 0; i < kLaneCols; ++i) v[i] = __fmul_rn(y[i], inv);
    } else {
      // div_fast_ok(y, scale) with its bounds hoisted: one scale per lane
      const float lo = __fmul_rn(scale, 0x1p-40f), hi = __fmul_rn(scale, 0x1p40f);
      bool ok = scale >= 0x1p-60f && scale <= 0x1p60f;
#pragma unroll
      for (int i = 0; i < kLaneCols; ++i) {
        ok = ok & (fabsf(y[i]) >= lo) & (fabsf(y[i]) <= hi);
        v[i] = div_fast(y[i], scale);
      }
      if (!ok) {
#pragma unroll
        for (int i = 0; i < kLaneCols; ++i) v[i] = __fdiv_rn(y[i], scale);
      }
    }
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = to_e4m3x2(v[4 * k], v[4 * k + 1]) | (to_e4m3x2(v[4 * k + 2], v[4 * k + 3]) << 16);
    async::store16_streaming(static_cast<uint8_t*>(p.q) + xr * p.H + col, make_uint4(w[0], w[1], w[2], w[3]));
  }
  const int group = col >> (p.lane_shift + 4);
  const bool leader = (lane & ((1 << p.lane_shift) - 1)) == 0;
  if (p.format == kPackedUe8m0) {
    // The 4 exponent bytes of a word come from the leaders of 4 consecutive groups of this warp.
    const uint32_t byte = active ? bits >> 23 : 0u;
    const int first = lane & ~((4 << p.lane_shift) - 1);
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) word |= __shfl_sync(kFullMask, byte, first + (j << p.lane_shift)) << (8 * j);
    if (active && lane == first)
      static_cast<uint32_t*>(p.scales)[((int64_t)b * p.S + (group >> 2)) * p.R + row] = word;
  } else if (active && leader) {
    float* s = static_cast<float*>(p.scales);
    if (p.format == kRowF32) s[xr * p.G + group] = __uint_as_float(bits);
    else s[((int64_t)b * p.S + group) * p.R + row] = __uint_as_float(bits);
  }
}

__device__ __forceinline__ int64_t batch_count(const Params& p, int b) {
  if (p.counts == nullptr) return p.M;
  const int64_t c = p.counts_i64 ? static_cast<const int64_t*>(p.counts)[b] : static_cast<const int32_t*>(p.counts)[b];
  return c < 0 ? 0 : (c > p.M ? p.M : c);
}

// prefix[b] = rows of batches before b, prefix[B] = all of them (counts clamped to [0, M]).
__device__ void count_prefix(const Params& p, int64_t* prefix) {
  __shared__ int64_t warp_total[kWarps];
  const int per = (p.B + kThreads - 1) / kThreads;
  const int first = threadIdx.x * per, last = min(first + per, p.B);
  int64_t sum = 0;
  for (int b = first; b < last; ++b) sum += batch_count(p, b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t incl = warp_inclusive_scan(sum);
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int64_t run = incl - sum;
  for (int w = 0; w < warp; ++w) run += warp_total[w];
  for (int b = first; b < last; ++b) {
    prefix[b] = run;
    run += batch_count(p, b);
  }
  if (threadIdx.x == kThreads - 1) prefix[p.B] = run;
  __syncthreads();
}

// Zero the scales of batch b's rows that hold no data: piece c of [count, R) of scale column c
// (column formats), or piece c of the rows [count, M) (row_f32, split in S pieces).
__device__ __forceinline__ void zero_scales(const Params& p, int b, int c, int64_t count, int lane) {
  uint32_t* s = static_cast<uint32_t*>(p.scales);
  if (p.format == kRowF32) {
    const int64_t base = ((int64_t)b * p.M + count) * p.G, len = (p.M - count) * p.G;
    const int64_t from = len * c / p.S, to = len * (c + 1) / p.S;
    async::fill(s + base + from, (to - from) * 4, 0u, lane, 32);
  } else {
    async::fill(s + ((int64_t)b * p.S + c) * p.R + count, (p.R - count) * 4, 0u, lane, 32);
  }
}

// One buffer of one warp's async stage (16-byte vectors): 32 lanes x (gate, up) x LaneLoad<T>::kVecs.
// A warp has two buffers.
template <typename T>
constexpr int stage_vecs() {
  return 32 * 2 * LaneLoad<T>::kVecs;
}

// How a warp brings in its work items' inputs (plan.h): plain 16-byte loads, cp.async double
// buffers in shared memory, or the next item's loads into registers before this item's compute.
enum LoadMode : int { kLoadPlain = 0, kLoadAsync = 1, kLoadPrefetch = 2 };

template <typename T, bool SILU>
__device__ __forceinline__ void load_unit(const Params& p, const Unit& u, LaneLoad<T>& a, LaneLoad<T>& b) {
  a.load(gate_src<T, SILU>(p, u));
  if constexpr (SILU) b.load(up_src<T>(p, u));
}

template <typename T, bool SILU, int LOAD>
__global__ void __launch_bounds__(kThreads) quant_kernel(const Params p) {
  extern __shared__ __align__(16) int64_t prefix[];  // masked: [B + 1]; then (ASYNC) the warps' stages
  pdl_wait_then_release_next();
  const bool masked = p.counts != nullptr;
  if (masked) count_prefix(p, prefix);
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int64_t warps = (int64_t)gridDim.x * kWarps;
  const int64_t rows = masked ? prefix[p.B] : p.M;
  const int64_t items = rows * p.units;
  if constexpr (LOAD == kLoadAsync) {
    // cp.async double buffering: item w + warps is in flight while item w is computed.
    constexpr int kV = LaneLoad<T>::kVecs;
    uint4* stage = reinterpret_cast<uint4*>(prefix + p.prefix_words) + (threadIdx.x >> 5) * 2 * stage_vecs<T>() +
                   lane * 2 * kV;  // this lane's slot in buffer 0; buffer 1 is stage_vecs further
    const auto issue = [&](const Unit& u, int s) {
      uint4* slot = stage + s * stage_vecs<T>();
      if (u.active) {
        LaneLoad<T>::issue(slot, gate_src<T, SILU>(p, u));
        if constexpr (SILU) LaneLoad<T>::issue(slot + kV, up_src<T>(p, u));
      }
      async::commit();
    };
    Unit u = unit_of(p, prefix, masked, warp, lane);
    if (warp < items) issue(u, 0);
    int s = 0;
    for (int64_t w = warp; w < items; w += warps, s ^= 1) {
      const Unit next = unit_of(p, prefix, masked, w + warps, lane);
      if (w + warps < items) issue(next, s ^ 1);
      else async::commit();  // an empty group keeps the count: at most one pending is ours
      async::wait_pending<1>();
      float y[kLaneCols];
      float amax = 0.0f;
      if (u.active) {
        LaneLoad<T> a, b;
        const uint4* slot = stage + s * stage_vecs<T>();
        a.load_shared(slot);
        if constexpr (SILU) b.load_shared(slot + kV);
        amax = lane_values<T, SILU>(p, a, b, y);
      }
      quantize_unit(p, u, lane, y, amax);
      u = next;
    }
    async::wait_pending<0>();
  } else if constexpr (LOAD == kLoadPrefetch) {
    Unit u = unit_of(p, prefix, masked, warp, lane);
    LaneLoad<T> a, b;
    if (warp < items && u.active) load_unit<T, SILU>(p, u, a, b);
    for (int64_t w = warp; w < items; w += warps) {
      const Unit next = unit_of(p, prefix, masked, w + warps, lane);
      LaneLoad<T> na, nb;
      if (w + warps < items && next.active) load_unit<T, SILU>(p, next, na, nb);
      float y[kLaneCols];
      float amax = 0.0f;
      if (u.active) amax = lane_values<T, SILU>(p, a, b, y);
      quantize_unit(p, u, lane, y, amax);
      u = next;
      a = na;
      b = nb;
    }
  } else {
    for (int64_t w = warp; w < items; w += warps) {
      const Unit u = unit_of(p, prefix, masked, w, lane);
      float y[kLaneCols];
      float amax = 0.0f;
      if (u.active) {
        LaneLoad<T> a, b;
        load_unit<T, SILU>(p, u, a, b);
        amax = lane_values<T, SILU>(p, a, b, y);
      }
      quantize_unit(p, u, lane, y, amax);
    }
  }
  const int64_t zero_items = (masked || p.format != kRowF32) ? (int64_t)p.B * p.S : 0;
  for (int64_t w = warp; w < zero_items; w += warps) {
    const int b = (int)(w / p.S), c = (int)(w - (int64_t)b * p.S);
    const int64_t count = masked ? prefix[b + 1] - prefix[b] : p.M;
    zero_scales(p, b, c, count, lane);
  }
}

}  // namespace quant
}  // namespace moekit
