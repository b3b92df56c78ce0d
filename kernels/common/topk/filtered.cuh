// Filtered top-k (warp teams, K <= 32): most of a row cannot be in the top k, so filter first, and
// run the rounds over the few candidates left. Wins where each lane holds many keys that are not
// index-packed (the router plan's filter_min_keys_per_lane).
#pragma once

#include <cstdint>

#include "common/team.cuh"
#include "common/topk/keys.cuh"
#include "common/topk/output.cuh"

namespace moekit {

// A lower bound of the K-th largest key: the K-th largest of the 32 lane maxima (those K maxima are
// K distinct elements of the row). The keys at or above the bound, usually a few
// more than K, are gathered into shared memory (at most kFilterCap) and the K rounds of arg-max run
// over two candidates per lane instead of every key of the row: one redux.max and a ballot per
// round, a second redux only when two lanes hold the same key. The last winner is the threshold:
// selected = key above it, or equal to it at an index not above its own.
// Returns false (nothing written) when the candidates do not fit: the caller falls back.
constexpr int kFilterCap = 64;  // two candidates per lane; shared memory 2 * kFilterCap words

template <int VEC, int NC>
__device__ __forceinline__ bool filtered_select(const WarpTeam& team, const uint32_t (&key)[VEC * NC], int K,
                                                uint32_t* cand, void* out, bool idx64, uint64_t& sel) {
  constexpr int VPT = VEC * NC;
  const int lane = team.rank;
  // 1. the bound: a bitonic sort of the lane maxima (descending), read at K - 1 (K - 1 rounds of
  // redux.max would be as tight, but their dependent latencies cost more: bench/NOTES.md v2)
  uint32_t v = key[0];
#pragma unroll
  for (int p = 1; p < VPT; ++p) v = max(v, key[p]);
#pragma unroll
  for (int k = 2; k <= 32; k <<= 1)
#pragma unroll
    for (int j = k >> 1; j > 0; j >>= 1) {
      const uint32_t u = __shfl_xor_sync(kFullMask, v, j);
      v = (((lane & j) == 0) == ((lane & k) == 0)) ? max(v, u) : min(v, u);
    }
  const uint32_t bound = max(__shfl_sync(kFullMask, v, K - 1), kNanKey);  // absent keys never qualify
  // 2. count and gather the candidates (any order: ties are broken by index in the rounds)
  uint32_t mine = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) mine += key[p] >= bound;
  uint32_t total;
  uint32_t slot = warp_exclusive_scan(mine, total);
  if (total > (uint32_t)kFilterCap) return false;
#pragma unroll
  for (int p = 0; p < VPT; ++p)
    if (key[p] >= bound) {
      cand[2 * slot] = key[p];
      cand[2 * slot + 1] = (uint32_t)elem_index<VEC>(team, p / VEC, p % VEC);
      ++slot;
    }
  __syncwarp();
  // 3. each lane holds slots lane and lane + 32, best first; empty slots have key 0
  uint32_t k0 = 0, i0 = 0xffffffffu, k1 = 0, i1 = 0xffffffffu;
  if ((uint32_t)lane < total) k0 = cand[2 * lane], i0 = cand[2 * lane + 1];
  if ((uint32_t)lane + 32 < total) k1 = cand[2 * lane + 64], i1 = cand[2 * lane + 65];
  __syncwarp();  // the next row may overwrite `cand`
  if (k1 > k0 || (k1 == k0 && i1 < i0)) {
    const uint32_t tk = k0, ti = i0;
    k0 = k1, i0 = i1, k1 = tk, i1 = ti;
  }
  // Rounds: pops are predicated, and each lane notes the round at which each of its two candidates
  // won; the indices are stored after the loop.
  const uint32_t first_idx = i0, second_idx = i1;
  int first_round = -1, second_round = -1;
  bool popped = false;
  uint32_t last_key = 0;
#pragma unroll 1
  for (int r = 0; r < K; ++r) {
    const uint32_t best = __reduce_max_sync(kFullMask, k0);
    const uint32_t tied = __ballot_sync(kFullMask, k0 == best);
    bool won = (tied >> lane) & 1;
    if (tied & (tied - 1)) {  // several lanes hold the maximum (uniform branch): lowest index wins
      const uint32_t lowest = __reduce_min_sync(kFullMask, k0 == best ? i0 : 0xffffffffu);
      won = won && i0 == lowest;
    }
    second_round = won && popped ? r : second_round;
    first_round = won && !popped ? r : first_round;
    popped = popped || won;
    k0 = won ? k1 : k0;
    i0 = won ? i1 : i0;
    k1 = won ? kAbsentKey : k1;
    last_key = best;
  }
  if (out != nullptr) {
    if (first_round >= 0) put_index(out, idx64, first_round, first_idx);
    if (second_round >= 0) put_index(out, idx64, second_round, second_idx);
  }
  const uint32_t last_idx = __reduce_min_sync(
      kFullMask, first_round == K - 1 ? first_idx : (second_round == K - 1 ? second_idx : 0xffffffffu));
  // 4. the selection: everything ranked at or above the K-th winner
  sel = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) {
    const uint32_t k = key[p];
    const bool in = k > last_key || (k == last_key && (uint32_t)elem_index<VEC>(team, p / VEC, p % VEC) <= last_idx);
    sel |= (uint64_t)in << p;
  }
  return true;
}

}  // namespace moekit
