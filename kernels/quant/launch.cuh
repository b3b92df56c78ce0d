// The quantization's one launch switch: a plan (plan.h) to the kernel instantiation that runs it.
#pragma once

#include <type_traits>

#include <cuda_runtime.h>

#include "common/launch.h"
#include "quant/kernels.cuh"
#include "quant/plan.h"

namespace moekit {
namespace quant {

template <typename T>
cudaError_t launch_quant(const Plan& plan, const Params& a, cudaStream_t stream) {
  auto go = [&](auto load) {
    constexpr int LOAD = decltype(load)::value;
    if (plan.silu) return launch_kernel(&quant_kernel<T, true, LOAD>, plan.shape, stream, a);
    return launch_kernel(&quant_kernel<T, false, LOAD>, plan.shape, stream, a);
  };
  if (plan.async_copy) return go(std::integral_constant<int, kLoadAsync>{});
  if (plan.prefetch) return go(std::integral_constant<int, kLoadPrefetch>{});
  return go(std::integral_constant<int, kLoadPlain>{});
}

}  // namespace quant
}  // namespace moekit
