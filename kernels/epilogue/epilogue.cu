// The epilogues' C entry points (SPEC section 7): validate, plan (plan.h), then launch (launch.cuh)
// or record the plan in plan-only mode.
#include <climits>
#include <cmath>
#include <cstdint>

#include "common/checks.h"
#include "common/run.h"
#include "epilogue/launch.cuh"

using namespace moekit;
using namespace moekit::epilogue;

namespace {

moekit_status_t check_sizes(const char* op, int64_t T, int64_t H, int64_t max_h) {
  MOEKIT_REQUIRE(T >= 0, "%s: num_tokens (%lld) must be >= 0", op, (long long)T);
  MOEKIT_REQUIRE(H >= 1 && H <= max_h, "%s: hidden_size (%lld) must be in [1, %lld]", op, (long long)H,
                 (long long)max_h);
  MOEKIT_REQUIRE(T <= INT64_MAX / 8 / H, "%s: num_tokens * hidden_size (%lld * %lld) overflows int64", op,
                 (long long)T, (long long)H);
  return MOEKIT_SUCCESS;
}

template <typename F>
cudaError_t with_weight_type(moekit_dtype_t dtype, moekit_dtype_t weight_dtype, F&& f) {
  return with_float_type(dtype, [&](auto t) {
    using T = decltype(t);
    if (weight_dtype == MOEKIT_DTYPE_F32) return f(t, float{});
    return f(t, T{});
  });
}

moekit_status_t run_norm(const char* op, bool add, void* x, void* residual, const void* weight, void* y, moekit_dtype_t dtype,
                         moekit_dtype_t weight_dtype, int64_t T, int64_t H, float eps, moekit_stream_t stream) {
  moekit_status_t st = check_float_dtype(op, "dtype", dtype);
  if (st != MOEKIT_SUCCESS) return st;
  MOEKIT_REQUIRE(weight_dtype == dtype || weight_dtype == MOEKIT_DTYPE_F32,
                 "%s: weight_dtype (%s, value %d) must be the x dtype (%s) or float32", op, dtype_name(weight_dtype),
                 (int)weight_dtype, dtype_name(dtype));
  if ((st = check_sizes(op, T, H, kMaxHidden)) != MOEKIT_SUCCESS) return st;
  MOEKIT_REQUIRE(std::isfinite(eps) && eps >= 0.0f, "%s: eps (%g) must be finite and >= 0", op, (double)eps);
  const int esize = dtype_size(dtype);
  if ((st = check_ptr(op, "x", x, esize, T > 0)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, add ? "residual" : "y", add ? residual : y, esize, T > 0)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "weight", weight, dtype_size(weight_dtype), T > 0)) != MOEKIT_SUCCESS) return st;
  const int64_t bytes = T * H * esize;
  if (add) {
    MOEKIT_REQUIRE(!overlaps(x, bytes, residual, bytes), "%s: x (%p) and residual (%p) must not overlap", op, x, residual);
  } else {
    MOEKIT_REQUIRE(x == y || !overlaps(x, bytes, y, bytes), "%s: y (%p) must be x (%p) or not overlap it", op, y, x);
  }
  if (T == 0) return MOEKIT_SUCCESS;

  Problem problem{false, add, dtype, T, H};
  NormParams a{};
  a.x = x;
  a.residual = residual;
  a.weight = weight;
  a.y = add ? x : y;
  a.T = T;
  a.H = (int)H;
  a.eps = eps;
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  return run_plan(op, problem, &plan_epilogue, epilogue_tuning(), [&](const Plan& plan) {
    a.vec = H % plan.vpt == 0 && aligned(x, 16) && aligned(a.y, 16) && (!add || aligned(residual, 16)) &&
            aligned(weight, 16);
    return with_weight_type(dtype, weight_dtype, [&](auto t, auto w) {
      return launch_norm<decltype(t), decltype(w)>(plan, a, s);
    });
  });
}

}  // namespace

extern "C" MOEKIT_API moekit_status_t moekit_shared_expert_gate(void* hidden, const void* shared, const void* gate,
                                                                moekit_dtype_t dtype, int64_t num_tokens,
                                                                int64_t hidden_size, int gate_per_token,
                                                                moekit_stream_t stream) {
  static const char* op = "shared_expert_gate";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st = check_float_dtype(op, "dtype", dtype);
    if (st != MOEKIT_SUCCESS) return st;
    if ((st = check_sizes(op, num_tokens, hidden_size, INT_MAX)) != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(dtype);
    const bool any = num_tokens > 0;
    if ((st = check_ptr(op, "hidden", hidden, esize, any)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "shared", shared, esize, any)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "gate", gate, esize, any)) != MOEKIT_SUCCESS) return st;
    const int64_t n = num_tokens * hidden_size, bytes = n * esize;
    MOEKIT_REQUIRE(!overlaps(hidden, bytes, shared, bytes), "%s: hidden (%p) and shared (%p) must not overlap", op, hidden,
                   shared);
    const int64_t gate_bytes = (gate_per_token ? num_tokens : n) * esize;
    MOEKIT_REQUIRE(!overlaps(hidden, bytes, gate, gate_bytes),
                   "%s: hidden (%p) and gate (%p) must not overlap", op, hidden, gate);
    if (!any) return MOEKIT_SUCCESS;

    Problem problem{true, false, dtype, num_tokens, hidden_size};
    GateParams a{};
    a.hidden = hidden;
    a.shared = shared;
    a.gate = gate;
    a.n = n;
    a.H = (int)hidden_size;
    a.per_token = gate_per_token != 0;
    a.vec = hidden_size % kGateVec == 0 && aligned(hidden, 16) && aligned(shared, 16) &&
            (a.per_token || aligned(gate, 16));
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    return run_plan(op, problem, &plan_epilogue, epilogue_tuning(), [&](const Plan& plan) {
      return with_float_type(dtype, [&](auto t) { return launch_gate<decltype(t)>(plan, a, s); });
    });
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_add_rmsnorm(void* x, void* residual, const void* weight,
                                                         moekit_dtype_t dtype, moekit_dtype_t weight_dtype,
                                                         int64_t num_tokens, int64_t hidden_size, float eps,
                                                         moekit_stream_t stream) {
  static const char* op = "add_rmsnorm";
  return guarded(op, [&]() -> moekit_status_t {
    return run_norm(op, true, x, residual, weight, nullptr, dtype, weight_dtype, num_tokens, hidden_size, eps, stream);
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_rmsnorm(const void* x, const void* weight, void* y, moekit_dtype_t dtype,
                                                     moekit_dtype_t weight_dtype, int64_t num_tokens,
                                                     int64_t hidden_size, float eps, moekit_stream_t stream) {
  static const char* op = "rmsnorm";
  return guarded(op, [&]() -> moekit_status_t {
    return run_norm(op, false, const_cast<void*>(x), nullptr, weight, y, dtype, weight_dtype, num_tokens, hidden_size, eps,
                    stream);
  });
}
