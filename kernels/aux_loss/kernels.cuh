// The aux-loss kernels (SPEC section 3). Forward: loss = C_coef * sum over r, c of
// probs[r, c] * tokens_per_expert[c], in one launch: each block sums whole chunks of the fixed
// partition (params.h) into per-chunk partials, and the last block to finish (an integer ticket, no
// float atomics) adds the partials in a fixed order and writes the loss and const_buf. Backward:
// grad_probs[r, c] = const_buf * tokens_per_expert[c] * grad_loss, a streaming store.
#pragma once

#include <cstdint>
#include <type_traits>

#include "aux_loss/params.h"
#include "common/device.cuh"
#include "common/team.cuh"

namespace moekit {
namespace aux_loss {

// The column table: staged in shared memory, or read through from global memory (wide C).
template <bool STAGED>
struct Columns {
  const float* staged;
  const void* tpe;
  int dtype;
  __device__ __forceinline__ float operator[](int c) const { return STAGED ? staged[c] : load_number_as_float(tpe, dtype, c); }
};

template <bool STAGED>
__device__ __forceinline__ Columns<STAGED> stage_columns(const void* tpe, int dtype, int C, float* smem) {
  if constexpr (STAGED) {
    for (int c = threadIdx.x; c < C; c += blockDim.x) smem[c] = load_number_as_float(tpe, dtype, c);
    __syncthreads();
  }
  return {smem, tpe, dtype};
}

// Column of element c + v of a vector starting at column c (v < 8): one wrap at most for C >= 8.
__device__ __forceinline__ int column_plus(int c, int v, int C) {
  const int x = c + v;
  return C >= 8 ? (x >= C ? x - C : x) : x % C;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Step 1: a chunk's values, kIters vectors of 16 bytes per thread, all loads in flight at once.
template <typename T>
__device__ __forceinline__ void load_chunk_values(const ForwardParams& a, int64_t chunk,
                                                  float (&x)[kIters][vec_elems((int)sizeof(T))]) {
  constexpr int VEC = vec_elems((int)sizeof(T));
  const T* probs = static_cast<const T*>(a.probs);
  const int64_t first = chunk * chunk_elems((int)sizeof(T)) + (int64_t)threadIdx.x * VEC;
#pragma unroll
  for (int it = 0; it < kIters; ++it)
    load_chunk<T, VEC>(probs, first + (int64_t)it * kThreads * VEC, a.n, a.vec != 0, 0.0f, x[it]);  // 0 past n
}

// Step 2: the thread's share of the chunk's sum, in the same order whichever block runs it.
template <typename T, bool STAGED>
__device__ __forceinline__ float thread_sum(const ForwardParams& a, const Columns<STAGED>& cols, int64_t chunk,
                                            const float (&x)[kIters][vec_elems((int)sizeof(T))]) {
  constexpr int VEC = vec_elems((int)sizeof(T));
  int c = (int)((chunk * chunk_elems((int)sizeof(T)) + (int64_t)threadIdx.x * VEC) % a.C);
  float acc = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc = fmaf(x[it][v], cols[column_plus(c, v, a.C)], acc);
    c += a.step;
    c = c >= a.C ? c - a.C : c;
  }
  return acc;
}

// Step 3: the block's sum (fixed order: warp shuffles, then the warps in order).
__device__ __forceinline__ float block_sum(float acc, float* warp_sums) {
  acc = warp_sum(acc);
  __syncthreads();  // warp_sums is free: every thread has read the previous chunk's
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];
  return s;
}

// Step 4, the last block: the partials in a fixed order (f64), then the loss and const_buf.
template <typename T>
__device__ __forceinline__ void finish(const ForwardParams& a, double* warp_sums) {
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < a.chunks; j += kThreads) s += (double)__ldcg(a.partials + j);
  s = warp_sum_f64(s);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x != 0) return;
  double total = 0.0;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  const int64_t N = a.N_device != nullptr ? *a.N_device : a.N;
  // C_coef = E * coeff / (K * N * N); a device N <= 0 gives NaN (the host cannot check it)
  const double coef = N > 0 ? (double)a.E * (double)a.coeff / ((double)a.K * (double)N * (double)N) : (double)NAN;
  a.const_buf[0] = (float)coef;
  const double loss = coef * total;
  if constexpr (sizeof(T) == 4) *static_cast<float*>(a.loss) = (float)loss;
  else if constexpr (std::is_same<T, __half>::value) *static_cast<__half*>(a.loss) = __double2half(loss);
  else *static_cast<__nv_bfloat16*>(a.loss) = __double2bfloat16(loss);
}

template <typename T, bool STAGED>
__global__ void __launch_bounds__(kThreads) aux_loss_forward_kernel(ForwardParams a) {
  pdl_wait_then_release_next();
  extern __shared__ float staged[];
  __shared__ double warp_sums[kThreads / 32];
  __shared__ bool last;
  const Columns<STAGED> cols = stage_columns<STAGED>(a.tpe, a.tpe_dtype, a.C, staged);
  // The next chunk's loads are issued before this chunk's block sum, so they overlap its barriers.
  float x[kIters][vec_elems((int)sizeof(T))];
  if (blockIdx.x < a.chunks) load_chunk_values<T>(a, blockIdx.x, x);
  for (int64_t chunk = blockIdx.x; chunk < a.chunks; chunk += gridDim.x) {
    const float acc = thread_sum<T, STAGED>(a, cols, chunk, x);
    if (chunk + gridDim.x < a.chunks) load_chunk_values<T>(a, chunk + gridDim.x, x);
    const float s = block_sum(acc, reinterpret_cast<float*>(warp_sums));
    if (threadIdx.x == 0) a.partials[chunk] = s;
  }
  // The ticket: the block that takes gridDim.x - 1 is the last, and atomicInc wraps the counter
  // back to 0 for the next call.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(a.counter, gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  finish<T>(a, warp_sums);
}

template <typename T, bool STAGED>
__global__ void __launch_bounds__(kThreads) aux_loss_backward_kernel(BackwardParams a) {
  pdl_wait_then_release_next();
  extern __shared__ float staged[];
  const Columns<STAGED> cols = stage_columns<STAGED>(a.tpe, a.tpe_dtype, a.C, staged);
  const float coef = a.const_buf[0];
  float g;
  {
    float tmp[1];
    load_chunk<T, 1>(static_cast<const T*>(a.grad_loss), 0, 1, false, 0.0f, tmp);
    g = tmp[0];
  }
  T* out = static_cast<T*>(a.grad_probs);
  const int64_t stride = (int64_t)gridDim.x * blockDim.x * kVec;
  int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * kVec;
  if (i >= a.n) return;
  int c = (int)(i % a.C);
  const int step = (int)a.step;
  for (; i < a.n; i += stride) {
    float v[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] = coef * cols[column_plus(c, e, a.C)] * g;
    store_chunk<T, kVec>(out, i, a.n, a.vec != 0, v);
    c += step;
    c = c >= a.C ? c - a.C : c;
  }
}

}  // namespace aux_loss
}  // namespace moekit
