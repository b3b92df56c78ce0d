// The grouped top-k plan (SPEC section 4): a warp per row over a grid of whole blocks; the values
// per lane (VPL, a power of two) from E. Nothing in it changes a result.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/api.h"
#include "common/hooks.h"
#include "common/launch.h"
#include "grouped_topk/params.h"

namespace moekit {
namespace grouped_topk {

struct GroupedTopkTuning {
  int blocks_per_sm = 8;  // the grid-stride loop's resident blocks (2048 threads per SM)
};

inline GroupedTopkTuning grouped_topk_tuning() {
  GroupedTopkTuning t;
  const TuningOverrides o = tuning_overrides();
  int64_t v;
  if (o.any() && o.get("grouped_topk.blocks_per_sm", &v) && v > 0) t.blocks_per_sm = (int)std::min<int64_t>(v, 64);
  return t;
}

struct Problem {
  int64_t T;
  int E, G;
};

struct Plan {
  int vpl;
  LaunchShape shape;
};

inline Plan plan_grouped_topk(const Problem& p, const DeviceInfo& dev, const GroupedTopkTuning& t) {
  Plan plan{};
  plan.vpl = 1;
  while (plan.vpl * 32 < p.E) plan.vpl *= 2;
  const int64_t needed = std::max<int64_t>(1, (p.T + kWarps - 1) / kWarps);
  plan.shape.blocks = std::min<int64_t>(needed, (int64_t)std::max(dev.sm_count, 1) * t.blocks_per_sm);
  plan.shape.threads = kThreads;
  plan.shape.smem_bytes = p.G > 1 ? (size_t)kWarps * (p.E + p.G) * sizeof(float) : 0;  // a padded row per warp
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=warp_rows vpl=%d threads=%d blocks=%lld smem_bytes=%zu pdl=%d", plan.vpl, plan.shape.threads,
          (long long)plan.shape.blocks, plan.shape.smem_bytes, (int)plan.shape.pdl);
}

}  // namespace grouped_topk
}  // namespace moekit
