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

// ---- the forwards' and backwards' checks and parameters, shared by the single ops and the
// router + aux-scores pair (router.cu, aux_scores.cu, router_aux.cu). Each leaves problem->T == 0
// for an empty call (nothing to launch).

inline moekit_status_t prepare_router_forward(const char* op, const void* logits, moekit_dtype_t logits_dtype,
                                              int64_t T, int64_t E, int64_t K, moekit_score_function_t score,
                                              int use_pre_softmax, int64_t G, int64_t Kg, float scaling_factor,
                                              const void* bias, moekit_dtype_t bias_dtype, void* probs, void* map,
                                              moekit_map_format_t map_format, void* indices, moekit_dtype_t index_dtype,
                                              float* intermediate, ForwardProblem* problem, ForwardParams* a) {
  moekit_status_t st = check_common(op, logits_dtype, "logits_dtype", T, E, K, score, use_pre_softmax);
  if (st != MOEKIT_SUCCESS) return st;
  const int esize = dtype_size(logits_dtype);
  const bool required = T > 0;
  if ((st = check_ptr(op, "logits", logits, esize, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "probs", probs, esize, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_selection(op, map, map_format, indices, index_dtype, false, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_groups(op, E, K, G, Kg)) != MOEKIT_SUCCESS) return st;
  if (bias != nullptr) {
    MOEKIT_REQUIRE(score != MOEKIT_SCORE_SOFTMAX,
                   "%s: expert_bias applies only to sigmoid and sqrtsoftplus scores, got softmax", op);
    if ((st = check_float_dtype(op, "bias_dtype", bias_dtype)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "expert_bias", bias, dtype_size(bias_dtype), true)) != MOEKIT_SUCCESS) return st;
  }
  *problem = ForwardProblem{};
  if (T == 0) return MOEKIT_SUCCESS;
  problem->dtype = logits_dtype;
  problem->T = T;
  problem->E = (int)E;
  problem->K = (int)K;
  problem->G = (int)G;
  problem->Kg = (int)Kg;
  problem->mode = score_mode(score, use_pre_softmax);
  problem->map_kind = map_kind(map_format);
  problem->indices = indices != nullptr;
  problem->aligned = all_aligned16({logits, probs, intermediate, problem->map_kind == kMapBytes ? map : nullptr});
  *a = forward_params(*problem, logits, probs, map, intermediate);
  a->bias = bias;
  a->bias_dtype = (int)bias_dtype;
  a->bias_vec = bias != nullptr && aligned(bias, 16) && E % kTeamVec == 0;
  a->indices = indices;
  a->idx64 = index_dtype == MOEKIT_DTYPE_I64;
  a->scale = scaling_factor;
  return MOEKIT_SUCCESS;
}

// Softmax aux scores are the router's softmax-pre; sigmoid and sqrtsoftplus keep their modes.
inline int aux_mode(moekit_score_function_t score) { return score_mode(score, score == MOEKIT_SCORE_SOFTMAX); }

// What the aux-scores arguments are called in messages: the single op's names, or the pair's.
struct AuxNames {
  const char *scores, *map, *map_format, *intermediate;
};
constexpr AuxNames kAuxNames{"scores", "routing_map", "map_format", "intermediate"};
constexpr AuxNames kPairAuxNames{"aux_scores", "aux_routing_map", "aux_map_format", "aux_intermediate"};

// `checked_common`: check_common has run for these logits, T, E, K and score (the pair).
inline moekit_status_t prepare_aux_forward(const char* op, const AuxNames& n, bool checked_common, const void* logits,
                                           moekit_dtype_t logits_dtype, int64_t T, int64_t E, int64_t K,
                                           moekit_score_function_t score, float* scores, void* map,
                                           moekit_map_format_t map_format, float* intermediate,
                                           ForwardProblem* problem, ForwardParams* a) {
  moekit_status_t st;
  if (!checked_common && (st = check_common(op, logits_dtype, "logits_dtype", T, E, K, score, 0)) != MOEKIT_SUCCESS)
    return st;
  MOEKIT_REQUIRE(map_format == MOEKIT_MAP_BYTEMAP || map_format == MOEKIT_MAP_BITMAP,
                 "%s: %s (%d) must be bytemap (1) or bitmap (2)", op, n.map_format, (int)map_format);
  const bool required = T > 0;
  if ((st = check_ptr(op, "logits", logits, dtype_size(logits_dtype), required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, n.scores, scores, 4, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, n.intermediate, intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
  MOEKIT_REQUIRE(!required || map != nullptr, "%s: %s must not be null", op, n.map);
  *problem = ForwardProblem{};
  if (T == 0) return MOEKIT_SUCCESS;
  problem->dtype = logits_dtype;
  problem->T = T;
  problem->E = (int)E;
  problem->K = (int)K;
  problem->mode = aux_mode(score);
  problem->map_kind = map_kind(map_format);
  problem->aux = true;
  problem->aligned = all_aligned16({logits, scores, intermediate, problem->map_kind == kMapBytes ? map : nullptr});
  *a = forward_params(*problem, logits, scores, map, intermediate);
  return MOEKIT_SUCCESS;
}

inline moekit_status_t prepare_router_backward(const char* op, const void* grad_probs, moekit_dtype_t grad_dtype,
                                               int64_t T, int64_t E, const float* intermediate, const void* map,
                                               moekit_map_format_t map_format, const void* indices,
                                               moekit_dtype_t index_dtype, int64_t K, moekit_score_function_t score,
                                               int use_pre_softmax, float scaling_factor, void* grad_logits,
                                               BackwardProblem* problem, BackwardParams* a) {
  moekit_status_t st = check_common(op, grad_dtype, "grad_dtype", T, E, K, score, use_pre_softmax);
  if (st != MOEKIT_SUCCESS) return st;
  const int esize = dtype_size(grad_dtype);
  const bool required = T > 0;
  if ((st = check_ptr(op, "grad_probs", grad_probs, esize, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "grad_logits", grad_logits, esize, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_selection(op, map, map_format, indices, index_dtype, true, required)) != MOEKIT_SUCCESS) return st;
  *problem = BackwardProblem{};
  if (T == 0) return MOEKIT_SUCCESS;
  problem->dtype = grad_dtype;
  problem->T = T;
  problem->E = (int)E;
  problem->K = (int)K;
  problem->map_kind = map_kind(map_format);
  problem->aligned =
      all_aligned16({grad_probs, intermediate, grad_logits, problem->map_kind == kMapBytes ? map : nullptr});
  *a = BackwardParams{};
  a->grad = grad_probs;
  a->intermediate = intermediate;
  a->map = static_cast<const uint8_t*>(map);
  a->indices = indices;
  a->grad_logits = grad_logits;
  a->T = T;
  a->E = problem->E;
  a->K = problem->K;
  a->mode = score_mode(score, use_pre_softmax);
  a->map_kind = problem->map_kind;
  a->idx64 = index_dtype == MOEKIT_DTYPE_I64;
  a->scale = scaling_factor;
  return MOEKIT_SUCCESS;
}

inline moekit_status_t prepare_aux_backward(const char* op, const char* grad_name, const char* intermediate_name,
                                            bool checked_common, const float* grad_scores, const float* intermediate,
                                            int64_t T, int64_t E, moekit_score_function_t score, void* grad_logits,
                                            moekit_dtype_t grad_logits_dtype, BackwardProblem* problem,
                                            BackwardParams* a) {
  moekit_status_t st;
  // topk plays no part in the backward: 1 passes check_common's range test
  if (!checked_common &&
      (st = check_common(op, grad_logits_dtype, "grad_logits_dtype", T, E, 1, score, 0)) != MOEKIT_SUCCESS)
    return st;
  const bool required = T > 0;
  if ((st = check_ptr(op, grad_name, grad_scores, 4, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, intermediate_name, intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "grad_logits", grad_logits, dtype_size(grad_logits_dtype), required)) != MOEKIT_SUCCESS)
    return st;
  *problem = BackwardProblem{};
  if (T == 0) return MOEKIT_SUCCESS;
  problem->dtype = grad_logits_dtype;
  problem->T = T;
  problem->E = (int)E;
  problem->K = 1;
  problem->map_kind = kMapBytes;  // no shared memory: the aux backward builds no mask
  problem->aligned = all_aligned16({grad_scores, intermediate, grad_logits});
  *a = BackwardParams{};
  a->grad = grad_scores;
  a->intermediate = intermediate;
  a->grad_logits = grad_logits;
  a->T = T;
  a->E = problem->E;
  a->K = 1;
  a->mode = aux_mode(score);
  a->map_kind = kMapBytes;
  a->scale = 1.0f;
  return MOEKIT_SUCCESS;
}

// Plans for the device, then launches the plan, or records it in plan-only mode (common/run.h).
template <typename Problem, typename Plan, typename Launch>
moekit_status_t run(const char* op, const Problem& problem,
                    Plan (*planner)(const Problem&, const DeviceInfo&, const RouterTuning&), Launch launch) {
  return run_plan(op, problem, planner, router_tuning(), launch);
}

}  // namespace router
}  // namespace moekit
