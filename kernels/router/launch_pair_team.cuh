// The router + aux-scores pair's team-rows kernels of one router kind (forward_team_pair_kernel):
// the lanes, chunks and FULL switch of launch_team, for the pair. Apart from launch.cuh so that each
// kind compiles in its own unit (router_aux_team_*.cu): together they were the build's longest.
#pragma once

#include <type_traits>

#include <cuda_runtime.h>

#include "common/launch.h"
#include "router/forward_team.cuh"
#include "router/plan.h"

namespace moekit {
namespace router {

template <typename T, int KIND>
cudaError_t launch_pair_team(const PairForwardPlan& plan, const ForwardParams& a, const ForwardParams& b,
                             cudaStream_t stream) {
  const ForwardPlan& r = plan.router;
  auto go = [&](auto lanes, auto chunks) {
    constexpr int LANES = decltype(lanes)::value, CHUNKS = decltype(chunks)::value;
    if constexpr (LANES >= 8)
      if (r.full) return launch_kernel(&forward_team_pair_kernel<T, LANES, KIND, CHUNKS, true>, plan.shape, stream, a, b);
    return launch_kernel(&forward_team_pair_kernel<T, LANES, KIND, CHUNKS, false>, plan.shape, stream, a, b);
  };
  if (r.chunks == 1)
    return with_int<8, 16, 32>(r.lanes, [&](auto lanes) { return go(lanes, std::integral_constant<int, 1>{}); });
  return with_int<1, 2, 4, 8, 16, 32>(r.lanes, [&](auto lanes) { return go(lanes, std::integral_constant<int, 2>{}); });
}

}  // namespace router
}  // namespace moekit
