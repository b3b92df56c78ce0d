// The router forward's per-chunk output stores (probs, the intermediate, the routing map) and the
// expert bias load, shared by its kernels.
#pragma once

#include <cstdint>

#include "common/device.cuh"
#include "common/topk/output.cuh"
#include "router/params.h"

namespace moekit {
namespace router {

// store_forward_chunk for a whole chunk of 8 with vector access (E % 8 == 0, 16-byte aligned
// buffers): no bounds tests, and the map's bytes come from the bits (bits_to_bytes), a fraction of
// the general path's instructions (bench/NOTES.md v7.6).
template <typename T>
__device__ __forceinline__ void store_forward_chunk_vec(const ForwardParams& a, int E, int64_t row, int e0,
                                                        bool intermediate, const float (&pr)[8],
                                                        const float (&im)[8], uint32_t bits) {
  const int64_t off = row * (int64_t)E + e0;
  store_chunk_vec<T, 8>(static_cast<T*>(a.probs), off, pr);
  if (intermediate) store_chunk_vec<float, 8>(a.intermediate, off, im);
  if (a.map_kind == kMapBytes) *reinterpret_cast<uint2*>(a.map + off) = bits_to_bytes(bits);
  else if (a.map_kind == kMapBits) a.map[row * (int64_t)(E / 8) + e0 / 8] = (uint8_t)bits;
}

// Stores one chunk of a row's forward outputs: probs, the softmax-post intermediate (when
// `intermediate`), and the routing map as bytes or bits, as ForwardParams says. E is a.E (a
// compile-time constant where the caller knows it).
template <typename T, int VEC>
__device__ __forceinline__ void store_forward_chunk(const ForwardParams& a, int E, int64_t row, int e0, bool vec,
                                                    bool intermediate, const float (&pr)[VEC], const float (&im)[VEC],
                                                    const uint8_t (&mb)[VEC], uint32_t bits) {
  const int64_t off = row * (int64_t)E;
  store_chunk<T, VEC>(static_cast<T*>(a.probs) + off, e0, E, vec, pr);
  if (intermediate) store_chunk<float, VEC>(a.intermediate + off, e0, E, vec, im);
  if (a.map_kind == kMapBytes) store_bytes<VEC>(a.map + off, e0, E, vec, mb);
  else if (a.map_kind == kMapBits) store_bitmap_chunk<VEC>(a.map + row * (int64_t)((E + 7) / 8), e0, E, bits);
}

// Expert bias of chunk [e0, e0 + VEC) as float (0 past E or without a bias).
template <int VEC>
__device__ __forceinline__ void load_bias_chunk(const ForwardParams& a, int E, int e0, float (&out)[VEC]) {
  switch (a.bias == nullptr ? -1 : a.bias_dtype) {
    case 0: load_chunk<float, VEC>(static_cast<const float*>(a.bias), e0, E, a.bias_vec != 0, 0.0f, out); break;
    case 1: load_chunk<__half, VEC>(static_cast<const __half*>(a.bias), e0, E, a.bias_vec != 0, 0.0f, out); break;
    case 2: load_chunk<__nv_bfloat16, VEC>(static_cast<const __nv_bfloat16*>(a.bias), e0, E, a.bias_vec != 0, 0.0f, out); break;
    default:
#pragma unroll
      for (int v = 0; v < VEC; ++v) out[v] = 0.0f;
  }
}

}  // namespace router
}  // namespace moekit
