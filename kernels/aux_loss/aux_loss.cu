// The aux loss's C entry points (SPEC section 3): validate, plan (plan.h), then launch (launch.cuh)
// or record the plan in plan-only mode.
#include <climits>
#include <cstdint>

#include "aux_loss/launch.cuh"
#include "common/checks.h"
#include "common/run.h"

using namespace moekit;
using namespace moekit::aux_loss;

namespace {

moekit_status_t check_sizes(const char* op, int64_t R, int64_t C) {
  MOEKIT_REQUIRE(R >= 0, "%s: num_rows (%lld) must be >= 0", op, (long long)R);
  MOEKIT_REQUIRE(C >= 1 && C <= INT_MAX, "%s: num_cols (%lld) must be in [1, %d]", op, (long long)C, INT_MAX);
  MOEKIT_REQUIRE(R <= INT64_MAX / C - kMinChunk, "%s: num_rows * num_cols (%lld * %lld) overflows int64", op,
                 (long long)R, (long long)C);
  return MOEKIT_SUCCESS;
}

moekit_status_t check_tokens(const char* op, const void* tpe, moekit_dtype_t dtype) {
  MOEKIT_REQUIRE(dtype == MOEKIT_DTYPE_I32 || dtype == MOEKIT_DTYPE_I64 || dtype == MOEKIT_DTYPE_F32 ||
                     dtype == MOEKIT_DTYPE_BF16,
                 "%s: tokens_dtype (%s, value %d) must be int32, int64, float32 or bfloat16", op, dtype_name(dtype),
                 (int)dtype);
  return check_ptr(op, "tokens_per_expert", tpe, dtype_size(dtype), true);
}

bool aligned16(const void* p) { return aligned(p, 16); }

}  // namespace

extern "C" MOEKIT_API moekit_status_t moekit_aux_loss_workspace_size(int64_t num_rows, int64_t num_cols,
                                                                     size_t* bytes) {
  static const char* op = "aux_loss_workspace_size";
  return guarded(op, [&]() -> moekit_status_t {
    MOEKIT_REQUIRE(bytes != nullptr, "%s: bytes must not be null", op);
    moekit_status_t st = check_sizes(op, num_rows, num_cols);
    if (st != MOEKIT_SUCCESS) return st;
    WorkspaceLayout layout;
    carve_workspace(layout, num_rows * num_cols);
    *bytes = layout.bytes();
    return MOEKIT_SUCCESS;
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_aux_loss_forward(
    const void* probs, moekit_dtype_t probs_dtype, int64_t num_rows, int64_t num_cols, const void* tokens_per_expert,
    moekit_dtype_t tokens_dtype, int64_t total_num_tokens, const int64_t* total_num_tokens_device,
    int64_t num_experts, int64_t topk, float coeff, void* loss, float* const_buf, void* workspace,
    size_t workspace_bytes, moekit_stream_t stream) {
  static const char* op = "aux_loss_forward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st = check_float_dtype(op, "probs_dtype", probs_dtype);
    if (st != MOEKIT_SUCCESS) return st;
    if ((st = check_sizes(op, num_rows, num_cols)) != MOEKIT_SUCCESS) return st;
    MOEKIT_REQUIRE(num_experts >= 1, "%s: num_experts (%lld) must be >= 1", op, (long long)num_experts);
    MOEKIT_REQUIRE(num_cols % num_experts == 0, "%s: num_cols (%lld) must be a multiple of num_experts (%lld)", op,
                   (long long)num_cols, (long long)num_experts);
    MOEKIT_REQUIRE(topk >= 1 && topk <= num_experts, "%s: topk (%lld) must be in [1, num_experts (%lld)]", op,
                   (long long)topk, (long long)num_experts);
    MOEKIT_REQUIRE(total_num_tokens_device != nullptr || total_num_tokens > 0,
                   "%s: total_num_tokens (%lld) must be > 0 (or given on the device)", op, (long long)total_num_tokens);
    if ((st = check_ptr(op, "total_num_tokens_device", total_num_tokens_device, 8, false)) != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(probs_dtype);
    if ((st = check_ptr(op, "probs", probs, esize, num_rows > 0)) != MOEKIT_SUCCESS) return st;
    if ((st = check_tokens(op, tokens_per_expert, tokens_dtype)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "loss", loss, esize, true)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "const_buf", const_buf, 4, true)) != MOEKIT_SUCCESS) return st;
    const int64_t n = num_rows * num_cols;
    WorkspaceLayout count;
    carve_workspace(count, n);
    if ((st = check_workspace(op, workspace, workspace_bytes, count.bytes())) != MOEKIT_SUCCESS) return st;
    WorkspaceLayout carve(workspace);
    const Workspace ws = carve_workspace(carve, n);

    Problem problem{probs_dtype, n, (int)num_cols, aligned16(probs)};
    ForwardParams a{};
    a.probs = probs;
    a.tpe = tokens_per_expert;
    a.tpe_dtype = (int)tokens_dtype;
    a.C = (int)num_cols;
    a.n = n;
    const int chunk = chunk_elems(esize);
    a.chunks = (n + chunk - 1) / chunk;
    a.step = (int)((int64_t)kThreads * vec_elems(esize) % num_cols);
    a.N = total_num_tokens;
    a.N_device = total_num_tokens_device;
    a.E = (int)num_experts;
    a.K = (int)topk;
    a.coeff = coeff;
    a.loss = loss;
    a.const_buf = const_buf;
    a.counter = ws.counter;
    a.partials = ws.partials;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    // num_rows == 0 launches too: the loss (0) and const_buf are still written
    return run_plan(op, problem, &plan_forward, aux_loss_tuning(), [&](const Plan& plan) {
      a.vec = plan.vec;
      return with_float_type(probs_dtype, [&](auto t) { return launch_forward<decltype(t)>(plan, a, s); });
    });
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_aux_loss_backward(
    const float* const_buf, const void* tokens_per_expert, moekit_dtype_t tokens_dtype, int64_t num_rows,
    int64_t num_cols, const void* grad_loss, moekit_dtype_t grad_dtype, void* grad_probs, moekit_stream_t stream) {
  static const char* op = "aux_loss_backward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st = check_float_dtype(op, "grad_dtype", grad_dtype);
    if (st != MOEKIT_SUCCESS) return st;
    if ((st = check_sizes(op, num_rows, num_cols)) != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(grad_dtype);
    if ((st = check_ptr(op, "const_buf", const_buf, 4, true)) != MOEKIT_SUCCESS) return st;
    if ((st = check_tokens(op, tokens_per_expert, tokens_dtype)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "grad_loss", grad_loss, esize, true)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "grad_probs", grad_probs, esize, num_rows > 0)) != MOEKIT_SUCCESS) return st;
    if (num_rows == 0) return MOEKIT_SUCCESS;

    const int64_t n = num_rows * num_cols;
    Problem problem{grad_dtype, n, (int)num_cols, aligned16(grad_probs)};
    BackwardParams a{};
    a.const_buf = const_buf;
    a.tpe = tokens_per_expert;
    a.tpe_dtype = (int)tokens_dtype;
    a.C = (int)num_cols;
    a.n = n;
    a.grad_loss = grad_loss;
    a.grad_probs = grad_probs;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run_plan(op, problem, &plan_backward, aux_loss_tuning(), [&](const Plan& plan) {
      a.vec = plan.vec;
      a.step = plan.shape.blocks * plan.shape.threads * (int64_t)kVec % num_cols;
      return with_float_type(grad_dtype, [&](auto t) { return launch_backward<decltype(t)>(plan, a, s); });
    });
  });
}
