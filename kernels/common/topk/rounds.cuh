// Top-k by rounds: K rounds, each taking the best key left in the row. Three forms:
//   - arg-max rounds on any team (argbest_rounds_select): the team's best (key, lowest index), and
//     the winner is marked taken; the general path, for block teams too;
//   - clearing rounds on a warp (warp_rounds_select): one redux.max for the best key, one redux.min
//     for the lowest index holding it, whose key is cleared;
//   - rounds over unique (index-packed) keys: round r's winner is the largest key below round r-1's
//     (min_below), so nothing is cleared and "selected" = "at or above the K-th winner"; list_rounds
//     keeps each lane's few largest keys in a list, so a round is one team max over the list heads.
// All give the SPEC order: NaN lowest, -0 == +0 (in the keys), ties to the lower index.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/team.cuh"
#include "common/topk/keys.cuh"
#include "common/topk/output.cuh"

namespace moekit {

// Arg-max over this thread's keys that are not in `taken` and whose index is in [lo, hi).
template <int VEC, int NC, class Team>
__device__ __forceinline__ ArgBest local_best(const Team& team, const uint32_t (&key)[VEC * NC], uint64_t taken,
                                              int lo, int hi) {
  ArgBest b{kAbsentKey, 0xffffffffu};
  int pos = -1;
#pragma unroll
  for (int c = 0; c < NC; ++c)
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      const int e = elem_index<VEC>(team, c, v);
      // strict '>' keeps the lowest index among this thread's equal keys (indices grow with p)
      if (!((taken >> p) & 1) && e >= lo && e < hi && key[p] > b.key) {
        b.key = key[p];
        pos = p;
      }
    }
  if (pos >= 0) b.idx = (uint32_t)((pos / VEC * team.size() + team.rank) * VEC + pos % VEC);
  return b;
}

template <int VEC, int NC>
__device__ __forceinline__ void mark_taken(int rank, int team_size, uint32_t winner, uint64_t& taken) {
#pragma unroll
  for (int c = 0; c < NC; ++c)
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      if ((uint32_t)((c * team_size + rank) * VEC + v) == winner) taken |= 1ull << (c * VEC + v);
}

// K rounds of a team arg-max over the row [0, E); the winners' indices go to `out` (may be null)
// in rank order. Returns the selection as a bit per position.
template <int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t argbest_rounds_select(Team& team, const uint32_t (&key)[VEC * NC], int K, int E,
                                                          void* out, bool idx64) {
  uint64_t sel = 0;
#pragma unroll 1
  for (int r = 0; r < K; ++r) {
    ArgBest b = team.argbest(local_best<VEC, NC>(team, key, sel, 0, E));
    mark_taken<VEC, NC>(team.rank, team.size(), b.idx, sel);
    if (out != nullptr && team.rank == 0) put_index(out, idx64, r, b.idx);
  }
  return sel;
}

// Packed rounds: min over the keys of (below - key), where below = last winner - 1. Keys at or
// above the last winner wrap to at least `below + 1`, so the min names the largest key below it.
// Two or four independent chains: one serial chain of N dependent min operations would set the
// round's latency.
template <int N>
__device__ __forceinline__ uint32_t min_below(const uint32_t (&key)[N], uint32_t below) {
  constexpr int kChains = N >= 32 ? 4 : N >= 2 ? 2 : 1;
  uint32_t d[kChains];
#pragma unroll
  for (int i = 0; i < kChains; ++i) d[i] = below - key[i];
#pragma unroll
  for (int p = kChains; p < N; ++p) d[p % kChains] = min(d[p % kChains], below - key[p]);
#pragma unroll
  for (int h = kChains / 2; h > 0; h >>= 1)
#pragma unroll
    for (int i = 0; i < h; ++i) d[i] = min(d[i], d[i + h]);
  return d[0];
}

// The L largest keys at or below `below`, in descending order, 0 where there are fewer (unique
// keys; 0 is padding, below every real key). L passes of min_below.
template <int L, int N>
__device__ __forceinline__ void top_at_or_below(const uint32_t (&key)[N], uint32_t below, uint32_t (&top)[L]) {
#pragma unroll
  for (int i = 0; i < L; ++i) {
    const uint32_t d = min_below(key, below);
    top[i] = d <= below ? below - d : 0u;  // d > below: every key of the lane is above `below`
    below = top[i] - (top[i] != 0u);
  }
}

// round(r) for r in [0, K), in spans of SPAN rounds with flush(r0, rn) after each span: what is
// done once per span (the index stores of the lanes that kept one winner each) stays out of the
// rounds, which then carry no store test and no branch for it. UNROLL: rounds per loop trip (more
// only where the registers allow it; bench/NOTES.md v7.5).
template <int SPAN, int UNROLL = 1, class Round, class Flush>
__device__ __forceinline__ void rounds_in_spans(int K, Round round, Flush flush) {
#pragma unroll 1
  for (int r0 = 0; r0 < K; r0 += SPAN) {
    const int rn = min(K, r0 + SPAN);
#pragma unroll UNROLL
    for (int r = r0; r < rn; ++r) round(r);
    flush(r0, rn);
  }
}
struct NoFlush {
  __device__ void operator()(int, int) const {}
};

// K rounds over unique keys on a team of lanes (a whole warp by default). Each lane keeps a list of
// its L largest keys not yet taken, so a round is one team max over the lists' heads (redux.max on a
// warp) and a shift in the winning lane; a lane whose list runs out refills it from its keys below
// its last winner. The shift is a branch, or selects in every lane where kShiftBySelect (which wins
// is kernel-specific: bench/NOTES.md v7.4). With K / lanes winners per lane on average, refills are
// rare, and a round costs a few instructions where min_below costs one subtract-and-min per key.
// record(r, winner) runs in every lane, flush(r0, rn) after every Team::kLanes rounds
// (rounds_in_spans). Returns the K-th winner.
template <int L, class Team = LaneTeam<32>, bool kShiftBySelect = false, int kUnroll = 1, int N, class Record,
          class Flush = NoFlush>
__device__ __forceinline__ uint32_t list_rounds(const uint32_t (&key)[N], int K, Record record, Flush flush = {}) {
  uint32_t list[L];
  top_at_or_below(key, 0xffffffffu, list);
  bool more = list[L - 1] != 0u;  // the lane may hold keys below its list
  uint32_t m = 0;
  auto round = [&](int r) {
    m = Team::max(list[0]);
    const bool won = list[0] == m;
    if (kShiftBySelect || won) {
#pragma unroll
      for (int i = 0; i + 1 < L; ++i) list[i] = won ? list[i + 1] : list[i];
      list[L - 1] = won ? 0u : list[L - 1];
      if (won && list[0] == 0u && more) {
        top_at_or_below(key, m - 1u, list);
        more = list[L - 1] != 0u;
      }
    }
    record(r, m);
  };
  if constexpr (std::is_same<Flush, NoFlush>::value) {  // the span loop costs registers where nothing flushes
#pragma unroll 1
    for (int r = 0; r < K; ++r) round(r);
  } else {
    rounds_in_spans<Team::kLanes, kUnroll>(K, round, flush);
  }
  return m;
}

// Top-k on a warp team by K rounds of: the lane's best key, one redux.max, then the lowest index
// holding it, whose key is cleared to kAbsentKey (real keys are >= kNanKey, so nothing is ever
// chosen twice and "selected" = "was real, is now absent"). With unique (packed: packed_mask != 0)
// keys a round is one redux.min: the largest key below the last winner names its element, and
// "selected" = "at or above the K-th winner". Winners' indices go to `out` (may be null) in rank
// order. Returns the selection bits.
template <int VEC, int NC>
__device__ __forceinline__ uint64_t warp_rounds_select(const WarpTeam& team, uint32_t (&key)[VEC * NC], int K,
                                                       uint32_t packed_mask, void* out, bool idx64) {
  constexpr int VPT = VEC * NC;
  uint64_t real = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) real |= (uint64_t)(key[p] != kAbsentKey) << p;
  uint32_t last = 0;  // packed keys: the latest winner
#pragma unroll 1
  for (int r = 0; r < K; ++r) {
    uint32_t winner;
    if (packed_mask != 0) {
      const uint32_t below = last - 1u;
      last = below - __reduce_min_sync(kFullMask, min_below(key, below));
      winner = packed_mask - (last & packed_mask);
    } else {
      uint32_t m = key[0];
#pragma unroll
      for (int p = 1; p < VPT; ++p) m = max(m, key[p]);
      const uint32_t best = __reduce_max_sync(kFullMask, m);
      uint32_t first = 0xffffffffu;  // this lane's lowest index holding the maximum
#pragma unroll
      for (int p = VPT - 1; p >= 0; --p)
        if (key[p] == best) first = (uint32_t)elem_index<VEC>(team, p / VEC, p % VEC);
      winner = __reduce_min_sync(kFullMask, first);
#pragma unroll
      for (int p = 0; p < VPT; ++p)
        if ((uint32_t)elem_index<VEC>(team, p / VEC, p % VEC) == winner) key[p] = kAbsentKey;
    }
    if (out != nullptr && team.rank == 0) put_index(out, idx64, r, winner);
  }
  uint64_t sel = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) sel |= (uint64_t)(packed_mask != 0 ? key[p] >= last : key[p] == kAbsentKey) << p;
  return sel & real;
}

}  // namespace moekit
