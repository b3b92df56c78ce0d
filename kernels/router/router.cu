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
    ForwardProblem problem;
    ForwardParams a;
    const moekit_status_t st = prepare_router_forward(
        op, logits, logits_dtype, num_tokens, num_experts, topk, score_function, use_pre_softmax, num_groups,
        group_topk, scaling_factor, expert_bias, bias_dtype, probs, routing_map, map_format, topk_indices,
        index_dtype, intermediate, &problem, &a);
    if (st != MOEKIT_SUCCESS || problem.T == 0) return st;
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
    BackwardProblem problem;
    BackwardParams a;
    const moekit_status_t st = prepare_router_backward(
        op, grad_probs, grad_dtype, num_tokens, num_experts, intermediate, routing_map, map_format, topk_indices,
        index_dtype, topk, score_function, use_pre_softmax, scaling_factor, grad_logits, &problem, &a);
    if (st != MOEKIT_SUCCESS || problem.T == 0) return st;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_backward, [&](const BackwardPlan& plan) {
      apply_plan(plan, a);
      return with_float_type(grad_dtype, [&](auto t) { return launch_backward<decltype(t)>(plan, a, s); });
    });
  });
}
