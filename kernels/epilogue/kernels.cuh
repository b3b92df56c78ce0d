// The epilogue kernels (SPEC section 7). RMSNorm (with or without the residual add): one block per
// row, the row in registers, one block reduction of the sum of squares in a fixed order, then the
// scaled row. The shared-expert gate: a streaming grid-stride loop.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/device.cuh"
#include "epilogue/params.h"

namespace moekit {
namespace epilogue {

// Sum of v over the block, the same bits in every thread: warp trees, then warp 0 adds the warp
// totals in order. `partial` holds 32 floats; the trailing barrier lets the caller reuse it.
__device__ __forceinline__ float block_sum(float v, float* partial) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0.0f;
  const int warps = (blockDim.x + 31) >> 5;
  for (int w = 0; w < warps; ++w) total += partial[w];
  __syncthreads();
  return total;
}

// Rows strided over the grid, a row per block at a time. Latency is hidden by the other resident
// blocks (the plan keeps a row to a few hundred threads so that several rows share an SM), not by
// prefetching in registers; the weight is read at the scale step, from L1 after the first row.
// W_FIRST (decode: a row per block and at most one block per SM, so registers cost no occupancy):
// the weight is loaded with the row, so the scale step waits for no second memory round trip.
template <typename T, typename W, int VPT, bool ADD, bool W_FIRST>
__global__ void __launch_bounds__(kMaxThreads) norm_kernel(const NormParams p) {
  __shared__ float partial[32];
  pdl_wait_then_release_next();
  constexpr int kPiece = VPT < 8 ? VPT : 8;
  const int64_t col = (int64_t)threadIdx.x * VPT;
  const bool vec = p.vec != 0;
  float w_first[W_FIRST ? VPT : 1];
  if constexpr (W_FIRST) load_chunk<W, VPT>(static_cast<const W*>(p.weight), col, p.H, vec, 0.0f, w_first);
  for (int64_t row = blockIdx.x; row < p.T; row += gridDim.x) {
    const int64_t base = row * p.H;
    float v[VPT];
    load_chunk<T, VPT>(static_cast<const T*>(p.x) + base, col, p.H, vec, 0.0f, v);
    if constexpr (ADD) {
#pragma unroll
      for (int k = 0; k < VPT; k += kPiece) {  // pieces: v and a whole r would spill at VPT = 32
        float r[kPiece];
        load_chunk<T, kPiece>(static_cast<const T*>(p.residual) + base, col + k, p.H, vec, 0.0f, r);
#pragma unroll
        for (int i = 0; i < kPiece; ++i) v[k + i] += r[i];
      }
      store_chunk<T, VPT>(static_cast<T*>(p.residual) + base, col, p.H, vec, v);
    }
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) ss = fmaf(v[i], v[i], ss);
    const float rstd = rsqrtf(block_sum(ss, partial) / (float)p.H + p.eps);
#pragma unroll
    for (int k = 0; k < VPT; k += kPiece) {
      float w[kPiece];
      if constexpr (W_FIRST) {
#pragma unroll
        for (int i = 0; i < kPiece; ++i) w[i] = w_first[k + i];
      } else {
        load_chunk<W, kPiece>(static_cast<const W*>(p.weight), col + k, p.H, vec, 0.0f, w);
      }
#pragma unroll
      for (int i = 0; i < kPiece; ++i) v[k + i] = v[k + i] * rstd * w[i];
    }
    store_chunk<T, VPT>(static_cast<T*>(p.y) + base, col, p.H, vec, v);
  }
}

// i / H, in 32 bits where i fits (several times cheaper than a 64-bit division).
__device__ __forceinline__ int64_t row_of(int64_t i, int H) {
  return i <= 0xffffffffLL ? (int64_t)((uint32_t)i / (uint32_t)H) : i / H;
}

// The gate's sigmoid, the same expression on every path (one per element, or one per token-chunk).
__device__ __forceinline__ float sigmoid_of(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__global__ void __launch_bounds__(kGateThreads) gate_kernel(const GateParams p) {
  pdl_wait_then_release_next();
  const bool vec = p.vec != 0;
  const int64_t stride = (int64_t)gridDim.x * kGateThreads * kGateVec;
  for (int64_t i = ((int64_t)blockIdx.x * kGateThreads + threadIdx.x) * kGateVec; i < p.n; i += stride) {
    float h[kGateVec], s[kGateVec], g[kGateVec];
    load_chunk<T, kGateVec>(static_cast<const T*>(p.hidden), i, p.n, vec, 0.0f, h);
    load_chunk<T, kGateVec>(static_cast<const T*>(p.shared), i, p.n, vec, 0.0f, s);
    if (p.per_token && vec) {  // a vector chunk lies in one row: one sigmoid for the chunk
      const float gv = sigmoid_of(to_float(static_cast<const T*>(p.gate)[row_of(i, p.H)]));
#pragma unroll
      for (int k = 0; k < kGateVec; ++k) g[k] = gv;
    } else {
      if (p.per_token) {
#pragma unroll
        for (int k = 0; k < kGateVec; ++k) g[k] = to_float(static_cast<const T*>(p.gate)[row_of(min(i + k, p.n - 1), p.H)]);
      } else {
        load_chunk<T, kGateVec>(static_cast<const T*>(p.gate), i, p.n, vec, 0.0f, g);
      }
#pragma unroll
      for (int k = 0; k < kGateVec; ++k) g[k] = sigmoid_of(g[k]);
    }
#pragma unroll
    for (int k = 0; k < kGateVec; ++k) h[k] = fmaf(g[k], s[k], h[k]);
    store_chunk<T, kGateVec>(static_cast<T*>(p.hidden), i, p.n, vec, h);
  }
}

}  // namespace epilogue
}  // namespace moekit
