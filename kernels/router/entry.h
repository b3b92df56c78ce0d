// What the router family's C entry points share (router.cu, aux_scores.cu): the argument checks and
// run(), which plans for the device and launches the plan or records it in plan-only mode.
#pragma once

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "common/api.h"
#include "common/checks.h"
#include "common/hooks.h"
#include "common/launch.h"
#include "common/run.h"
#include "router/plan.h"

namespace moekit {
namespace router {

inline const char* score_name(int s) {
  switch (s) {
    case MOEKIT_SCORE_SOFTMAX: return "softmax";
    case MOEKIT_SCORE_SIGMOID: return "sigmoid";
    case MOEKIT_SCORE_SQRTSOFTPLUS: return "sqrtsoftplus";
  }
  return "?";
}

// Checks shared by forward and backward. `op` prefixes every message.
inline moekit_status_t check_common(const char* op, moekit_dtype_t dtype, const char* dtype_arg, int64_t T, int64_t E,
                             int64_t K, moekit_score_function_t score, int use_pre_softmax) {
  moekit_status_t st = check_float_dtype(op, dtype_arg, dtype);
  if (st != MOEKIT_SUCCESS) return st;
  MOEKIT_REQUIRE(T >= 0, "%s: num_tokens (%lld) must be >= 0", op, (long long)T);
  MOEKIT_REQUIRE(E >= 1, "%s: num_experts (%lld) must be >= 1", op, (long long)E);
  MOEKIT_REQUIRE(E <= MOEKIT_ROUTER_MAX_EXPERTS, "%s: num_experts (%lld) must be <= %d (MOEKIT_ROUTER_MAX_EXPERTS)", op,
                 (long long)E, MOEKIT_ROUTER_MAX_EXPERTS);
  MOEKIT_REQUIRE(K >= 1 && K <= E, "%s: topk (%lld) must be in [1, num_experts (%lld)]", op, (long long)K, (long long)E);
  MOEKIT_REQUIRE(T <= INT64_MAX / E, "%s: num_tokens * num_experts (%lld * %lld) overflows int64", op, (long long)T,
                 (long long)E);
  // One block per row for long rows, one block per 4 rows otherwise: the grid's x limit.
  MOEKIT_REQUIRE(T <= (int64_t)INT_MAX, "%s: num_tokens (%lld) must be <= %d", op, (long long)T, INT_MAX);
  MOEKIT_REQUIRE(score == MOEKIT_SCORE_SOFTMAX || score == MOEKIT_SCORE_SIGMOID || score == MOEKIT_SCORE_SQRTSOFTPLUS,
                 "%s: score_function (%d) must be softmax (0), sigmoid (1) or sqrtsoftplus (2)", op, (int)score);
  MOEKIT_REQUIRE(!use_pre_softmax || score == MOEKIT_SCORE_SOFTMAX,
                 "%s: use_pre_softmax (%d) applies only to score_function softmax, got %s", op, use_pre_softmax,
                 score_name(score));
  return MOEKIT_SUCCESS;
}

inline moekit_status_t check_groups(const char* op, int64_t E, int64_t K, int64_t G, int64_t Kg) {
  MOEKIT_REQUIRE(G >= 0 && Kg >= 0, "%s: num_groups (%lld) and group_topk (%lld) must be >= 0", op, (long long)G,
                 (long long)Kg);
  MOEKIT_REQUIRE((G > 0) == (Kg > 0), "%s: num_groups (%lld) and group_topk (%lld) must both be 0 (no groups) or both > 0",
                 op, (long long)G, (long long)Kg);
  if (G == 0) return MOEKIT_SUCCESS;
  MOEKIT_REQUIRE(E % G == 0, "%s: num_experts (%lld) must be divisible by num_groups (%lld)", op, (long long)E,
                 (long long)G);
  MOEKIT_REQUIRE(Kg <= G, "%s: group_topk (%lld) must be <= num_groups (%lld)", op, (long long)Kg, (long long)G);
  MOEKIT_REQUIRE(K % Kg == 0, "%s: topk (%lld) must be divisible by group_topk (%lld)", op, (long long)K, (long long)Kg);
  MOEKIT_REQUIRE(K / Kg <= E / G, "%s: topk / group_topk (%lld) must be <= experts per group (%lld)", op,
                 (long long)(K / Kg), (long long)(E / G));
  return MOEKIT_SUCCESS;
}

inline int score_mode(moekit_score_function_t score, int use_pre_softmax) {
  return score == MOEKIT_SCORE_SOFTMAX ? (use_pre_softmax ? kSoftmaxPre : kSoftmaxPost)
         : score == MOEKIT_SCORE_SIGMOID ? kSigmoid
                                         : kSqrtSoftplus;
}
inline int map_kind(moekit_map_format_t f) {
  return f == MOEKIT_MAP_BYTEMAP ? kMapBytes : f == MOEKIT_MAP_BITMAP ? kMapBits : kMapNone;
}
inline bool all_aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && !aligned(p, 16)) return false;
  return true;
}

// The kernel parameters the problem fixes (sizes, groups, modes) and the outputs every forward has;
// the entry point adds the rest (bias, indices, scale).
inline ForwardParams forward_params(const ForwardProblem& p, const void* logits, void* probs, void* map,
                                    float* intermediate) {
  ForwardParams a{};
  a.logits = logits;
  a.bias_dtype = MOEKIT_DTYPE_F32;
  a.probs = probs;
  a.map = static_cast<uint8_t*>(map);
  a.intermediate = intermediate;
  a.T = p.T;
  a.E = p.E;
  a.K = p.K;
  a.G = p.G;
  a.Kg = p.Kg;
  a.group_size = p.G > 0 ? p.E / p.G : 0;
  a.per_group = p.G > 0 ? p.K / p.Kg : 0;
  a.mode = p.mode;
  a.map_kind = p.map_kind;
  a.scale = 1.0f;
  return a;
}

// The plan's run-time choices, into the kernel parameters.
inline void apply_plan(const ForwardPlan& plan, ForwardParams& a) {
  a.packed = plan.packed;
  a.radix = plan.radix;
  a.topk = plan.filtered ? kTopkFiltered : kTopkDefault;
  a.vec = plan.vec;
  a.smem_words_per_team = plan.smem_words_per_team;
}
inline void apply_plan(const BackwardPlan& plan, BackwardParams& a) {
  a.vec = plan.vec;
  a.smem_words_per_team = plan.smem_words_per_team;
}

// Plans for the device, then launches the plan, or records it in plan-only mode (common/run.h).
template <typename Problem, typename Plan, typename Launch>
moekit_status_t run(const char* op, const Problem& problem,
                    Plan (*planner)(const Problem&, const DeviceInfo&, const RouterTuning&), Launch launch) {
  return run_plan(op, problem, planner, router_tuning(), launch);
}

}  // namespace router
}  // namespace moekit
