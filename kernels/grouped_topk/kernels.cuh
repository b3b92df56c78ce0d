// DeepSeek-V3 grouped top-k (SPEC section 4) in one launch: a warp per row computes the scores, the
// biased keys, the group scores (sum of the two largest keys of each group), keeps the Kg best
// groups, takes the K best keys by warp arg-max rounds (ties to the lower index, NaN lowest), then
// the unbiased weights, renormalized and scaled, and the shared-expert slots.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/device.cuh"
#include "common/team.cuh"
#include "common/topk/keys.cuh"
#include "grouped_topk/params.h"

namespace moekit {
namespace grouped_topk {

// The group scores: lane g < G sums the two largest keys of group g (its keys read back from the
// warp's shared row, in the total order); a group of one expert scores its key. The row keeps one
// padding word after each group (expert e at e + e / size), so that the lanes' serial scans of
// their groups hit distinct banks (stride size + 1, odd for even sizes) instead of one.
__device__ __forceinline__ uint32_t group_key(const Params& p, const float* row_keys, int lane) {
  if (lane >= p.G) return kAbsentKey;
  const int size = p.E / p.G;
  uint32_t k1 = kAbsentKey, k2 = kAbsentKey;
  float v1 = 0.0f, v2 = 0.0f;
  const float* group = row_keys + lane * (size + 1);
  for (int i = 0; i < size; ++i) {
    const float v = group[i];
    const uint32_t k = order_key(v);
    if (k > k1) {
      k2 = k1, v2 = v1;
      k1 = k, v1 = v;
    } else if (k > k2) {
      k2 = k, v2 = v;
    }
  }
  return order_key(size == 1 ? v1 : v1 + v2);
}

template <typename T, int VPL>
__global__ void __launch_bounds__(kThreads) grouped_topk_kernel(const Params p) {
  extern __shared__ float shared_keys[];  // [kWarps][E + G] when G > 1 (group_key)
  pdl_wait_then_release_next();
  const int lane = threadIdx.x & 31;
  float* row_keys = shared_keys + (threadIdx.x >> 5) * (p.E + p.G);
  const int group_size = p.G > 1 ? p.E / p.G : 1;
  // The bias of this lane's experts, once for every row: its loads are issued together, not one
  // dtype switch (and one dependent load) per expert inside each row's chain.
  float bias[VPL];
#pragma unroll
  for (int j = 0; j < VPL; ++j) bias[j] = 0.0f;
  if (p.bias != nullptr) {
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int e = min(lane + 32 * j, p.E - 1);
      bias[j] = load_as_float(p.bias, p.bias_dtype, e);
    }
  }
  const int64_t warps = (int64_t)gridDim.x * kWarps;
  for (int64_t row = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5); row < p.T; row += warps) {
    const T* x = static_cast<const T*>(p.logits) + row * p.E;
    float s[VPL];
    uint32_t key[VPL];
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int e = lane + 32 * j;
      s[j] = e < p.E ? to_float(x[e]) : -__int_as_float(0x7f800000);
    }
    if (p.softmax) {
      float m = s[0];
#pragma unroll
      for (int j = 1; j < VPL; ++j) m = fmaxf(m, s[j]);
      m = warp_max(m);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < VPL; ++j) sum += (s[j] = expf(s[j] - m));
      sum = warp_sum(sum);
#pragma unroll
      for (int j = 0; j < VPL; ++j) s[j] = s[j] / sum;
    } else {
#pragma unroll
      for (int j = 0; j < VPL; ++j) s[j] = 1.0f / (1.0f + expf(-s[j]));
    }
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int e = lane + 32 * j;
      const float k = p.bias != nullptr && e < p.E ? s[j] + bias[j] : s[j];
      key[j] = e < p.E ? order_key(k) : kAbsentKey;
      if (p.G > 1 && e < p.E) row_keys[e + e / group_size] = k;
    }
    if (p.G > 1) {
      __syncwarp();
      uint32_t gk = group_key(p, row_keys, lane);
      uint32_t kept = 0;
      for (int r = 0; r < p.Kg; ++r) {
        const ArgBest w = warp_argbest({gk, (uint32_t)lane});
        kept |= 1u << w.idx;
        if (lane == (int)w.idx) gk = kAbsentKey;
      }
      __syncwarp();  // every lane is done reading row_keys before the next row writes them
#pragma unroll
      for (int j = 0; j < VPL; ++j) {
        const int e = lane + 32 * j;
        if (e < p.E && !((kept >> (e / group_size)) & 1u)) key[j] = kNegInfKey;  // dropped group: -inf
      }
    }
    // K rounds of warp arg-max; lane r keeps round r's expert and unbiased score.
    uint32_t taken = 0;
    int my_id = 0;
    float my_w = 0.0f;
    for (int r = 0; r < p.K; ++r) {
      ArgBest best{kAbsentKey, 0xffffffffu};
      float best_s = 0.0f;
#pragma unroll
      for (int j = 0; j < VPL; ++j) {  // ascending index: a tie keeps the lower one
        const uint32_t k = (taken >> j) & 1u ? kAbsentKey : key[j];
        if (k > best.key) best = {k, (uint32_t)(lane + 32 * j)}, best_s = s[j];
      }
      const ArgBest w = warp_argbest(best);
      const float ws = __shfl_sync(kFullMask, best_s, w.idx & 31);
      if (lane == (int)(w.idx & 31)) taken |= 1u << (w.idx >> 5);
      if (lane == r) my_id = (int)w.idx, my_w = ws;
    }
    const float routed = warp_sum(lane < p.K ? my_w : 0.0f);
    if (lane >= p.K && lane < p.K + p.S) my_id = p.E + lane - p.K, my_w = routed / p.rsf;
    if (p.renormalize) my_w = my_w / (routed + 1e-20f);
    if (p.apply_scale) my_w = my_w * p.rsf;
    if (lane < p.K + p.S) {
      const int64_t o = row * (p.K + p.S) + lane;
      p.weights[o] = my_w;
      if (p.ids_i64) static_cast<int64_t*>(p.ids)[o] = my_id;
      else static_cast<int32_t*>(p.ids)[o] = my_id;
    }
  }
}

}  // namespace grouped_topk
}  // namespace moekit
