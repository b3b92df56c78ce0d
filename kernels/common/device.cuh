// Device helpers written once for every op: dtype conversion, vector loads/stores of a thread's
// contiguous chunk, division by a denominator known to be in range, programmatic dependent launch.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace moekit {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- dtype conversion (all arithmetic is fp32; stores round to nearest even) -----------------
template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Element i of a float tensor whose dtype is known only at run time (moekit_dtype_t: 0 f32, 1 f16,
// 2 bf16), as float: for small side inputs (an expert bias) where one kernel serves every dtype.
__device__ __forceinline__ float load_as_float(const void* p, int dtype, int i) {
  switch (dtype) {
    case 1: return __half2float(static_cast<const __half*>(p)[i]);
    case 2: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// The same for a float or integer tensor (3 i32, 4 i64: tokens per expert). Apart from
// load_as_float so that the bias loads of the router keep their code.
__device__ __forceinline__ float load_number_as_float(const void* p, int dtype, int i) {
  switch (dtype) {
    case 3: return (float)static_cast<const int32_t*>(p)[i];
    case 4: return (float)static_cast<const int64_t*>(p)[i];
    default: return load_as_float(p, dtype, i);
  }
}

// ---- vector access to a thread's chunk of VEC consecutive elements --------------------------
// A chunk moves in pieces of at most 16 bytes (the widest access on sm_80/sm_90). `vec` says the row
// layout allows it (length a multiple of VEC, base 16-byte aligned); otherwise, and for a chunk that
// crosses the end `n`, a bounds-checked scalar path that never touches memory past `n`.
template <int BYTES> struct VecStorage;
template <> struct VecStorage<1> { using type = uint8_t; };
template <> struct VecStorage<2> { using type = uint16_t; };
template <> struct VecStorage<4> { using type = uint32_t; };
template <> struct VecStorage<8> { using type = uint2; };
template <> struct VecStorage<16> { using type = uint4; };

template <typename T, int VEC>
struct Chunk {
  static constexpr int kBytes = VEC * (int)sizeof(T);
  static constexpr int kPiece = kBytes < 16 ? kBytes : 16;  // bytes per access
  static constexpr int kPer = kPiece / (int)sizeof(T);       // elements per access
  using Piece = typename VecStorage<kPiece>::type;
  static_assert(VEC % kPer == 0, "chunk must be whole pieces");
};

// load_chunk's vector path alone: the caller has checked that [i, i + VEC) is in range and that
// the row allows vector access. Two of these under one branch issue both loads before either
// value is used (each load_chunk's own branch kept the first conversion ahead of the second load).
template <typename T, int VEC>
__device__ __forceinline__ void load_chunk_vec(const T* __restrict__ p, int64_t i, float (&out)[VEC]) {
  using C = Chunk<T, VEC>;
#pragma unroll
  for (int k = 0; k < VEC / C::kPer; ++k) {
    typename C::Piece raw = *reinterpret_cast<const typename C::Piece*>(p + i + k * C::kPer);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int v = 0; v < C::kPer; ++v) out[k * C::kPer + v] = to_float(e[v]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void load_chunk(const T* __restrict__ p, int64_t i, int64_t n, bool vec, float fill,
                                           float (&out)[VEC]) {
  if (vec && i + VEC <= n) {
    load_chunk_vec<T, VEC>(p, i, out);
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = (i + v < n) ? to_float(p[i + v]) : fill;
  }
}

// store_chunk's vector path alone: [i, i + VEC) is in range and the row allows vector access.
template <typename T, int VEC>
__device__ __forceinline__ void store_chunk_vec(T* __restrict__ p, int64_t i, const float (&in)[VEC]) {
  using C = Chunk<T, VEC>;
#pragma unroll
  for (int k = 0; k < VEC / C::kPer; ++k) {
    typename C::Piece raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int v = 0; v < C::kPer; ++v) e[v] = from_float<T>(in[k * C::kPer + v]);
    *reinterpret_cast<typename C::Piece*>(p + i + k * C::kPer) = raw;
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_chunk(T* __restrict__ p, int64_t i, int64_t n, bool vec, const float (&in)[VEC]) {
  if (vec && i + VEC <= n) {
    store_chunk_vec<T, VEC>(p, i, in);
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      if (i + v < n) p[i + v] = from_float<T>(in[v]);
  }
}

template <int VEC>
__device__ __forceinline__ void store_bytes(uint8_t* __restrict__ p, int64_t i, int64_t n, bool vec, const uint8_t (&in)[VEC]) {
  using C = Chunk<uint8_t, VEC>;
  if (vec && i + VEC <= n) {
#pragma unroll
    for (int k = 0; k < VEC / C::kPer; ++k) {
      typename C::Piece raw;
      uint8_t* e = reinterpret_cast<uint8_t*>(&raw);
#pragma unroll
      for (int v = 0; v < C::kPer; ++v) e[v] = in[k * C::kPer + v];
      *reinterpret_cast<typename C::Piece*>(p + i + k * C::kPer) = raw;
    }
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      if (i + v < n) p[i + v] = in[v];
  }
}

template <int VEC>
__device__ __forceinline__ void load_bytes(const uint8_t* __restrict__ p, int64_t i, int64_t n, bool vec, uint8_t (&out)[VEC]) {
  using C = Chunk<uint8_t, VEC>;
  if (vec && i + VEC <= n) {
#pragma unroll
    for (int k = 0; k < VEC / C::kPer; ++k) {
      typename C::Piece raw = *reinterpret_cast<const typename C::Piece*>(p + i + k * C::kPer);
      const uint8_t* e = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
      for (int v = 0; v < C::kPer; ++v) out[k * C::kPer + v] = e[v];
    }
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = (i + v < n) ? p[i + v] : 0;
  }
}

// ---- search ---------------------------------------------------------------------------------
// The largest i in [0, n) with a[i] <= v, for non-decreasing a with a[0] <= v (binary search).
template <typename T, typename V>
__device__ __forceinline__ int last_at_most(const T* a, int n, V v) {
  int lo = 0, hi = n;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] <= v) lo = mid;
    else hi = mid;
  }
  return lo;
}

// ---- division by a denominator in the normal range ----------------------------------------
// nvcc's IEEE n / d is: a reciprocal refined by one Newton step, the product n * r and one
// correction, behind a range check (FCHK) with a slow path for extreme operands. Where d is known
// to be in range (and n is not subnormal) the result is the same bits without the check and its
// branch; dividing many n by one d, the refined reciprocal is computed once.
__device__ __forceinline__ float approx_rcp(float d) {  // MUFU.RCP, ~1 ulp
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
}
__device__ __forceinline__ float refined_rcp(float d) {
  const float r = approx_rcp(d);
  return fmaf(r, fmaf(-d, r, 1.0f), r);
}
__device__ __forceinline__ float divide_by(float n, float d, float r) {
  const float q = n * r;
  return fmaf(fmaf(-d, q, n), r, q);
}

// ---- programmatic dependent launch (sm_90) -------------------------------------------------
// First statement of every kernel launched with the programmatic-serialization attribute: wait
// until the previous kernel in the stream has finished and its writes are visible, then let the
// next kernel start launching. The trigger comes right after the wait, so the next grid's blocks
// take SM slots only once every block of this grid is resident (none of ours is left waiting), and
// the next kernel's own wait keeps it from reading what this one has not yet written. Without the
// attribute both instructions do nothing.
__device__ __forceinline__ void pdl_wait_then_release_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace moekit
