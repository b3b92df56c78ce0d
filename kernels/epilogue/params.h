// What the epilogue kernels read (SPEC section 7). Dtypes and the per-thread width are template
// parameters.
#pragma once

#include <cstdint>

namespace moekit {
namespace epilogue {

// RMSNorm: one block per row (rows strided over the grid), each thread owning VPT consecutive
// columns in registers; VPT grows with H so that a row fits one block of at most kMaxThreads.
constexpr int kMaxThreads = 1024;
constexpr int kMaxVpt = 32;
constexpr int64_t kMaxHidden = (int64_t)kMaxThreads * kMaxVpt;
// The weight held beside the row (decode) only up to this width: at 32 the two spill (64 registers
// at 1024 threads).
constexpr int kMaxWeightFirstVpt = 16;
// The gate: a grid-stride loop over chunks of kGateVec elements of one row.
constexpr int kGateThreads = 256;
constexpr int kGateVec = 8;

struct NormParams {
  void* x;               // [T, H]: input (rmsnorm) or input and output (add_rmsnorm)
  void* residual;        // [T, H] add_rmsnorm: read and written; null for rmsnorm
  const void* weight;    // [H]
  void* y;               // [T, H] rmsnorm output (add_rmsnorm: x)
  int64_t T;
  int H;
  float eps;
  int vec;               // rows allow whole-chunk vector access
};

struct GateParams {
  void* hidden;          // [T, H], in place
  const void* shared;    // [T, H]
  const void* gate;      // [T, 1] or [T, H]
  int64_t n;             // T * H
  int H;
  int per_token;         // gate [T, 1]
  int vec;
};

}  // namespace epilogue
}  // namespace moekit
