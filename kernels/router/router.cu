// The router's C entry points (SPEC section 1): validate the arguments, plan (plan.h), then run the
// plan through the launch switch (launch.cuh), or record it in plan-only mode (common/hooks.h).
#include <cstdint>

#include "router/entry.h"

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

    ForwardParams a = forward_params(problem, logits, probs, routing_map, intermediate);
    a.bias = expert_bias;
    a.bias_dtype = (int)bias_dtype;
    a.bias_vec = expert_bias != nullptr && aligned(expert_bias, 16) && num_experts % kTeamVec == 0;
    a.indices = topk_indices;
    a.idx64 = index_dtype == MOEKIT_DTYPE_I64;
    a.scale = scaling_factor;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_forward, [&](const ForwardPlan& plan) {
      apply_plan(plan, a);
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
      apply_plan(plan, a);
      return with_float_type(grad_dtype, [&](auto t) { return launch_backward<decltype(t)>(plan, a, s); });
    });
  });
}
