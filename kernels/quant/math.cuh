// The fp32 steps of SPEC section 6, each one IEEE operation (the _rn intrinsics keep nvcc from
// contracting a multiply and an add into an fma the reference does not do), so that the NumPy
// oracle (moekit.reference) repeats them to the bit.
#pragma once

#include <cstdint>

#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace moekit {
namespace quant {

// exp(v) for SiLU: Cody-Waite reduction by ln 2 and a degree-6 minimax polynomial (docs/spec.md:
// within 1.03 ulp). Below -20, 1 + exp(v) is 1 already; above 88 it overflows.
__device__ __forceinline__ float exp_m(float v) {
  const float z = fminf(fmaxf(v, -20.0f), 88.0f);
  const float k = rintf(__fmul_rn(z, 1.44269502f));
  float r = __fmaf_rn(k, -0.693145752f, z);
  r = __fmaf_rn(k, -1.42860677e-6f, r);
  float p = 1.38435559e-3f;
  p = __fmaf_rn(p, r, 8.37423746e-3f);
  p = __fmaf_rn(p, r, 4.16680090e-2f);
  p = __fmaf_rn(p, r, 1.66664302e-1f);
  p = __fmaf_rn(p, r, 0.499999940f);
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  const float e = __fmul_rn(p, __int_as_float(((int)k + 127) << 23));
  return v > 88.0f ? __int_as_float(0x7f800000) : (v < -20.0f ? 0.0f : e);
}

__device__ __forceinline__ float silu(float a) { return __fdiv_rn(a, __fadd_rn(1.0f, exp_m(-a))); }

// scale = amax / 448; UE8M0 rounds it up to a power of two by its bits (exponent + 1 when the
// mantissa is not zero). Returns the scale's bits.
__device__ __forceinline__ uint32_t scale_bits(float amax, bool ue8m0) {
  uint32_t bits = __float_as_uint(__fdiv_rn(fmaxf(amax, 1e-10f), 448.0f));
  if (ue8m0 && (bits & 0x7fffffu)) bits = (bits & 0x7f800000u) + 0x800000u;
  return bits;
}

// 1 / scale for a power-of-two scale (exact, so y * it == y / scale); 0 for an infinite scale.
__device__ __forceinline__ float pow2_inverse(uint32_t bits) {
  const uint32_t e = bits >> 23;
  return e >= 255u ? 0.0f : __uint_as_float((254u - e) << 23);
}

// Two values to e4m3fn, round to nearest even, saturating to +-448 (NaN stays NaN: 0x7f); the
// first in the low byte.
__device__ __forceinline__ uint32_t to_e4m3x2(float lo, float hi) {
  return (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}

}  // namespace quant
}  // namespace moekit
