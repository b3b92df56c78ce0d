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
};

inline QuantTuning quant_tuning() {
  QuantTuning t;
  const TuningOverrides o = tuning_overrides();
  if (!o.any()) return t;
  int64_t v;
  if (o.get("quant.blocks_per_sm", &v) && v > 0) t.blocks_per_sm = (int)std::min<int64_t>(v, 64);
  if (o.get("quant.blocks", &v) && v > 0) t.blocks = v;
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
  LaunchShape shape;
};

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
  plan.shape.smem_bytes = p.masked ? (size_t)(p.B + 1) * sizeof(int64_t) : 0;
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=%s%s threads=%d blocks=%lld smem_bytes=%zu pdl=%d", plan.silu ? "silu_mul_quant" : "quant",
          plan.masked ? "_masked" : "", plan.shape.threads, (long long)plan.shape.blocks, plan.shape.smem_bytes,
          (int)plan.shape.pdl);
}

}  // namespace quant
}  // namespace moekit
