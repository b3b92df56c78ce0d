// The workspace convention of kernels/common/checks.h, host only: the counting pass and the carving
// pass of WorkspaceLayout agree, pieces are aligned and disjoint, and check_workspace refuses a null,
// misaligned or short workspace with INVALID_ARGUMENT and a sentence naming it.
//   nvcc -std=c++17 -Iinclude -Ikernels tests/cuda/workspace_check.cpp kernels/common/checks.cpp \
//        kernels/common/api.cpp -o workspace_check && ./workspace_check
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/checks.h"

using namespace moekit;

namespace {
int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}

// An op's carve-up, run the same way for the size query and for the launch.
struct Pieces {
  int32_t* counts;
  int64_t* offsets;
  uint8_t* flags;
};
Pieces carve(WorkspaceLayout& w, int E, int T) {
  return {w.take<int32_t>((size_t)E), w.take<int64_t>((size_t)E + 1), w.take<uint8_t>((size_t)T)};
}
}  // namespace

int main() {
  for (int E : {1, 7, 256, 1000})
    for (int T : {0, 1, 33, 100000}) {
      WorkspaceLayout count;
      carve(count, E, T);
      const size_t bytes = count.bytes();
      std::vector<uint8_t> memory(bytes + WorkspaceLayout::kAlign);
      uint8_t* base = memory.data() + (WorkspaceLayout::kAlign - (uintptr_t)memory.data() % WorkspaceLayout::kAlign);
      WorkspaceLayout layout(base);
      const Pieces p = carve(layout, E, T);
      expect(layout.bytes() == bytes, "the counting and the carving pass agree");
      expect((uintptr_t)p.counts % WorkspaceLayout::kAlign == 0 && (uintptr_t)p.offsets % WorkspaceLayout::kAlign == 0 &&
                 (uintptr_t)p.flags % WorkspaceLayout::kAlign == 0,
             "every piece is aligned");
      expect((uint8_t*)(p.counts + E) <= (uint8_t*)p.offsets && (uint8_t*)(p.offsets + E + 1) <= p.flags &&
                 p.flags + T <= base + bytes,
             "pieces are disjoint and inside the workspace");
      expect(check_workspace("op", base, bytes, bytes) == MOEKIT_SUCCESS, "a workspace of the queried size passes");
    }
  alignas(256) static uint8_t mem[1024];
  expect(check_workspace("op", nullptr, 0, 0) == MOEKIT_SUCCESS, "no scratch needed: null is fine");
  expect(check_workspace("op", nullptr, 0, 16) == MOEKIT_INVALID_ARGUMENT && std::strstr(moekit_last_error(), "workspace"),
         "null workspace refused, named");
  expect(check_workspace("op", mem + 8, 512, 16) == MOEKIT_INVALID_ARGUMENT && std::strstr(moekit_last_error(), "aligned"),
         "misaligned workspace refused");
  expect(check_workspace("op", mem, 100, 200) == MOEKIT_INVALID_ARGUMENT && std::strstr(moekit_last_error(), "200"),
         "short workspace refused, with the size needed");
  std::printf(failures ? "workspace_check: %d FAILURES\n" : "workspace_check: all checks pass\n", failures);
  return failures ? 1 : 0;
}
