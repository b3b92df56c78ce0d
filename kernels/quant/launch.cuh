// The quantization's one launch switch: a plan (plan.h) to the kernel instantiation that runs it.
#pragma once

#include <cuda_runtime.h>

#include "common/launch.h"
#include "quant/kernels.cuh"
#include "quant/plan.h"

namespace moekit {
namespace quant {

template <typename T>
cudaError_t launch_quant(const Plan& plan, const Params& a, cudaStream_t stream) {
  if (plan.async_copy) {
    if (plan.silu) return launch_kernel(&quant_kernel<T, true, true>, plan.shape, stream, a);
    return launch_kernel(&quant_kernel<T, false, true>, plan.shape, stream, a);
  }
  if (plan.silu) return launch_kernel(&quant_kernel<T, true, false>, plan.shape, stream, a);
  return launch_kernel(&quant_kernel<T, false, false>, plan.shape, stream, a);
}

}  // namespace quant
}  // namespace moekit
