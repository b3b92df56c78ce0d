// The grouped top-k plan (SPEC section 4): a warp per row; the experts per lane (a power of two) from
// E, the launch shape from T. Nothing in it changes a result.
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
  int elem_bytes;  // of the logits
  bool aligned;    // logits 16-byte aligned
};

struct Plan {
  int vpt;         // experts per lane (a power of two), in chunks of vec_elems
  int vec_elems;   // 16 bytes of logits, or the whole vpt when less
  bool vec;        // whole-chunk vector loads
  bool chunk_groups;  // the group stage in registers (lane_team_kept_groups)
  int warp_words;  // shared words per warp
  LaunchShape shape;
};

// A warp per row. Small T spreads its rows over the SMs (fewer warps per block, more blocks), so
// that a decode step's few rows do not queue on one SM's schedulers; large T fills blocks of
// kWarps and strides over a grid of blocks_per_sm waves.
inline Plan plan_grouped_topk(const Problem& p, const DeviceInfo& dev, const GroupedTopkTuning& t) {
  Plan plan{};
  plan.vpt = 1;
  while (plan.vpt * 32 < p.E) plan.vpt *= 2;
  plan.vec_elems = std::min(plan.vpt, 16 / std::max(p.elem_bytes, 1));
  plan.vec = p.aligned && p.E % plan.vec_elems == 0;
  const int gsize = p.E / std::max(p.G, 1), lanes_per_group = gsize / plan.vec_elems;
  plan.chunk_groups = p.G > 1 && gsize % plan.vec_elems == 0 && lanes_per_group >= 1 && lanes_per_group <= 32 &&
                      (lanes_per_group & (lanes_per_group - 1)) == 0;
  plan.warp_words = kWarpHeadWords + (p.E + 3) / 4 * 4;
  const int sms = std::max(dev.sm_count, 1);
  const int warps = (int)std::min<int64_t>(kWarps, std::max<int64_t>(1, (p.T + sms - 1) / sms));
  const int64_t needed = std::max<int64_t>(1, (p.T + warps - 1) / warps);
  plan.shape.threads = 32 * warps;
  plan.shape.blocks = std::min<int64_t>(needed, (int64_t)sms * t.blocks_per_sm * (kWarps / warps));
  plan.shape.smem_bytes = (size_t)warps * plan.warp_words * sizeof(uint32_t);
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=warp_rows vpt=%d vec_elems=%d vec=%d chunk_groups=%d threads=%d blocks=%lld smem_bytes=%zu pdl=%d",
          plan.vpt, plan.vec_elems, (int)plan.vec, (int)plan.chunk_groups, plan.shape.threads,
          (long long)plan.shape.blocks, plan.shape.smem_bytes, (int)plan.shape.pdl);
}

}  // namespace grouped_topk
}  // namespace moekit
