// The grouped top-k's one launch switch: a plan (plan.h) to the kernel instantiation that runs it.
#pragma once

#include <cuda_runtime.h>

#include "common/launch.h"
#include "grouped_topk/kernels.cuh"
#include "grouped_topk/plan.h"

namespace moekit {
namespace grouped_topk {

template <typename T>
cudaError_t launch_grouped_topk(const Plan& plan, Params a, cudaStream_t stream) {
  a.vec = plan.vec;
  a.warp_words = plan.warp_words;
  a.chunk_groups = plan.chunk_groups;
  return with_int<1, 2, 4, 8, 16, 32>(plan.vpt, [&](auto vpt) {
    constexpr int VPT = decltype(vpt)::value;
    constexpr int VEC = VPT < 16 / (int)sizeof(T) ? VPT : 16 / (int)sizeof(T);
    return launch_kernel(&grouped_topk_kernel<T, VEC, VPT / VEC>, plan.shape, stream, a);
  });
}

}  // namespace grouped_topk
}  // namespace moekit
