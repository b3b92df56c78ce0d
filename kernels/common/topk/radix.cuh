// Radix select: the K-th largest 32-bit key of a row found digit by digit (8 bits per pass, a
// 256-bin histogram in the team's shared memory), then one pass marks the winners. Its cost hardly
// depends on K, so it takes over from the rounds at large K (router plan: radix_min_k).
#pragma once

#include <cstdint>

#include "common/team.cuh"
#include "common/topk/keys.cuh"

namespace moekit {

// Finds, in a 256-bin histogram, the digit whose bin holds the `remaining`-th largest key counting
// from the top bin. Runs in one warp; every lane gets the result.
struct DigitPick {
  uint32_t digit, above, in_bin;
};
__device__ __forceinline__ DigitPick pick_digit(const uint32_t* hist, uint32_t remaining) {
  const int lane = threadIdx.x & 31;
  const int top = 255 - 8 * lane;  // lane 0 owns the highest 8 bins
  uint32_t local = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) local += hist[top - b];
  uint32_t total;
  uint32_t above_lane = warp_exclusive_scan(local, total);
  const bool mine = above_lane < remaining && above_lane + local >= remaining;
  DigitPick r{0, 0, 0};
  if (mine) {
    uint32_t run = above_lane;
#pragma unroll
    for (int b = 0; b < 8; ++b) {
      uint32_t h = hist[top - b];
      if (r.in_bin == 0 && run + h >= remaining && h > 0) {
        r = {(uint32_t)(top - b), run, h};
      }
      if (r.in_bin == 0) run += h;
    }
  }
  const int src = __ffs(__ballot_sync(kFullMask, mine)) - 1;
  r.digit = __shfl_sync(kFullMask, r.digit, src);
  r.above = __shfl_sync(kFullMask, r.above, src);
  r.in_bin = __shfl_sync(kFullMask, r.in_bin, src);
  return r;
}

// Radix select of the K largest keys of the row (kAbsentKey: padding, never selected). Returns the
// selection as a bit per position, ties to the lower index. `hist` is 256 (+4 for block teams) words
// of this team's shared memory.
template <int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t radix_select(Team& team, const uint32_t (&key)[VEC * NC], int K, uint32_t* hist) {
  constexpr int VPT = VEC * NC;
  uint32_t prefix = 0, mask = 0, remaining = (uint32_t)K, in_bin = 0;
  bool take_all_equal = false;
#pragma unroll 1
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = team.rank; i < 256; i += team.size()) hist[i] = 0;
    team.sync();
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if (key[p] != kAbsentKey && (key[p] & mask) == prefix) atomicAdd(&hist[(key[p] >> shift) & 255u], 1u);
    team.sync();
    DigitPick d;
    if constexpr (Team::kIsWarp) {
      d = pick_digit(hist, remaining);
      team.sync();  // every lane has read hist before the next pass clears it (shuffles do not order memory)
    } else {
      if (team.warp == 0) {
        d = pick_digit(hist, remaining);
        if (team.lane == 0) {
          hist[256] = d.digit;
          hist[257] = d.above;
          hist[258] = d.in_bin;
        }
      }
      team.sync();
      d = {hist[256], hist[257], hist[258]};
      team.sync();  // hist is cleared next pass only after everyone has read the pick
    }
    remaining -= d.above;
    prefix |= d.digit << shift;
    mask |= 0xffu << shift;
    in_bin = d.in_bin;
    if (in_bin == remaining) {  // every key with this prefix is selected: no need to look further
      take_all_equal = true;
      break;
    }
  }
  // Keys whose masked value is above `prefix` are in; equal ones are in if take_all_equal, else the
  // `remaining` lowest-indexed of them.
  uint64_t sel = 0;
  if (take_all_equal) {
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if (key[p] != kAbsentKey && (key[p] & mask) >= prefix) sel |= 1ull << p;
    return sel;
  }
  uint32_t base = 0;  // equal keys before this chunk, over the team
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    uint32_t cnt = 0;
#pragma unroll
    for (int v = 0; v < VEC; ++v) cnt += (key[c * VEC + v] == prefix);
    uint32_t total;
    uint32_t before = base + team.exclusive_scan(cnt, total);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      if (key[p] != kAbsentKey && key[p] > prefix) sel |= 1ull << p;
      if (key[p] == prefix) {
        if (before < remaining) sel |= 1ull << p;
        ++before;
      }
    }
    base += total;
  }
  return sel;
}

}  // namespace moekit
