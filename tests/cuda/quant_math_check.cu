// Checks the fast fp32 steps of the quantization kernels (kernels/quant/math.cuh) against the IEEE
// operations SPEC section 6 defines, on the GPU:
//   - exp_m (rint by the shifter) against the same polynomial with rintf and an int conversion, and
//     silu_fast against a / (1 + exp(-a)) by __fdiv_rn, for every one of the 2^32 float bit patterns
//     where silu_fast_ok holds (and silu_fast_ok must imply div_fast_ok);
//   - div_fast against __fdiv_rn for 2^32 hashed (y, scale) pairs of the quantizer's kind (scale =
//     amax / 448, |y| <= amax, magnitudes 2^-40..2^40, plus tiny y) where div_fast_ok holds, and for
//     the Newton step's one weak divisor (mantissa all ones) against powers of two at every exponent.
//   nvcc -O2 -std=c++17 -Iinclude -Ikernels --expt-relaxed-constexpr -arch=sm_90a \
//     tests/cuda/quant_math_check.cu -o /tmp/qmc && /tmp/qmc
#include <cstdint>
#include <cstdio>

#include "check.h"
#include "quant/math.cuh"

using namespace moekit::quant;

// exp_m as first written (rintf, then an int conversion for 2^k): the definition of its steps.
__device__ float exp_definition(float v) {
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

struct Counts {
  unsigned long long exp_bad, silu_bad, guard_bad, silu_covered, div_bad, div_covered;
  uint32_t first_exp, first_silu, first_guard, first_div_y, first_div_s;
};

__device__ uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__global__ void check_every_float(uint32_t base, Counts* c) {
  const uint32_t bits = base + blockIdx.x * blockDim.x + threadIdx.x;
  const float a = __uint_as_float(bits);
  const float e = exp_m(a), e_def = exp_definition(a);
  if (__float_as_uint(e) != __float_as_uint(e_def) && !(e != e && e_def != e_def)) {
    if (atomicAdd(&c->exp_bad, 1ull) == 0) c->first_exp = bits;
  }
  const bool covered = silu_fast_ok(a);
  const unsigned n = __popc(__ballot_sync(0xffffffffu, covered));  // one atomic per warp, not per float
  if ((threadIdx.x & 31) == 0) atomicAdd(&c->silu_covered, (unsigned long long)n);
  if (!covered) return;
  const float d = __fadd_rn(1.0f, exp_definition(-a));
  if (!div_fast_ok(a, d)) {
    if (atomicAdd(&c->guard_bad, 1ull) == 0) c->first_guard = bits;
  }
  if (__float_as_uint(silu_fast(a)) != __float_as_uint(__fdiv_rn(a, d))) {
    if (atomicAdd(&c->silu_bad, 1ull) == 0) c->first_silu = bits;
  }
}

__global__ void check_scale_division(uint32_t base, Counts* c) {
  const uint32_t i = base + blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t h1 = hash32(i), h2 = hash32(i ^ 0x9e3779b9u);
  // amax = 2^(-40..40) * [1, 2); scale as the kernel forms it; y a random share of amax (any sign),
  // one pair in 16 scaled down by up to 2^-60 (the guard's lower edge)
  const float amax = ldexpf(1.0f + (h1 & 0xffffff) * 0x1p-24f, (int)(h1 >> 24) % 81 - 40);
  const float scale = __uint_as_float(scale_bits(amax, false));
  float y = __fmul_rn(amax, (h2 & 0xffffff) * 0x1p-24f);
  if ((h2 >> 24) & 1) y = -y;
  if (((h2 >> 25) & 15) == 0) y = ldexpf(y, -(int)(h2 >> 29) * 8);
  const bool covered = div_fast_ok(y, scale);
  const unsigned n = __popc(__ballot_sync(0xffffffffu, covered));
  if ((threadIdx.x & 31) == 0) atomicAdd(&c->div_covered, (unsigned long long)n);
  if (!covered) return;
  if (__float_as_uint(div_fast(y, scale)) != __float_as_uint(__fdiv_rn(y, scale))) {
    if (atomicAdd(&c->div_bad, 1ull) == 0) {
      c->first_div_y = __float_as_uint(y);
      c->first_div_s = __float_as_uint(scale);
    }
  }
}

// The one case the Newton step can get wrong (a divisor whose mantissa is all ones, should the
// reciprocal estimate round down) with the dividends that expose it (powers of two), at every
// exponent the guard admits: thread (i, j) takes scale = (2 - 2^-23) * 2^(i - 60) and y = +-2^(i - 60 + j - 40).
__global__ void check_reciprocal_edge(Counts* c) {
  const int i = blockIdx.x, j = threadIdx.x >> 1;
  if (i > 120 || j > 80) return;
  const float scale = ldexpf(2.0f - 0x1p-23f, i - 60);
  float y = ldexpf(1.0f, i - 60 + j - 40);
  if (threadIdx.x & 1) y = -y;
  if (!div_fast_ok(y, scale)) return;
  atomicAdd(&c->div_covered, 1ull);
  if (__float_as_uint(div_fast(y, scale)) != __float_as_uint(__fdiv_rn(y, scale))) {
    if (atomicAdd(&c->div_bad, 1ull) == 0) {
      c->first_div_y = __float_as_uint(y);
      c->first_div_s = __float_as_uint(scale);
    }
  }
}

int main() {
  Counts* c;
  CHECK(cudaMallocManaged(&c, sizeof(Counts)));
  *c = Counts{};
  const uint32_t per = 1u << 28;  // launches of 2^28 threads (grid.x stays below 2^31)
  for (uint64_t base = 0; base < (1ull << 32); base += per) {
    check_every_float<<<per / 256, 256>>>((uint32_t)base, c);
    check_scale_division<<<per / 256, 256>>>((uint32_t)base, c);
  }
  check_reciprocal_edge<<<121, 2 * 81>>>(c);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::printf("exp_m: %llu of 2^32 floats differ from the definition (first 0x%08x)\n", c->exp_bad, c->first_exp);
  std::printf("silu_fast: %llu of %llu covered floats differ from __fdiv_rn (first 0x%08x); %llu covered floats "
              "outside div_fast_ok (first 0x%08x)\n",
              c->silu_bad, c->silu_covered, c->first_silu, c->guard_bad, c->first_guard);
  std::printf("div_fast: %llu of %llu covered (y, scale) pairs differ from __fdiv_rn (first y 0x%08x scale 0x%08x)\n",
              c->div_bad, c->div_covered, c->first_div_y, c->first_div_s);
  // the covered sets must be most of the inputs, or the check proves little
  const bool ok = c->exp_bad == 0 && c->silu_bad == 0 && c->guard_bad == 0 && c->div_bad == 0 &&
                  c->silu_covered > (1ull << 29) && c->div_covered > (3ull << 30);
  std::printf(ok ? "all checks pass\n" : "FAILED\n");
  return ok ? 0 : 1;
}
