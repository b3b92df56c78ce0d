// Router forward on wide rows (softmax-post, no groups, wide_min_experts <= E <= 2560; plan.h): one
// warp per row, CHUNKS chunks of 8 per lane (chunk c of lane t covers [(c * 32 + t) * 8, + 8)), and
// only index-packed keys in registers (8 * CHUNKS). Rounds keep a short list of the lane's largest
// keys (list_rounds), and the lane that keeps a winner writes its weight last. 16-bit logits pack
// without loss (forward_wide_packed_kernel): the values come back from the keys, and the lane that
// keeps a winner takes its exp once, after the rounds. f32 logits pack with a check
// (forward_wide_f32_kernel, which adds a boundary and an order fix-up).
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/device.cuh"
#include "common/team.cuh"
#include "common/topk/keys.cuh"
#include "common/topk/output.cuh"
#include "common/topk/rounds.cuh"
#include "router/params.h"
#include "router/store.cuh"

namespace moekit {
namespace router {

constexpr int kWideList = 4;  // list_rounds: ~1 refill per row at K = 36 (36 / 32 winners per lane)

// A wide row's keys: lane's chunk c holds elements [(c * 32 + lane) * 8, + 8); MASK != 0 packs
// (MASK - index) into the low bits. With vector access (E % 8 == 0: a chunk is whole or absent)
// every chunk's 16-byte pieces are loaded first, as independent predicated loads, and converted
// after, so that every load is in flight at once whatever nvcc's schedule (load-then-convert per
// chunk was left to the scheduler, and lost it: bench/NOTES.md v7.6). Only the last chunk can be
// absent (CHUNKS is E / 256 rounded up), and a whole chunk needs no bounds test per key: the index
// goes in with one add (the masked key's low bits are 0).
template <typename T, int CHUNKS, uint32_t MASK>
__device__ __forceinline__ void wide_row_keys(const T* __restrict__ x, int E, bool vec, int lane,
                                              uint32_t (&key)[CHUNKS * kTeamVec]) {
  auto pack = [&](float value, int e) {
    const uint32_t k = order_key(value);
    return e >= E ? kAbsentKey : MASK != 0u ? (k & ~MASK) | (MASK - (uint32_t)e) : k;
  };
  if (vec) {
    constexpr int kPieces = kTeamVec * (int)sizeof(T) / 16;
    uint4 raw[CHUNKS][kPieces];
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int e0 = (c * 32 + lane) * kTeamVec;
      const uint4* src = reinterpret_cast<const uint4*>(x + e0);
#pragma unroll
      for (int k = 0; k < kPieces; ++k) raw[c][k] = e0 < E ? src[k] : make_uint4(0u, 0u, 0u, 0u);
    }
    const uint32_t lane_index = MASK - (uint32_t)(lane * kTeamVec);  // MASK - index of the lane's first key
    const bool last_present = ((CHUNKS - 1) * 32 + lane) * kTeamVec < E;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const T* values = reinterpret_cast<const T*>(raw[c]);
#pragma unroll
      for (int v = 0; v < kTeamVec; ++v) {
        const uint32_t k = order_key(to_float(values[v]));
        const uint32_t packed = MASK != 0u ? (k & ~MASK) + (lane_index - (uint32_t)(c * 32 * kTeamVec + v)) : k;
        key[c * kTeamVec + v] = c + 1 < CHUNKS || last_present ? packed : kAbsentKey;
      }
    }
  } else {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int e0 = (c * 32 + lane) * kTeamVec;
      float v8[kTeamVec];
      load_chunk<T, kTeamVec>(x, e0, E, false, 0.0f, v8);
#pragma unroll
      for (int v = 0; v < kTeamVec; ++v) key[c * kTeamVec + v] = pack(v8[v], e0 + v);
    }
  }
}

// A wide row's map, and 0 / -inf everywhere in probs / intermediate; selected(p) says whether the
// lane's key at place p is selected. The lanes holding the winners then write their weights over
// those: one exp per winner, where a weight per element computed and selected would cost ~12
// instructions for each of the row's E elements. With vector access every chunk is whole or absent,
// and each output's pointer is set once per row, without store_forward_chunk's bounds tests and
// branches (or store_forward_chunk_vec's registers: bench/NOTES.md v7.6).
template <typename T, int CHUNKS, class Selected>
__device__ __forceinline__ void wide_row_map(const ForwardParams& a, int64_t row, bool vec, int lane, Selected selected) {
  const int E = a.E;
  if (vec) {
    constexpr int kChunkStride = 32 * kTeamVec;  // elements from a lane's chunk to its next
    const int64_t off = row * (int64_t)E + lane * kTeamVec;
    T* probs = static_cast<T*>(a.probs) + off;
    float* inter = a.intermediate + off;
    const int map_kind = a.map_kind;
    uint8_t* map = map_kind == kMapBytes ? a.map + off
                   : map_kind == kMapBits ? a.map + row * (int64_t)(E / 8) + lane
                                          : nullptr;
    const uint4 zeros = make_uint4(0u, 0u, 0u, 0u);
    const uint32_t ninf = __float_as_uint(-INFINITY);
    const uint4 neg_inf = make_uint4(ninf, ninf, ninf, ninf);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if ((c * 32 + lane) * kTeamVec >= E) break;  // later chunks are past E too
      uint32_t bits = 0;
#pragma unroll
      for (int v = 0; v < kTeamVec; ++v) bits |= (uint32_t)selected(c * kTeamVec + v) << v;
#pragma unroll
      for (int k = 0; k < kTeamVec * (int)sizeof(T) / 16; ++k)
        reinterpret_cast<uint4*>(probs + c * kChunkStride)[k] = zeros;
      reinterpret_cast<uint4*>(inter + c * kChunkStride)[0] = neg_inf;
      reinterpret_cast<uint4*>(inter + c * kChunkStride)[1] = neg_inf;
      if (map_kind == kMapBytes) *reinterpret_cast<uint2*>(map + c * kChunkStride) = bits_to_bytes(bits);
      else if (map_kind == kMapBits) map[c * 32] = (uint8_t)bits;
    }
    return;
  }
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int e0 = (c * 32 + lane) * kTeamVec;
    if (e0 >= E) continue;
    float pr[kTeamVec], im[kTeamVec];
    uint8_t mb[kTeamVec];
    uint32_t bits = 0;
#pragma unroll
    for (int v = 0; v < kTeamVec; ++v) {
      const bool on = selected(c * kTeamVec + v);
      pr[v] = 0.0f;
      im[v] = -INFINITY;
      mb[v] = on;
      bits |= (uint32_t)on << v;
    }
    store_forward_chunk<T, kTeamVec>(a, E, row, e0, false, true, pr, im, mb, bits);
  }
}

template <typename T, int CHUNKS>
__global__ void __launch_bounds__(128) forward_wide_packed_kernel(ForwardParams a) {
  pdl_wait_then_release_next();
  static_assert(sizeof(T) == 2, "16-bit logits: keys packed without loss");
  constexpr uint32_t kMask = std::is_same<T, __half>::value ? 0x1fffu : 0xffffu;
  constexpr int kKeys = CHUNKS * kTeamVec;
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= a.T) return;  // a warp owns a row: the whole warp leaves
  const int64_t off = row * (int64_t)a.E;
  const bool vec = a.vec != 0;

  uint32_t key[kKeys];
  wide_row_keys<T, CHUNKS, kMask>(static_cast<const T*>(a.logits) + off, a.E, vec, lane, key);

  void* out = a.indices == nullptr ? nullptr
              : a.idx64           ? (void*)(static_cast<int64_t*>(a.indices) + row * a.K)
                                  : (void*)(static_cast<int32_t*>(a.indices) + row * a.K);
  uint32_t held[2] = {0u, 0u};  // lane r % 32 keeps the key of round r's winner (K <= kWideMaxK)
  const uint32_t last = list_rounds<kWideList, LaneTeam<32>, true>(key, a.K, [&](int r, uint32_t m) {
    held[0] = lane == r % 32 && r < 32 ? m : held[0];
    held[1] = lane == r % 32 && r >= 32 ? m : held[1];
  }, [&](int r0, int rn) {  // after every 32 rounds
    if (out != nullptr && lane < rn - r0)
      put_index(out, a.idx64 != 0, r0 + lane, kMask - ((r0 < 32 ? held[0] : held[1]) & kMask));
  });
  // The softmax over the winners, one exp per winner in the lane that holds it (summed in the
  // rounds, every lane would take every winner's exp).
  const float mx = packed_key_value<kMask>(__shfl_sync(kFullMask, held[0], 0));  // round 0's winner
  float num[2], part = 0.0f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    num[h] = held[h] != 0u ? expf(packed_key_value<kMask>(held[h]) - mx) : 0.0f;
    part += num[h];
  }
  const float inv = 1.0f / warp_sum(part);

  wide_row_map<T, CHUNKS>(a, row, vec, lane, [&](int p) { return key[p] >= last; });  // padding keys are 0
  __syncwarp();  // orders the lanes' stores above before the winners' stores below
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (held[h] == 0u) continue;
    const uint32_t e = kMask - (held[h] & kMask);
    const float w = num[h] * inv;
    static_cast<T*>(a.probs)[off + e] = from_float<T>(w * a.scale);
    a.intermediate[off + e] = w;
  }
}

// f32 wide rows: keys keep their upper 20 bits, the low 12 holding (0xfff - index). The rounds then
// take the K largest by (upper bits desc, index asc), and two fix-ups make that exact:
// - the boundary: where keys below the last winner share its upper bits (a few % of rows of random
//   logits: bench/NOTES.md v7.6), the winners from that group are chosen again by full key
//   (wide_f32_fix_boundary);
// - the order: winners sharing upper bits came by index; each winner's full key is read back (one
//   load per winner) and compared with its neighbours in the same run (wide_f32_ranks).
constexpr uint32_t kWideF32Mask = 0xfffu;

// The boundary group: keys whose upper bits are `upper` (the last winner's). Those above it are all
// selected; the rest of the K come from the group in order of (full key desc, index asc), which is
// the order of fine_key below (the group shares the upper bits, so the full keys differ in the low
// 12 only). Rounds above + i are rewritten with the group's winners in that order; `members` and
// `picked` mark the lane's group keys and those now selected, by place (bit p % 32 of word p / 32).
// Members (most often none or one per lane) are visited through those masks: a loop over all keys
// with a load each, or rewriting the keys in place, took many more registers.
template <int CHUNKS>
__device__ __forceinline__ void wide_f32_fix_boundary(const float* __restrict__ x, int lane, int K, uint32_t upper,
                                                      const uint32_t (&key)[CHUNKS * kTeamVec], uint32_t (&held)[2],
                                                      uint32_t (&members)[3], uint32_t (&picked)[3]) {
  constexpr uint32_t kMask = kWideF32Mask;
  constexpr int kKeys = CHUNKS * kTeamVec;
  static_assert(kKeys <= 96, "places in three 32-bit masks");
  auto in_group = [&](int p) { return (key[p] & ~kMask) == upper && key[p] != kAbsentKey; };
  auto fine_key = [&](int p) {
    const int e = ((p / kTeamVec) * 32 + lane) * kTeamVec + p % kTeamVec;
    return ((order_key(x[e]) & kMask) << 12) | (kMask - (uint32_t)e);
  };
  int above = 0;
#pragma unroll
  for (int w = 0; w < 3; ++w) members[w] = 0u;
#pragma unroll
  for (int p = 0; p < kKeys; ++p) {
    above += key[p] > (upper | kMask);
    members[p / 32] |= (uint32_t)in_group(p) << (p % 32);
  }
  above = (int)__reduce_add_sync(kFullMask, (uint32_t)above);
  // the best member's fine key below `bound`, in this lane
  auto best_below = [&](uint32_t bound) {
    uint32_t best = 0u;
#pragma unroll
    for (int w = 0; w < 3; ++w)
      for (uint32_t m = members[w]; m != 0u; m &= m - 1u) {
        const uint32_t f = fine_key(32 * w + __ffs(m) - 1);
        best = f < bound ? max(best, f) : best;
      }
    return best;
  };
  uint32_t bound = 0xffffffffu;  // the fine key of the group's last pick
#pragma unroll 1
  for (int r = above; r < K; ++r) {
    bound = __reduce_max_sync(kFullMask, best_below(bound));
    const uint32_t packed = upper | (bound & kMask);
    held[0] = lane == r % 32 && r < 32 ? packed : held[0];
    held[1] = lane == r % 32 && r >= 32 ? packed : held[1];
  }
#pragma unroll
  for (int w = 0; w < 3; ++w) {
    picked[w] = 0u;
    for (uint32_t m = members[w]; m != 0u; m &= m - 1u) {
      const int p = 32 * w + __ffs(m) - 1;
      picked[w] |= (uint32_t)(fine_key(p) >= bound) << (p % 32);
    }
  }
}

// Ranks of a lane's winners (rounds lane and lane + 32) in (full key desc, index asc). Rounds came in
// (upper bits desc, index asc), so a winner's rank is its round, plus the later winners of its run
// (same upper bits, a contiguous stretch of rounds) with a larger full key, minus the earlier ones
// with a smaller one (equal full keys keep the index order). Partners at distance d = 1, 2, ... until
// no winner has one in its run: runs are short (most rows: d = 1 only).
__device__ __forceinline__ void wide_f32_ranks(int lane, int K, const uint32_t (&held)[2], const uint32_t (&full)[2],
                                               int (&rank)[2]) {
  constexpr uint32_t kMask = kWideF32Mask;
  rank[0] = lane;
  rank[1] = lane + 32;
#pragma unroll 1
  for (int d = 1; d < K; ++d) {
    const int src_f = (lane + d) & 31, src_b = (lane - d) & 31;
    const uint32_t hf0 = __shfl_sync(kFullMask, held[0], src_f), hf1 = __shfl_sync(kFullMask, held[1], src_f);
    const uint32_t ff0 = __shfl_sync(kFullMask, full[0], src_f), ff1 = __shfl_sync(kFullMask, full[1], src_f);
    const uint32_t hb0 = __shfl_sync(kFullMask, held[0], src_b), hb1 = __shfl_sync(kFullMask, held[1], src_b);
    const uint32_t fb0 = __shfl_sync(kFullMask, full[0], src_b), fb1 = __shfl_sync(kFullMask, full[1], src_b);
    const bool wrap_f = lane + d >= 32, wrap_b = lane < d;  // the partner is in the next / previous slot
    bool any = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = lane + 32 * h;
      // round r + d: slot h of src_f, or slot h + 1 where lane + d wraps
      const uint32_t hf = h == 0 ? (wrap_f ? hf1 : hf0) : (wrap_f ? 0u : hf1);
      const uint32_t ff = h == 0 ? (wrap_f ? ff1 : ff0) : (wrap_f ? 0u : ff1);
      const bool same_f = r + d < K && ((hf ^ held[h]) & ~kMask) == 0;
      rank[h] += same_f && ff > full[h];
      any = any || same_f;
      // round r - d: slot h of src_b, or slot h - 1 where lane - d wraps
      const uint32_t hb = h == 0 ? (wrap_b ? 0u : hb0) : (wrap_b ? hb0 : hb1);
      const uint32_t fb = h == 0 ? (wrap_b ? 0u : fb0) : (wrap_b ? fb0 : fb1);
      const bool same_b = r < K && r - d >= 0 && ((hb ^ held[h]) & ~kMask) == 0;
      rank[h] -= same_b && fb < full[h];
    }
    if (!__any_sync(kFullMask, any)) break;  // no run reaches d: none reaches d + 1
  }
}

template <int CHUNKS>
__global__ void __launch_bounds__(128) forward_wide_f32_kernel(ForwardParams a) {
  pdl_wait_then_release_next();
  constexpr uint32_t kMask = kWideF32Mask;
  constexpr int kKeys = CHUNKS * kTeamVec;
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= a.T) return;  // a warp owns a row: the whole warp leaves
  const int E = a.E;
  const int64_t off = row * (int64_t)E;
  const bool vec = a.vec != 0;
  const float* x = static_cast<const float*>(a.logits) + off;

  uint32_t key[kKeys];
  wide_row_keys<float, CHUNKS, kMask>(x, E, vec, lane, key);
  uint32_t held[2] = {0u, 0u};  // lane r % 32 keeps the key of round r's winner (K <= kWideMaxK)
  const uint32_t last = list_rounds<kWideList>(key, a.K, [&](int r, uint32_t m) {
    held[0] = lane == r % 32 && r < 32 ? m : held[0];
    held[1] = lane == r % 32 && r >= 32 ? m : held[1];
  });

  // A key in [upper, last) shares the last winner's upper bits from below: one subtract-and-min
  // per key (keys below `upper` wrap high).
  const uint32_t upper = last & ~kMask;
  uint32_t gap[2] = {0xffffffffu, 0xffffffffu};
#pragma unroll
  for (int p = 0; p < kKeys; ++p) gap[p % 2] = min(gap[p % 2], key[p] - upper);
  const bool near = __any_sync(kFullMask, min(gap[0], gap[1]) < last - upper);
  uint32_t members[3], picked[3];  // the boundary group's keys, and those it selects (fix_boundary)
  if (near) wide_f32_fix_boundary<CHUNKS>(x, lane, a.K, upper, key, held, members, picked);

  // this lane's winners: full key, index and rank in the output order
  uint32_t full[2], win_index[2];
  int rank[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    win_index[h] = kMask - (held[h] & kMask);
    full[h] = held[h] != 0u ? order_key(x[win_index[h]]) : kAbsentKey;
  }
  wide_f32_ranks(lane, a.K, held, full, rank);

  const float mx = key_value(__reduce_max_sync(kFullMask, max(full[0], full[1])));
  float win_value[2], part = 0.0f;
  void* out = a.indices == nullptr ? nullptr
              : a.idx64           ? (void*)(static_cast<int64_t*>(a.indices) + row * a.K)
                                  : (void*)(static_cast<int32_t*>(a.indices) + row * a.K);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    win_value[h] = key_value(full[h]);
    if (full[h] == kAbsentKey) continue;
    part += expf(win_value[h] - mx);
    if (out != nullptr) put_index(out, a.idx64 != 0, rank[h], win_index[h]);
  }
  const float inv = 1.0f / warp_sum(part);

  if (!near) {
    wide_row_map<float, CHUNKS>(a, row, vec, lane, [&](int p) { return key[p] >= last; });  // padding keys are 0
  } else {
    wide_row_map<float, CHUNKS>(a, row, vec, lane, [&](int p) {
      const uint32_t bit = 1u << (p % 32);
      return members[p / 32] & bit ? (picked[p / 32] & bit) != 0u : key[p] >= last;
    });
  }
  __syncwarp();  // orders the lanes' stores above before the winners' stores below
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (full[h] == kAbsentKey) continue;
    const float w = expf(win_value[h] - mx) * inv;
    static_cast<float*>(a.probs)[off + win_index[h]] = w * a.scale;
    a.intermediate[off + win_index[h]] = w;
  }
}

}  // namespace router
}  // namespace moekit
