// Router forward on team rows (E <= 512): a team of LANES lanes owns a row, 32 / LANES rows per
// warp, CHUNKS chunks of 8 elements per lane (chunk c of rank t covers [(c * LANES + t) * 8, + 8)).
// Two chunks per lane halve the lanes a row needs; one chunk (twice the lanes) halves the serial work
// per lane and the registers, so more warps hide the latency (the plan picks). A lane keeps only the
// raw values and the selection keys, so a warp runs several rows' rounds in one instruction stream
// with few registers (bench/NOTES.md v3: ~240 instructions per row at E = 128, K = 8, against ~600
// for a whole-warp row). Rounds run on index-packed keys, which are unique (f32 keys are packed with
// a check and an exact fallback); round r's index is kept by rank r mod LANES and stored LANES at a
// time. Groups are supported when a group is whole chunks of a power-of-2 number of lanes and
// K / Kg <= 2 (plan.h).
//
// The kernel is a sequence of steps, each a function of the row's registers (raw values, scores,
// keys, selection) passed explicitly: written as one struct with member functions, nvcc scheduled
// the same code worse (bench/NOTES.md, the core reshape).
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/device.cuh"
#include "common/scores.cuh"
#include "common/team.cuh"
#include "common/topk/groups.cuh"
#include "common/topk/rounds.cuh"
#include "router/params.h"
#include "router/store.cuh"

namespace moekit {
namespace router {

constexpr int kTeamList = 3;  // list_rounds: K / LANES winners per lane

// Blocks per SM that ptxas must leave room for: whole-warp packed 16-bit rows stay at 48 registers
// (10 blocks per SM, no spills; bench/NOTES.md v7.4). 0 elsewhere: no minimum (an explicit 1 gives
// other kernels more registers than they use well).
constexpr int team_min_blocks(int kind, int lanes) { return kind == kTeamSoftmaxPostPacked && lanes == 32 ? 10 : 0; }

// The compile-time facts of one team kernel. KIND: a ScoreMode or a TeamKernel. Softmax-post keeps
// the raw values and reads its scores off them; the other modes compute each score once and keep it
// (one register per key). FULL: the row is exactly the team's LANES * CHUNKS * 8 keys and allows
// vector access: no bounds tests, no padding keys.
template <typename T, int LANES, int KIND, int CHUNKS, bool FULL>
struct TeamRows {
  using Elem = T;
  static constexpr int kLanes = LANES, kChunks = CHUNKS;
  static constexpr bool kFull = FULL;
  static constexpr bool PACKED = KIND == kTeamSoftmaxPostPacked;
  static_assert(!PACKED || sizeof(T) == 2, "packed keys need 16-bit logits");
  static constexpr bool PACKED_F32 = KIND == kTeamSoftmaxPostF32Packed;
  static_assert(!PACKED_F32 || sizeof(T) == 4, "f32 packed softmax-post is for f32 logits");
  static constexpr bool kAux = KIND >= kTeamAux;  // aux-loss scores (params.h)
  static constexpr int mode = kAux ? KIND - kTeamAux : PACKED || PACKED_F32 ? kSoftmaxPost : KIND;
  static_assert(!kAux || mode != kSoftmaxPost, "aux-loss scores use softmax-pre");
  static constexpr bool kPost = mode == kSoftmaxPost;
  using Team = LaneTeam<LANES>;
  static constexpr int kKeys = CHUNKS * kTeamVec;  // keys per lane
  static constexpr uint32_t kMask = !PACKED ? 0u : std::is_same<T, __half>::value ? 0x1fffu : 0xffffu;  // free key bits
  static constexpr int kPerWord = 4 / (int)sizeof(T) > 0 ? 4 / (int)sizeof(T) : 1;  // raw values per register
  static constexpr int kChunkWords = kTeamVec / kPerWord;
  static constexpr int kRawWords = CHUNKS * kChunkWords;
  static constexpr int kKept = kPost ? 1 : kKeys;  // kept scores: p (softmax-pre), y (sigmoid), v (sqrtsoftplus)
  // Rounds over index-packed keys: the key's low bits replaced by (kPack - index), so keys are
  // unique and a round needs no clearing. 16-bit logits (PACKED) lose nothing; f32 keys (f32 logits,
  // and the computed scores of the other modes: APPROX) lose their low log2(2 * LANES * kKeys) bits,
  // which only matters where two keys that the rounds compare agree above them: such rows are redone
  // with the full keys and clearing rounds (team_select). f32 softmax-post packs only in its own
  // kernel (PACKED_F32); kSoftmaxPost runs clearing rounds.
  static constexpr bool APPROX = !PACKED;
  static constexpr bool kPackKeys = !kPost || PACKED || PACKED_F32;
  static constexpr uint32_t kPack = PACKED ? kMask : 2u * LANES * kKeys - 1u;

  static __device__ __forceinline__ int elem(int t, int p) {
    return ((p / kTeamVec) * LANES + t) * kTeamVec + p % kTeamVec;
  }
  static __device__ __forceinline__ bool in_row(int E, int e) { return FULL || e < E; }
  static __device__ __forceinline__ float value(const uint32_t (&raw)[kRawWords], int p) {
    if constexpr (sizeof(T) == 4) return __uint_as_float(raw[p]);
    const uint32_t bits = p % 2 == 0 ? raw[p / 2] & 0xffffu : raw[p / 2] >> 16;
    if constexpr (std::is_same<T, __nv_bfloat16>::value) return __uint_as_float(bits << 16);
    else return __half2float(__ushort_as_half((unsigned short)bits));
  }
  static __device__ __forceinline__ float score(const uint32_t (&raw)[kRawWords], const float (&kept)[kKept], int p) {
    if constexpr (kPost) return value(raw, p);
    else return kept[p];
  }
};

// Step 1: the raw values; padding reads as 0 (its key is absent).
template <class R>
__device__ __forceinline__ void team_load_values(const ForwardParams& a, int t, int E, int64_t off, bool vec,
                                                 uint32_t (&raw)[R::kRawWords]) {
  using T = typename R::Elem;
  const T* x = static_cast<const T*>(a.logits) + off;
#pragma unroll
  for (int c = 0; c < R::kChunks; ++c) {
    const int e0 = (c * R::kLanes + t) * kTeamVec;
    if (vec) {
#pragma unroll
      for (int q = 0; q < R::kChunkWords / 4; ++q) {
        const uint4 v = R::in_row(E, e0) ? reinterpret_cast<const uint4*>(x + e0)[q] : make_uint4(0, 0, 0, 0);
        uint32_t* r = raw + c * R::kChunkWords + 4 * q;
        r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
      }
    } else {
      const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x);
      const uint32_t* x32 = reinterpret_cast<const uint32_t*>(x);
#pragma unroll
      for (int w = 0; w < R::kChunkWords; ++w) {
        const int e = e0 + w * R::kPerWord;
        if constexpr (sizeof(T) == 2) raw[c * R::kChunkWords + w] = (e < E ? x16[e] : 0u) | ((e + 1 < E ? x16[e + 1] : 0u) << 16);
        else raw[c * R::kChunkWords + w] = e < E ? x32[e] : 0u;
      }
    }
  }
}

// Step 2: the scores of the modes that keep them, and the intermediate that does not depend on the
// selection.
template <class R>
__device__ __forceinline__ void team_scores(const ForwardParams& a, int t, int E, int64_t off, bool vec, bool live,
                                            const uint32_t (&raw)[R::kRawWords], float (&kept)[R::kKept]) {
  constexpr int mode = R::mode;
  if constexpr (mode == kSoftmaxPre) {
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < R::kKeys; ++p) m = R::in_row(E, R::elem(t, p)) ? fmaxf(m, R::value(raw, p)) : m;
    m = R::Team::maxf(m);
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < R::kKeys; ++p) {
      kept[p] = R::in_row(E, R::elem(t, p)) ? expf(R::value(raw, p) - m) : 0.0f;
      z += kept[p];
    }
    const float inv = 1.0f / R::Team::sum(z);
#pragma unroll
    for (int p = 0; p < R::kKeys; ++p) kept[p] *= inv;
  } else if constexpr (!R::kPost) {
#pragma unroll
    for (int p = 0; p < R::kKeys; ++p)
      kept[p] = mode == kSigmoid ? sigmoidf(R::value(raw, p)) : sqrtf(softplusf(R::value(raw, p)));
  }
  if (!R::kPost && live) {
#pragma unroll
    for (int c = 0; c < R::kChunks; ++c) {
      const int e0 = (c * R::kLanes + t) * kTeamVec;
      float im[kTeamVec];
#pragma unroll
      for (int v = 0; v < kTeamVec; ++v)
        im[v] = mode == kSqrtSoftplus ? R::value(raw, c * kTeamVec + v) : R::score(raw, kept, c * kTeamVec + v);
      if (R::in_row(E, e0)) store_chunk<float, kTeamVec>(a.intermediate + off, e0, E, vec, im);
    }
  }
}

// Step 3: keys in the SPEC order, the score (+ bias); padding absent.
template <class R>
__device__ __forceinline__ void team_keys(const ForwardParams& a, int t, int E, const uint32_t (&raw)[R::kRawWords],
                                          const float (&kept)[R::kKept], uint32_t (&key)[R::kKeys]) {
#pragma unroll
  for (int c = 0; c < R::kChunks; ++c) {
    float b[kTeamVec];  // the bias moves selection only (softmax rows have none: the host checks)
    if (!R::kPost) load_bias_chunk<kTeamVec>(a, E, (c * R::kLanes + t) * kTeamVec, b);
#pragma unroll
    for (int v = 0; v < kTeamVec; ++v) {
      const int p = c * kTeamVec + v;
      key[p] = R::in_row(E, R::elem(t, p))
                   ? (R::kPost ? order_key(R::score(raw, kept, p)) : order_key_no_neg_zero(R::score(raw, kept, p) + b[v]))
                   : kAbsentKey;
    }
  }
}

// Step 4 (with groups): keys outside the chosen groups (bit c of `chosen`: chunk c's) become -inf;
// padding stays absent.
template <class R>
__device__ __forceinline__ void team_mask_groups(uint32_t chosen, uint32_t (&key)[R::kKeys]) {
#pragma unroll
  for (int p = 0; p < R::kKeys; ++p)
    key[p] = (chosen >> (p / kTeamVec)) & 1 || (!R::kFull && key[p] == kAbsentKey) ? key[p] : kNegInfKey;
}

// Step 5: the K winners. Returns the selection (bit p: the lane's key p) and the first and the last
// winner's key; round r's index is stored by rank r % LANES, LANES rounds at a time.
template <class R>
__device__ __forceinline__ uint32_t team_select(const ForwardParams& a, int t, int64_t row, bool live, int E,
                                                const uint32_t (&raw)[R::kRawWords], const float (&kept)[R::kKept],
                                                uint32_t chosen, uint32_t (&key)[R::kKeys], uint32_t& first,
                                                uint32_t& last) {
  using Team = typename R::Team;
  constexpr int LANES = R::kLanes, kKeys = R::kKeys;
  constexpr uint32_t kPack = R::kPack;
  void* out = a.indices == nullptr ? nullptr
              : a.idx64           ? (void*)(static_cast<int64_t*>(a.indices) + (live ? row : 0) * a.K)
                                  : (void*)(static_cast<int32_t*>(a.indices) + (live ? row : 0) * a.K);
  uint32_t held = 0;
  // APPROX: two keys the rounds compared agree above kPack. Bitwise, so that a round has no branch
  // for it; in round 0 (last = 0) it is set only by a winner below kPack + 1, a NaN key, whose row
  // the exact fallback then redoes. A word, not a bool (a bool kept in a byte costs instructions).
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
  uint32_t sel = 0;
  auto clearing_rounds = [&]() {
    rounds_in_spans<LANES>(a.K, [&](int r) {
      uint32_t m = key[0];
#pragma unroll
      for (int p = 1; p < kKeys; ++p) m = max(m, key[p]);
      m = Team::max(m);
      uint32_t lowest = 0xffffffffu;
#pragma unroll
      for (int p = kKeys - 1; p >= 0; --p) lowest = key[p] == m ? (uint32_t)R::elem(t, p) : lowest;
      const uint32_t winner = Team::min(lowest);
#pragma unroll
      for (int p = 0; p < kKeys; ++p) key[p] = (uint32_t)R::elem(t, p) == winner ? kAbsentKey : key[p];
      record(r, m, winner);
    }, flush);
    sel = 0;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) sel |= (uint32_t)(key[p] == kAbsentKey && R::in_row(E, R::elem(t, p))) << p;
  };
  if constexpr (!R::kPackKeys) {
    clearing_rounds();
  } else {
#pragma unroll
    for (int p = 0; p < kKeys; ++p)
      key[p] = !R::kFull && key[p] == kAbsentKey ? kAbsentKey : (key[p] & ~kPack) | (kPack - (uint32_t)R::elem(t, p));
    auto min_below_rounds = [&]() {
      rounds_in_spans<LANES>(a.K, [&](int r) {
        // Unique keys are taken in descending order, so round r's winner is the largest key below
        // the last one (min_below; last = 0 in round 0: every key).
        const uint32_t below = last - 1u;
        const uint32_t m = below - Team::min(min_below(key, below));
        record(r, m, kPack - (m & kPack));
      }, flush);
    };
    // Each lane keeps a short list of its largest keys: whole-warp rows always; 16-lane rows of the
    // f32-key modes up to one winner per lane on average, so refills stay rare. 8-lane packed rows
    // lost with lists (bench/NOTES.md v6.1).
    constexpr bool kLists = LANES == 32 || (LANES == 16 && R::APPROX);
    if constexpr (kLists) {
      if (LANES == 32 || a.K <= LANES)
        list_rounds<kTeamList, Team, false, (R::PACKED || R::PACKED_F32) && LANES == 32 && R::kChunks == 2 && R::kFull ? 2 : 1>(
            key, a.K, [&](int r, uint32_t m) { record(r, m, kPack - (m & kPack)); }, flush);
      else
        min_below_rounds();
    } else {
      min_below_rounds();
    }
    // at or above the last winner (padding keys are 0, below every real key; last > 0). The
    // redundant bounds test stays where lists are not used: it saves registers there.
#pragma unroll
    for (int p = 0; p < kKeys; ++p) sel |= (uint32_t)(key[p] >= last && (kLists || R::in_row(E, R::elem(t, p)))) << p;
    if constexpr (R::APPROX) {
      // Keys are ordered, so a key below the last winner agrees with it above kPack only if the
      // largest key below it does: one more round checks them all.
      const uint32_t below = last - 1u, d = Team::min(min_below(key, below));
      near |= (uint32_t)(d <= below && (((below - d) ^ last) & ~kPack) == 0);
    }
    if (R::APPROX && __any_sync(kFullMask, near)) {
      // every team of the warp again (a uniform branch: the teams shuffle together)
      team_keys<R>(a, t, E, raw, kept, key);
      if (a.G > 0) team_mask_groups<R>(chosen, key);
      clearing_rounds();
    }
  }
  return sel;
}

// Step 6: the weights (unscaled) of the lane's keys; unselected ones are discarded by the stores.
template <class R>
__device__ __forceinline__ void team_weights(const ForwardParams& a, const uint32_t (&raw)[R::kRawWords],
                                             const float (&kept)[R::kKept], uint32_t sel, uint32_t first,
                                             float (&w)[R::kKeys]) {
  constexpr int kKeys = R::kKeys;
  if (R::mode == kSoftmaxPost) {
    // the selection's maximum is the first winner's value (16-bit keys pack without loss; f32 keys
    // of the clearing rounds are whole), unless groups turned keys into -inf or f32 keys were packed
    float mx;
    if (!R::PACKED_F32 && a.G == 0) {
      mx = R::PACKED ? packed_key_value<R::kMask>(first) : key_value(first);
    } else {
      mx = -INFINITY;
#pragma unroll
      for (int p = 0; p < kKeys; ++p) mx = (sel >> p) & 1 ? fmaxf(mx, R::value(raw, p)) : mx;
      mx = R::Team::maxf(mx);
    }
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) {
      const float e = expf(R::value(raw, p) - mx);  // for every element, then a select: no branch per element
      w[p] = (sel >> p) & 1 ? e : 0.0f;
      z += w[p];
    }
    const float inv = 1.0f / R::Team::sum(z);
#pragma unroll
    for (int p = 0; p < kKeys; ++p) w[p] *= inv;
  } else if (R::mode == kSoftmaxPre || a.K == 1) {
#pragma unroll
    for (int p = 0; p < kKeys; ++p) w[p] = R::score(raw, kept, p);
  } else {
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < kKeys; ++p) {
      w[p] = R::score(raw, kept, p);
      z += (sel >> p) & 1 ? w[p] : 0.0f;
    }
    const float denom = R::Team::sum(z) + kEps;
    if (isinf(denom)) {  // sqrtsoftplus of +inf: IEEE division (NaN where w is inf too, else 0)
#pragma unroll
      for (int p = 0; p < kKeys; ++p) w[p] /= denom;
    } else {  // denom >= 1e-20: no range check needed
      const float r = refined_rcp(denom);
#pragma unroll
      for (int p = 0; p < kKeys; ++p) w[p] = divide_by(w[p], denom, r);
    }
  }
}

// Step 6, aux-loss scores: the lane's scores normalized over the whole row (softmax-pre: p itself).
template <class R>
__device__ __forceinline__ void team_aux_scores(int t, int E, const float (&kept)[R::kKept], float (&w)[R::kKeys]) {
  if constexpr (R::mode == kSoftmaxPre) {
#pragma unroll
    for (int p = 0; p < R::kKeys; ++p) w[p] = kept[p];
  } else {
    float z = 0.0f;
#pragma unroll
    for (int p = 0; p < R::kKeys; ++p) z += R::in_row(E, R::elem(t, p)) ? kept[p] : 0.0f;  // padding's score is not 0
    const float denom = R::Team::sum(z) + kEps;
    if (isinf(denom)) {
#pragma unroll
      for (int p = 0; p < R::kKeys; ++p) w[p] = kept[p] / denom;
    } else {
      const float r = refined_rcp(denom);
#pragma unroll
      for (int p = 0; p < R::kKeys; ++p) w[p] = divide_by(kept[p], denom, r);
    }
  }
}

// Step 7: probs (aux: the f32 scores of every expert), the softmax-post intermediate and the map.
template <class R>
__device__ __forceinline__ void team_store(const ForwardParams& a, int t, int64_t row, int E, bool vec, uint32_t sel,
                                           const float (&w)[R::kKeys]) {
#pragma unroll
  for (int c = 0; c < R::kChunks; ++c) {
    const int e0 = (c * R::kLanes + t) * kTeamVec;
    if (!R::in_row(E, e0)) continue;
    float pr[kTeamVec], im[kTeamVec];
    uint8_t mb[kTeamVec];
    const uint32_t bits = (sel >> (c * kTeamVec)) & 0xffu;
#pragma unroll
    for (int v = 0; v < kTeamVec; ++v) {
      const bool on = (bits >> v) & 1;
      pr[v] = R::kAux ? w[c * kTeamVec + v] : on ? w[c * kTeamVec + v] * a.scale : 0.0f;
      im[v] = on ? w[c * kTeamVec + v] : -INFINITY;
      mb[v] = on;
    }
    using P = typename std::conditional<R::kAux, float, typename R::Elem>::type;
    // FULL rows only: elsewhere the second store path costs registers (and spills under a cap)
    if constexpr (R::kFull) store_forward_chunk_vec<P>(a, E, row, e0, R::mode == kSoftmaxPost, pr, im, bits);
    else store_forward_chunk<P, kTeamVec>(a, E, row, e0, vec, R::mode == kSoftmaxPost, pr, im, mb, bits);
  }
}

// One team's row (dead teams, row >= T, still take part in the warp's shuffles).
template <class R>
__device__ __forceinline__ void team_row(const ForwardParams& a, int64_t row, int t) {
  const bool live = row < a.T;
  const int E = R::kFull ? R::kLanes * R::kKeys : a.E;
  const int64_t off = (live ? row : 0) * (int64_t)E;
  const bool vec = R::kFull || a.vec != 0;  // E % 8 == 0 and 16-byte aligned buffers (plan.h)

  uint32_t raw[R::kRawWords];
  team_load_values<R>(a, t, E, off, vec, raw);
  float kept[R::kKept];
  team_scores<R>(a, t, E, off, vec, live, raw, kept);
  uint32_t key[R::kKeys];
  team_keys<R>(a, t, E, raw, kept, key);
  uint32_t chosen = ~0u;  // bit c: chunk c's group is kept
  if (a.G > 0) {
    chosen = lane_team_kept_groups<R::kLanes, R::kChunks, kTeamVec, R::kFull>(key, t, E, a.group_size, a.per_group, a.Kg);
    team_mask_groups<R>(chosen, key);
  }
  uint32_t first = 0, last = 0;  // the first and the latest winner's key
  const uint32_t sel = team_select<R>(a, t, row, live, E, raw, kept, chosen, key, first, last);
  float w[R::kKeys];
  if constexpr (R::kAux) team_aux_scores<R>(t, E, kept, w);
  else team_weights<R>(a, raw, kept, sel, first, w);
  if (!live) return;
  team_store<R>(a, t, row, E, vec, sel, w);
}

template <int LANES>
__device__ __forceinline__ int64_t team_row_index() {
  const int lane = threadIdx.x & 31;
  return ((int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * (32 / LANES) + lane / LANES;
}

template <typename T, int LANES, int KIND, int CHUNKS, bool FULL>
__global__ void __launch_bounds__(128, team_min_blocks(KIND, LANES)) forward_team_kernel(ForwardParams a) {
  pdl_wait_then_release_next();
  team_row<TeamRows<T, LANES, KIND, CHUNKS, FULL>>(a, team_row_index<LANES>(), (threadIdx.x & 31) % LANES);
}

// The aux-loss scores' team kernel for the router's KIND: softmax scores are softmax-pre.
constexpr int aux_team_kind(int kind) {
  return kTeamAux + (kind == kSigmoid || kind == kSqrtSoftplus ? kind : (int)kSoftmaxPre);
}

// The router and the aux-loss scores on the same rows (moekit_router_aux_forward): the aux pass
// reads the logits the router pass has just brought in, from L1 or L2.
template <typename T, int LANES, int KIND, int CHUNKS, bool FULL>
__global__ void __launch_bounds__(128) forward_team_pair_kernel(ForwardParams a, ForwardParams b) {
  pdl_wait_then_release_next();
  const int64_t row = team_row_index<LANES>();
  const int t = (threadIdx.x & 31) % LANES;
  team_row<TeamRows<T, LANES, KIND, CHUNKS, FULL>>(a, row, t);
  team_row<TeamRows<T, LANES, aux_team_kind(KIND), CHUNKS, FULL>>(b, row, t);
}

}  // namespace router
}  // namespace moekit
