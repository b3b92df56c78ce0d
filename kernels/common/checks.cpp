// The shared argument checks of checks.h.
#include "common/checks.h"

namespace moekit {

moekit_status_t check_ptr(const char* op, const char* arg, const void* p, int align, bool required) {
  if (p == nullptr && !required) return MOEKIT_SUCCESS;
  MOEKIT_REQUIRE(p != nullptr, "%s: %s must not be null", op, arg);
  MOEKIT_REQUIRE(aligned(p, align), "%s: %s (%p) must be aligned to %d bytes", op, arg, p, align);
  return MOEKIT_SUCCESS;
}

moekit_status_t check_float_dtype(const char* op, const char* arg, moekit_dtype_t dtype) {
  MOEKIT_REQUIRE(is_float_dtype(dtype), "%s: %s (%s, value %d) must be float32, float16 or bfloat16", op, arg,
                 dtype_name(dtype), (int)dtype);
  return MOEKIT_SUCCESS;
}

moekit_status_t check_selection(const char* op, const void* map, moekit_map_format_t map_format, const void* indices,
                                moekit_dtype_t index_dtype, bool exactly_one, bool required) {
  MOEKIT_REQUIRE(map_format == MOEKIT_MAP_NONE || map_format == MOEKIT_MAP_BYTEMAP || map_format == MOEKIT_MAP_BITMAP,
                 "%s: map_format (%d) must be none (0), bytemap (1) or bitmap (2)", op, (int)map_format);
  if (indices != nullptr)
    MOEKIT_REQUIRE(is_index_dtype(index_dtype), "%s: index_dtype (%s, value %d) must be int32 or int64", op,
                   dtype_name(index_dtype), (int)index_dtype);
  if (!required) return check_ptr(op, "topk_indices", indices, dtype_size(index_dtype), false);
  if (map_format == MOEKIT_MAP_NONE) {
    MOEKIT_REQUIRE(map == nullptr, "%s: routing_map (%p) must be null when map_format is none", op, map);
  } else {
    MOEKIT_REQUIRE(map != nullptr, "%s: routing_map must not be null when map_format is %s", op,
                   map_format == MOEKIT_MAP_BYTEMAP ? "bytemap" : "bitmap");
  }
  if (exactly_one) {
    MOEKIT_REQUIRE((map != nullptr) != (indices != nullptr),
                   "%s: give exactly one of routing_map and topk_indices (routing_map %p, topk_indices %p)", op, map,
                   indices);
  } else {
    MOEKIT_REQUIRE(map != nullptr || indices != nullptr,
                   "%s: routing_map and topk_indices are both null: at least one output is needed", op);
  }
  return check_ptr(op, "topk_indices", indices, dtype_size(index_dtype), false);
}

moekit_status_t check_workspace(const char* op, const void* workspace, size_t workspace_bytes, size_t needed) {
  if (needed == 0) return MOEKIT_SUCCESS;
  MOEKIT_REQUIRE(workspace != nullptr, "%s: workspace must not be null (%zu bytes needed)", op, needed);
  MOEKIT_REQUIRE(aligned(workspace, (int)WorkspaceLayout::kAlign), "%s: workspace (%p) must be aligned to %zu bytes",
                 op, workspace, WorkspaceLayout::kAlign);
  MOEKIT_REQUIRE(workspace_bytes >= needed, "%s: workspace_bytes (%zu) must be >= %zu", op, workspace_bytes, needed);
  return MOEKIT_SUCCESS;
}

}  // namespace moekit
