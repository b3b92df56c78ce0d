// What the grouped top-k kernel reads (SPEC section 4). One warp per row; lane l holds experts
// l, l + 32, ... (VPL of them); output slot r (routed r < K, shared K <= r < K + S) belongs to lane r.
#pragma once

#include <cstdint>

namespace moekit {
namespace grouped_topk {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxExperts = 1024;
constexpr int kMaxSlots = 32;  // K + S

struct Params {
  const void* logits;  // [T, E]
  const void* bias;    // [E] or null
  int bias_dtype;      // moekit_dtype_t
  float* weights;      // [T, K + S]
  void* ids;           // [T, K + S], i32 or i64
  int ids_i64;
  int64_t T;
  int E, K, G, Kg, S;
  int softmax;
  int renormalize, apply_scale;
  float rsf;
};

}  // namespace grouped_topk
}  // namespace moekit
