// The epilogues' plans (SPEC section 7): pure host functions from (problem, device, tuning) to the
// launch shape. Nothing in them changes a result: the row reduction's order depends only on H.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/api.h"
#include "common/hooks.h"
#include "common/launch.h"
#include "epilogue/params.h"

namespace moekit {
namespace epilogue {

struct EpilogueTuning {
  // Gate: resident blocks of kGateThreads per SM the grid-stride loop aims at (a few waves).
  int gate_blocks_per_sm = 32;
  // RMSNorm: the smallest per-thread width (elements); the plan widens it until a row fits
  // norm_max_threads threads (or kMaxThreads once kMaxVpt is reached).
  int norm_min_vpt = 0;  // 0: 16 bytes of the dtype
  // Threads per row: fewer means more rows resident per SM, hence more bytes in flight.
  int norm_max_threads = 512;
  // RMSNorm: resident-block waves the grid covers before blocks stride over rows.
  int norm_waves = 8;
};

inline EpilogueTuning epilogue_tuning() {
  EpilogueTuning t;
  const TuningOverrides o = tuning_overrides();
  if (!o.any()) return t;
  int64_t v;
  if (o.get("epilogue.gate_blocks_per_sm", &v) && v > 0) t.gate_blocks_per_sm = (int)std::min<int64_t>(v, 256);
  if (o.get("epilogue.norm_min_vpt", &v) && v > 0) t.norm_min_vpt = (int)std::min<int64_t>(v, kMaxVpt);
  if (o.get("epilogue.norm_max_threads", &v) && v > 0) t.norm_max_threads = (int)std::min<int64_t>(std::max<int64_t>(v, 32), kMaxThreads);
  if (o.get("epilogue.norm_waves", &v) && v > 0) t.norm_waves = (int)std::min<int64_t>(v, 1024);
  return t;
}

struct Problem {
  bool gate;  // else RMSNorm
  bool add;   // add_rmsnorm
  moekit_dtype_t dtype;
  int64_t T, H;
};

struct Plan {
  bool gate, add;
  int vpt;  // RMSNorm: elements per thread
  bool weight_first;  // RMSNorm: the weight loaded with the row (at most one row per SM)
  LaunchShape shape;
};

inline int norm_vpt(int64_t H, int esize, const EpilogueTuning& t) {
  int vpt = std::max(16 / esize, t.norm_min_vpt);
  for (int v : {4, 8, 16, 32})
    if (v >= vpt) {
      vpt = v;
      break;
    }
  while (vpt < kMaxVpt && (H + vpt - 1) / vpt > t.norm_max_threads) vpt *= 2;
  return vpt;
}

inline Plan plan_epilogue(const Problem& p, const DeviceInfo& dev, const EpilogueTuning& t) {
  Plan plan{};
  plan.gate = p.gate;
  plan.add = p.add;
  if (p.gate) {
    const int64_t chunks = (p.T * p.H + kGateVec - 1) / kGateVec;
    const int64_t needed = std::max<int64_t>(1, (chunks + kGateThreads - 1) / kGateThreads);
    plan.shape.blocks = std::min<int64_t>(needed, (int64_t)std::max(dev.sm_count, 1) * t.gate_blocks_per_sm);
    plan.shape.threads = kGateThreads;
  } else {
    plan.vpt = norm_vpt(p.H, dtype_size(p.dtype), t);
    plan.shape.threads = (int)((p.H + plan.vpt - 1) / plan.vpt + 31) / 32 * 32;
    // A row per block, up to norm_waves waves of resident blocks (by threads); beyond, blocks
    // stride over rows (any T, no grid-axis limit).
    const int64_t per_sm = std::max(1, 2048 / plan.shape.threads);
    const int64_t cap = (int64_t)std::max(dev.sm_count, 1) * per_sm * t.norm_waves;
    plan.shape.blocks = std::max<int64_t>(1, std::min<int64_t>(p.T, cap));
    plan.weight_first = p.T <= std::max(dev.sm_count, 1) && plan.vpt <= kMaxWeightFirstVpt;
  }
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=%s vpt=%d weight_first=%d threads=%d blocks=%lld pdl=%d",
          plan.gate ? "gate" : (plan.add ? "add_rmsnorm" : "rmsnorm"), plan.vpt, (int)plan.weight_first,
          plan.shape.threads, (long long)plan.shape.blocks, (int)plan.shape.pdl);
}

}  // namespace epilogue
}  // namespace moekit
