// The FP8 quantization kernel (SPEC section 6): one persistent grid of warps. Work item = one warp
// unit (512 columns) of one valid row: load, y = silu(a) * b (or x), group amax by xor shuffles,
// scale, 16 fp8 bytes per lane, the group's scale in its format. Then the scales of the rows that
// hold no data (padding rows, rows past a masked expert's count) are zero-filled. Masked rows are
// enumerated through a prefix sum of the counts, so the grid follows the total, not the largest count.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/device.cuh"
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
};

template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// y for one lane's 16 columns; returns max |y| (NaN ignored).
template <typename T, bool SILU>
__device__ __forceinline__ float lane_values(const Params& p, const T* xrow, int col, float (&y)[kLaneCols]) {
  float amax = 0.0f;
  if constexpr (SILU) {
    LaneLoad<T> a, b;
    a.load(xrow + p.a_off + col);
    b.load(xrow + p.b_off + col);
#pragma unroll
    for (int i = 0; i < kLaneCols; ++i) {
      float s = silu(a.get(i));
      float v;
      if (p.round_act) v = round_to<T>(__fmul_rn(round_to<T>(s), b.get(i)));
      else v = __fmul_rn(s, b.get(i));
      y[i] = v;
      amax = fmaxf(amax, fabsf(v));
    }
  } else {
    LaneLoad<T> a;
    a.load(xrow + col);
#pragma unroll
    for (int i = 0; i < kLaneCols; ++i) {
      y[i] = a.get(i);
      amax = fmaxf(amax, fabsf(y[i]));
    }
  }
  return amax;
}

// One warp unit of one valid row: q and the scales of its groups.
template <typename T, bool SILU>
__device__ __forceinline__ void quantize_unit(const Params& p, int b, int64_t row, int unit, int lane) {
  const int col = unit * kWarpCols + lane * kLaneCols;
  const bool active = col < p.H;  // H % 32 == 0: a lane's columns are all in or all out
  const int64_t xr = (int64_t)b * p.M + row;
  float y[kLaneCols];
  float amax = 0.0f;
  if (active) amax = lane_values<T, SILU>(p, static_cast<const T*>(p.x) + xr * p.xcols, col, y);
  for (int o = (1 << p.lane_shift) >> 1; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, o));
  const bool ue8m0 = p.format >= kColUe8m0;
  const uint32_t bits = scale_bits(amax, ue8m0);
  if (active) {
    const float inv = ue8m0 ? pow2_inverse(bits) : 0.0f;
    const float scale = __uint_as_float(bits);
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = ue8m0 ? __fmul_rn(y[4 * k + j], inv) : __fdiv_rn(y[4 * k + j], scale);
      w[k] = to_e4m3x2(v[0], v[1]) | (to_e4m3x2(v[2], v[3]) << 16);
    }
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
  int64_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t n = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += n;
  }
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

template <typename T, bool SILU>
__global__ void __launch_bounds__(kThreads) quant_kernel(const Params p) {
  extern __shared__ int64_t prefix[];
  pdl_wait_then_release_next();
  const bool masked = p.counts != nullptr;
  if (masked) count_prefix(p, prefix);
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int64_t warps = (int64_t)gridDim.x * kWarps;
  const int64_t rows = masked ? prefix[p.B] : p.M;
  const int64_t items = rows * p.units;
  for (int64_t w = warp; w < items; w += warps) {
    // 32-bit division where it fits: the common case, and several times cheaper.
    const int64_t v = w <= 0xffffffffLL ? (int64_t)((uint32_t)w / (uint32_t)p.units) : w / p.units;
    const int unit = (int)(w - v * p.units);
    const int b = masked ? last_at_most(prefix, p.B, v) : 0;  // never an empty batch
    quantize_unit<T, SILU>(p, b, masked ? v - prefix[b] : v, unit, lane);
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
