// What the grouped top-k kernel reads (SPEC section 4). One warp per row in the router engine's
// layout (elem_index: chunks of VEC experts, chunk c of lane l at (32 c + l) VEC); output slot r
// (routed r < K, shared K <= r < K + S) belongs to lane r.
#pragma once

#include <cstdint>

namespace moekit {
namespace grouped_topk {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxExperts = 1024;
constexpr int kMaxSlots = 32;  // K + S
// Shared words per warp before its score row: the group keys (G <= 32), then the winners (K <= 32).
constexpr int kWarpHeadWords = 64;

struct Params {
  const void* logits;  // [T, E]
  const void* bias;    // [E] or null
  int bias_dtype;      // moekit_dtype_t
  float* weights;      // [T, K + S]
  void* ids;           // [T, K + S], i32 or i64
  int ids_i64;
  int64_t T;
  int E, K, G, Kg, S;
  int gsize, per_group;  // E / G, and the keys a group score sums: min(2, E / G)
  int vec;               // rows allow whole-chunk vector loads (16-byte aligned, E % VEC == 0)
  int chunk_groups;      // groups are whole chunks of a power-of-2 number of lanes (G > 1)
  int warp_words;        // shared words per warp: kWarpHeadWords + the score row (E, rounded to 4)
  int softmax;
  int renormalize, apply_scale;
  float rsf;
};

}  // namespace grouped_topk
}  // namespace moekit
