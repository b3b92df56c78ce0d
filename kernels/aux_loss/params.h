// What the aux-loss kernels read (SPEC section 3). Compile-time choices (probs dtype, staged
// tokens_per_expert) are template parameters.
#pragma once

#include <cstdint>

namespace moekit {
namespace aux_loss {

// The forward's fixed partition: chunks of chunk_elems(dtype) consecutive elements of probs
// (flattened [R, C]), each summed by one block of kThreads threads in a fixed order; a thread loads
// kIters vectors of 16 bytes. It depends on nothing but the sizes and the dtype, so the loss has the
// same bits whatever the grid (and device).
constexpr int kThreads = 256, kIters = 8;
constexpr int vec_elems(int esize) { return 16 / esize; }
constexpr int chunk_elems(int esize) { return kThreads * kIters * vec_elems(esize); }
constexpr int kMinChunk = chunk_elems(4);  // f32: the most chunks (workspace sizes)
// The backward stores 8 elements per thread and step.
constexpr int kVec = 8;
// tokens_per_expert is staged as float in shared memory up to this many columns (48 KB).
constexpr int kMaxStagedCols = 12288;

struct ForwardParams {
  const void* probs;
  const void* tpe;  // tokens_per_expert [C]
  int tpe_dtype;    // moekit_dtype_t
  int C;
  int64_t n;        // R * C
  int64_t chunks;   // ceil(n / chunk_elems)
  int step;         // (kThreads * vec_elems) % C: a thread's column moves by this per iteration
  int vec;          // probs 16-byte aligned: whole vectors
  int64_t N;        // total_num_tokens from the host, unless N_device
  const int64_t* N_device;
  int E, K;
  float coeff;
  void* loss;       // scalar, probs dtype
  float* const_buf;
  unsigned* counter;  // workspace: zero before the call, zero after it
  float* partials;    // workspace: one per chunk
};

struct BackwardParams {
  const float* const_buf;
  const void* tpe;
  int tpe_dtype;
  int C;
  int64_t n;
  int64_t step;  // (grid stride in elements) % C
  const void* grad_loss;  // scalar, grad dtype
  void* grad_probs;       // [R, C], grad dtype
  int vec;
};

}  // namespace aux_loss
}  // namespace moekit
