// The router and the aux-loss scores in one call (SPEC sections 1 and 2 on the same logits, as a
// Megatron router computes them): one launch where the two plans share a row layout, so the logits
// are read from memory once; the backward sums both gradients in fp32 and writes grad_logits once.
#include <cstdint>

#include "router/entry.h"

using namespace moekit;
using namespace moekit::router;

namespace {
int64_t map_bytes(moekit_map_format_t f, int64_t T, int64_t E) {
  return f == MOEKIT_MAP_BYTEMAP ? T * E : f == MOEKIT_MAP_BITMAP ? T * ((E + 7) / 8) : 0;
}
}  // namespace

extern "C" MOEKIT_API moekit_status_t moekit_router_aux_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts, int64_t topk,
    moekit_score_function_t score_function, int use_pre_softmax, int64_t num_groups, int64_t group_topk,
    float scaling_factor, const void* expert_bias, moekit_dtype_t bias_dtype, void* probs, void* routing_map,
    moekit_map_format_t map_format, void* topk_indices, moekit_dtype_t index_dtype, float* intermediate,
    float* aux_scores, void* aux_routing_map, moekit_map_format_t aux_map_format, float* aux_intermediate,
    moekit_stream_t stream) {
  static const char* op = "router_aux_forward";
  return guarded(op, [&]() -> moekit_status_t {
    PairForwardProblem problem;
    ForwardParams a, b;
    moekit_status_t st = prepare_router_forward(
        op, logits, logits_dtype, num_tokens, num_experts, topk, score_function, use_pre_softmax, num_groups,
        group_topk, scaling_factor, expert_bias, bias_dtype, probs, routing_map, map_format, topk_indices,
        index_dtype, intermediate, &problem.router, &a);
    if (st != MOEKIT_SUCCESS) return st;
    if ((st = prepare_aux_forward(op, kPairAuxNames, true, logits, logits_dtype, num_tokens, num_experts, topk,
                                  score_function, aux_scores, aux_routing_map, aux_map_format, aux_intermediate,
                                  &problem.aux, &b)) != MOEKIT_SUCCESS)
      return st;
    if (num_tokens == 0) return MOEKIT_SUCCESS;
    const int64_t n = num_tokens * num_experts, esize = dtype_size(logits_dtype);
    if ((st = check_disjoint(op, "probs", probs, n * esize, "aux_scores", aux_scores, n * 4)) != MOEKIT_SUCCESS ||
        (st = check_disjoint(op, "intermediate", intermediate, n * 4, "aux_intermediate", aux_intermediate, n * 4)) !=
            MOEKIT_SUCCESS ||
        (st = check_disjoint(op, "routing_map", routing_map, map_bytes(map_format, num_tokens, num_experts),
                          "aux_routing_map", aux_routing_map, map_bytes(aux_map_format, num_tokens, num_experts))) !=
            MOEKIT_SUCCESS)
      return st;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_pair_forward, [&](const PairForwardPlan& plan) {
      apply_plan(plan.router, a);
      apply_plan(plan.aux, b);
      return with_float_type(logits_dtype, [&](auto t) {
        using T = decltype(t);
        if (plan.fused) return launch_pair_forward<T>(plan, a, b, s);
        // two launches: the single ops' own instantiations (router_*.cu, aux_scores_*.cu)
        const cudaError_t err = launch_forward<T>(plan.router, a, s);
        if (err != cudaSuccess) return err;
        ForwardPlan aux = plan.aux;
        aux.shape.pdl = plan.shape.pdl;
        return launch_aux_forward<T>(aux, b, s);
      });
    });
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_router_aux_backward(
    const void* grad_probs, moekit_dtype_t grad_dtype, int64_t num_tokens, int64_t num_experts,
    const float* intermediate, const void* routing_map, moekit_map_format_t map_format, const void* topk_indices,
    moekit_dtype_t index_dtype, int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    float scaling_factor, const float* grad_aux_scores, const float* aux_intermediate, void* grad_logits,
    moekit_stream_t stream) {
  static const char* op = "router_aux_backward";
  return guarded(op, [&]() -> moekit_status_t {
    BackwardProblem problem, aux_problem;
    BackwardParams a, b;
    moekit_status_t st = prepare_router_backward(
        op, grad_probs, grad_dtype, num_tokens, num_experts, intermediate, routing_map, map_format, topk_indices,
        index_dtype, topk, score_function, use_pre_softmax, scaling_factor, grad_logits, &problem, &a);
    if (st != MOEKIT_SUCCESS) return st;
    if ((st = prepare_aux_backward(op, "grad_aux_scores", "aux_intermediate", true, grad_aux_scores, aux_intermediate,
                                   num_tokens, num_experts, score_function, grad_logits, grad_dtype, &aux_problem,
                                   &b)) != MOEKIT_SUCCESS)
      return st;
    if (num_tokens == 0) return MOEKIT_SUCCESS;
    problem.aligned = problem.aligned && aux_problem.aligned;  // one vector flag serves both passes
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_backward, [&](const BackwardPlan& plan) {
      apply_plan(plan, a);
      apply_plan(plan, b);
      return with_float_type(grad_dtype, [&](auto t) { return launch_pair_backward<decltype(t)>(plan, a, b, s); });
    });
  });
}
