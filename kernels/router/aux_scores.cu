// The aux-loss scores' C entry points (SPEC section 2). They are the router's kernels with AUX set
// (params.h, kTeamAux): the same plan (the router's modes softmax-pre, sigmoid and sqrtsoftplus,
// without groups, bias or indices), scores over all experts stored as f32, and a backward that
// differentiates the full-row normalization with no mask and no scaling.
#include <cstdint>

#include "router/entry.h"

using namespace moekit;
using namespace moekit::router;

namespace {
// Softmax scores are the router's softmax-pre; sigmoid and sqrtsoftplus keep their modes.
int aux_mode(moekit_score_function_t score) { return score_mode(score, score == MOEKIT_SCORE_SOFTMAX); }
}  // namespace

extern "C" MOEKIT_API moekit_status_t moekit_aux_scores_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts, int64_t topk,
    moekit_score_function_t score_function, float* scores, void* routing_map, moekit_map_format_t map_format,
    float* intermediate, moekit_stream_t stream) {
  static const char* op = "aux_scores_forward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st =
        check_common(op, logits_dtype, "logits_dtype", num_tokens, num_experts, topk, score_function, 0);
    if (st != MOEKIT_SUCCESS) return st;
    MOEKIT_REQUIRE(map_format == MOEKIT_MAP_BYTEMAP || map_format == MOEKIT_MAP_BITMAP,
                   "%s: map_format (%d) must be bytemap (1) or bitmap (2)", op, (int)map_format);
    const bool required = num_tokens > 0;
    if ((st = check_ptr(op, "logits", logits, dtype_size(logits_dtype), required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "scores", scores, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_selection(op, routing_map, map_format, nullptr, MOEKIT_DTYPE_I32, false, required)) != MOEKIT_SUCCESS)
      return st;
    if (num_tokens == 0) return MOEKIT_SUCCESS;

    ForwardProblem problem{};
    problem.dtype = logits_dtype;
    problem.T = num_tokens;
    problem.E = (int)num_experts;
    problem.K = (int)topk;
    problem.mode = aux_mode(score_function);
    problem.map_kind = map_kind(map_format);
    problem.aux = true;
    problem.aligned = all_aligned16({logits, scores, intermediate, problem.map_kind == kMapBytes ? routing_map : nullptr});

    ForwardParams a = forward_params(problem, logits, scores, routing_map, intermediate);
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
    // topk plays no part in the backward: 1 passes check_common's range test
    moekit_status_t st =
        check_common(op, grad_logits_dtype, "grad_logits_dtype", num_tokens, num_experts, 1, score_function, 0);
    if (st != MOEKIT_SUCCESS) return st;
    const bool required = num_tokens > 0;
    if ((st = check_ptr(op, "grad_scores", grad_scores, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "grad_logits", grad_logits, dtype_size(grad_logits_dtype), required)) != MOEKIT_SUCCESS)
      return st;
    if (num_tokens == 0) return MOEKIT_SUCCESS;

    BackwardProblem problem{};
    problem.dtype = grad_logits_dtype;
    problem.T = num_tokens;
    problem.E = (int)num_experts;
    problem.K = 1;
    problem.map_kind = kMapBytes;  // no shared memory: the aux backward builds no mask
    problem.aligned = all_aligned16({grad_scores, intermediate, grad_logits});

    BackwardParams a{};
    a.grad = grad_scores;
    a.intermediate = intermediate;
    a.grad_logits = grad_logits;
    a.T = num_tokens;
    a.E = problem.E;
    a.K = 1;
    a.mode = aux_mode(score_function);
    a.map_kind = kMapBytes;
    a.scale = 1.0f;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run(op, problem, &plan_backward, [&](const BackwardPlan& plan) {
      apply_plan(plan, a);
      return with_float_type(grad_logits_dtype, [&](auto t) { return launch_aux_backward<decltype(t)>(plan, a, s); });
    });
  });
}
