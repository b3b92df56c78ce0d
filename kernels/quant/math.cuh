// The fp32 steps of SPEC section 6, each one IEEE operation (the _rn intrinsics keep nvcc from
// contracting a multiply and an add into an fma the reference does not do), so that the NumPy
// oracle (moekit.reference) repeats them to the bit.
#pragma once

#include <cstdint>

#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace moekit {
namespace quant {

// exp(z) for z in [-20, 88] by the steps of SPEC section 6: Cody-Waite reduction by ln 2 and a
// degree-6 minimax polynomial (docs/spec.md: within 1.03 ulp). k = rint(z * log2 e) by the
// 1.5 * 2^23 shifter (exact for |k| < 2^22), so 2^k comes from its bits: no FRND or F2I.
__device__ __forceinline__ float exp_poly(float z) {
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: the sum's low mantissa bits hold rint(x)
  const float shifted = __fadd_rn(__fmul_rn(z, 1.44269502f), kShifter);
  const float k = __fsub_rn(shifted, kShifter);
  float r = __fmaf_rn(k, -0.693145752f, z);
  r = __fmaf_rn(k, -1.42860677e-6f, r);
  float p = 1.38435559e-3f;
  p = __fmaf_rn(p, r, 8.37423746e-3f);
  p = __fmaf_rn(p, r, 4.16680090e-2f);
  p = __fmaf_rn(p, r, 1.66664302e-1f);
  p = __fmaf_rn(p, r, 0.499999940f);
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  // the shifter's bits are 0x4b400000 + k; shifted left by 23 only k's bits remain (mod 2^32)
  return __fmul_rn(p, __uint_as_float((__float_as_uint(shifted) << 23) + (127u << 23)));
}

// exp(v) for SiLU: below -20, 1 + exp(v) is 1 already; above 88 it overflows.
__device__ __forceinline__ float exp_m(float v) {
  const float e = exp_poly(fminf(fmaxf(v, -20.0f), 88.0f));
  return v > 88.0f ? __int_as_float(0x7f800000) : (v < -20.0f ? 0.0f : e);
}

// a / d rounded to nearest even: div.rn.f32's fast path (reciprocal estimate, one Newton step, the
// quotient corrected once by FMA) without its range check and slow-path call, which split every
// element's chain and kept the compiler from interleaving them. Equal to __fdiv_rn where
// div_fast_ok holds (operands and quotient far from the ends of the normal range); callers take
// __fdiv_rn elsewhere. tests/cuda/quant_math_check.cu checks both claims on the GPU.
__device__ __forceinline__ float div_fast(float a, float d) {
  float r0;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r0) : "f"(d));
  const float r1 = __fmaf_rn(r0, __fmaf_rn(-d, r0, 1.0f), r0);
  const float q0 = __fmul_rn(a, r1);
  return __fmaf_rn(r1, __fmaf_rn(-d, q0, a), q0);
}
// d in [2^-60, 2^60], |a| in [d * 2^-40, d * 2^40] (NaN, infinities and zeros fail it): the
// operands, the reciprocal and the quotient are normal; the remainder a - d * q0 is exact even where
// it is subnormal, as long as the FMAs keep subnormals (never build this with -ftz=true).
__device__ __forceinline__ bool div_fast_ok(float a, float d) {
  const float m = fabsf(a);
  return d >= 0x1p-60f && d <= 0x1p60f && m >= __fmul_rn(d, 0x1p-40f) && m <= __fmul_rn(d, 0x1p40f);
}

__device__ __forceinline__ float silu(float a) { return __fdiv_rn(a, __fadd_rn(1.0f, exp_m(-a))); }
// silu by div_fast, equal to silu where silu_fast_ok(a): |a| >= 2^-38 and -27 <= a <= 2^39 keep
// d = 1 + exp(-a) in [1, 2^40) and |a| / d in [2^-40, 2^40], the range div_fast_ok asks for. There
// -a <= 27, so exp_m's upper clamp and overflow select never act, and below -20 its 0 and the
// polynomial's exp(-20) < 2^-28 give the same d = 1: d needs neither select.
__device__ __forceinline__ float silu_fast(float a) {
  return div_fast(a, __fadd_rn(1.0f, exp_poly(fmaxf(-a, -20.0f))));
}
__device__ __forceinline__ bool silu_fast_ok(float a) {
  return fabsf(a) >= 0x1p-38f && a >= -27.0f && a <= 0x1p39f;
}

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
