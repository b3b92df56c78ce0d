// The last steps of every entry point: plan for the device (or the plan-only one), apply the PDL
// switch, check that the launch fits, then launch the plan or, in plan-only mode, record it.
// `describe(plan, text)` is found by argument-dependent lookup in the family's namespace.
#pragma once

#include <cuda_runtime.h>

#include "common/api.h"
#include "common/hooks.h"
#include "common/launch.h"

namespace moekit {

template <typename Problem, typename Plan, typename Tuning, typename Launch>
moekit_status_t run_plan(const char* op, const Problem& problem,
                         Plan (*planner)(const Problem&, const DeviceInfo&, const Tuning&), const Tuning& tuning,
                         Launch launch) {
  const DeviceInfo* dev = nullptr;
  moekit_status_t st = plan_device(op, &dev);
  if (st != MOEKIT_SUCCESS) return st;
  Plan plan = planner(problem, *dev, tuning);
  plan.shape.pdl = plan.shape.pdl && pdl_switch();  // the one switch outside the plan (timing only)
  if ((st = check_fits(op, plan.shape, *dev)) != MOEKIT_SUCCESS) return st;
  if (plan_only()) {
    PlanText text;
    describe(plan, text);
    return record_plan(text.text);
  }
  const cudaError_t err = launch(plan);
  if (err != cudaSuccess) return cuda_fail(op, "kernel launch", err);
  return MOEKIT_SUCCESS;
}

}  // namespace moekit
