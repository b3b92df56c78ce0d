// The FP8 quantization's C entry points (SPEC section 6): validate, plan (plan.h), then launch
// (launch.cuh) or record the plan in plan-only mode. The contiguous call is the masked one with a
// single batch whose every row is valid.
#include <climits>
#include <cstdint>

#include "common/checks.h"
#include "common/run.h"
#include "quant/launch.cuh"

using namespace moekit;
using namespace moekit::quant;

namespace {

struct Request {
  const char* op;
  bool silu;
  const void* x;
  moekit_dtype_t dtype;
  int64_t B, M, H;  // H: output columns
  const void* counts;  // masked only
  moekit_dtype_t counts_dtype;
  int64_t group_size;
  int format;
  int gate_first, round_act;
  void* q;
  void* scales;
  bool masked;
};

moekit_status_t run(const Request& r, moekit_stream_t stream) {
  const char* op = r.op;
  moekit_status_t st = check_float_dtype(op, "x_dtype", r.dtype);
  if (st != MOEKIT_SUCCESS) return st;
  MOEKIT_REQUIRE(r.group_size == 32 || r.group_size == 64 || r.group_size == 128,
                 "%s: group_size (%lld) must be 32, 64 or 128", op, (long long)r.group_size);
  MOEKIT_REQUIRE(r.format >= kRowF32 && r.format <= kPackedUe8m0,
                 "%s: scale_format (%d) must be row_f32 (0), col_f32_tma (1), col_f32_tma_ue8m0 (2) or packed_ue8m0 (3)",
                 op, r.format);
  MOEKIT_REQUIRE(r.H >= 1 && r.H <= INT_MAX / 2, "%s: hidden (%lld) must be in [1, %d]", op, (long long)r.H,
                 INT_MAX / 2);
  MOEKIT_REQUIRE(r.H % r.group_size == 0, "%s: hidden (%lld) must be a multiple of group_size (%lld)", op,
                 (long long)r.H, (long long)r.group_size);
  if (r.masked) {
    MOEKIT_REQUIRE(r.B >= 0 && r.B <= kMaxExperts, "%s: num_experts (%lld) must be in [0, %d]", op, (long long)r.B,
                   kMaxExperts);
    MOEKIT_REQUIRE(r.M >= 0, "%s: max_tokens (%lld) must be >= 0", op, (long long)r.M);
  } else {
    MOEKIT_REQUIRE(r.M >= 0, "%s: num_tokens (%lld) must be >= 0", op, (long long)r.M);
  }
  const int64_t xcols = r.silu ? 2 * r.H : r.H;
  const int esize = dtype_size(r.dtype);
  // Every byte count below stays under 2^62: rows * xcols * 4 bytes, and scale storage.
  MOEKIT_REQUIRE(r.B == 0 || r.M <= ((int64_t)1 << 62) / (r.B * xcols * 4 + 16),
                 "%s: %s (%lld) times the row size overflows int64", op, r.masked ? "max_tokens" : "num_tokens",
                 (long long)r.M);
  const int64_t rows = r.B * r.M;
  const bool any = rows > 0;
  if ((st = check_ptr(op, "x", r.x, 16, any)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "q", r.q, 16, any)) != MOEKIT_SUCCESS) return st;
  if ((st = check_ptr(op, "scales", r.scales, 4, any)) != MOEKIT_SUCCESS) return st;
  if (r.masked) {
    MOEKIT_REQUIRE(r.counts_dtype == MOEKIT_DTYPE_I32 || r.counts_dtype == MOEKIT_DTYPE_I64,
                   "%s: counts_dtype (%s, value %d) must be int32 or int64", op, dtype_name(r.counts_dtype),
                   (int)r.counts_dtype);
    if ((st = check_ptr(op, "counts", r.counts, dtype_size(r.counts_dtype), r.B > 0)) != MOEKIT_SUCCESS) return st;
  }
  if (!any) return MOEKIT_SUCCESS;  // nothing to read or write: launch nothing

  Params a{};
  a.G = (int)(r.H / r.group_size);
  a.S = r.format == kPackedUe8m0 ? (a.G + 3) / 4 : a.G;
  a.R = r.format == kRowF32 ? r.M : (r.M + 3) / 4 * 4;
  const int64_t x_bytes = rows * xcols * esize, q_bytes = rows * r.H;
  const int64_t s_bytes = r.format == kRowF32 ? rows * a.G * 4 : r.B * a.S * a.R * 4;
  MOEKIT_REQUIRE(!overlaps(r.x, x_bytes, r.q, q_bytes) && !overlaps(r.x, x_bytes, r.scales, s_bytes) &&
                     !overlaps(r.q, q_bytes, r.scales, s_bytes),
                 "%s: x (%p), q (%p) and scales (%p) must not overlap", op, r.x, r.q, r.scales);
  const int64_t c_bytes = r.masked ? r.B * dtype_size(r.counts_dtype) : 0;
  MOEKIT_REQUIRE(!overlaps(r.counts, c_bytes, r.q, q_bytes) && !overlaps(r.counts, c_bytes, r.scales, s_bytes),
                 "%s: counts (%p) must not overlap q (%p) or scales (%p)", op, r.counts, r.q, r.scales);
  a.x = r.x;
  a.q = r.q;
  a.scales = r.scales;
  a.counts = r.masked ? r.counts : nullptr;
  a.counts_i64 = r.counts_dtype == MOEKIT_DTYPE_I64;
  a.B = (int)r.B;
  a.M = r.M;
  a.H = (int)r.H;
  a.xcols = (int)xcols;
  a.a_off = r.silu && !r.gate_first ? (int)r.H : 0;
  a.b_off = r.silu && r.gate_first ? (int)r.H : 0;
  a.lane_shift = r.group_size == 32 ? 1 : (r.group_size == 64 ? 2 : 3);
  a.units = (int)((r.H + kWarpCols - 1) / kWarpCols);
  a.format = r.format;
  a.round_act = r.silu && r.round_act != 0;

  Problem problem{r.dtype, r.silu, r.masked, r.B, r.M, r.H};
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  return run_plan(op, problem, &plan_quant, quant_tuning(), [&](const Plan& plan) {
    a.prefix_words = plan.prefix_words;
    return with_float_type(r.dtype, [&](auto t) { return launch_quant<decltype(t)>(plan, a, s); });
  });
}

}  // namespace

extern "C" MOEKIT_API moekit_status_t moekit_silu_mul_quant_fp8(const void* x, moekit_dtype_t x_dtype,
                                                                int64_t num_tokens, int64_t hidden,
                                                                int64_t group_size, moekit_scale_format_t scale_format,
                                                                int gate_first, int round_act, void* q, void* scales,
                                                                moekit_stream_t stream) {
  static const char* op = "silu_mul_quant_fp8";
  return guarded(op, [&]() -> moekit_status_t {
    Request r{op, true, x, x_dtype, 1, num_tokens, hidden, nullptr, MOEKIT_DTYPE_I32, group_size, (int)scale_format,
              gate_first, round_act, q, scales, false};
    return run(r, stream);
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_silu_mul_quant_fp8_masked(
    const void* x, moekit_dtype_t x_dtype, int64_t num_experts, int64_t max_tokens, int64_t hidden,
    const void* counts, moekit_dtype_t counts_dtype, int64_t group_size, moekit_scale_format_t scale_format,
    int gate_first, int round_act, void* q, void* scales, moekit_stream_t stream) {
  static const char* op = "silu_mul_quant_fp8_masked";
  return guarded(op, [&]() -> moekit_status_t {
    Request r{op, true, x, x_dtype, num_experts, max_tokens, hidden, counts, counts_dtype, group_size,
              (int)scale_format, gate_first, round_act, q, scales, true};
    return run(r, stream);
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_quant_fp8(const void* x, moekit_dtype_t x_dtype, int64_t num_tokens,
                                                       int64_t hidden, int64_t group_size,
                                                       moekit_scale_format_t scale_format, void* q, void* scales,
                                                       moekit_stream_t stream) {
  static const char* op = "quant_fp8";
  return guarded(op, [&]() -> moekit_status_t {
    Request r{op, false, x, x_dtype, 1, num_tokens, hidden, nullptr, MOEKIT_DTYPE_I32, group_size, (int)scale_format,
              0, 0, q, scales, false};
    return run(r, stream);
  });
}
