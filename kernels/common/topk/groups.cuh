// Group-limited selection (SPEC section 1 step 2; the grouped top-k of section 4): the score of a
// group is the sum of its top `per_group` keys' values; the Kg best groups are kept (ties to the
// lower group index) and every key outside them becomes -inf (kNegInfKey, never absent).
#pragma once

#include <cstdint>

#include "common/team.cuh"
#include "common/topk/keys.cuh"
#include "common/topk/rounds.cuh"

namespace moekit {

// Group key of a group made of whole thread chunks of VEC keys, `lanes` neighbouring lanes (a power
// of 2) of one sweep: each lane takes the top-2 of its chunk (t1 >= t2; a repeated maximum fills
// both), a butterfly merges them, and the group's key is the sum of its top `per_group` (1 or 2)
// key values. Every lane of the group gets it; the additions are the same, in the same order, as
// the general path's, so the sums are bit-identical.
template <int VEC>
__device__ __forceinline__ uint32_t chunk_group_key(const uint32_t* key, int lanes, int per_group) {
  uint32_t t1 = kAbsentKey, t2 = kAbsentKey;
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    t2 = key[v] > t1 ? t1 : max(t2, key[v]);
    t1 = max(t1, key[v]);
  }
  for (int o = 1; o < lanes; o <<= 1) {
    const uint32_t u1 = __shfl_xor_sync(kFullMask, t1, o), u2 = __shfl_xor_sync(kFullMask, t2, o);
    const uint32_t n2 = t1 >= u1 ? max(t2, u1) : max(t1, u2);
    t1 = max(t1, u1);
    t2 = n2;
  }
  return order_key(per_group == 1 ? 0.0f + key_value(t1) : 0.0f + key_value(t1) + key_value(t2));
}

// The group stage on any team and row layout: group keys into `gkey` (G words of the team's shared
// memory), Kg rounds of "best group left", then the keys of the other groups set to -inf.
// gsize = E / G and per_group = K / Kg come from the host (no integer division per row).
template <int VEC, int NC, class Team>
__device__ __forceinline__ void keep_best_groups(Team& team, uint32_t (&key)[VEC * NC], int E, int G, int Kg,
                                                 int gsize, int per_group, uint32_t* gkey) {
  // A group made of whole thread chunks, 1..32 neighbouring lanes of one sweep, needs no
  // shared-memory rounds: each lane takes the top-2 of its chunk, then a butterfly merges them.
  const int lanes_per_group = gsize / VEC;
  const bool chunk_groups = per_group <= 2 && gsize % VEC == 0 && lanes_per_group <= 32 &&
                            (lanes_per_group & (lanes_per_group - 1)) == 0;
  if (chunk_groups) {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const uint32_t k = chunk_group_key<VEC>(key + c * VEC, lanes_per_group, per_group);
      const int lane_chunk = c * team.size() + team.rank;
      const int g = lane_chunk / lanes_per_group;
      if (lane_chunk % lanes_per_group == 0 && g < G) gkey[g] = k;
    }
  } else {
#pragma unroll 1
    for (int g = 0; g < G; ++g) {
      uint64_t taken = 0;
      float gsum = 0.0f;
#pragma unroll 1
      for (int r = 0; r < per_group; ++r) {
        ArgBest b = team.argbest(local_best<VEC, NC>(team, key, taken, g * gsize, (g + 1) * gsize));
        gsum += key_value(b.key);
        mark_taken<VEC, NC>(team.rank, team.size(), b.idx, taken);
      }
      if (team.rank == 0) gkey[g] = order_key(gsum);
    }
  }
  team.sync();
#pragma unroll 1
  for (int r = 0; r < Kg; ++r) {
    ArgBest b{kAbsentKey, 0xffffffffu};
    for (int g = team.rank; g < G; g += team.size())
      if (gkey[g] != kChosenGroup && gkey[g] > b.key) b = {gkey[g], (uint32_t)g};
    b = team.argbest(b);
    // A warp's redux orders the reads above before this write, but racecheck does not count it.
    if constexpr (Team::kIsWarp) team.sync();
    if (team.rank == 0) gkey[b.idx] = kChosenGroup;
    team.sync();
  }
  const bool whole_chunks = gsize % VEC == 0;  // one division per chunk instead of per element
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    const int g0 = whole_chunks && e0 < E ? e0 / gsize : 0;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int e = e0 + v;
      if (e < E && gkey[whole_chunks ? g0 : e / gsize] != kChosenGroup) key[c * VEC + v] = kNegInfKey;
    }
  }
  team.sync();  // gkey is rewritten by the next row
}

// The group stage of a lane team (LaneTeam<LANES>, CHUNKS chunks of VEC keys per lane, chunk c of
// rank t covering [(c * LANES + t) * VEC, + VEC)) whose groups are whole chunks of a power-of-2
// number of lanes, per_group <= 2. Returns bit c set where chunk c's group is kept. FULL: the row
// has exactly the team's keys (else chunks from E on are padding). No shared memory: group keys stay
// in the lanes.
template <int LANES, int CHUNKS, int VEC, bool FULL>
__device__ __forceinline__ uint32_t lane_team_kept_groups(const uint32_t (&key)[CHUNKS * VEC], int t, int E,
                                                          int group_size, int per_group, int Kg) {
  using Team = LaneTeam<LANES>;
  const int lanes_per_group = group_size / VEC, group_shift = __ffs(lanes_per_group) - 1;
  uint32_t gkey[CHUNKS], group[CHUNKS];  // chunk c's group key and group index
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const uint32_t k = chunk_group_key<VEC>(key + c * VEC, lanes_per_group, per_group);
    gkey[c] = FULL || (c * LANES + t) * VEC < E ? k : kAbsentKey;
    group[c] = (uint32_t)(c * LANES + t) >> group_shift;
  }
  uint32_t chosen = 0;
  // A group is kept when fewer than Kg groups beat it (a larger key, or an equal key and a lower
  // index): the choice of Kg rounds of "best group left", without their serial chain of team
  // reductions. Lane i of a group compares the group's keys with those of groups i, i + L, ... of
  // each sweep (L lanes per group), read off those groups' first lanes; a butterfly over the
  // group's L lanes adds the counts up. Many small groups per team (L = 1 or 2) keep the rounds.
  const int sweep_groups = LANES >> group_shift;  // groups per chunk sweep
  const int passes = sweep_groups >> group_shift;  // sweep_groups / L; one pass also where it is 0
  constexpr int kMaxPasses = 4 / CHUNKS;
  if (passes <= kMaxPasses) {
    const uint32_t my_place = (uint32_t)t >> group_shift;  // my groups' place in their sweeps
    const int i = t & (lanes_per_group - 1);
    uint32_t beaten = 0;  // chunk c's count in bits [8c, 8c + 8)
#pragma unroll
    for (int q = 0; q < kMaxPasses; ++q) {
      if (q > 0 && q >= passes) break;  // uniform
      const int j = q * lanes_per_group + i;  // compared with the groups at place j
      const bool real = j < sweep_groups;
#pragma unroll
      for (int c2 = 0; c2 < CHUNKS; ++c2) {
        const uint32_t k = Team::broadcast(gkey[c2], (real ? j : 0) << group_shift);  // group c2 * sweep_groups + j
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
          // On an equal key the lower index wins: an earlier sweep's group always, a later
          // one's never. Keys are at most order_key(+inf), so k + 1 does not wrap.
          const uint32_t lower = c2 < c ? 1u : c2 > c ? 0u : (uint32_t)((uint32_t)j < my_place);
          beaten += (uint32_t)(real && k + lower > gkey[c]) << (8 * c);
        }
      }
    }
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      if (o >= lanes_per_group) break;  // uniform
      beaten += __shfl_xor_sync(kFullMask, beaten, o);
    }
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) chosen |= (uint32_t)(((beaten >> (8 * c)) & 0xffu) < (uint32_t)Kg) << c;
  } else {
#pragma unroll 1
    for (int r = 0; r < Kg; ++r) {
      uint32_t m = kAbsentKey;
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) m = (chosen >> c) & 1 ? m : max(m, gkey[c]);
      m = Team::max(m);
      uint32_t g = 0xffffffffu;  // lowest group index holding the maximum
#pragma unroll
      for (int c = CHUNKS - 1; c >= 0; --c) g = !((chosen >> c) & 1) && gkey[c] == m ? group[c] : g;
      g = Team::min(g);
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) chosen |= (uint32_t)(group[c] == g) << c;
    }
  }
  return chosen;
}

}  // namespace moekit
