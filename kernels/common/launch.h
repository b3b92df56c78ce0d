// Launch helpers for every family: the launch shape a plan names, one launch call (programmatic
// dependent launch, the shared-memory attribute), and the one dispatch idiom that turns a plan's
// run-time values (a dtype, a small integer) into template arguments. CUDA sources only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/api.h"

namespace moekit {

struct LaunchShape {
  int64_t blocks = 0;
  int threads = 0;
  size_t smem_bytes = 0;  // dynamic shared memory per block
  bool pdl = false;       // programmatic dependent launch: plans set the device's capability
                          // (sm_90+), entry points then apply pdl_switch()
};

// Whether launches may use programmatic dependent launch: MOEKIT_PDL (read once; 0 turns it off),
// unless an internal hook overrides it (hooks.h). Timing only: it never changes a result.
bool pdl_switch();

// NOT_SUPPORTED where the shape needs more shared memory per block than the device has.
moekit_status_t check_fits(const char* op, const LaunchShape& s, const DeviceInfo& dev);

// Launches `kernel(params...)` with shape `s` on `stream`. With PDL the grid may launch while the
// previous kernel in the stream drains; every kernel waits for it on the GPU before touching memory
// (pdl_wait_then_release_next, common/device.cuh).
template <typename Kernel, typename... Params>
cudaError_t launch_kernel(Kernel kernel, const LaunchShape& s, cudaStream_t stream, const Params&... params) {
  // Raise the dynamic shared memory limit only when the launch needs more than the default.
  if (s.smem_bytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s.smem_bytes);
    if (err != cudaSuccess) return err;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3((unsigned)s.blocks);
  config.blockDim = dim3((unsigned)s.threads);
  config.dynamicSmemBytes = s.smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attr;
  config.numAttrs = s.pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, params...);
}

// f(T{}) with T the element type of a float dtype (the caller has validated it).
template <typename F>
cudaError_t with_float_type(moekit_dtype_t dtype, F&& f) {
  switch (dtype) {
    case MOEKIT_DTYPE_F32: return f(float{});
    case MOEKIT_DTYPE_F16: return f(__half{});
    default: return f(__nv_bfloat16{});
  }
}

// f(std::integral_constant<int, V>{}) for the V among Vs equal to v; cudaErrorInvalidConfiguration
// where none is (a plan outside what the launch switch instantiates).
template <int... Vs, typename F>
cudaError_t with_int(int v, F&& f) {
  cudaError_t err = cudaErrorInvalidConfiguration;
  (void)((v == Vs ? (err = f(std::integral_constant<int, Vs>{}), true) : false) || ...);
  return err;
}

}  // namespace moekit
