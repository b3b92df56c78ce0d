// The selection's outputs in the formats of SPEC: indices in descending key order (int32 or int64),
// and the routing map as bytes (u8 [T, E]) or an LSB-first bitmap (u8 [T, ceil(E/8)]).
#pragma once

#include <cstdint>

#include "common/team.cuh"

namespace moekit {

// Writes selected expert `idx` at position r of a row's index output (int32 or int64).
__device__ __forceinline__ void put_index(void* out, bool idx64, int r, uint32_t idx) {
  if (idx64) static_cast<int64_t*>(out)[r] = idx;
  else static_cast<int32_t*>(out)[r] = (int32_t)idx;
}

// Writes the selected experts of a row (bit p of `sel`: this thread's position p) to `out` in
// descending key order, ties to the lower index. `list` is 2 * K words of this team's shared memory:
// each winner is placed by counting the winners that rank above it.
template <int VEC, int NC, class Team, typename Index>
__device__ __forceinline__ void write_sorted_indices(Team& team, const uint32_t (&key)[VEC * NC], uint64_t sel, int K,
                                                     uint32_t* list, Index* out) {
  uint32_t total;
  uint32_t slot = team.exclusive_scan((uint32_t)__popcll(sel), total);
#pragma unroll
  for (int c = 0; c < NC; ++c)
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int p = c * VEC + v;
      if ((sel >> p) & 1) {
        list[2 * slot] = key[p];
        list[2 * slot + 1] = (uint32_t)elem_index<VEC>(team, c, v);
        ++slot;
      }
    }
  team.sync();
  for (int j = team.rank; j < K; j += team.size()) {
    const uint32_t kj = list[2 * j], ij = list[2 * j + 1];
    int rank = 0;
    for (int i = 0; i < K; ++i) {
      const uint32_t ki = list[2 * i], ii = list[2 * i + 1];
      rank += (ki > kj) || (ki == kj && ii < ij);
    }
    out[rank] = (Index)ij;
  }
  team.sync();  // list may be reused by the next row of this team
}

// Bits of this thread's chunk -> LSB-first bitmap bytes. VEC consecutive elements of one thread
// are VEC consecutive bits; 8/VEC neighbouring lanes share a byte (warp-uniform control flow).
template <int VEC>
__device__ __forceinline__ void store_bitmap_chunk(uint8_t* row_bits, int e0, int E, uint32_t bits) {
  if constexpr (VEC >= 8) {
#pragma unroll
    for (int b = 0; b < VEC / 8; ++b)
      if (e0 + 8 * b < E) row_bits[(e0 >> 3) + b] = (uint8_t)(bits >> (8 * b));
  } else {
    constexpr int kLanesPerByte = 8 / VEC;
    const int lane = threadIdx.x & 31;
    uint32_t byte = bits << (VEC * (lane % kLanesPerByte));
#pragma unroll
    for (int o = 1; o < kLanesPerByte; o <<= 1) byte |= __shfl_xor_sync(kFullMask, byte, o);
    if (lane % kLanesPerByte == 0 && e0 < E) row_bits[e0 >> 3] = (uint8_t)byte;
  }
}

// The 8 bits of a chunk (LSB first) as 8 bytes of 0 / 1: bit i of a nibble lands at bit 8i of the
// product with 0x204081 (= 1 + 2^7 + 2^14 + 2^21; no other bit reaches those places).
__device__ __forceinline__ uint2 bits_to_bytes(uint32_t bits) {
  return make_uint2(((bits & 0xfu) * 0x204081u) & 0x01010101u, ((bits >> 4) * 0x204081u) & 0x01010101u);
}

}  // namespace moekit
