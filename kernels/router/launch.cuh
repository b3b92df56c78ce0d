// The router's one launch switch: a plan (plan.h) to the kernel instantiation that runs it, for the
// router and for the aux-loss scores.
// Included by the per-dtype sources (router_f32.cu, ...), which instantiate it, so that a 2-core
// build compiles the dtypes in parallel.
#pragma once

#include <cuda_runtime.h>

#include "common/launch.h"
#include "router/backward.cuh"
#include "router/forward_rows.cuh"
#include "router/forward_team.cuh"
#include "router/forward_wide.cuh"
#include "router/plan.h"

namespace moekit {
namespace router {

template <typename T, int KIND>
cudaError_t launch_team(const ForwardPlan& plan, const ForwardParams& a, cudaStream_t stream) {
  auto go = [&](auto lanes, auto chunks) {
    constexpr int LANES = decltype(lanes)::value, CHUNKS = decltype(chunks)::value;
    // FULL kernels only for 8 lanes and more (E >= 64, the models' sizes): a smaller build
    if constexpr (LANES >= 8)
      if (plan.full) return launch_kernel(&forward_team_kernel<T, LANES, KIND, CHUNKS, true>, plan.shape, stream, a);
    return launch_kernel(&forward_team_kernel<T, LANES, KIND, CHUNKS, false>, plan.shape, stream, a);
  };
  if (plan.chunks == 1)  // 32 < E <= 256 only (plan.h, team_chunks)
    return with_int<8, 16, 32>(plan.lanes, [&](auto lanes) { return go(lanes, std::integral_constant<int, 1>{}); });
  return with_int<1, 2, 4, 8, 16, 32>(plan.lanes, [&](auto lanes) { return go(lanes, std::integral_constant<int, 2>{}); });
}

// 16-bit logits pack their keys without loss, f32 with a check (forward_wide.cuh)
template <typename T, int CHUNKS>
constexpr auto wide_kernel() {
  if constexpr (sizeof(T) == 4) return &forward_wide_f32_kernel<CHUNKS>;
  else return &forward_wide_packed_kernel<T, CHUNKS>;
}

// AUX: the aux-loss scores (params.h, kTeamAux): team rows of the three modes they use, warp rows
// and block rows; wide rows are softmax-post only.
template <typename T, bool AUX>
cudaError_t forward_switch(const ForwardPlan& plan, const ForwardParams& a, cudaStream_t stream) {
  switch (plan.path) {
    case ForwardPath::kTeamRows: {
      auto team = [&](auto kind) { return launch_team<T, decltype(kind)::value>(plan, a, stream); };
      if constexpr (AUX)
        return with_int<kTeamAux + kSoftmaxPre, kTeamAux + kSigmoid, kTeamAux + kSqrtSoftplus>(plan.kernel, team);
      // the kernels a dtype can get: 16-bit softmax-post keys are always packed at E <= 512
      else if constexpr (sizeof(T) == 2)
        return with_int<kSoftmaxPre, kSigmoid, kSqrtSoftplus, kTeamSoftmaxPostPacked>(plan.kernel, team);
      else
        return with_int<kSoftmaxPre, kSoftmaxPost, kSigmoid, kSqrtSoftplus, kTeamSoftmaxPostF32Packed>(plan.kernel, team);
    }
    case ForwardPath::kWideRows:
      static_assert(kWideMinChunks == 2 && kWideMaxChunks == 10, "the cases below");
      if constexpr (AUX) return cudaErrorInvalidConfiguration;
      else
        return with_int<2, 3, 4, 5, 6, 7, 8, 9, 10>(plan.chunks, [&](auto chunks) {
          return launch_kernel(wide_kernel<T, decltype(chunks)::value>(), plan.shape, stream, a);
        });
    case ForwardPath::kWarpRows:
      return with_int<1, 2, 4, 8, 16, 32>(plan.vpt, [&](auto vpt) {
        constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
        return launch_kernel(&forward_warp_kernel<T, VEC, VPT / VEC, AUX>, plan.shape, stream, a);
      });
    case ForwardPath::kBlockRows:
      return with_int<8, 16, 32>(plan.vpt, [&](auto vpt) {
        constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
        return launch_kernel(&forward_block_kernel<T, VEC, VPT / VEC, AUX>, plan.shape, stream, a);
      });
  }
  return cudaErrorInvalidConfiguration;
}

template <typename T, bool AUX>
cudaError_t backward_switch(const BackwardPlan& plan, const BackwardParams& a, cudaStream_t stream) {
  if (plan.path == ForwardPath::kBlockRows)
    return with_int<8, 16, 32>(plan.vpt, [&](auto vpt) {
      constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
      return launch_kernel(&backward_block_kernel<T, VEC, VPT / VEC, AUX>, plan.shape, stream, a);
    });
  return with_int<1, 2, 4, 8, 16, 32>(plan.vpt, [&](auto vpt) {
    constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
    return launch_kernel(&backward_warp_kernel<T, VEC, VPT / VEC, AUX>, plan.shape, stream, a);
  });
}

template <typename T>
cudaError_t launch_forward(const ForwardPlan& plan, const ForwardParams& a, cudaStream_t stream) {
  return forward_switch<T, false>(plan, a, stream);
}
template <typename T>
cudaError_t launch_backward(const BackwardPlan& plan, const BackwardParams& a, cudaStream_t stream) {
  return backward_switch<T, false>(plan, a, stream);
}
template <typename T>
cudaError_t launch_aux_forward(const ForwardPlan& plan, const ForwardParams& a, cudaStream_t stream) {
  return forward_switch<T, true>(plan, a, stream);
}
template <typename T>
cudaError_t launch_aux_backward(const BackwardPlan& plan, const BackwardParams& a, cudaStream_t stream) {
  return backward_switch<T, true>(plan, a, stream);
}

// The router and the aux-loss scores in one call, where the plan fused them: the pair kernels (the
// entry point runs an unfused plan as the two single launches).
template <typename T>
cudaError_t launch_pair_forward(const PairForwardPlan& plan, const ForwardParams& a, const ForwardParams& b,
                                cudaStream_t stream) {
  const ForwardPlan& r = plan.router;
  switch (r.path) {
    case ForwardPath::kTeamRows: {
      // instantiated apart (launch_pair_team.cuh, router_aux_team_*.cu): the build's longest units
      auto team = [&](auto kind) { return launch_pair_team<T, decltype(kind)::value>(plan, a, b, stream); };
      if constexpr (sizeof(T) == 2)
        return with_int<kSoftmaxPre, kSigmoid, kSqrtSoftplus, kTeamSoftmaxPostPacked>(r.kernel, team);
      else
        return with_int<kSoftmaxPre, kSoftmaxPost, kSigmoid, kSqrtSoftplus, kTeamSoftmaxPostF32Packed>(r.kernel, team);
    }
    case ForwardPath::kWarpRows:
      return with_int<1, 2, 4, 8, 16, 32>(r.vpt, [&](auto vpt) {
        constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
        return launch_kernel(&forward_warp_pair_kernel<T, VEC, VPT / VEC>, plan.shape, stream, a, b);
      });
    case ForwardPath::kBlockRows:
      return with_int<8, 16, 32>(r.vpt, [&](auto vpt) {
        constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
        return launch_kernel(&forward_block_pair_kernel<T, VEC, VPT / VEC>, plan.shape, stream, a, b);
      });
    default:
      return cudaErrorInvalidConfiguration;
  }
}

template <typename T>
cudaError_t launch_pair_backward(const BackwardPlan& plan, const BackwardParams& a, const BackwardParams& b,
                                 cudaStream_t stream) {
  if (plan.path == ForwardPath::kBlockRows)
    return with_int<8, 16, 32>(plan.vpt, [&](auto vpt) {
      constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
      return launch_kernel(&backward_block_pair_kernel<T, VEC, VPT / VEC>, plan.shape, stream, a, b);
    });
  return with_int<1, 2, 4, 8, 16, 32>(plan.vpt, [&](auto vpt) {
    constexpr int VPT = decltype(vpt)::value, VEC = vec_width((int)sizeof(T), VPT);
    return launch_kernel(&backward_warp_pair_kernel<T, VEC, VPT / VEC>, plan.shape, stream, a, b);
  });
}

}  // namespace router
}  // namespace moekit
