// Library-wide entry points (version, status text, last error) and the host plumbing of api.h.
#include "common/api.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace moekit {
namespace {

thread_local char g_last_error[512] = "";

constexpr int kMaxDevices = 64;
DeviceInfo g_devices[kMaxDevices];
std::once_flag g_device_once[kMaxDevices];
cudaError_t g_device_err[kMaxDevices];

}  // namespace

moekit_status_t fail(moekit_status_t status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
  va_end(args);
  return status;
}

moekit_status_t cuda_fail(const char* op, const char* what, cudaError_t err) {
  return fail(MOEKIT_CUDA_ERROR, "%s: %s failed: %s (%s)", op, what, cudaGetErrorString(err),
              cudaGetErrorName(err));
}

moekit_status_t check_launch(const char* op) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_fail(op, "kernel launch", err);
  return MOEKIT_SUCCESS;
}

moekit_status_t current_device(const char* op, const DeviceInfo** info) {
  int dev = -1;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) {
    cudaGetLastError();  // do not leave the failure sticky for the caller's next CUDA call
    return cuda_fail(op, "cudaGetDevice", err);
  }
  if (dev < 0 || dev >= kMaxDevices) return fail(MOEKIT_NOT_SUPPORTED, "%s: device %d >= %d", op, dev, kMaxDevices);
  std::call_once(g_device_once[dev], [dev] {
    DeviceInfo& d = g_devices[dev];
    d.device = dev;
    cudaError_t e = cudaSuccess;
    auto get = [&](int* v, cudaDeviceAttr a) {
      if (e == cudaSuccess) e = cudaDeviceGetAttribute(v, a, dev);
    };
    get(&d.sm_count, cudaDevAttrMultiProcessorCount);
    get(&d.cc_major, cudaDevAttrComputeCapabilityMajor);
    get(&d.cc_minor, cudaDevAttrComputeCapabilityMinor);
    get(&d.max_smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin);
    get(&d.max_smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor);
    get(&d.l2_bytes, cudaDevAttrL2CacheSize);
    g_device_err[dev] = e;
  });
  if (g_device_err[dev] != cudaSuccess) return cuda_fail(op, "cudaDeviceGetAttribute", g_device_err[dev]);
  *info = &g_devices[dev];
  return MOEKIT_SUCCESS;
}

const char* dtype_name(moekit_dtype_t t) {
  switch (t) {
    case MOEKIT_DTYPE_F32: return "float32";
    case MOEKIT_DTYPE_F16: return "float16";
    case MOEKIT_DTYPE_BF16: return "bfloat16";
    case MOEKIT_DTYPE_I32: return "int32";
    case MOEKIT_DTYPE_I64: return "int64";
    case MOEKIT_DTYPE_U8: return "uint8";
    case MOEKIT_DTYPE_F8_E4M3: return "float8_e4m3fn";
  }
  return "unknown dtype";
}

}  // namespace moekit

extern "C" {

MOEKIT_API int moekit_version(void) { return MOEKIT_VERSION; }
MOEKIT_API int moekit_abi_version(void) { return MOEKIT_ABI_VERSION; }
#ifndef MOEKIT_BUILD_INFO
#define MOEKIT_BUILD_INFO "cuda_archs=unknown"
#endif
MOEKIT_API const char* moekit_build_info(void) { return MOEKIT_BUILD_INFO; }

MOEKIT_API const char* moekit_status_string(moekit_status_t status) {
  switch (status) {
    case MOEKIT_SUCCESS: return "MOEKIT_SUCCESS";
    case MOEKIT_INVALID_ARGUMENT: return "MOEKIT_INVALID_ARGUMENT";
    case MOEKIT_NOT_SUPPORTED: return "MOEKIT_NOT_SUPPORTED";
    case MOEKIT_CUDA_ERROR: return "MOEKIT_CUDA_ERROR";
    case MOEKIT_INTERNAL: return "MOEKIT_INTERNAL";
  }
  return "MOEKIT_UNKNOWN_STATUS";
}

MOEKIT_API const char* moekit_last_error(void) { return moekit::g_last_error; }

}  // extern "C"
