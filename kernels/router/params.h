// What the router kernels read: the problem as the C entry validated it, the values derived from it
// on the host, and the few run-time choices of the plan (plan.h). Compile-time choices (the kernel,
// its lanes, chunks, dtype) are template parameters instead.
#pragma once

#include <cstdint>

namespace moekit {
namespace router {

enum ScoreMode : int { kSoftmaxPre = 0, kSoftmaxPost = 1, kSigmoid = 2, kSqrtSoftplus = 3 };
enum MapKind : int { kMapNone = 0, kMapBytes = 1, kMapBits = 2 };
// Warp rows: kTopkFiltered tries filtered_select first and falls back to `radix` (radix select or rounds).
enum TopkPath : int { kTopkDefault = 0, kTopkFiltered = 1 };

constexpr float kEps = 1e-20f;  // SPEC: the sigmoid / sqrtsoftplus normalization epsilon
// Elements per vector access of a warp or block row holding vpt elements per thread: at most 16 bytes.
constexpr int vec_width(int elem_bytes, int vpt) { return vpt < 16 / elem_bytes ? vpt : 16 / elem_bytes; }

// Block rows have at most this many threads, so the compiler may give each 128 registers.
constexpr int kMaxBlockThreads = 512;

// Team rows (forward_team.cuh): LANES lanes own a row, CHUNKS chunks of kTeamVec keys per lane.
constexpr int kTeamVec = 8, kTeamMaxChunks = 2;
constexpr int kTeamMaxExperts = 32 * kTeamMaxChunks * kTeamVec;
// The team kernel per score mode: a ScoreMode, or one of these two softmax-post kernels whose rounds
// run on index-packed keys (16-bit logits: lossless; f32 logits: with a check and an exact fallback).
enum TeamKernel : int { kTeamSoftmaxPostPacked = 4, kTeamSoftmaxPostF32Packed = 5 };
// Aux-loss scores (SPEC section 2) run the same kernels with AUX set: the scores over all E go to
// `probs` as f32 (no mask, no scale), with the routing map and the intermediate as the router writes
// them for the same mode (no bias, groups or indices). A team kernel's KIND is then kTeamAux + mode.
constexpr int kTeamAux = 8;

// Wide rows (forward_wide.cuh): one warp per row, 2..10 chunks of kTeamVec keys per lane, K <= 64.
constexpr int kWideMinChunks = 2, kWideMaxChunks = 10;
constexpr int kWideMaxK = 64;  // two winners per lane (the kernels' `held`)

// The layout of ForwardParams is kept as it was when the kernels were last tuned: nvcc schedules
// the same kernel code differently when the parameters' offsets move (up to 2x the instructions of a
// team kernel in one trial; bench/NOTES.md, core reshape). A new field goes at the end; a field
// taken out leaves its slot (unused_*).
struct ForwardParams {
  const void* logits;
  const void* bias;  // may be null
  int bias_dtype;    // moekit_dtype_t
  void* probs;
  uint8_t* map;
  void* indices;
  float* intermediate;
  int64_t T;
  int E;
  int K;
  int G, Kg;  // groups (0 = off)
  int mode;   // ScoreMode
  int map_kind;
  int idx64;
  int radix;   // plan: radix select (1) or rounds (0) on warp and block rows
  int topk;    // plan: TopkPath, what warp rows try first
  int packed;  // keys carry the index in their low bits (16-bit logits, softmax-post; plan.h)
  int vec;     // rows allow whole-chunk vector access (E a multiple of the chunk, 16-byte aligned)
  int bias_vec;  // team rows: the bias allows 8-element vector loads (16-byte aligned, E % 8 == 0)
  float scale;
  int smem_words_per_team;    // dynamic shared memory per warp team in 32-bit words
  int unused_a[2];
  int group_size, per_group;  // E / G and K / Kg: no integer division per row
  int unused_b;
};

struct BackwardParams {
  const void* grad;
  const float* intermediate;
  const uint8_t* map;
  const void* indices;
  void* grad_logits;
  int64_t T;
  int E;
  int K;
  int mode;
  int map_kind;
  int idx64;
  int vec;
  float scale;
  int smem_words_per_team;
};

}  // namespace router
}  // namespace moekit
