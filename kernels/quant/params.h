// What the FP8 quantization kernels read (SPEC section 6). One kernel serves the contiguous and the
// masked layout (a batch of B = E experts of M rows each; contiguous is B = 1, M = T) and every
// scale format; the input dtype and SiLU-or-plain are template parameters.
#pragma once

#include <cstdint>

namespace moekit {
namespace quant {

// A lane owns 16 consecutive output columns, so a warp covers 512 columns: whole groups of 32, 64
// or 128, and whole packed words (4 groups) for every group size.
constexpr int kLaneCols = 16;
constexpr int kWarpCols = 32 * kLaneCols;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Masked layout: the per-expert row counts are prefix-summed in shared memory (int64 each).
constexpr int kMaxExperts = 4096;

enum ScaleFormat : int { kRowF32 = 0, kColF32 = 1, kColUe8m0 = 2, kPackedUe8m0 = 3 };

struct Params {
  const void* x;    // [B, M, xcols]
  void* q;          // [B, M, H] e4m3fn
  void* scales;     // per format, [B, ...]
  const void* counts;  // [B] i32 / i64, or null: every row of every batch is valid
  int counts_i64;
  int B;
  int64_t M;        // rows per batch
  int64_t R;        // scale rows per batch: M (row_f32) or M rounded up to 4
  int H;            // output columns
  int xcols;        // 2H (SiLU) or H
  int a_off, b_off; // column of the gate and of the up half (SiLU)
  int G;            // groups per row
  int S;            // scale columns: G, or ceil(G / 4) packed words
  int lane_shift;   // log2(lanes per group): 1, 2, 3 for g = 32, 64, 128
  int units;        // warp units per row: ceil(H / kWarpCols)
  int format;       // ScaleFormat
  int round_act;
  int prefix_words;  // int64 words of shared memory before the async stages (masked: B + 1, even)
};

}  // namespace quant
}  // namespace moekit
