// The epilogues' one launch switch: a plan (plan.h) to the kernel instantiation that runs it.
#pragma once

#include <cuda_runtime.h>

#include "common/launch.h"
#include "epilogue/kernels.cuh"
#include "epilogue/plan.h"

namespace moekit {
namespace epilogue {

template <typename T, typename W>
cudaError_t launch_norm(const Plan& plan, const NormParams& a, cudaStream_t stream) {
  return with_int<4, 8, 16, 32>(plan.vpt, [&](auto vpt) {
    constexpr int V = decltype(vpt)::value;
    if constexpr (V <= kMaxWeightFirstVpt) {
      if (plan.weight_first) {
        if (plan.add) return launch_kernel(&norm_kernel<T, W, V, true, true>, plan.shape, stream, a);
        return launch_kernel(&norm_kernel<T, W, V, false, true>, plan.shape, stream, a);
      }
    }
    if (plan.add) return launch_kernel(&norm_kernel<T, W, V, true, false>, plan.shape, stream, a);
    return launch_kernel(&norm_kernel<T, W, V, false, false>, plan.shape, stream, a);
  });
}

template <typename T>
cudaError_t launch_gate(const Plan& plan, const GateParams& a, cudaStream_t stream) {
  return launch_kernel(&gate_kernel<T>, plan.shape, stream, a);
}

}  // namespace epilogue
}  // namespace moekit
