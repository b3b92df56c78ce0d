// Router forward on general rows: one warp per row (E up to warp_max_experts), or one block per row
// for longer rows. Every score mode, groups of any shape, every top-k path of the engine (arg-max
// rounds, warp rounds, filtered, radix select). The layout is elem_index's (common/team.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/device.cuh"
#include "common/scores.cuh"
#include "common/team.cuh"
#include "common/topk/filtered.cuh"
#include "common/topk/groups.cuh"
#include "common/topk/radix.cuh"
#include "common/topk/rounds.cuh"
#include "router/params.h"
#include "router/store.cuh"

namespace moekit {
namespace router {

// Step 1: load the row; scores s (p for softmax-pre, x for softmax-post, y for sigmoid, v for
// sqrtsoftplus) and the intermediate where it does not depend on the selection; selection keys
// (score + bias, padding absent).
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ void row_scores_and_keys(const ForwardParams& a, Team& team, int64_t row,
                                                    float (&s)[VEC * NC], uint32_t (&key)[VEC * NC]) {
  constexpr int VPT = VEC * NC;
  const int E = a.E;
  const int64_t off = row * (int64_t)E;
  const bool vec = a.vec != 0;
  const T* x_row = static_cast<const T*>(a.logits) + off;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    float tmp[VEC];
    load_chunk<T, VEC>(x_row, elem_index<VEC>(team, c, 0), E, vec, -INFINITY, tmp);
#pragma unroll
    for (int v = 0; v < VEC; ++v) s[c * VEC + v] = tmp[v];
  }
  if (a.mode == kSoftmaxPre) {
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < VPT; ++p) m = fmaxf(m, s[p]);
    m = team.max(m);
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      s[p] = expf(s[p] - m);  // padding: exp(-inf) = 0
      z += s[p];
    }
    const float inv = 1.0f / team.sum(z);
#pragma unroll
    for (int p = 0; p < VPT; ++p) s[p] *= inv;
  } else if (a.mode == kSigmoid) {
#pragma unroll
    for (int p = 0; p < VPT; ++p) s[p] = sigmoidf(s[p]);
  }
  if (a.mode != kSoftmaxPost) {  // intermediate that does not depend on the selection
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      float tmp[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) tmp[v] = s[c * VEC + v];  // x itself for sqrtsoftplus
      store_chunk<float, VEC>(a.intermediate + off, elem_index<VEC>(team, c, 0), E, vec, tmp);
    }
  }
  if (a.mode == kSqrtSoftplus) {
#pragma unroll
    for (int p = 0; p < VPT; ++p) s[p] = sqrtf(softplusf(s[p]));
  }
#pragma unroll
  for (int c = 0; c < NC; ++c)
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      const int e = elem_index<VEC>(team, c, v);
      float k = s[p];
      if (a.bias != nullptr && e < E) k += load_as_float(a.bias, a.bias_dtype, e);
      key[p] = e < E ? order_key(k) : kAbsentKey;
    }
}

// Step 3: the top-k of the keys, by the path the plan chose, with the sorted indices written where
// asked. Returns the selection bits.
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t row_select(const ForwardParams& a, Team& team, int64_t row,
                                               uint32_t (&key)[VEC * NC], uint32_t* smem) {
  constexpr int VPT = VEC * NC;
  // Keys of softmax-post bf16 (f16) logits have 16 (13) constant low bits: they can hold
  // (mask - index) instead, so that keys are unique and their order is the SPEC order with ties
  // already broken by index. Applied after the group stage, which sums key values.
  constexpr uint32_t kFreeBits = sizeof(T) == 2 ? (std::is_same<T, __half>::value ? 13 : 16) : 0;
  uint32_t packed_mask = 0;
  if (kFreeBits > 0 && a.packed) {  // the host checked mode and E (plan.h, keys_packed)
    packed_mask = (1u << kFreeBits) - 1;
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      const uint32_t e = (uint32_t)elem_index<VEC>(team, p / VEC, p % VEC);
      if (key[p] != kAbsentKey) key[p] = (key[p] & ~packed_mask) | (packed_mask - e);
    }
  }
  uint64_t sel = 0;
  void* out = a.indices == nullptr ? nullptr
              : a.idx64           ? (void*)(static_cast<int64_t*>(a.indices) + row * a.K)
                                  : (void*)(static_cast<int32_t*>(a.indices) + row * a.K);
  bool selected = false;
  if constexpr (Team::kIsWarp) {
    if (a.topk == kTopkFiltered) selected = filtered_select<VEC, NC>(team, key, a.K, smem, out, a.idx64 != 0, sel);
    if (!selected && !a.radix) {
      sel = warp_rounds_select<VEC, NC>(team, key, a.K, packed_mask, out, a.idx64 != 0);
      selected = true;
    }
  }
  if (!selected && !a.radix) {
    sel = argbest_rounds_select<VEC, NC>(team, key, a.K, a.E, out, a.idx64 != 0);
  } else if (!selected) {
    sel = radix_select<VEC, NC>(team, key, a.K, smem);
    if (out != nullptr) {
      uint32_t* list = smem + 256 + 4 + a.G;
      if (a.idx64) write_sorted_indices<VEC, NC>(team, key, sel, a.K, list, static_cast<int64_t*>(out));
      else write_sorted_indices<VEC, NC>(team, key, sel, a.K, list, static_cast<int32_t*>(out));
    }
  }
  return sel;
}

// Step 4: the weights (unscaled) of the selected experts; others are discarded by the stores.
template <int VEC, int NC, class Team>
__device__ __forceinline__ void row_weights(const ForwardParams& a, Team& team, const float (&s)[VEC * NC],
                                            uint64_t sel, float (&w)[VEC * NC]) {
  constexpr int VPT = VEC * NC;
  if (a.mode == kSoftmaxPost) {
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if ((sel >> p) & 1) m = fmaxf(m, s[p]);
    m = team.max(m);
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      // exp for every element and a select, not a branch per element (the warp runs each exp anyway
      // as soon as one lane's element is selected); values off the selection are discarded
      const float e = expf(s[p] - m);
      w[p] = ((sel >> p) & 1) ? e : 0.0f;
      z += w[p];
    }
    const float inv = 1.0f / team.sum(z);
#pragma unroll
    for (int p = 0; p < VPT; ++p) w[p] *= inv;
  } else if (a.mode == kSoftmaxPre || a.K == 1) {
#pragma unroll
    for (int p = 0; p < VPT; ++p) w[p] = s[p];
  } else {
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if ((sel >> p) & 1) z += s[p];
    const float denom = team.sum(z) + kEps;
    if (isinf(denom)) {  // sqrtsoftplus of +inf: IEEE division (NaN where s is inf too, else 0)
#pragma unroll
      for (int p = 0; p < VPT; ++p) w[p] = s[p] / denom;
    } else {  // denom >= 1e-20: no range check needed
      const float r = refined_rcp(denom);
#pragma unroll
      for (int p = 0; p < VPT; ++p) w[p] = divide_by(s[p], denom, r);
    }
  }
}

// Step 4, aux-loss scores: s normalized over the whole row (softmax-pre: p itself). Padding's s is 0.
template <int VEC, int NC, class Team>
__device__ __forceinline__ void row_aux_scores(const ForwardParams& a, Team& team, const float (&s)[VEC * NC],
                                               float (&w)[VEC * NC]) {
  constexpr int VPT = VEC * NC;
  if (a.mode == kSoftmaxPre) {
#pragma unroll
    for (int p = 0; p < VPT; ++p) w[p] = s[p];
    return;
  }
  float z = 0.0f;
#pragma unroll
  for (int p = 0; p < VPT; ++p) z += s[p];
  const float denom = team.sum(z) + kEps;
  if (isinf(denom)) {
#pragma unroll
    for (int p = 0; p < VPT; ++p) w[p] = s[p] / denom;
  } else {
    const float r = refined_rcp(denom);
#pragma unroll
    for (int p = 0; p < VPT; ++p) w[p] = divide_by(s[p], denom, r);
  }
}

// Step 5: probs (AUX: the f32 scores of every expert), the softmax-post intermediate and the
// routing map of every chunk.
template <typename T, int VEC, int NC, bool AUX, class Team>
__device__ __forceinline__ void row_store(const ForwardParams& a, const Team& team, int64_t row, uint64_t sel,
                                          const float (&w)[VEC * NC]) {
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    float pr[VEC], im[VEC];
    uint8_t mb[VEC];
    uint32_t bits = 0;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      const bool on = (sel >> p) & 1;
      pr[v] = AUX ? w[p] : on ? w[p] * a.scale : 0.0f;
      im[v] = on ? w[p] : -INFINITY;
      mb[v] = on;
      bits |= (uint32_t)on << v;
    }
    using P = typename std::conditional<AUX, float, T>::type;
    store_forward_chunk<P, VEC>(a, a.E, row, e0, a.vec != 0, a.mode == kSoftmaxPost, pr, im, mb, bits);
  }
}

template <typename T, int VEC, int NC, bool AUX, class Team>
__device__ __forceinline__ void forward_row(const ForwardParams& a, Team& team, int64_t row, uint32_t* smem) {
  constexpr int VPT = VEC * NC;
  float s[VPT];
  uint32_t key[VPT];
  row_scores_and_keys<T, VEC, NC>(a, team, row, s, key);
  // Step 2: group-limited routing (team shared memory: the radix histogram, then the group keys)
  if (a.G > 0) keep_best_groups<VEC, NC>(team, key, a.E, a.G, a.Kg, a.group_size, a.per_group, smem + 256 + 4);
  const uint64_t sel = row_select<T, VEC, NC>(a, team, row, key, smem);
  float w[VPT];
  if constexpr (AUX) row_aux_scores<VEC, NC>(a, team, s, w);
  else row_weights<VEC, NC>(a, team, s, sel, w);
  row_store<T, VEC, NC, AUX>(a, team, row, sel, w);
}

// Warp rows: blockDim.x / 32 rows per block, each warp with its own slice of shared memory.
template <typename T, int VEC, int NC, bool AUX = false>
__global__ void forward_warp_kernel(ForwardParams a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  WarpTeam team;
  forward_row<T, VEC, NC, AUX>(a, team, row, smem + warp * a.smem_words_per_team);
}

// Block rows: one row per block; the first 128 words of shared memory are the team's scratch.
template <typename T, int VEC, int NC, bool AUX = false>
__global__ void __launch_bounds__(kMaxBlockThreads) forward_block_kernel(ForwardParams a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  forward_row<T, VEC, NC, AUX>(a, team, (int64_t)blockIdx.x, smem + 128);
}

// The router and the aux-loss scores on the same rows (moekit_router_aux_forward): the aux pass
// re-reads the logits the router pass has just brought in, from L1 or L2. Both passes share the
// team's shared memory slice (the plan sizes it for the larger).
template <typename T, int VEC, int NC>
__global__ void forward_warp_pair_kernel(ForwardParams a, ForwardParams b) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  WarpTeam team;
  forward_row<T, VEC, NC, false>(a, team, row, smem + warp * a.smem_words_per_team);
  __syncwarp();
  forward_row<T, VEC, NC, true>(b, team, row, smem + warp * a.smem_words_per_team);
}

template <typename T, int VEC, int NC>
__global__ void __launch_bounds__(kMaxBlockThreads) forward_block_pair_kernel(ForwardParams a, ForwardParams b) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  forward_row<T, VEC, NC, false>(a, team, (int64_t)blockIdx.x, smem + 128);
  __syncthreads();
  forward_row<T, VEC, NC, true>(b, team, (int64_t)blockIdx.x, smem + 128);
}

}  // namespace router
}  // namespace moekit
