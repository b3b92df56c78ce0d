// The grouped top-k's C entry point (SPEC section 4): validate, plan (plan.h), then launch
// (launch.cuh) or record the plan in plan-only mode.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/checks.h"
#include "common/run.h"
#include "grouped_topk/launch.cuh"

using namespace moekit;
using namespace moekit::grouped_topk;

extern "C" MOEKIT_API moekit_status_t moekit_grouped_topk(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts, const void* bias,
    moekit_dtype_t bias_dtype, int64_t topk, int64_t num_groups, int64_t topk_group,
    moekit_score_function_t score_function, int renormalize, float routed_scaling_factor, int apply_scale,
    int64_t num_shared, float* weights, void* ids, moekit_dtype_t ids_dtype, moekit_stream_t stream) {
  static const char* op = "grouped_topk";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st = check_float_dtype(op, "logits_dtype", logits_dtype);
    if (st != MOEKIT_SUCCESS) return st;
    const int64_t G = num_groups, E = num_experts;
    MOEKIT_REQUIRE(num_tokens >= 0, "%s: num_tokens (%lld) must be >= 0", op, (long long)num_tokens);
    MOEKIT_REQUIRE(G == 1 || G == 2 || G == 4 || G == 8 || G == 16 || G == 32,
                   "%s: num_groups (%lld) must be 1, 2, 4, 8, 16 or 32", op, (long long)G);
    const int64_t max_e = G == 1 ? kMaxExperts : kMaxExperts / 2;
    MOEKIT_REQUIRE(E >= 1 && E <= max_e, "%s: num_experts (%lld) must be in [1, %lld] with num_groups %lld", op,
                   (long long)E, (long long)max_e, (long long)G);
    MOEKIT_REQUIRE(E % G == 0, "%s: num_experts (%lld) must be a multiple of num_groups (%lld)", op, (long long)E,
                   (long long)G);
    MOEKIT_REQUIRE(topk_group >= 1 && topk_group <= G, "%s: topk_group (%lld) must be in [1, num_groups (%lld)]",
                   op, (long long)topk_group, (long long)G);
    MOEKIT_REQUIRE(topk >= 1 && topk <= topk_group * (E / G),
                   "%s: topk (%lld) must be in [1, %lld] (the experts of topk_group groups)", op, (long long)topk,
                   (long long)(topk_group * (E / G)));
    MOEKIT_REQUIRE(num_shared >= 0 && topk + num_shared <= kMaxSlots,
                   "%s: num_shared (%lld) must be >= 0 with topk + num_shared <= %d", op, (long long)num_shared,
                   kMaxSlots);
    MOEKIT_REQUIRE(score_function == MOEKIT_SCORE_SIGMOID || score_function == MOEKIT_SCORE_SOFTMAX,
                   "%s: score_function (%d) must be sigmoid (1) or softmax (0)", op, (int)score_function);
    MOEKIT_REQUIRE(std::isfinite(routed_scaling_factor) && routed_scaling_factor > 0.0f,
                   "%s: routed_scaling_factor (%g) must be finite and > 0", op, (double)routed_scaling_factor);
    MOEKIT_REQUIRE(ids_dtype == MOEKIT_DTYPE_I32 || ids_dtype == MOEKIT_DTYPE_I64,
                   "%s: ids_dtype (%s, value %d) must be int32 or int64", op, dtype_name(ids_dtype), (int)ids_dtype);
    MOEKIT_REQUIRE(num_tokens <= INT64_MAX / 64 / E, "%s: num_tokens * num_experts (%lld * %lld) overflows int64",
                   op, (long long)num_tokens, (long long)E);
    const bool any = num_tokens > 0;
    if ((st = check_ptr(op, "logits", logits, dtype_size(logits_dtype), any)) != MOEKIT_SUCCESS) return st;
    if (bias != nullptr) {
      if ((st = check_float_dtype(op, "bias_dtype", bias_dtype)) != MOEKIT_SUCCESS) return st;
      if ((st = check_ptr(op, "bias", bias, dtype_size(bias_dtype), true)) != MOEKIT_SUCCESS) return st;
    }
    if ((st = check_ptr(op, "weights", weights, 4, any)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "ids", ids, dtype_size(ids_dtype), any)) != MOEKIT_SUCCESS) return st;
    if (!any) return MOEKIT_SUCCESS;

    Params a{};
    a.logits = logits;
    a.bias = bias;
    a.bias_dtype = (int)bias_dtype;
    a.weights = weights;
    a.ids = ids;
    a.ids_i64 = ids_dtype == MOEKIT_DTYPE_I64;
    a.T = num_tokens;
    a.E = (int)E;
    a.K = (int)topk;
    a.G = (int)G;
    a.Kg = (int)topk_group;
    a.S = (int)num_shared;
    a.gsize = (int)(E / G);
    a.per_group = (int)std::min<int64_t>(2, E / G);
    a.softmax = score_function == MOEKIT_SCORE_SOFTMAX;
    a.renormalize = renormalize != 0;
    a.apply_scale = apply_scale != 0;
    a.rsf = routed_scaling_factor;
    Problem problem{num_tokens, (int)E, (int)G, (int)dtype_size(logits_dtype), aligned(logits, 16)};
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run_plan(op, problem, &plan_grouped_topk, grouped_topk_tuning(), [&](const Plan& plan) {
      return with_float_type(logits_dtype, [&](auto t) { return launch_grouped_topk<decltype(t)>(plan, a, s); });
    });
  });
}
