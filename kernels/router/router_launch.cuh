// Launch shapes of the router kernels, and the template that picks the instantiation for a shape.
// Each dtype's instantiations live in their own source (router_f32.cu, ...) so a 2-core build
// compiles them in parallel.
#pragma once

#include <cuda_runtime.h>

#include "router/router_kernels.cuh"

namespace moekit {
namespace router {

struct LaunchShape {
  bool block_team;  // one block per row (else one warp per row)
  bool pipelined;   // forward only: persistent warps with cp.async-staged rows
  int team_lanes;   // forward only: lanes per row of forward_team_kernel (0: not that kernel)
  int team_chunks;  // forward only: chunks of 8 keys per lane of forward_team_kernel (1 or 2)
  int wide_chunks;  // forward only: chunks per lane of forward_wide_packed_kernel (0: not that kernel)
  int vpt;          // elements per thread: warp 1..32 (powers of 2), block 8, 16 or 32
  int threads;      // block size
  int64_t blocks;   // blocks to cover every row (a persistent grid takes fewer)
  size_t smem_bytes;
  int sm_count;
  bool pdl;  // launch with programmatic stream serialization (sm_90+, router.cu pdl_enabled)
};

template <typename T, int VPT>
constexpr int vec_of() {
  return VPT < (int)(16 / sizeof(T)) ? VPT : (int)(16 / sizeof(T));
}

template <typename T>
cudaError_t launch_forward(const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward(const BackwardArgs& a, const LaunchShape& s, cudaStream_t stream);

template <typename Args, typename Kernel>
cudaError_t launch_one(Kernel k, const Args& a, const LaunchShape& s, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  // Raise the dynamic shared memory limit only when the launch needs more than the default.
  if (s.smem_bytes > 48 * 1024)
    err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s.smem_bytes);
  if (err != cudaSuccess) return err;
  long long blocks = s.blocks;
  if (s.pipelined) {
    err = async::persistent_blocks(k, s.threads, s.smem_bytes, s.sm_count, s.blocks, &blocks);
    if (err != cudaSuccess) return err;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3((unsigned)blocks);
  config.blockDim = dim3((unsigned)s.threads);
  config.dynamicSmemBytes = s.smem_bytes;
  config.stream = stream;
  // Lets this grid launch while the previous kernel in the stream drains; every router kernel
  // waits for it (griddepcontrol.wait) before touching memory.
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attr;
  config.numAttrs = s.pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, k, a);
}

// Kernel families, so that one dispatcher maps a run-time VPT to the instantiation.
#define MOEKIT_ROUTER_FAMILY(NAME, KERNEL)                  \
  struct NAME {                                             \
    template <typename T, int VEC, int NC>                  \
    static constexpr auto get() { return &KERNEL<T, VEC, NC>; } \
  };
MOEKIT_ROUTER_FAMILY(ForwardWarp, forward_warp_kernel)
MOEKIT_ROUTER_FAMILY(ForwardWarpPipelined, forward_warp_pipelined_kernel)
MOEKIT_ROUTER_FAMILY(ForwardBlock, forward_block_kernel)
MOEKIT_ROUTER_FAMILY(BackwardWarp, backward_warp_kernel)
MOEKIT_ROUTER_FAMILY(BackwardBlock, backward_block_kernel)
#undef MOEKIT_ROUTER_FAMILY

template <typename T, int VPT, class Family, typename Args>
cudaError_t launch_vpt(const Args& a, const LaunchShape& s, cudaStream_t stream) {
  constexpr int VEC = vec_of<T, VPT>();
  return launch_one(Family::template get<T, VEC, VPT / VEC>(), a, s, stream);
}

// Warp teams hold 1..32 elements per thread, block teams 8, 16 or 32.
template <typename T, class Family, typename Args>
cudaError_t launch_warp(const Args& a, const LaunchShape& s, cudaStream_t stream) {
  switch (s.vpt) {
    case 1: return launch_vpt<T, 1, Family>(a, s, stream);
    case 2: return launch_vpt<T, 2, Family>(a, s, stream);
    case 4: return launch_vpt<T, 4, Family>(a, s, stream);
    case 8: return launch_vpt<T, 8, Family>(a, s, stream);
    case 16: return launch_vpt<T, 16, Family>(a, s, stream);
    case 32: return launch_vpt<T, 32, Family>(a, s, stream);
  }
  return cudaErrorInvalidConfiguration;
}
template <typename T, class Family, typename Args>
cudaError_t launch_block(const Args& a, const LaunchShape& s, cudaStream_t stream) {
  switch (s.vpt) {
    case 8: return launch_vpt<T, 8, Family>(a, s, stream);
    case 16: return launch_vpt<T, 16, Family>(a, s, stream);
    case 32: return launch_vpt<T, 32, Family>(a, s, stream);
  }
  return cudaErrorInvalidConfiguration;
}

// Rows of exactly the team's keys with vector access get the kernel without bounds tests (FULL). Only
// for 8 lanes and more (E >= 64, the models' sizes), which keeps the build smaller.
template <typename T, int KIND, int LANES, int CHUNKS>
cudaError_t launch_team_lanes(const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream) {
  if constexpr (LANES >= 8)
    if (a.vec && a.E == LANES * CHUNKS * kTeamVec) return launch_one(&forward_team_kernel<T, LANES, KIND, CHUNKS, true>, a, s, stream);
  return launch_one(&forward_team_kernel<T, LANES, KIND, CHUNKS, false>, a, s, stream);
}
template <typename T, int KIND>
cudaError_t launch_team(const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream) {
  if (s.team_chunks == 1) {  // 32 < E <= 256 only (router.cu, team_chunks)
    switch (s.team_lanes) {
      case 8: return launch_team_lanes<T, KIND, 8, 1>(a, s, stream);
      case 16: return launch_team_lanes<T, KIND, 16, 1>(a, s, stream);
      case 32: return launch_team_lanes<T, KIND, 32, 1>(a, s, stream);
    }
    return cudaErrorInvalidConfiguration;
  }
  switch (s.team_lanes) {
    case 1: return launch_team_lanes<T, KIND, 1, 2>(a, s, stream);
    case 2: return launch_team_lanes<T, KIND, 2, 2>(a, s, stream);
    case 4: return launch_team_lanes<T, KIND, 4, 2>(a, s, stream);
    case 8: return launch_team_lanes<T, KIND, 8, 2>(a, s, stream);
    case 16: return launch_team_lanes<T, KIND, 16, 2>(a, s, stream);
    case 32: return launch_team_lanes<T, KIND, 32, 2>(a, s, stream);
  }
  return cudaErrorInvalidConfiguration;
}
template <typename T>
cudaError_t launch_team(const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream) {
  switch (a.mode) {
    case kSoftmaxPre: return launch_team<T, kSoftmaxPre>(a, s, stream);
    case kSigmoid: return launch_team<T, kSigmoid>(a, s, stream);
    case kSqrtSoftplus: return launch_team<T, kSqrtSoftplus>(a, s, stream);
  }
  // softmax-post: 16-bit logits always have packed keys at E <= 512 (router.cu, keys_packed)
  if constexpr (sizeof(T) == 2) return a.packed ? launch_team<T, kTeamSoftmaxPostPacked>(a, s, stream)
                                                : cudaErrorInvalidConfiguration;
  else return a.team_pack_f32 ? launch_team<T, kTeamSoftmaxPostF32Packed>(a, s, stream)
                              : launch_team<T, kSoftmaxPost>(a, s, stream);
}

// 16-bit logits pack their keys without loss, f32 with a check (router_kernels.cuh)
template <typename T, int CHUNKS>
constexpr auto wide_kernel() {
  if constexpr (sizeof(T) == 4) return &forward_wide_f32_kernel<CHUNKS>;
  else return &forward_wide_packed_kernel<T, CHUNKS>;
}

template <typename T>
cudaError_t launch_wide(const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream) {
  static_assert(kWideMinChunks == 2 && kWideMaxChunks == 10, "the cases below");
  switch (s.wide_chunks) {
    case 2: return launch_one(wide_kernel<T, 2>(), a, s, stream);
    case 3: return launch_one(wide_kernel<T, 3>(), a, s, stream);
    case 4: return launch_one(wide_kernel<T, 4>(), a, s, stream);
    case 5: return launch_one(wide_kernel<T, 5>(), a, s, stream);
    case 6: return launch_one(wide_kernel<T, 6>(), a, s, stream);
    case 7: return launch_one(wide_kernel<T, 7>(), a, s, stream);
    case 8: return launch_one(wide_kernel<T, 8>(), a, s, stream);
    case 9: return launch_one(wide_kernel<T, 9>(), a, s, stream);
    case 10: return launch_one(wide_kernel<T, 10>(), a, s, stream);
  }
  return cudaErrorInvalidConfiguration;
}

#define MOEKIT_ROUTER_INSTANTIATE(T)                                                                   \
  template <>                                                                                          \
  cudaError_t launch_forward<T>(const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream) {     \
    if (s.team_lanes > 0) return launch_team<T>(a, s, stream);                                         \
    if (s.wide_chunks > 0) return launch_wide<T>(a, s, stream);                                        \
    if (s.block_team) return launch_block<T, ForwardBlock>(a, s, stream);                              \
    if (s.pipelined) return launch_warp<T, ForwardWarpPipelined>(a, s, stream);                        \
    return launch_warp<T, ForwardWarp>(a, s, stream);                                                  \
  }                                                                                                    \
  template <>                                                                                          \
  cudaError_t launch_backward<T>(const BackwardArgs& a, const LaunchShape& s, cudaStream_t stream) {   \
    if (s.block_team) return launch_block<T, BackwardBlock>(a, s, stream);                             \
    return launch_warp<T, BackwardWarp>(a, s, stream);                                                 \
  }

}  // namespace router
}  // namespace moekit
