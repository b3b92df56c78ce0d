// The aux-loss scores' C entry points (SPEC section 2). They are the router's kernels with AUX set
// (params.h, kTeamAux): the same plan (the router's modes softmax-pre, sigmoid and sqrtsoftplus,
// without groups, bias or indices), scores over all experts stored as f32, and a backward that
// differentiates the full-row normalization with no mask and no scaling.
#include <cstdint>

#include "router/entry.h"

using namespace moekit;
using namespace moekit::router;

extern "C" MOEKIT_API moekit_status_t moekit_aux_scores_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts, int64_t topk,
    moekit_score_function_t score_function, float* scores, void* routing_map, moekit_map_format_t map_format,
    float* intermediate, moekit_stream_t stream) {
  static const char* op = "aux_scores_forward";
  return guarded(op, [&]() -> moekit_status_t {
    ForwardProblem problem;
    ForwardParams a;
    const moekit_status_t st =
        prepare_aux_forward(op, kAuxNames, false, logits, logits_dtype, num_tokens, num_experts, topk, score_function,
                            scores, routing_map, map_format, intermediate, &problem, &a);
    if (st != MOEKIT_SUCCESS || problem.T == 0) return st;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_forward, [&](const ForwardPlan& plan) {
      apply_plan(plan, a);
      return with_float_type(logits_dtype, [&](auto t) { return launch_aux_forward<decltype(t)>(plan, a, s); });
    });
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_aux_scores_backward(
    const float* grad_scores, const float* intermediate, int64_t num_tokens, int64_t num_experts,
    moekit_score_function_t score_function, void* grad_logits, moekit_dtype_t grad_logits_dtype,
    moekit_stream_t stream) {
  static const char* op = "aux_scores_backward";
  return guarded(op, [&]() -> moekit_status_t {
    BackwardProblem problem;
    BackwardParams a;
    const moekit_status_t st =
        prepare_aux_backward(op, "grad_scores", "intermediate", false, grad_scores, intermediate, num_tokens,
                             num_experts, score_function, grad_logits, grad_logits_dtype, &problem, &a);
    if (st != MOEKIT_SUCCESS || problem.T == 0) return st;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_backward, [&](const BackwardPlan& plan) {
      apply_plan(plan, a);
      return with_float_type(grad_logits_dtype, [&](auto t) { return launch_aux_backward<decltype(t)>(plan, a, s); });
    });
  });
}
