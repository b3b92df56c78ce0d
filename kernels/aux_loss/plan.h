// The aux loss's plans (SPEC section 3): pure host functions from (problem, device, tuning) to the
// launch shape. The forward's partition into chunks is fixed (params.h); the plan only picks how
// many blocks share it, which changes no bit of the result.
#pragma once

#include <algorithm>
#include <cstdint>

#include "aux_loss/params.h"
#include "common/api.h"
#include "common/checks.h"
#include "common/hooks.h"
#include "common/launch.h"

namespace moekit {
namespace aux_loss {

struct AuxLossTuning {
  // Resident blocks of kThreads per SM the grids aim at: a persistent grid of this many waves.
  int blocks_per_sm = 8;
  // A fixed grid size in place of the rule (tests: the same bits whatever the grid). 0: the rule.
  int64_t blocks = 0;
};

inline AuxLossTuning aux_loss_tuning() {
  AuxLossTuning t;
  const TuningOverrides o = tuning_overrides();
  if (!o.any()) return t;
  int64_t v;
  if (o.get("aux_loss.blocks_per_sm", &v) && v > 0) t.blocks_per_sm = (int)std::min<int64_t>(v, 64);
  if (o.get("aux_loss.blocks", &v) && v > 0) t.blocks = v;
  return t;
}

struct Problem {
  moekit_dtype_t dtype;  // probs (forward), grad (backward)
  int64_t n;             // R * C
  int C;
  bool aligned;  // probs (grad_probs) 16-byte aligned
};

struct Plan {
  bool backward;
  bool staged;  // tokens_per_expert staged in shared memory
  bool vec;
  int64_t chunks;  // forward: the fixed partition's chunks
  LaunchShape shape;
};

inline Plan plan_common(const Problem& p, const DeviceInfo& dev, const AuxLossTuning& t, int64_t units, bool backward) {
  Plan plan{};
  plan.backward = backward;
  plan.staged = p.C <= kMaxStagedCols;
  plan.vec = p.aligned;
  const int64_t resident = (int64_t)std::max(dev.sm_count, 1) * t.blocks_per_sm;
  plan.shape.blocks = std::max<int64_t>(1, std::min<int64_t>(t.blocks > 0 ? t.blocks : resident, units));
  plan.shape.threads = kThreads;
  plan.shape.smem_bytes = plan.staged ? (size_t)p.C * 4 : 0;
  plan.shape.pdl = dev.cc_major >= 9;
  return plan;
}

inline Plan plan_forward(const Problem& p, const DeviceInfo& dev, const AuxLossTuning& t) {
  const int chunk = chunk_elems(dtype_size(p.dtype));
  const int64_t chunks = (p.n + chunk - 1) / chunk;
  Plan plan = plan_common(p, dev, t, chunks, false);
  plan.chunks = chunks;
  return plan;
}

inline Plan plan_backward(const Problem& p, const DeviceInfo& dev, const AuxLossTuning& t) {
  return plan_common(p, dev, t, (p.n + kThreads * kVec - 1) / (kThreads * kVec), true);
}

inline void describe(const Plan& plan, PlanText& out) {
  out.add("path=%s staged=%d vec=%d chunks=%lld threads=%d blocks=%lld smem_bytes=%zu pdl=%d",
          plan.backward ? "stream_store" : "chunk_sums", (int)plan.staged, (int)plan.vec, (long long)plan.chunks,
          plan.shape.threads, (long long)plan.shape.blocks, plan.shape.smem_bytes, (int)plan.shape.pdl);
}

// Workspace: the ticket counter, then one partial per chunk (as many as f32 probs have, the most).
struct Workspace {
  unsigned* counter;
  float* partials;
};
inline Workspace carve_workspace(WorkspaceLayout& w, int64_t n) {
  Workspace ws;
  ws.counter = w.take<unsigned>(1);
  ws.partials = w.take<float>((size_t)((n + kMinChunk - 1) / kMinChunk));
  return ws;
}

}  // namespace aux_loss
}  // namespace moekit
