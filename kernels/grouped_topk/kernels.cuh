// DeepSeek-V3 grouped top-k (SPEC section 4) in one launch, on the router's top-k engine: a warp per
// row loads the row in chunks, computes the scores and the biased keys, keeps the Kg best groups
// (group score = sum of the two largest keys; lane_team_kept_groups where groups are whole chunks
// of a power-of-2 number of lanes, else keep_best_groups), takes the K best keys by clearing
// rounds (warp_rounds_select: ties to the lower index, NaN lowest), then gathers the unbiased
// weights, renormalized and scaled, and fills the shared-expert slots.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/device.cuh"
#include "common/scores.cuh"
#include "common/team.cuh"
#include "common/topk/groups.cuh"
#include "common/topk/keys.cuh"
#include "common/topk/rounds.cuh"
#include "grouped_topk/params.h"

namespace moekit {
namespace grouped_topk {

template <typename T, int VEC, int NC>
__global__ void __launch_bounds__(kThreads) grouped_topk_kernel(const Params p) {
  constexpr int VPT = VEC * NC;
  extern __shared__ uint32_t smem[];  // per warp: group keys [32], winners [32], scores [E]
  pdl_wait_then_release_next();
  WarpTeam team;
  const int lane = team.rank;
  uint32_t* gkey = smem + (threadIdx.x >> 5) * p.warp_words;
  int32_t* winners = reinterpret_cast<int32_t*>(gkey + 32);
  float* srow = reinterpret_cast<float*>(gkey + kWarpHeadWords);
  // The bias of this lane's experts, once for every row: its loads stay out of the rows' chains.
  float bias[VPT];
#pragma unroll
  for (int q = 0; q < VPT; ++q) {
    const int e = elem_index<VEC>(team, q / VEC, q % VEC);
    bias[q] = p.bias != nullptr && e < p.E ? load_as_float(p.bias, p.bias_dtype, e) : 0.0f;
  }
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < p.T; row += warps) {
    const T* x = static_cast<const T*>(p.logits) + row * p.E;
    float s[VPT];
    uint32_t key[VPT];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      float tmp[VEC];
      load_chunk<T, VEC>(x, elem_index<VEC>(team, c, 0), p.E, p.vec != 0, -INFINITY, tmp);
#pragma unroll
      for (int v = 0; v < VEC; ++v) s[c * VEC + v] = tmp[v];
    }
    if (p.softmax) {
      float m = s[0];
#pragma unroll
      for (int q = 1; q < VPT; ++q) m = fmaxf(m, s[q]);
      m = warp_max(m);
      float sum = 0.0f;
#pragma unroll
      for (int q = 0; q < VPT; ++q) sum += (s[q] = expf(s[q] - m));  // padding: exp(-inf) = 0
      sum = warp_sum(sum);
#pragma unroll
      for (int q = 0; q < VPT; ++q) s[q] = s[q] / sum;
    } else {
#pragma unroll
      for (int q = 0; q < VPT; ++q) s[q] = sigmoidf(s[q]);
    }
#pragma unroll
    for (int q = 0; q < VPT; ++q) {
      const int e = elem_index<VEC>(team, q / VEC, q % VEC);
      key[q] = e < p.E ? order_key(p.bias != nullptr ? s[q] + bias[q] : s[q]) : kAbsentKey;
    }
    bool grouped = p.G == 1;
    if constexpr (NC <= 4) {  // a count per chunk in 8 bits of a word (G > 1 has E <= 512: NC <= 4)
      if (!grouped && p.chunk_groups) {
        // Groups of whole chunks: kept when fewer than Kg groups beat them, counted in registers.
        const uint32_t kept = lane_team_kept_groups<32, NC, VEC, false>(key, lane, p.E, p.gsize, p.per_group, p.Kg);
#pragma unroll
        for (int q = 0; q < VPT; ++q)
          if (!((kept >> (q / VEC)) & 1u) && elem_index<VEC>(team, q / VEC, q % VEC) < p.E) key[q] = kNegInfKey;
        grouped = true;
      }
    }
    if (!grouped) keep_best_groups<VEC, NC>(team, key, p.E, p.G, p.Kg, p.gsize, p.per_group, gkey);
    const uint64_t sel = warp_rounds_select<VEC, NC>(team, key, p.K, 0u, winners, false);
    // Each winner's unbiased score through the warp's score row: lane r reads round r's.
#pragma unroll
    for (int q = 0; q < VPT; ++q)
      if ((sel >> q) & 1) srow[elem_index<VEC>(team, q / VEC, q % VEC)] = s[q];
    __syncwarp();
    int my_id = 0;
    float my_w = 0.0f;
    if (lane < p.K) {
      my_id = winners[lane];
      my_w = srow[my_id];
    }
    __syncwarp();  // read before the next row writes them
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
