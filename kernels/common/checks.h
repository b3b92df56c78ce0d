// Argument checks shared by every entry point, each failing with INVALID_ARGUMENT and one sentence
// that names the op, the argument and its value (SPEC "Errors"). Host only, before any CUDA call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/api.h"

namespace moekit {

// A device pointer: non-null where `required` (an empty tensor may be NULL: torch, CuPy), and
// aligned to `align` bytes (its element size).
moekit_status_t check_ptr(const char* op, const char* arg, const void* p, int align, bool required);

// [a, a + a_bytes) and [b, b + b_bytes) share a byte (in-place and aliasing checks).
inline bool overlaps(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + (uintptr_t)b_bytes && y < x + (uintptr_t)a_bytes;
}

// INVALID_ARGUMENT naming both arguments where [a, a + a_bytes) and [b, b + b_bytes) overlap: two
// outputs that share bytes would overwrite each other.
inline moekit_status_t check_disjoint(const char* op, const char* a_name, const void* a, int64_t a_bytes,
                                      const char* b_name, const void* b, int64_t b_bytes) {
  MOEKIT_REQUIRE(!overlaps(a, a_bytes, b, b_bytes), "%s: %s and %s overlap (%p, %p)", op, a_name, b_name, a, b);
  return MOEKIT_SUCCESS;
}

// A float tensor's dtype (float32, float16 or bfloat16).
moekit_status_t check_float_dtype(const char* op, const char* arg, moekit_dtype_t dtype);

// A selection output or input in one of SPEC's formats: a routing map (bytemap u8 [T, E], bitmap
// u8 [T, ceil(E/8)], or none) and/or topk indices [T, K] (int32 or int64). `exactly_one`: exactly
// one of map and indices (an input); else at least one (an output). `required` is false for T == 0.
moekit_status_t check_selection(const char* op, const void* map, moekit_map_format_t map_format, const void* indices,
                                moekit_dtype_t index_dtype, bool exactly_one, bool required);

// ---- scratch memory: the workspace convention --------------------------------------------------
// An op that needs scratch takes (void* workspace, size_t workspace_bytes) from the caller and
// exposes moekit_<op>_workspace_size(<the op's sizes>, size_t* bytes): two phases, as CUB's. Both
// phases run the same carve-up code (WorkspaceLayout), first without memory to count, then over
// the caller's memory, so the size query and the op can never disagree. Every piece is 256-byte
// aligned, so a workspace from any allocator serves.
class WorkspaceLayout {
 public:
  static constexpr size_t kAlign = 256;
  explicit WorkspaceLayout(void* base = nullptr) : base_(static_cast<char*>(base)) {}
  // The next `count` elements of T: null while counting.
  template <typename T>
  T* take(size_t count) {
    offset_ = (offset_ + kAlign - 1) / kAlign * kAlign;
    T* p = base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + offset_);
    offset_ += count * sizeof(T);
    return p;
  }
  size_t bytes() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

// The caller's workspace: non-null where `needed` > 0, 256-byte aligned, at least `needed` bytes.
moekit_status_t check_workspace(const char* op, const void* workspace, size_t workspace_bytes, size_t needed);

}  // namespace moekit
