// Selection keys: 32-bit unsigned integers whose integer order is SPEC's total order on scores.
// NaN ranks below every number, -inf below every finite number, -0.0 == +0.0; key 0 is reserved for
// "absent" (padding lanes), so it ranks below NaN and is never chosen while a real element is left.
// Index-packed keys replace a key's low bits with (mask - index): unique keys whose order is the SPEC
// order with ties already broken to the lower index.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

namespace moekit {

constexpr uint32_t kAbsentKey = 0u;
constexpr uint32_t kNanKey = 1u;
constexpr uint32_t kNegInfKey = 0x007fffffu;    // order_key(-inf)
constexpr uint32_t kChosenGroup = 0xffffffffu;  // group stage: above every real key (+inf maps below it)

__host__ __device__ __forceinline__ uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
// Branch-free (it runs once per element): an arithmetic shift of the sign gives the flip mask.
// order_key_no_neg_zero is for values that are never -0.0: the scores of sigmoid, sqrtsoftplus and
// softmax-pre are +0 or more (or NaN), and so is score + bias (a sum is -0 only when both terms
// are). order_key first adds +0.0, which turns -0.0 into +0.0 and changes nothing else (no flush to
// zero here): one instruction more per key. Host-callable so that tests/cuda/order_key_check.cu
// can compare order_key with the definition over all 2^32 inputs.
__host__ __device__ __forceinline__ uint32_t order_key_no_neg_zero(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t flip = (uint32_t)((int32_t)u >> 31) | 0x80000000u;  // negative: all bits; else the sign
  return f != f ? kNanKey : (u ^ flip);
}
__host__ __device__ __forceinline__ uint32_t order_key(float f) { return order_key_no_neg_zero(f + 0.0f); }

// The float a (whole) key stands for; NaN for kNanKey and kAbsentKey.
__device__ __forceinline__ float key_value(uint32_t k) {
  if (k <= kNanKey) return __uint_as_float(0x7fc00000u);
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The value of a packed key, its index bits dropped (kMask: the packed bits).
template <uint32_t kMask>
__device__ __forceinline__ float packed_key_value(uint32_t k) {
  const uint32_t hi = k & ~kMask;
  if (hi == 0) return __uint_as_float(0x7fc00000u);  // NaN: kNanKey packs to (kMask - index)
  return __uint_as_float(hi & 0x80000000u ? hi & 0x7fffffffu : ~(hi | kMask));
}

}  // namespace moekit
