// The aux loss's one launch switch: a plan (plan.h) to the kernel instantiation that runs it.
#pragma once

#include <cuda_runtime.h>

#include "aux_loss/kernels.cuh"
#include "aux_loss/plan.h"
#include "common/launch.h"

namespace moekit {
namespace aux_loss {

template <typename T>
cudaError_t launch_forward(const Plan& plan, const ForwardParams& a, cudaStream_t stream) {
  if (plan.staged) return launch_kernel(&aux_loss_forward_kernel<T, true>, plan.shape, stream, a);
  return launch_kernel(&aux_loss_forward_kernel<T, false>, plan.shape, stream, a);
}

template <typename T>
cudaError_t launch_backward(const Plan& plan, const BackwardParams& a, cudaStream_t stream) {
  if (plan.staged) return launch_kernel(&aux_loss_backward_kernel<T, true>, plan.shape, stream, a);
  return launch_kernel(&aux_loss_backward_kernel<T, false>, plan.shape, stream, a);
}

}  // namespace aux_loss
}  // namespace moekit
