// Score functions of the routers (SPEC sections 1, 2 and 4), in fp32.
#pragma once

#include <cuda_runtime.h>

#include "common/device.cuh"

namespace moekit {

// min that keeps NaN (FMNMX.NAN; fminf would return the other operand).
__device__ __forceinline__ float min_keep_nan(float a, float b) {
  float r;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
// sigmoid(x) = 1 / (1 + t) for x >= 0 and t / (1 + t) below, t = e^-|x| in (0, 1]: the
// denominator stays in [1, 2], where rcp.approx needs no range check. t = 2^h * e^-d with
// h = -|x| log2(e) rounded and d = |x| + h ln2 (one FMA, |d| <= 2^-17) for the part the rounding of
// h lost: ex2.approx of h and one FMA for e^-d ~ 1 - d. 11 instructions against 16 for expf and an
// IEEE-exact division; error <= 4.4 ulp measured (bench/NOTES.md v7.3), subnormal results kept
// (ex2.approx without .ftz). |x| is capped at 128 (sigmoid is already 0 or 1 there) so that d stays
// finite at +-inf; NaN stays NaN (the cap keeps it; x >= 0 is false, and t is NaN).
__device__ __forceinline__ float sigmoidf(float x) {
  const float a = min_keep_nan(fabsf(x), 128.0f);
  const float h = a * -1.44269504f;
  const float d = fmaf(h, 0.693147182f, a);
  float t;
  asm("ex2.approx.f32 %0, %1;" : "=f"(t) : "f"(h));
  t = fmaf(t, -d, t);
  const float r = approx_rcp(1.0f + t);
  return x >= 0.0f ? r : t * r;
}
// softplus(x) = x above 20, where log1p(exp(x)) == x in fp32 anyway and exp would overflow later.
__device__ __forceinline__ float softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

}  // namespace moekit
