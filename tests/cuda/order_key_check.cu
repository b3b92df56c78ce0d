// Checks the branch-free order_key (kernels/common/topk/keys.cuh) against its definition, SPEC's total
// order on float keys, for every one of the 2^32 float bit patterns. Host only (no GPU needed):
//   nvcc -O2 -std=c++17 -Iinclude -Ikernels tests/cuda/order_key_check.cu -o /tmp/okc && /tmp/okc
#include <cstdio>
#include <cstring>

#include "common/topk/keys.cuh"

// The definition: NaN -> 1, -0.0 as +0.0, non-negative -> bits | sign, negative -> ~bits.
static uint32_t order_key_definition(float f) {
  if (f != f) return moekit::kNanKey;
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

int main() {
  unsigned long long mismatches = 0;
  uint32_t first_bad = 0;
  for (unsigned long long i = 0; i <= 0xffffffffull; ++i) {
    const uint32_t bits = (uint32_t)i;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    if (moekit::order_key(f) != order_key_definition(f)) {
      if (mismatches++ == 0) first_bad = bits;
    }
  }
  if (mismatches) {
    std::printf("order_key: %llu mismatches, first at bits 0x%08x\n", mismatches, first_bad);
    return 1;
  }
  std::printf("order_key: all 2^32 inputs match the definition\n");
  return 0;
}
