// The internal hooks of hooks.h: tuning overrides (process-wide) and plan-only mode (per thread).
#include "common/hooks.h"

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <string>

namespace moekit {
namespace {

// Every knob of every family. A family adds its knobs here and reads them in its tuning function
// (router: plan.h, router_tuning).
constexpr const char* kKnobs[] = {
    "pdl",
    "router.radix_min_k",
    "router.filter_min_keys_per_lane",
    "router.warp_max_experts",
    "router.team_max_k",
    "router.team_any_score",
    "router.team_chunks",
    "router.team_pack_f32_min_t",
    "router.wide_max_k",
    "router.wide_f32",
    "router.wide_min_experts",
    "router.pair_fused",
    "aux_loss.blocks_per_sm",
    "aux_loss.blocks",
    "quant.blocks_per_sm",
    "quant.blocks",
    "quant.async",
    "quant.prefetch",
    "epilogue.gate_blocks_per_sm",
    "epilogue.norm_min_vpt",
    "epilogue.norm_max_threads",
    "epilogue.norm_waves",
    "align.force_multi",
    "grouped_topk.blocks_per_sm",
};
constexpr int kNumKnobs = (int)(sizeof(kKnobs) / sizeof(kKnobs[0]));

std::mutex g_mutex;
std::atomic<bool> g_any{false};
bool g_set[kNumKnobs];
int64_t g_value[kNumKnobs];

int knob_index(const char* name) {
  for (int i = 0; i < kNumKnobs; ++i)
    if (name != nullptr && std::strcmp(kKnobs[i], name) == 0) return i;
  return -1;
}

struct PlanOnly {
  bool enabled = false;
  DeviceInfo device;
  char last[sizeof(PlanText::text)] = "";
};
thread_local PlanOnly g_plan_only;

}  // namespace

TuningOverrides tuning_overrides() {
  static_assert(kNumKnobs <= TuningOverrides::kMaxKnobs, "TuningOverrides holds every knob");
  TuningOverrides o;
  if (!g_any.load(std::memory_order_acquire)) return o;
  std::lock_guard<std::mutex> lock(g_mutex);
  for (int i = 0; i < kNumKnobs; ++i) {
    o.set_[i] = g_set[i];
    o.value_[i] = g_value[i];
    o.any_ = o.any_ || g_set[i];
  }
  return o;
}

bool TuningOverrides::get(const char* name, int64_t* value) const {
  const int i = any_ ? knob_index(name) : -1;
  if (i < 0 || !set_[i]) return false;
  *value = value_[i];
  return true;
}

moekit_status_t plan_device(const char* op, const DeviceInfo** dev) {
  if (g_plan_only.enabled && g_plan_only.device.sm_count > 0) {
    *dev = &g_plan_only.device;
    return MOEKIT_SUCCESS;
  }
  return current_device(op, dev);
}

bool plan_only() { return g_plan_only.enabled; }

moekit_status_t record_plan(const char* text) {
  std::snprintf(g_plan_only.last, sizeof(g_plan_only.last), "%s", text);
  return MOEKIT_SUCCESS;
}

void PlanText::add(const char* fmt, ...) {
  if (used + 1 >= sizeof(text)) return;
  if (used > 0) text[used++] = ' ';
  va_list args;
  va_start(args, fmt);
  const int n = std::vsnprintf(text + used, sizeof(text) - used, fmt, args);
  va_end(args);
  if (n > 0) used = std::min(sizeof(text) - 1, used + (size_t)n);
}

}  // namespace moekit

using namespace moekit;

extern "C" {

MOEKIT_API moekit_status_t moekit_internal_set_tuning(const char* name, int64_t value) {
  return guarded("internal_set_tuning", [&]() -> moekit_status_t {
    const int i = knob_index(name);
    if (i < 0) return fail(MOEKIT_INVALID_ARGUMENT, "internal_set_tuning: unknown knob '%s' (knobs: %s)",
                           name == nullptr ? "(null)" : name, moekit_internal_tuning_names());
    std::lock_guard<std::mutex> lock(g_mutex);
    g_set[i] = true;
    g_value[i] = value;
    g_any.store(true, std::memory_order_release);
    return MOEKIT_SUCCESS;
  });
}

MOEKIT_API void moekit_internal_reset_tuning(void) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (int i = 0; i < kNumKnobs; ++i) g_set[i] = false;
  g_any.store(false, std::memory_order_release);
}

MOEKIT_API const char* moekit_internal_tuning_names(void) {
  static const std::string names = [] {
    std::string s;
    for (const char* k : kKnobs) s += (s.empty() ? "" : " ") + std::string(k);
    return s;
  }();
  return names.c_str();
}

MOEKIT_API void moekit_internal_plan_only(int enable, int sm_count, int cc_major, int cc_minor,
                                          int smem_per_block_optin, int smem_per_sm) {
  PlanOnly& p = g_plan_only;
  p.enabled = enable != 0;
  if (p.enabled) p.last[0] = '\0';  // the last plan stays readable after the mode ends
  p.device = DeviceInfo{};
  p.device.device = -1;
  p.device.sm_count = sm_count;
  p.device.cc_major = cc_major;
  p.device.cc_minor = cc_minor;
  p.device.max_smem_per_block_optin = smem_per_block_optin;
  p.device.max_smem_per_sm = smem_per_sm;
}

MOEKIT_API const char* moekit_internal_last_plan(void) { return g_plan_only.last; }

}  // extern "C"
