// The quantization plan (SPEC section 6): a pure host function from (problem, device, tuning) to
// the launch shape of the one persistent kernel. Nothing in it changes a result.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/api.h"
#include "common/hooks.h"
#include "common/launch.h"
#include "quant/params.h"

namespace moekit {
namespace quant {

struct QuantTuning {
  // Blocks of kThreads per SM in the persistent grid: enough warps for the loads in flight that
  // keep HBM busy.
  int blocks_per_sm = 4;
  // A fixed grid size in place of the rule (tests: results do not depend on the grid). 0: the rule.
  int64_t blocks = 0;
  // Inputs through cp.async double buffers in shared memory (include/moekit/async_loader.cuh)
  // instead of plain 16-byte loads: the A/B of issue #19; bench/NOTES.md has the measurement.
  bool async_copy = false;
  // The next work item's inputs loaded into registers before this one is computed (twice the bytes
  // in flight per warp at the same occupancy); async_copy wins over it where both are set.
  bool prefetch = false;
};

inline QuantTuning quant_tuning() {
  QuantTuning t;
  const TuningOverrides o = tuning_overrides();
  if (!o.any()) return t;
  int64_t v;
  if (o.get("quant.blocks_per_sm", &v) && v > 0) t.blocks_per_sm = (int)std::min<int64_t>(v, 64);
  if (o.get("quant.blocks", &v) && v > 0) t.blocks = v;
  if (o.get("quant.async", &v)) t.async_copy = v != 0;
  if (o.get("quant.prefetch", &v)) t.prefetch = v != 0;
  return t;
}

struct Problem {
  moekit_dtype_t dtype;
  bool silu;
  bool masked;
  int64_t B, M;  // batches (experts) and rows per batch
  int64_t H;
};

struct Plan {
  bool silu;
  bool masked;
  bool async_copy;
  bool prefetch;
  int prefix_words;  // int64 words before the async stages
  LaunchShape shape;
};

// Shared memory of the async stages of a block: kWarps x 2 buffers x 32 lanes x 2 inputs x 16 elements.
inline size_t async_stage_bytes(moekit_dtype_t dtype) {
  return (size_t)kWarps * 2 * 32 * 2 * kLaneCols * dtype_size(dtype);
}

inline Plan plan_quant(const Problem& p, const DeviceInfo& dev, const QuantTuning& t) {
  Plan plan{};
  plan.silu = p.silu;
  plan.masked = p.masked;
  // At most every row of every batch valid (the scale zero-fill items are fewer and ride along).
  const int64_t units = (p.H + kWarpCols - 1) / kWarpCols;
  const int64_t items = p.B * p.M * units;
  const int64_t needed = std::max<int64_t>(1, (items + kWarps - 1) / kWarps);
  const int64_t resident = (int64_t)std::max(dev.sm_count, 1) * t.blocks_per_sm;
  plan.shape.blocks = std::min<int64_t>(t.blocks > 0 ? t.blocks : resident, needed);
  plan.shape.threads = kThreads;
  plan.async_copy = t.async_copy;
  plan.prefetch = t.prefetch && !t.async_copy;
  plan.prefix_words = p.masked ? (int)((p.B + 2) / 2 * 2) : 0;  // keeps the stages 16-byte aligned
  plan.shape.smem_bytes = (size_t)plan.prefix_words * sizeof(int64_t) + (t.async_copy ? async_stage_bytes(p.dtype) : 0);
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=%s%s%s threads=%d blocks=%lld smem_bytes=%zu pdl=%d", plan.silu ? "silu_mul_quant" : "quant",
          plan.masked ? "_masked" : "", plan.async_copy ? "_async" : plan.prefetch ? "_prefetch" : "", plan.shape.threads, (long long)plan.shape.blocks, plan.shape.smem_bytes,
          (int)plan.shape.pdl);
}

}  // namespace quant
}  // namespace moekit
