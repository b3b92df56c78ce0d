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
/* The plan the calling thread's last call recorded in plan-only mode, "key=value ..." ("" if none). */
MOEKIT_API const char* moekit_internal_last_plan(void);

#ifdef __cplusplus
} /* extern "C" */

#include <cstdio>

#include "common/api.h"

namespace moekit {

// Whether any knob is overridden: one atomic load, so that the plans' normal case costs nothing more.
bool tuning_overridden();
// A knob's current override, if any: true and *value set where one is in place.
bool tuning_override(const char* name, int64_t* value);

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
