// Training router (SPEC.md section 1): top-k with score function, forward and backward.
//
// One team (a warp, or a block for rows over 1K experts) owns one row. Each thread holds VPT =
// NC * VEC elements of the row in registers: chunk c of the thread with team rank r covers elements
// [(c * team_size + r) * VEC, + VEC), so each chunk is one coalesced sweep of the team over the row.
//
// Top-k paths over the same register layout, all giving the SPEC order (NaN lowest, -0 == +0, ties
// to the lower index):
//   - rounds: K rounds of a team arg-max; cheap for small K. On warp teams a round is one pass over
//     the lane's keys and one redux (two when keys can tie, see "packed keys" in forward_row);
//   - filtered (warp teams, K <= 32): a cheap lower bound of the K-th key leaves a few candidates,
//     and the rounds run over those (filtered_select);
//   - radix select: the K-th largest 32-bit key found digit by digit (8 bits per pass, a shared
//     histogram), then one pass marks the winners; cost almost independent of K.
// The host picks the path per shape (router.cu, measured crossovers).
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/device.cuh"
#include "common/team.cuh"
#include "moekit/async_loader.cuh"

namespace moekit {
namespace router {

enum ScoreMode : int { kSoftmaxPre = 0, kSoftmaxPost = 1, kSigmoid = 2, kSqrtSoftplus = 3 };
enum MapKind : int { kMapNone = 0, kMapBytes = 1, kMapBits = 2 };
// Warp teams: kTopkFiltered tries filtered_select and falls back to `radix` (radix select or rounds).
enum TopkPath : int { kTopkDefault = 0, kTopkFiltered = 1 };

constexpr float kEps = 1e-20f;
constexpr uint32_t kChosenGroup = 0xffffffffu;  // above every real key (NaN maps to 1, +inf below this)

struct ForwardArgs {
  const void* logits;
  const void* bias;  // may be null
  int bias_dtype;    // moekit_dtype_t
  void* probs;
  uint8_t* map;
  void* indices;
  float* intermediate;
  int64_t T;
  int E;
  int K;
  int G, Kg;  // groups (0 = off)
  int mode;   // ScoreMode
  int map_kind;
  int idx64;
  int radix;  // 1: radix select, 0: iterative
  int topk;   // TopkPath: what warp teams try first (block teams: radix or iterative)
  int packed;  // keys carry the index in their low bits (16-bit logits, softmax-post; router.cu)
  int vec;    // rows allow whole-chunk vector access
  int bias_vec;  // team rows: the bias allows 8-element vector loads (16-byte aligned, E % 8 == 0)
  float scale;
  int smem_words_per_team;  // dynamic shared memory per team (warp teams) in 32-bit words
  int stages;               // pipelined kernel: row buffers per warp (1 or 2)
  int stage_bytes;          // pipelined kernel: bytes per row buffer (multiple of 16)
  int group_size, per_group;  // E / G and K / Kg (router.cu): no integer division per row
  int team_pack_f32;  // team rows, f32 softmax-post: rounds on packed keys (kTeamSoftmaxPostF32Packed; router.cu)
};

struct BackwardArgs {
  const void* grad;
  const float* intermediate;
  const uint8_t* map;
  const void* indices;
  void* grad_logits;
  int64_t T;
  int E;
  int K;
  int mode;
  int map_kind;
  int idx64;
  int vec;
  float scale;
  int smem_words_per_team;
};

__device__ __forceinline__ float load_as_float(const void* p, int dtype, int i) {
  switch (dtype) {
    case 1: return __half2float(static_cast<const __half*>(p)[i]);
    case 2: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Element index of position (c, v) of this thread.
template <int VEC, class Team>
__device__ __forceinline__ int elem_index(const Team& team, int c, int v) {
  return (c * team.size() + team.rank) * VEC + v;
}

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

// Radix select of the K largest keys of the row. Returns the selection as a bit per position.
// `hist` is 256 (+4 for block teams) words of this team's shared memory.
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

// Writes the selected experts of a row to `out` in descending key order (ties: lower index first).
// `list` is 2*K words of this team's shared memory.
template <int VEC, int NC, class Team, typename Index>
__device__ __forceinline__ void write_sorted_indices(Team& team, const uint32_t (&key)[VEC * NC], uint64_t sel, int K,
                                                     uint32_t* list, Index* out) {
  uint32_t total;
  uint32_t slot = team.exclusive_scan((uint32_t)__popcll(sel), total);
#pragma unroll
  for (int c = 0; c < NC; ++c)
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      if ((sel >> p) & 1) {
        list[2 * slot] = key[p];
        list[2 * slot + 1] = (uint32_t)elem_index<VEC>(team, c, v);
        ++slot;
      }
    }
  team.sync();
  for (int j = team.rank; j < K; j += team.size()) {
    const uint32_t kj = list[2 * j], ij = list[2 * j + 1];
    int rank = 0;
    for (int i = 0; i < K; ++i) {
      const uint32_t ki = list[2 * i], ii = list[2 * i + 1];
      rank += (ki > kj) || (ki == kj && ii < ij);
    }
    out[rank] = (Index)ij;
  }
  team.sync();  // list may be reused by the next row of this team
}

// Writes selected expert `idx` at position r of this row's index output (int32 or int64).
__device__ __forceinline__ void put_index(void* out, bool idx64, int r, uint32_t idx) {
  if (idx64) static_cast<int64_t*>(out)[r] = idx;
  else static_cast<int32_t*>(out)[r] = (int32_t)idx;
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
// rounds, which then carry no store test and no branch for it.
// UNROLL: rounds per loop trip. 2 on whole-warp FULL rows of 2 chunks with packed keys (e512k22 bf16
// 0.99x, f32 0.99-1.00x; the registers did not cross an occupancy step); elsewhere the unrolled
// loop took 4-14 more registers or spilled, and on wide rows it lost (e2304k36 bf16 1.06-1.08x,
// bench/NOTES.md v7.5).
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
// its last winner. The shift is a branch, or selects in every lane where kShiftBySelect (measured per
// kernel, bench/NOTES.md v7.4: selects won on wide packed rows, e2304k36 bf16 0.96 -> 0.93, and lost
// on team rows, e512k22 bf16 0.97 -> 1.04). With K / lanes winners per lane on average, refills are
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
  if constexpr (std::is_same<Flush, NoFlush>::value) {  // the span loop cost wide f32 rows 9 registers
#pragma unroll 1
    for (int r = 0; r < K; ++r) round(r);
  } else {
    rounds_in_spans<Team::kLanes, kUnroll>(K, round, flush);
  }
  return m;
}

// Iterative top-k on a warp team, K rounds of: the lane's best key, one redux.max, then the lowest
// index holding it, whose key is cleared to kAbsentKey (real keys are >= kNanKey, so nothing is
// ever chosen twice and "selected" = "was real, is now absent"). With unique (packed) keys a round
// is one redux.min: the largest key below the last winner names its element, and "selected" = "at
// or above the K-th winner". Returns the selection bits.
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
      // unique keys: the largest key below the last winner, as in forward_team_kernel
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
    // (v2 tried keeping round r's winner in lane r mod 32 and storing 32 at a time: with the launch
    // bound noted at forward_warp_kernel, the forward got 5-11% slower, so both were dropped.)
    if (out != nullptr && team.rank == 0) put_index(out, idx64, r, winner);
  }
  uint64_t sel = 0;
#pragma unroll
  for (int p = 0; p < VPT; ++p) sel |= (uint64_t)(packed_mask != 0 ? key[p] >= last : key[p] == kAbsentKey) << p;
  return sel & real;
}

// Filtered top-k for K <= 32 on a warp team: most of a row cannot be in the top k, so filter first.
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
  // 1. the bound: a bitonic sort of the lane maxima (descending), read at K - 1. (v2 also tried K - 1
  // rounds of redux.max that each drop the largest lane maximum: as tight, fewer instructions, but
  // dependent redux latencies made the forward 30% slower at E = 512, K = 22.)
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

// Bits of this thread's chunk -> LSB-first bitmap bytes. VEC consecutive elements of one thread
// are VEC consecutive bits; 8/VEC neighbouring lanes share a byte (warp-uniform control flow).
template <int VEC>
__device__ __forceinline__ void store_bitmap_chunk(uint8_t* row_bits, int e0, int E, uint32_t bits) {
  if constexpr (VEC >= 8) {
#pragma unroll
    for (int b = 0; b < VEC / 8; ++b)
      if (e0 + 8 * b < E) row_bits[(e0 >> 3) + b] = (uint8_t)(bits >> (8 * b));
  } else {
    constexpr int kLanesPerByte = 8 / VEC;
    const int lane = threadIdx.x & 31;
    uint32_t byte = bits << (VEC * (lane % kLanesPerByte));
#pragma unroll
    for (int o = 1; o < kLanesPerByte; o <<= 1) byte |= __shfl_xor_sync(kFullMask, byte, o);
    if (lane % kLanesPerByte == 0 && e0 < E) row_bits[e0 >> 3] = (uint8_t)byte;
  }
}

// The 8 bits of a chunk (LSB first) as 8 bytes of 0 / 1: bit i of a nibble lands at bit 8i of the
// product with 0x204081 (= 1 + 2^7 + 2^14 + 2^21; no other bit reaches those places).
__device__ __forceinline__ uint2 bits_to_bytes(uint32_t bits) {
  return make_uint2(((bits & 0xfu) * 0x204081u) & 0x01010101u, ((bits >> 4) * 0x204081u) & 0x01010101u);
}

// store_forward_chunk for a whole chunk of 8 (kTeamVec) with vector access (E % 8 == 0, 16-byte aligned
// buffers): no bounds tests, and the map's bytes come from the bits (bits_to_bytes). The general
// path took ~100 instructions per chunk on e512k22's team rows (bench/NOTES.md v7.6).
template <typename T>
__device__ __forceinline__ void store_forward_chunk_vec(const ForwardArgs& a, int E, int64_t row, int e0,
                                                        bool intermediate, const float (&pr)[8],
                                                        const float (&im)[8], uint32_t bits) {
  const int64_t off = row * (int64_t)E + e0;
  store_chunk_vec<T, 8>(static_cast<T*>(a.probs), off, pr);
  if (intermediate) store_chunk_vec<float, 8>(a.intermediate, off, im);
  if (a.map_kind == kMapBytes) *reinterpret_cast<uint2*>(a.map + off) = bits_to_bytes(bits);
  else if (a.map_kind == kMapBits) a.map[row * (int64_t)(E / 8) + e0 / 8] = (uint8_t)bits;
}

// Stores one chunk of a row's forward outputs: probs, the softmax-post intermediate (when
// `intermediate`), and the routing map as bytes or bits, as ForwardArgs says. E is a.E (a
// compile-time constant where the caller knows it).
template <typename T, int VEC>
__device__ __forceinline__ void store_forward_chunk(const ForwardArgs& a, int E, int64_t row, int e0, bool vec,
                                                    bool intermediate, const float (&pr)[VEC], const float (&im)[VEC],
                                                    const uint8_t (&mb)[VEC], uint32_t bits) {
  const int64_t off = row * (int64_t)E;
  store_chunk<T, VEC>(static_cast<T*>(a.probs) + off, e0, E, vec, pr);
  if (intermediate) store_chunk<float, VEC>(a.intermediate + off, e0, E, vec, im);
  if (a.map_kind == kMapBytes) store_bytes<VEC>(a.map + off, e0, E, vec, mb);
  else if (a.map_kind == kMapBits) store_bitmap_chunk<VEC>(a.map + row * (int64_t)((E + 7) / 8), e0, E, bits);
}

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

template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ void forward_row(const ForwardArgs& a, Team& team, int64_t row, uint32_t* smem,
                                            const T* x_row, bool x_vec) {
  constexpr int VPT = VEC * NC;
  const int E = a.E;
  const int64_t off = row * (int64_t)E;
  const bool vec = a.vec != 0;

  // ---- 1. load, scores, selection keys
  float s[VPT];  // score: p (softmax-pre), x (softmax-post), y (sigmoid), v (sqrtsoftplus)
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    float tmp[VEC];
    load_chunk<T, VEC>(x_row, elem_index<VEC>(team, c, 0), E, x_vec, -INFINITY, tmp);
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
  uint32_t key[VPT];
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

  // ---- 2. group-limited routing: keep the Kg groups with the best sums of their top K/Kg keys
  if (a.G > 0) {
    uint32_t* gkey = smem + 256 + 4;
    const int gsize = a.group_size, per_group = a.per_group;
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
        if (lane_chunk % lanes_per_group == 0 && g < a.G) gkey[g] = k;
      }
    } else {
#pragma unroll 1
      for (int g = 0; g < a.G; ++g) {
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
    for (int r = 0; r < a.Kg; ++r) {
      ArgBest b{kAbsentKey, 0xffffffffu};
      for (int g = team.rank; g < a.G; g += team.size())
        if (gkey[g] != kChosenGroup && gkey[g] > b.key) b = {gkey[g], (uint32_t)g};
      b = team.argbest(b);
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

  // ---- 3. top-k
  // Keys of softmax-post bf16 (f16) logits have 16 (13) constant low bits: they can hold
  // (mask - index) instead, so that keys are unique and their order is the SPEC order with ties
  // already broken by index. Applied after the group stage, which sums key values.
  constexpr uint32_t kFreeBits = sizeof(T) == 2 ? (std::is_same<T, __half>::value ? 13 : 16) : 0;
  uint32_t packed_mask = 0;
  if (kFreeBits > 0 && a.packed) {  // the host checked mode and E (router.cu, keys_packed)
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
#pragma unroll 1
    for (int r = 0; r < a.K; ++r) {
      ArgBest b = team.argbest(local_best<VEC, NC>(team, key, sel, 0, E));
      mark_taken<VEC, NC>(team.rank, team.size(), b.idx, sel);
      if (out != nullptr && team.rank == 0) put_index(out, a.idx64 != 0, r, b.idx);
    }
  } else if (!selected) {
    sel = radix_select<VEC, NC>(team, key, a.K, smem);
    if (out != nullptr) {
      uint32_t* list = smem + 256 + 4 + a.G;
      if (a.idx64) write_sorted_indices<VEC, NC>(team, key, sel, a.K, list, static_cast<int64_t*>(out));
      else write_sorted_indices<VEC, NC>(team, key, sel, a.K, list, static_cast<int32_t*>(out));
    }
  }

  // ---- 4. weights
  float w[VPT];
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

  // ---- 5. outputs
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
      pr[v] = on ? w[p] * a.scale : 0.0f;
      im[v] = on ? w[p] : -INFINITY;
      mb[v] = on;
      bits |= (uint32_t)on << v;
    }
    store_forward_chunk<T, VEC>(a, a.E, row, e0, vec, a.mode == kSoftmaxPost, pr, im, mb, bits);
  }
}

// The VEC elements at p as raw pieces (Chunk) when `want`, zero bits otherwise: a predicated load
// that nothing waits on until the pieces are converted.
template <typename T, int VEC>
__device__ __forceinline__ void load_pieces_if(bool want, const T* __restrict__ p,
                                               typename Chunk<T, VEC>::Piece (&out)[VEC / Chunk<T, VEC>::kPer]) {
  using C = Chunk<T, VEC>;
#pragma unroll
  for (int k = 0; k < VEC / C::kPer; ++k)
    out[k] = want ? *reinterpret_cast<const typename C::Piece*>(p + k * C::kPer) : typename C::Piece{};
}

// Bytemap rows with vector access and several chunks per lane: every chunk's map bytes first, then
// the grad and intermediate loads of every chunk that needs them, back to back as predicated loads,
// converted after. A row then waits for two memory latencies, not two per chunk (written per chunk,
// nvcc kept each chunk's map -> grad chain in order; bench/NOTES.md v6). `vec`: E % VEC == 0, so a
// chunk is whole or past the end. Returns the selection bits; g is grad * scale, y the intermediate
// (0 where unread).
template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ uint64_t backward_bytemap_loads(const BackwardArgs& a, const Team& team, int64_t off,
                                                           bool dense, float (&g)[VEC * NC], float (&y)[VEC * NC]) {
  const int E = a.E;
  typename Chunk<uint8_t, VEC>::Piece map[NC][VEC / Chunk<uint8_t, VEC>::kPer];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    load_pieces_if<uint8_t, VEC>(e0 < E, a.map + off + e0, map[c]);
  }
  uint64_t m = 0;
  typename Chunk<T, VEC>::Piece graw[NC][VEC / Chunk<T, VEC>::kPer];
  typename Chunk<float, VEC>::Piece yraw[NC][VEC / Chunk<float, VEC>::kPer];
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const int e0 = elem_index<VEC>(team, c, 0);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(map[c]);
    uint32_t bits = 0;
#pragma unroll
    for (int v = 0; v < VEC; ++v) bits |= (uint32_t)(b[v] != 0) << v;
    m |= (uint64_t)bits << (c * VEC);
    const bool want = e0 < E && (dense || bits != 0);
    load_pieces_if<T, VEC>(want, static_cast<const T*>(a.grad) + off + e0, graw[c]);
    load_pieces_if<float, VEC>(want, a.intermediate + off + e0, yraw[c]);
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const T* ge = reinterpret_cast<const T*>(graw[c]);
    const float* ye = reinterpret_cast<const float*>(yraw[c]);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      g[c * VEC + v] = to_float(ge[v]) * a.scale;  // zero bits are 0.0 in every dtype
      y[c * VEC + v] = ye[v];
    }
  }
  return m;
}

template <typename T, int VEC, int NC, class Team>
__device__ __forceinline__ void backward_row(const BackwardArgs& a, Team& team, int64_t row, uint32_t* smem) {
  constexpr int VPT = VEC * NC;
  const int E = a.E;
  const int64_t off = row * (int64_t)E;
  const bool vec = a.vec != 0;

  // Selection from indices: scatter into a per-team byte mask (out-of-range ids are ignored).
  uint8_t* mask_bytes = reinterpret_cast<uint8_t*>(smem);
  if (a.map_kind == kMapNone) {
    for (int i = team.rank; i < E; i += team.size()) mask_bytes[i] = 0;
    team.sync();
    for (int j = team.rank; j < a.K; j += team.size()) {
      int64_t id = a.idx64 ? static_cast<const int64_t*>(a.indices)[row * a.K + j]
                           : (int64_t) static_cast<const int32_t*>(a.indices)[row * a.K + j];
      if (id >= 0 && id < E) mask_bytes[id] = 1;
    }
    team.sync();
  }

  // Off the selection, only softmax-pre needs grad or intermediate: the other modes read them
  // only in chunks holding a selected expert (K of E), which is most of the traffic saved. (v4
  // tried reading them everywhere in calls of up to 2^21 elements, so that no load waits for the
  // map: the T = 8192 rows got 9-25% slower, bench/NOTES.md.)
  const bool dense = a.mode == kSoftmaxPre;
  float g[VPT], y[VPT];
  uint64_t m = 0;
  if (NC > 1 && a.map_kind == kMapBytes && vec) {
    m = backward_bytemap_loads<T, VEC, NC>(a, team, off, dense, g, y);
  } else {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int e0 = elem_index<VEC>(team, c, 0);
      uint8_t mb[VEC];
      if (a.map_kind == kMapBytes) {
        load_bytes<VEC>(a.map + off, e0, E, vec, mb);
      } else if (a.map_kind == kMapBits) {
        // VEC divides 8 and e0 is a multiple of VEC, so the chunk's bits sit in one byte
        const uint8_t byte = e0 < E ? a.map[row * (int64_t)((E + 7) / 8) + (e0 >> 3)] : 0;
#pragma unroll
        for (int v = 0; v < VEC; ++v) mb[v] = (byte >> ((e0 + v) & 7)) & 1;
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) mb[v] = (e0 + v < E) ? mask_bytes[e0 + v] : 0;
      }
      uint32_t chunk_bits = 0;
#pragma unroll
      for (int v = 0; v < VEC; ++v) chunk_bits |= (uint32_t)(mb[v] != 0 && e0 + v < E) << v;
      m |= (uint64_t)chunk_bits << (c * VEC);
      float tg[VEC], ty[VEC];
      if ((dense || chunk_bits != 0) && vec && e0 + VEC <= E) {  // both loads in flight at once
        load_chunk_vec<T, VEC>(static_cast<const T*>(a.grad) + off, e0, tg);
        load_chunk_vec<float, VEC>(a.intermediate + off, e0, ty);
      } else if (dense || chunk_bits != 0) {
        load_chunk<T, VEC>(static_cast<const T*>(a.grad) + off, e0, E, false, 0.0f, tg);
        load_chunk<float, VEC>(a.intermediate + off, e0, E, false, 0.0f, ty);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) tg[v] = ty[v] = 0.0f;
      }
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        g[c * VEC + v] = tg[v] * a.scale;
        y[c * VEC + v] = ty[v];
      }
    }
  }
  if (a.map_kind == kMapNone) team.sync();  // mask_bytes is rewritten by the next row

  float dx[VPT];
  if (a.mode == kSoftmaxPre || a.mode == kSoftmaxPost) {
    float d = 0.0f;
#pragma unroll
    for (int p = 0; p < VPT; ++p)
      if ((m >> p) & 1) d += g[p] * y[p];
    d = team.sum(d);
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      const bool on = (m >> p) & 1;
      if (a.mode == kSoftmaxPre) dx[p] = y[p] * ((on ? g[p] : 0.0f) - d);
      else dx[p] = on ? y[p] * (g[p] - d) : 0.0f;  // unselected p is -inf: never multiply it
    }
  } else {
    float v[VPT];
#pragma unroll
    for (int p = 0; p < VPT; ++p) v[p] = a.mode == kSigmoid ? y[p] : sqrtf(softplusf(y[p]));
    float h[VPT];
    if (a.K > 1) {
      float sv = 0.0f, d = 0.0f;
#pragma unroll
      for (int p = 0; p < VPT; ++p)
        if ((m >> p) & 1) {
          sv += v[p];
          d += g[p] * v[p];
        }
      const float denom = team.sum(sv) + kEps;
      d = team.sum(d);
      const float inv = 1.0f / denom;
#pragma unroll
      for (int p = 0; p < VPT; ++p) h[p] = ((m >> p) & 1) ? g[p] * inv - d * inv * inv : 0.0f;
    } else {
#pragma unroll
      for (int p = 0; p < VPT; ++p) h[p] = ((m >> p) & 1) ? g[p] : 0.0f;
    }
#pragma unroll
    for (int p = 0; p < VPT; ++p) {
      float d;
      if (a.mode == kSigmoid) {
        d = h[p] * y[p] * (1.0f - y[p]);
      } else {
        const float x = y[p];
        d = h[p] * (x > 20.0f ? 1.0f : sigmoidf(x)) / (2.0f * v[p] + kEps);
      }
      dx[p] = ((m >> p) & 1) ? d : 0.0f;  // exactly 0 off the selection, even where y is NaN or inf
    }
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    float t[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) t[v] = dx[c * VEC + v];
    store_chunk<T, VEC>(static_cast<T*>(a.grad_logits) + off, elem_index<VEC>(team, c, 0), E, vec, t);
  }
}

// ---- team rows (E <= 512) ---------------------------------------------------------------------
// A team of LANES lanes owns a row, 32 / LANES rows per warp, CHUNKS chunks of 8 elements per lane:
// chunk c of rank t covers [(c * LANES + t) * 8, + 8). Two chunks (16 keys per lane) halve the lanes
// a row needs; one chunk (8 keys, twice the lanes) halves the serial work per lane and the registers,
// so more warps hide the latency (router.cu, team_chunks). A lane keeps only the raw values and
// the selection keys: scores are recomputed from the raw values where needed, so a warp runs several
// rows' rounds in one instruction stream with few registers. The whole-warp row (forward_row) runs
// ~600 instructions per row at E = 128, K = 8; these rows ~240 with packed keys (bench/NOTES.md v3).
// Rounds run on index-packed keys, which are unique: a round finds the largest key below the last
// winner, and "selected" = "at or above the K-th winner" (step 4 in the kernel: f32 keys are
// packed with a check and an exact fallback). Round r's index is kept by rank r mod LANES and stored LANES at
// a time. Groups are supported when a group is whole chunks of a power-of-2 number of lanes and
// K / Kg <= 2 (router.cu, choose_team_lanes).
constexpr int kTeamMaxChunks = 2, kTeamVec = 8;
constexpr int kTeamList = 3;  // list_rounds: K / LANES winners per lane
constexpr int kTeamMaxExperts = 32 * kTeamMaxChunks * kTeamVec;

// The value of a packed key, its index bits dropped (kMask: the packed bits).
template <uint32_t kMask>
__device__ __forceinline__ float packed_key_value(uint32_t k) {
  const uint32_t hi = k & ~kMask;
  if (hi == 0) return __uint_as_float(0x7fc00000u);  // NaN: kNanKey packs to (kMask - index)
  return __uint_as_float(hi & 0x80000000u ? hi & 0x7fffffffu : ~(hi | kMask));
}

// One kernel per score mode (KIND: a ScoreMode, kTeamSoftmaxPostPacked or kTeamSoftmaxPostF32Packed
// below). Softmax-post keeps the raw values and reads its scores off them; the other modes compute
// each score once and keep it (one register per key), in place of the raw values.
constexpr int kTeamSoftmaxPostPacked = 4;
// f32 softmax-post with rounds on packed keys (a check and an exact fallback), where kSoftmaxPost
// runs clearing rounds: a kernel with both kinds took 77 registers against 64 (router.cu,
// team_pack_f32_min_t).
constexpr int kTeamSoftmaxPostF32Packed = 5;

// Expert bias of chunk [e0, e0 + VEC) as float (0 past E or without a bias).
template <int VEC>
__device__ __forceinline__ void load_bias_chunk(const ForwardArgs& a, int E, int e0, float (&out)[VEC]) {
  switch (a.bias == nullptr ? -1 : a.bias_dtype) {
    case 0: load_chunk<float, VEC>(static_cast<const float*>(a.bias), e0, E, a.bias_vec != 0, 0.0f, out); break;
    case 1: load_chunk<__half, VEC>(static_cast<const __half*>(a.bias), e0, E, a.bias_vec != 0, 0.0f, out); break;
    case 2: load_chunk<__nv_bfloat16, VEC>(static_cast<const __nv_bfloat16*>(a.bias), e0, E, a.bias_vec != 0, 0.0f, out); break;
    default:
#pragma unroll
      for (int v = 0; v < VEC; ++v) out[v] = 0.0f;
  }
}

// Blocks per SM that ptxas must leave room for. Packed 16-bit softmax-post rows on whole warps
// (e512k22 bf16) took 55 registers, 9 blocks per SM, once the index stores left the rounds (v7.4),
// and ran 1.03x slower; capped for 10 blocks they take 48 without spills. 0 elsewhere: no
// minimum (an explicit 1 made ptxas give other kernels more registers, e128k8 bf16 48 -> 64).
constexpr int team_min_blocks(int kind, int lanes) { return kind == kTeamSoftmaxPostPacked && lanes == 32 ? 10 : 0; }

// FULL: the row is exactly the team's LANES * CHUNKS * 8 keys and allows vector access (router.cu):
// no bounds tests, no padding keys.
template <typename T, int LANES, int KIND, int CHUNKS, bool FULL>
__global__ void __launch_bounds__(128, team_min_blocks(KIND, LANES)) forward_team_kernel(ForwardArgs a) {
  pdl_wait_then_release_next();
  constexpr bool PACKED = KIND == kTeamSoftmaxPostPacked;
  static_assert(!PACKED || sizeof(T) == 2, "packed keys need 16-bit logits");
  constexpr bool PACKED_F32 = KIND == kTeamSoftmaxPostF32Packed;
  static_assert(!PACKED_F32 || sizeof(T) == 4, "f32 packed softmax-post is for f32 logits");
  constexpr int mode = PACKED || PACKED_F32 ? kSoftmaxPost : KIND;
  constexpr bool kPost = mode == kSoftmaxPost;
  using Team = LaneTeam<LANES>;
  constexpr int kKeys = CHUNKS * kTeamVec;  // keys per lane
  constexpr uint32_t kMask = !PACKED ? 0u : std::is_same<T, __half>::value ? 0x1fffu : 0xffffu;  // free key bits
  constexpr int kPerWord = 4 / (int)sizeof(T) > 0 ? 4 / (int)sizeof(T) : 1;  // raw values per register
  constexpr int kChunkWords = kTeamVec / kPerWord;
  const int lane = threadIdx.x & 31, t = lane % LANES;
  const int64_t row = ((int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * (32 / LANES) + lane / LANES;
  const bool live = row < a.T;  // a dead team still takes part in the warp's shuffles
  const int E = FULL ? LANES * kKeys : a.E;
  const int64_t off = (live ? row : 0) * (int64_t)E;
  const bool vec = FULL || a.vec != 0;  // E % 8 == 0 and 16-byte aligned buffers (router.cu)
  auto elem = [&](int p) { return ((p / kTeamVec) * LANES + t) * kTeamVec + p % kTeamVec; };
  auto in_row = [&](int e) { return FULL || e < E; };

  // ---- 1. load the raw values; padding reads as 0 (its key is absent)
  uint32_t raw[CHUNKS * kChunkWords];
  const T* x = static_cast<const T*>(a.logits) + off;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int e0 = (c * LANES + t) * kTeamVec;
    if (vec) {
#pragma unroll
      for (int q = 0; q < kChunkWords / 4; ++q) {
        const uint4 v = in_row(e0) ? reinterpret_cast<const uint4*>(x + e0)[q] : make_uint4(0, 0, 0, 0);
        uint32_t* r = raw + c * kChunkWords + 4 * q;
        r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
      }
    } else {
      const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x);
      const uint32_t* x32 = reinterpret_cast<const uint32_t*>(x);
#pragma unroll
      for (int w = 0; w < kChunkWords; ++w) {
        const int e = e0 + w * kPerWord;
        if constexpr (sizeof(T) == 2) raw[c * kChunkWords + w] = (e < E ? x16[e] : 0u) | ((e + 1 < E ? x16[e + 1] : 0u) << 16);
        else raw[c * kChunkWords + w] = e < E ? x32[e] : 0u;
      }
    }
  }
  auto value = [&](int p) {
    if constexpr (sizeof(T) == 4) return __uint_as_float(raw[p]);
    const uint32_t bits = p % 2 == 0 ? raw[p / 2] & 0xffffu : raw[p / 2] >> 16;
    if constexpr (std::is_same<T, __nv_bfloat16>::value) return __uint_as_float(bits << 16);
    else return __half2float(__ushort_as_half((unsigned short)bits));
  };

  // ---- 2. scores, intermediate, keys
  float kept[kPost ? 1 : kKeys];  // p (softmax-pre), y (sigmoid), v (sqrtsoftplus)
  if constexpr (mode == kSoftmaxPre) {
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) m = in_row(elem(p)) ? fmaxf(m, value(p)) : m;
    m = Team::maxf(m);
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) {
      kept[p] = in_row(elem(p)) ? expf(value(p) - m) : 0.0f;
      z += kept[p];
    }
    const float inv = 1.0f / Team::sum(z);
#pragma unroll
    for (int p = 0; p < kKeys; ++p) kept[p] *= inv;
  } else if constexpr (!kPost) {
#pragma unroll
    for (int p = 0; p < kKeys; ++p) kept[p] = mode == kSigmoid ? sigmoidf(value(p)) : sqrtf(softplusf(value(p)));
  }
  auto score = [&](int p) {
    if constexpr (kPost) return value(p);
    else return kept[p];
  };
  if (!kPost && live) {  // intermediate that does not depend on the selection
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int e0 = (c * LANES + t) * kTeamVec;
      float im[kTeamVec];
#pragma unroll
      for (int v = 0; v < kTeamVec; ++v) im[v] = mode == kSqrtSoftplus ? value(c * kTeamVec + v) : score(c * kTeamVec + v);
      if (in_row(e0)) store_chunk<float, kTeamVec>(a.intermediate + off, e0, E, vec, im);
    }
  }
  // Keys in the SPEC order: the score (+ bias); with groups, -inf outside the chosen groups.
  uint32_t key[kKeys];
  uint32_t chosen = ~0u;  // bit c: chunk c's group is kept
  auto full_keys = [&]() {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      float b[kTeamVec];  // the bias moves selection only (softmax rows have none: the host checks)
      if (!kPost) load_bias_chunk<kTeamVec>(a, E, (c * LANES + t) * kTeamVec, b);
#pragma unroll
      for (int v = 0; v < kTeamVec; ++v) {
        const int p = c * kTeamVec + v;
        key[p] = in_row(elem(p)) ? (kPost ? order_key(score(p)) : order_key_no_neg_zero(score(p) + b[v])) : kAbsentKey;
      }
    }
  };
  auto mask_groups = [&]() {  // keys outside the chosen groups become -inf (padding stays absent)
#pragma unroll
    for (int p = 0; p < kKeys; ++p)
      key[p] = (chosen >> (p / kTeamVec)) & 1 || (!FULL && key[p] == kAbsentKey) ? key[p] : kNegInfKey;
  };
  full_keys();

  // ---- 3. groups: keep the Kg groups with the best sums of their top K / Kg keys
  if (a.G > 0) {
    // lanes per group: a power of 2 (router.cu, choose_team_lanes)
    const int lanes_per_group = a.group_size / kTeamVec, group_shift = __ffs(lanes_per_group) - 1;
    uint32_t gkey[CHUNKS], group[CHUNKS];  // chunk c's group key and group index
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const uint32_t k = chunk_group_key<kTeamVec>(key + c * kTeamVec, lanes_per_group, a.per_group);
      gkey[c] = in_row((c * LANES + t) * kTeamVec) ? k : kAbsentKey;
      group[c] = (uint32_t)(c * LANES + t) >> group_shift;
    }
    chosen = 0;
    // A group is kept when fewer than Kg groups beat it (a larger key, or an equal key and a lower
    // index): the choice of Kg rounds of "best group left", without their serial chain of team
    // reductions. Lane i of a group compares the group's keys with those of groups i, i + L, ... of
    // each sweep (L lanes per group), read off those groups' first lanes; a butterfly over the
    // group's L lanes adds the counts up. DeepSeek-V3 (E = 256, 8 groups) on 16 lanes: 2 shuffles,
    // 4 compares and 2 butterfly steps against 4 rounds of 2 team reductions (e256k8g8 0.91x at
    // T = 65536, bench/NOTES.md v7.5). Many small groups per team (L = 1 or 2) keep the rounds.
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
      for (int c = 0; c < CHUNKS; ++c) chosen |= (uint32_t)(((beaten >> (8 * c)) & 0xffu) < (uint32_t)a.Kg) << c;
    } else {
#pragma unroll 1
      for (int r = 0; r < a.Kg; ++r) {
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
    mask_groups();
  }

  // ---- 4. rounds over index-packed keys: the key's low bits replaced by (kPack - index), so keys
  // are unique and a round needs no clearing (below). 16-bit logits (PACKED) lose nothing. f32 keys
  // (f32 logits, and the computed scores of the other modes: APPROX) lose their low
  // log2(2 * LANES * CHUNKS * 8) bits (9 at E = 256),
  // which only matters where two keys that the rounds compare agree above them: two winners in a
  // row, or the last winner and a key below it. Such rows are redone with the full keys and clearing
  // rounds: ties, and ~1.3% of rows of sigmoid(N(0, 1)) at E = 256, K = 8 (a NumPy model of these
  // rounds). kPack - index >= LANES * CHUNKS * 8 > 0: a packed key is never kAbsentKey.
  // f32 softmax-post packs only where the host asks (KIND kTeamSoftmaxPostF32Packed).
  constexpr bool APPROX = !PACKED;
  constexpr bool kPackKeys = !kPost || PACKED || PACKED_F32;
  constexpr uint32_t kPack = PACKED ? kMask : 2u * LANES * kKeys - 1u;
  void* out = a.indices == nullptr ? nullptr
              : a.idx64           ? (void*)(static_cast<int64_t*>(a.indices) + (live ? row : 0) * a.K)
                                  : (void*)(static_cast<int32_t*>(a.indices) + (live ? row : 0) * a.K);
  uint32_t first = 0, held = 0, last = 0;  // the first and the latest winner's key
  // APPROX: two keys the rounds compared agree above kPack. Bitwise, so that a round has no branch
  // for it; in round 0 (last = 0) it is set only by a winner below kPack + 1, a NaN key, whose row
  // the exact fallback then redoes. A word, not a bool (nvcc kept a bool in a byte: 3 more
  // instructions per round).
  uint32_t near = 0;
  auto record = [&](int r, uint32_t m, uint32_t winner) {
    near |= (uint32_t)(((m ^ last) & ~kPack) == 0);
    first = r == 0 ? m : first;
    last = m;
    held = t == r % LANES ? winner : held;  // lane r % LANES keeps round r's index
  };
  auto flush = [&](int r0, int rn) {  // after every LANES rounds (rounds_in_spans)
    if (out != nullptr && live && t < rn - r0) put_index(out, a.idx64 != 0, r0 + t, held);
  };
  // Clearing rounds on the full keys: the team's best key, the lowest index holding it (a team
  // min), whose key is cleared to kAbsentKey; "selected" = "a real element, now cleared".
  uint32_t sel = 0;  // the keys are dead after the rounds: 16 registers back
  auto clearing_rounds = [&]() {
    rounds_in_spans<LANES>(a.K, [&](int r) {
      uint32_t m = key[0];
#pragma unroll
      for (int p = 1; p < kKeys; ++p) m = max(m, key[p]);
      m = Team::max(m);
      uint32_t lowest = 0xffffffffu;
#pragma unroll
      for (int p = kKeys - 1; p >= 0; --p) lowest = key[p] == m ? (uint32_t)elem(p) : lowest;
      const uint32_t winner = Team::min(lowest);
#pragma unroll
      for (int p = 0; p < kKeys; ++p) key[p] = (uint32_t)elem(p) == winner ? kAbsentKey : key[p];
      record(r, m, winner);
    }, flush);
    sel = 0;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) sel |= (uint32_t)(key[p] == kAbsentKey && in_row(elem(p))) << p;
  };
  if constexpr (!kPackKeys) {
    clearing_rounds();
  } else {
#pragma unroll
    for (int p = 0; p < kKeys; ++p)
      key[p] = !FULL && key[p] == kAbsentKey ? kAbsentKey : (key[p] & ~kPack) | (kPack - (uint32_t)elem(p));
    auto min_below_rounds = [&]() {
      rounds_in_spans<LANES>(a.K, [&](int r) {
        // Unique keys are taken in descending order, so round r's winner is the largest key below
        // the last one (min_below; last = 0 in round 0: every key). Nothing is cleared: one fused
        // subtract-and-min per key, against a compare and a select per key for the clearing.
        const uint32_t below = last - 1u;
        const uint32_t m = below - Team::min(min_below(key, below));
        record(r, m, kPack - (m & kPack));
      }, flush);
    };
    // Each lane keeps a short list of its largest keys: whole-warp rows always (22 rounds at
    // E = 512); 16-lane rows of the f32-key modes up to one winner per lane on average, so refills
    // stay rare (e256k8g8 0.92-0.96x, bench/NOTES.md v6.1). 8-lane packed rows lost with lists
    // (e128k8 bf16 1.04-1.14x, 64 registers against 56); 16-lane packed rows are untried.
    constexpr bool kLists = LANES == 32 || (LANES == 16 && APPROX);
    if constexpr (kLists) {
      if (LANES == 32 || a.K <= LANES)
        list_rounds<kTeamList, Team, false, (PACKED || PACKED_F32) && LANES == 32 && CHUNKS == 2 && FULL ? 2 : 1>(
            key, a.K, [&](int r, uint32_t m) { record(r, m, kPack - (m & kPack)); }, flush);
      else
        min_below_rounds();
    } else {
      min_below_rounds();
    }
    // at or above the last winner (padding keys are 0, below every real key; last > 0). The
    // redundant bounds test stays where lists are not used: without it nvcc gave 8-lane packed rows
    // 64 registers, not 56.
#pragma unroll
    for (int p = 0; p < kKeys; ++p) sel |= (uint32_t)(key[p] >= last && (kLists || in_row(elem(p)))) << p;
    if constexpr (APPROX) {
      // Keys are ordered, so a key below the last winner agrees with it above kPack only if the
      // largest key below it does: one more round checks them all.
      const uint32_t below = last - 1u, d = Team::min(min_below(key, below));
      near |= (uint32_t)(d <= below && (((below - d) ^ last) & ~kPack) == 0);
    }
    if (APPROX && __any_sync(kFullMask, near)) {
      // every team of the warp again (a uniform branch: the teams shuffle together)
      full_keys();
      if (a.G > 0) mask_groups();
      clearing_rounds();
    }
  }

  // ---- 5. weights
  float w[kKeys];
  if (mode == kSoftmaxPost) {
    // the selection's maximum is the first winner's value (16-bit keys pack without loss; f32 keys
    // of the clearing rounds are whole), unless groups turned keys into -inf or f32 keys were packed
    float mx;
    if (!PACKED_F32 && a.G == 0) {
      mx = PACKED ? packed_key_value<kMask>(first) : key_value(first);
    } else {
      mx = -INFINITY;
#pragma unroll
      for (int p = 0; p < kKeys; ++p) mx = (sel >> p) & 1 ? fmaxf(mx, value(p)) : mx;
      mx = Team::maxf(mx);
    }
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) {
      const float e = expf(value(p) - mx);  // for every element, then a select: no branch per element
      w[p] = (sel >> p) & 1 ? e : 0.0f;
      z += w[p];
    }
    const float inv = 1.0f / Team::sum(z);
#pragma unroll
    for (int p = 0; p < kKeys; ++p) w[p] *= inv;
  } else if (mode == kSoftmaxPre || a.K == 1) {
#pragma unroll
    for (int p = 0; p < kKeys; ++p) w[p] = score(p);
  } else {
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) {
      w[p] = score(p);
      z += (sel >> p) & 1 ? w[p] : 0.0f;
    }
    const float denom = Team::sum(z) + kEps;
    if (isinf(denom)) {  // sqrtsoftplus of +inf: IEEE division (NaN where w is inf too, else 0)
#pragma unroll
      for (int p = 0; p < kKeys; ++p) w[p] /= denom;
    } else {  // denom >= 1e-20: no range check needed
      const float r = refined_rcp(denom);
#pragma unroll
      for (int p = 0; p < kKeys; ++p) w[p] = divide_by(w[p], denom, r);
    }
  }
  if (!live) return;

  // ---- 6. outputs
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int e0 = (c * LANES + t) * kTeamVec;
    if (!in_row(e0)) continue;
    float pr[kTeamVec], im[kTeamVec];
    uint8_t mb[kTeamVec];
    const uint32_t bits = (sel >> (c * kTeamVec)) & 0xffu;
#pragma unroll
    for (int v = 0; v < kTeamVec; ++v) {
      const bool on = (bits >> v) & 1;
      pr[v] = on ? w[c * kTeamVec + v] * a.scale : 0.0f;
      im[v] = on ? w[c * kTeamVec + v] : -INFINITY;
      mb[v] = on;
    }
    // FULL rows only: in the others (vector access or not) the second path cost registers, and
    // spills where the 48-register cap holds (32-lane packed rows)
    if constexpr (FULL) store_forward_chunk_vec<T>(a, E, row, e0, mode == kSoftmaxPost, pr, im, bits);
    else store_forward_chunk<T, kTeamVec>(a, E, row, e0, vec, mode == kSoftmaxPost, pr, im, mb, bits);
  }
}

// ---- wide packed rows (softmax-post, no groups, 256 < E <= 2560; router.cu, wide_min_experts) ---
// One warp per row, CHUNKS chunks of 8 per lane (chunk c of lane t covers [(c * 32 + t) * 8, + 8)),
// and only index-packed keys in registers (8 * CHUNKS). Rounds keep a short list of the lane's
// largest keys (list_rounds), and the lane that keeps a winner writes its weight last.
// 16-bit logits pack without loss (forward_wide_packed_kernel): the values come back from the keys
// (packed_key_value), and the lane that keeps a winner takes its exp once, after the rounds. f32
// logits pack with a check (forward_wide_f32_kernel, which adds a boundary and an order fix-up).
// Block rows (forward_block_kernel) ran e2304k36 at ~48% of the copy ceiling in bf16 (NOTES v3).
constexpr int kWideMinChunks = 2, kWideMaxChunks = 10;
constexpr int kWideMaxK = 64;  // two winners per lane (forward_wide_packed_kernel's `held`)
constexpr int kWideList = 4;  // list_rounds: ~1 refill per row at K = 36 (36 / 32 winners per lane)

// A wide row's keys: lane's chunk c holds elements [(c * 32 + lane) * 8, + 8); MASK != 0 packs
// (MASK - index) into the low bits. With vector access (E % 8 == 0: a chunk is whole or absent)
// every chunk's 16-byte pieces are loaded first, as independent predicated loads, and converted
// after: written as load-then-convert per chunk, nvcc 13's schedule for the same source changed with
// unrelated edits (ForwardArgs' fields), between all loads in flight (127 registers, e2304k36 bf16
// 563 us) and one chunk's at a time (102, 700 us). Only the last chunk can be absent (CHUNKS is
// E / 256 rounded up), and a whole chunk needs no bounds test per key: the index goes in with one
// add (the masked key's low bits are 0), where `e >= E` and an OR took 4-5 of ~13 instructions.
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
// lane's key at place p is selected. The lanes holding the winners then write
// their weights over those: one exp per winner, where a weight per element computed and selected
// would cost ~12 instructions for each of the row's E elements. With vector access every chunk is
// whole or absent, and each output's pointer is set once per row: store_forward_chunk's bounds
// tests, 64-bit offsets and map-kind branches took ~78 instructions per chunk (v7.6: ~30). Not
// store_forward_chunk_vec per chunk: tried, it took more registers (bf16 CHUNKS = 10 128 -> 165,
// 8 96 -> 124, f32 6 80 -> 96).
template <typename T, int CHUNKS, class Selected>
__device__ __forceinline__ void wide_row_map(const ForwardArgs& a, int64_t row, bool vec, int lane, Selected selected) {
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
__global__ void __launch_bounds__(128) forward_wide_packed_kernel(ForwardArgs a) {
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
  // The softmax over the winners, one exp per winner in the lane that holds it: summed in the
  // rounds, each lane took every winner's exp (~17 of a round's ~38 instructions, v7.6).
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
// - the boundary: where keys below the last winner share its upper bits (5% of rows of N(0, 4)
//   logits at E = 2304, K = 36, 1.3% of N(0, 1) at E = 1024, K = 22, in a NumPy model of this
//   kernel's selection), the winners from that group are chosen again by full key
//   (wide_f32_fix_boundary). v7.5 ran K clearing rounds on the full keys there: 4.2% of the rows of
//   e2304k36 took 11% of the kernel's instructions.
// - the order: winners sharing upper bits came by index; each winner's full key is read back (one
//   load per winner) and compared with its neighbours in the same run (wide_f32_ranks). v7.5
//   compared every winner with all K (21 instructions per winner per row).
constexpr uint32_t kWideF32Mask = 0xfffu;

// The boundary group: keys whose upper bits are `upper` (the last winner's). Those above it are all
// selected; the rest of the K come from the group in order of (full key desc, index asc), which is
// the order of fine_key below (the group shares the upper bits, so the full keys differ in the low
// 12 only). Rounds above + i are rewritten with the group's winners in that order; `members` and
// `picked` mark the lane's group keys and those now selected, by place (bit p % 32 of word p / 32).
// Members (most often none or one per lane) are visited through those masks: a loop over all keys
// with a load each took 96 registers where the kernel needs 64-80 (CHUNKS = 4..6), and rewriting
// the keys in place (selected or absent) took 27 more at CHUNKS = 9.
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
__global__ void __launch_bounds__(128) forward_wide_f32_kernel(ForwardArgs a) {
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

// ---- kernels ---------------------------------------------------------------------------------
// Warp teams: blockDim.x / 32 rows per block, each warp with its own slice of shared memory.
// Block teams: one row per block; the first 128 words of shared memory are the team's scratch.
// (v2 tried __launch_bounds__(128, 12) for VPT <= 4, 40 registers instead of 46: see warp_rounds_select.)
template <typename T, int VEC, int NC>
__global__ void forward_warp_kernel(ForwardArgs a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  WarpTeam team;
  forward_row<T, VEC, NC>(a, team, row, smem + warp * a.smem_words_per_team,
                          static_cast<const T*>(a.logits) + row * a.E, a.vec != 0);
}

// Persistent warp teams: each warp walks rows gridDim.x * warps apart, its logits staged through
// shared memory by cp.async, the next row in flight while this one is computed (2 buffers).
// Needs 16-byte aligned rows (host checks).
template <typename T, int VEC, int NC>
__global__ void forward_warp_pipelined_kernel(ForwardArgs a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  uint32_t* team_smem = smem + warp * a.smem_words_per_team;
  uint8_t* stages = reinterpret_cast<uint8_t*>(smem + warps * a.smem_words_per_team) +
                    (size_t)warp * a.stages * a.stage_bytes;
  async::RowPipeline pipe(stages, a.stage_bytes, a.stages);
  const int row_bytes = a.E * (int)sizeof(T);
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t step = (int64_t)gridDim.x * warps;
  int64_t row = (int64_t)blockIdx.x * warps + warp;
  WarpTeam team;
  if (row < a.T) pipe.fetch(0, logits + row * a.E, row_bytes, lane, 32);
  for (int s = 0; row < a.T; row += step) {
    const bool ahead = pipe.prefetches() && row + step < a.T;
    if (ahead) pipe.fetch(s ^ 1, logits + (row + step) * a.E, row_bytes, lane, 32);
    pipe.wait(ahead);
    __syncwarp();
    forward_row<T, VEC, NC>(a, team, row, team_smem, reinterpret_cast<const T*>(pipe.stage(s)), true);
    __syncwarp();  // every lane has read the buffer before it is refilled
    if (!pipe.prefetches()) {
      if (row + step < a.T) pipe.fetch(0, logits + (row + step) * a.E, row_bytes, lane, 32);
    } else {
      s ^= 1;
    }
  }
}

// Block teams have at most kMaxBlockThreads threads, so the compiler may give each 128 registers.
constexpr int kMaxBlockThreads = 512;

template <typename T, int VEC, int NC>
__global__ void __launch_bounds__(kMaxBlockThreads) forward_block_kernel(ForwardArgs a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  const int64_t row = blockIdx.x;
  forward_row<T, VEC, NC>(a, team, row, smem + 128, static_cast<const T*>(a.logits) + row * a.E, a.vec != 0);
}

template <typename T, int VEC, int NC>
__global__ void backward_warp_kernel(BackwardArgs a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  const int warp = threadIdx.x >> 5;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (row >= a.T) return;
  WarpTeam team;
  backward_row<T, VEC, NC>(a, team, row, smem + warp * a.smem_words_per_team);
}

template <typename T, int VEC, int NC>
__global__ void __launch_bounds__(kMaxBlockThreads) backward_block_kernel(BackwardArgs a) {
  pdl_wait_then_release_next();
  extern __shared__ uint32_t smem[];
  BlockTeam team(smem);
  backward_row<T, VEC, NC>(a, team, (int64_t)blockIdx.x, smem + 128);
}

}  // namespace router
}  // namespace moekit
