// In-process hooks for tests and benchmarks: not part of moekit.h, no ABI promise, not installed.
// Nothing here is read from the environment: a process that never calls these runs the plans of
// the tuning tables, and computes the same bits whatever its environment.
//
//   tuning overrides  a knob ("router.radix_min_k", "pdl") replaces a cut-off of a family's tuning
//                     table for every later call in the process, until reset;
//   plan-only mode    on the calling thread, entry points validate and plan as usual for the given
//                     device properties, then record the plan as text instead of launching: CPU
//                     tests assert which plan each shape gets, benchmarks record it.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "moekit/moekit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* INVALID_ARGUMENT for a name no family knows. */
MOEKIT_API moekit_status_t moekit_internal_set_tuning(const char* name, int64_t value);
/* Every override gone: the tuning tables again. */
MOEKIT_API void moekit_internal_reset_tuning(void);
/* The names of every knob, space-separated. */
MOEKIT_API const char* moekit_internal_tuning_names(void);
/* enable != 0: plan-only mode on this thread for a device with these properties (sm_count 0: the
 * current device's). enable == 0: launches again. */
MOEKIT_API void moekit_internal_plan_only(int enable, int sm_count, int cc_major, int cc_minor,
                                          int smem_per_block_optin, int smem_per_sm);
/* The plan the calling thread's last call recorded in plan-only mode, "key=value ..." ("" if none
 * since the mode was last entered). */
MOEKIT_API const char* moekit_internal_last_plan(void);

#ifdef __cplusplus
} /* extern "C" */

#include <cstdio>

#include "common/api.h"

namespace moekit {

// The knobs overridden at one moment (copied under one lock, so a concurrent set or reset cannot
// leave half of them). A family's tuning function reads its knobs from it by name.
class TuningOverrides {
 public:
  // True and *value set where `name` is overridden. A name no family registered (kKnobs in
  // hooks.cpp) is a bug of the caller: tests/test_plans.py checks that every knob changes a plan.
  bool get(const char* name, int64_t* value) const;
  bool any() const { return any_; }

 private:
  friend TuningOverrides tuning_overrides();
  static constexpr int kMaxKnobs = 32;
  bool any_ = false;
  bool set_[kMaxKnobs] = {};
  int64_t value_[kMaxKnobs] = {};
};
// The current overrides; costs one atomic load when there are none (the plans' normal case).
TuningOverrides tuning_overrides();

// The device an entry point plans for: the plan-only device on this thread, else the current one.
moekit_status_t plan_device(const char* op, const DeviceInfo** dev);
// Whether this thread is in plan-only mode; if so the entry point records its plan and returns.
bool plan_only();
moekit_status_t record_plan(const char* text);

// Appends printf-style "key=value" text to a plan description.
struct PlanText {
  char text[512] = "";
  size_t used = 0;
  void add(const char* fmt, ...)
#if defined(__GNUC__)
      __attribute__((format(printf, 2, 3)))
#endif
      ;
};

}  // namespace moekit
#endif
