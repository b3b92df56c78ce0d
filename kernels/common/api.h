// Host-side plumbing shared by every entry point: the per-thread error text, the exception guard at
// the C boundary, argument checks that format one sentence, and cached device properties.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <exception>
#include <new>

#include <cuda_runtime_api.h>

#include "moekit/moekit.h"

namespace moekit {

// Records a printf-style message as the calling thread's last error and returns `status`.
moekit_status_t fail(moekit_status_t status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Runs `body` (returning moekit_status_t) so that no C++ exception crosses the C boundary.
template <class Body>
moekit_status_t guarded(const char* op, Body&& body) noexcept {
  try {
    return body();  // a success leaves the last failure's message in place (moekit.h)
  } catch (const std::bad_alloc&) {
    return fail(MOEKIT_INTERNAL, "%s: host out of memory", op);
  } catch (const std::exception& e) {
    return fail(MOEKIT_INTERNAL, "%s: internal error: %s", op, e.what());
  } catch (...) {
    return fail(MOEKIT_INTERNAL, "%s: unknown internal error", op);
  }
}

// Turns a CUDA error into CUDA_ERROR with the runtime's own words.
moekit_status_t cuda_fail(const char* op, const char* what, cudaError_t err);

// After a launch: reports a launch failure, never swallows it.
moekit_status_t check_launch(const char* op);

struct DeviceInfo {
  int device = -1;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  int max_smem_per_block_optin = 0;  // bytes a block may get after cudaFuncSetAttribute
  int max_smem_per_sm = 0;
  int l2_bytes = 0;
};

// Properties of the current device, queried once per device and cached.
moekit_status_t current_device(const char* op, const DeviceInfo** info);

inline int dtype_size(moekit_dtype_t t) {
  switch (t) {
    case MOEKIT_DTYPE_F32: case MOEKIT_DTYPE_I32: return 4;
    case MOEKIT_DTYPE_F16: case MOEKIT_DTYPE_BF16: return 2;
    case MOEKIT_DTYPE_I64: return 8;
    case MOEKIT_DTYPE_U8: case MOEKIT_DTYPE_F8_E4M3: return 1;
  }
  return 0;
}
const char* dtype_name(moekit_dtype_t t);
inline bool is_float_dtype(moekit_dtype_t t) {
  return t == MOEKIT_DTYPE_F32 || t == MOEKIT_DTYPE_F16 || t == MOEKIT_DTYPE_BF16;
}
inline bool is_index_dtype(moekit_dtype_t t) { return t == MOEKIT_DTYPE_I32 || t == MOEKIT_DTYPE_I64; }
inline bool aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

}  // namespace moekit

// Argument check: on failure returns INVALID_ARGUMENT from the enclosing function with the
// printf-style message (which names the op, the argument and its value). Launchers only, before any CUDA call.
#define MOEKIT_REQUIRE(cond, ...)                                             \
  do {                                                                        \
    if (!(cond)) return ::moekit::fail(MOEKIT_INVALID_ARGUMENT, __VA_ARGS__); \
  } while (0)
