// moe_align's one launch switch: a plan (plan.h) to the kernels that run it.
#pragma once

#include <cuda_runtime.h>

#include "align/kernels.cuh"
#include "align/plan.h"
#include "common/launch.h"

namespace moekit {
namespace align {

inline cudaError_t launch_align(const Plan& plan, const Params& a, cudaStream_t stream) {
  if (plan.single) return launch_kernel(&align_single_kernel, plan.shape, stream, a);
  LaunchShape count = plan.shape, finalize = plan.shape;
  count.smem_bytes = (size_t)a.E * sizeof(int);
  finalize.blocks = 1;
  finalize.threads = kFinalizeThreads;
  finalize.smem_bytes = (size_t)a.E * sizeof(int);
  cudaError_t err = launch_kernel(&align_count_kernel, count, stream, a);
  if (err == cudaSuccess) err = launch_kernel(&align_finalize_kernel, finalize, stream, a);
  if (err == cudaSuccess) err = launch_kernel(&align_place_kernel, plan.shape, stream, a);
  return err;
}

}  // namespace align
}  // namespace moekit
