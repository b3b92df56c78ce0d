// moe_align's plan (SPEC section 5): one block and one launch while the pairs fit one chunk, else
// count / finalize / place over chunks. Either path gives the same bits.
#pragma once

#include <algorithm>
#include <cstdint>

#include "align/params.h"
#include "common/api.h"
#include "common/checks.h"
#include "common/hooks.h"
#include "common/launch.h"

namespace moekit {
namespace align {

struct AlignTuning {
  // Take the three-launch path even for one chunk (tests: both paths give the same bits).
  bool force_multi = false;
};

inline AlignTuning align_tuning() {
  AlignTuning t;
  const TuningOverrides o = tuning_overrides();
  int64_t v;
  if (o.any() && o.get("align.force_multi", &v)) t.force_multi = v != 0;
  return t;
}

struct Problem {
  int64_t pairs;
  int E;
};

struct Plan {
  bool single;
  int64_t chunks;
  LaunchShape shape;  // the single kernel, or the place kernel (the most shared memory)
};

inline int64_t chunks_of(int64_t pairs) { return std::max<int64_t>(1, (pairs + kChunk - 1) / kChunk); }

inline Plan plan_align(const Problem& p, const DeviceInfo& dev, const AlignTuning& t) {
  Plan plan{};
  plan.chunks = chunks_of(p.pairs);
  plan.single = plan.chunks == 1 && !t.force_multi;
  plan.shape.threads = kThreads;
  plan.shape.blocks = plan.single ? 1 : plan.chunks;
  plan.shape.smem_bytes = (size_t)(kWarps + (plan.single ? 2 : 1)) * p.E * sizeof(int);
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=%s chunks=%lld threads=%d blocks=%lld smem_bytes=%zu pdl=%d", plan.single ? "single" : "multi",
          (long long)plan.chunks, plan.shape.threads, (long long)plan.shape.blocks, plan.shape.smem_bytes,
          (int)plan.shape.pdl);
}

// Workspace: each chunk's count (then base) per expert, and the region starts.
struct Workspace {
  int32_t* block_hist;
  int32_t* region_start;
};
inline Workspace carve_workspace(WorkspaceLayout& w, int64_t pairs, int E) {
  Workspace ws;
  ws.block_hist = w.take<int32_t>((size_t)chunks_of(pairs) * E);
  ws.region_start = w.take<int32_t>((size_t)E);
  return ws;
}

}  // namespace align
}  // namespace moekit
