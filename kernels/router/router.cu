// The router's C entry points (SPEC section 1): validate the arguments, plan (plan.h), then run the
// plan through the launch switch (launch.cuh), or record it in plan-only mode (common/hooks.h).
#include <climits>
#include <cstdint>
#include <initializer_list>

#include "common/api.h"
#include "common/checks.h"
#include "common/hooks.h"
#include "common/launch.h"
#include "router/plan.h"

namespace moekit {
namespace router {
namespace {

const char* score_name(int s) {
  switch (s) {
    case MOEKIT_SCORE_SOFTMAX: return "softmax";
    case MOEKIT_SCORE_SIGMOID: return "sigmoid";
    case MOEKIT_SCORE_SQRTSOFTPLUS: return "sqrtsoftplus";
  }
  return "?";
}

// Checks shared by forward and backward. `op` prefixes every message.
moekit_status_t check_common(const char* op, moekit_dtype_t dtype, const char* dtype_arg, int64_t T, int64_t E,
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

moekit_status_t check_groups(const char* op, int64_t E, int64_t K, int64_t G, int64_t Kg) {
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

int score_mode(moekit_score_function_t score, int use_pre_softmax) {
  return score == MOEKIT_SCORE_SOFTMAX ? (use_pre_softmax ? kSoftmaxPre : kSoftmaxPost)
         : score == MOEKIT_SCORE_SIGMOID ? kSigmoid
                                         : kSqrtSoftplus;
}
int map_kind(moekit_map_format_t f) {
  return f == MOEKIT_MAP_BYTEMAP ? kMapBytes : f == MOEKIT_MAP_BITMAP ? kMapBits : kMapNone;
}
bool all_aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && !aligned(p, 16)) return false;
  return true;
}

// Plans for the device, then launches the plan, or records it in plan-only mode.
template <typename Problem, typename Plan, typename Launch>
moekit_status_t run(const char* op, const Problem& problem,
                    Plan (*planner)(const Problem&, const DeviceInfo&, const RouterTuning&), Launch launch) {
  const DeviceInfo* dev = nullptr;
  moekit_status_t st = plan_device(op, &dev);
  if (st != MOEKIT_SUCCESS) return st;
  Plan plan = planner(problem, *dev, router_tuning());
  plan.shape.pdl = plan.shape.pdl && pdl_switch();  // the one switch outside the plan (timing only)
  if ((st = check_fits(op, plan.shape, *dev)) != MOEKIT_SUCCESS) return st;
  if (plan_only()) {
    PlanText text;
    describe(plan, text);
    return record_plan(text.text);
  }
  const cudaError_t err = launch(plan);
  if (err != cudaSuccess) return cuda_fail(op, "kernel launch", err);
  return MOEKIT_SUCCESS;
}

}  // namespace
}  // namespace router
}  // namespace moekit

using namespace moekit;
using namespace moekit::router;

extern "C" MOEKIT_API moekit_status_t moekit_router_topk_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts, int64_t topk,
    moekit_score_function_t score_function, int use_pre_softmax, int64_t num_groups, int64_t group_topk,
    float scaling_factor, const void* expert_bias, moekit_dtype_t bias_dtype, void* probs, void* routing_map,
    moekit_map_format_t map_format, void* topk_indices, moekit_dtype_t index_dtype, float* intermediate,
    moekit_stream_t stream) {
  static const char* op = "router_topk_forward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st = check_common(op, logits_dtype, "logits_dtype", num_tokens, num_experts, topk, score_function,
                                      use_pre_softmax);
    if (st != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(logits_dtype);
    const bool required = num_tokens > 0;
    if ((st = check_ptr(op, "logits", logits, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "probs", probs, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_selection(op, routing_map, map_format, topk_indices, index_dtype, false, required)) != MOEKIT_SUCCESS)
      return st;
    if ((st = check_groups(op, num_experts, topk, num_groups, group_topk)) != MOEKIT_SUCCESS) return st;
    if (expert_bias != nullptr) {
      MOEKIT_REQUIRE(score_function != MOEKIT_SCORE_SOFTMAX,
                     "%s: expert_bias applies only to sigmoid and sqrtsoftplus scores, got softmax", op);
      if ((st = check_float_dtype(op, "bias_dtype", bias_dtype)) != MOEKIT_SUCCESS) return st;
      if ((st = check_ptr(op, "expert_bias", expert_bias, dtype_size(bias_dtype), true)) != MOEKIT_SUCCESS) return st;
    }
    if (num_tokens == 0) return MOEKIT_SUCCESS;

    ForwardProblem problem{};
    problem.dtype = logits_dtype;
    problem.T = num_tokens;
    problem.E = (int)num_experts;
    problem.K = (int)topk;
    problem.G = (int)num_groups;
    problem.Kg = (int)group_topk;
    problem.mode = score_mode(score_function, use_pre_softmax);
    problem.map_kind = map_kind(map_format);
    problem.indices = topk_indices != nullptr;
    problem.aligned = all_aligned16({logits, probs, intermediate, problem.map_kind == kMapBytes ? routing_map : nullptr});

    ForwardParams a{};
    a.logits = logits;
    a.bias = expert_bias;
    a.bias_dtype = (int)bias_dtype;
    a.bias_vec = expert_bias != nullptr && aligned(expert_bias, 16) && num_experts % kTeamVec == 0;
    a.probs = probs;
    a.map = static_cast<uint8_t*>(routing_map);
    a.indices = topk_indices;
    a.intermediate = intermediate;
    a.T = num_tokens;
    a.E = problem.E;
    a.K = problem.K;
    a.G = problem.G;
    a.Kg = problem.Kg;
    a.group_size = a.G > 0 ? a.E / a.G : 0;
    a.per_group = a.G > 0 ? a.K / a.Kg : 0;
    a.mode = problem.mode;
    a.map_kind = problem.map_kind;
    a.idx64 = index_dtype == MOEKIT_DTYPE_I64;
    a.scale = scaling_factor;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_forward, [&](const ForwardPlan& plan) {
      a.packed = plan.packed;
      a.radix = plan.radix;
      a.topk = plan.filtered ? kTopkFiltered : kTopkDefault;
      a.vec = plan.vec;
      a.smem_words_per_team = plan.smem_words_per_team;
      return with_float_type(logits_dtype, [&](auto t) { return launch_forward<decltype(t)>(plan, a, s); });
    });
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_router_topk_backward(
    const void* grad_probs, moekit_dtype_t grad_dtype, int64_t num_tokens, int64_t num_experts,
    const float* intermediate, const void* routing_map, moekit_map_format_t map_format, const void* topk_indices,
    moekit_dtype_t index_dtype, int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    float scaling_factor, void* grad_logits, moekit_stream_t stream) {
  static const char* op = "router_topk_backward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st =
        check_common(op, grad_dtype, "grad_dtype", num_tokens, num_experts, topk, score_function, use_pre_softmax);
    if (st != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(grad_dtype);
    const bool required = num_tokens > 0;
    if ((st = check_ptr(op, "grad_probs", grad_probs, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "grad_logits", grad_logits, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_selection(op, routing_map, map_format, topk_indices, index_dtype, true, required)) != MOEKIT_SUCCESS)
      return st;
    if (num_tokens == 0) return MOEKIT_SUCCESS;

    BackwardProblem problem{};
    problem.dtype = grad_dtype;
    problem.T = num_tokens;
    problem.E = (int)num_experts;
    problem.K = (int)topk;
    problem.map_kind = map_kind(map_format);
    problem.aligned =
        all_aligned16({grad_probs, intermediate, grad_logits, problem.map_kind == kMapBytes ? routing_map : nullptr});

    BackwardParams a{};
    a.grad = grad_probs;
    a.intermediate = intermediate;
    a.map = static_cast<const uint8_t*>(routing_map);
    a.indices = topk_indices;
    a.grad_logits = grad_logits;
    a.T = num_tokens;
    a.E = problem.E;
    a.K = problem.K;
    a.mode = score_mode(score_function, use_pre_softmax);
    a.map_kind = problem.map_kind;
    a.idx64 = index_dtype == MOEKIT_DTYPE_I64;
    a.scale = scaling_factor;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_backward, [&](const BackwardPlan& plan) {
      a.vec = plan.vec;
      a.smem_words_per_team = plan.smem_words_per_team;
      return with_float_type(grad_dtype, [&](auto t) { return launch_backward<decltype(t)>(plan, a, s); });
    });
  });
}
