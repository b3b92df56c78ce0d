// What the moe_align kernels read (SPEC section 5). Pairs p = t * K + j are cut into chunks of
// kChunk; a block of kThreads owns a chunk, each warp kWarpPairs consecutive pairs of it, a lane one
// pair per round.
#pragma once

#include <cstdint>

namespace moekit {
namespace align {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRounds = 8;
constexpr int kWarpPairs = 32 * kRounds;
constexpr int kChunk = kWarps * kWarpPairs;  // 2048 pairs
constexpr int kMaxExperts = 1024;            // per-warp histograms: kWarps * E ints of shared memory
constexpr int kFinalizeThreads = 1024;
static_assert(kThreads % 32 == 0 && kFinalizeThreads % 32 == 0, "whole warps: the scans and shuffles assume them");

struct Params {
  const void* ids;  // [T * K], i32 or i64
  int ids_i64;
  int64_t pairs;    // T * K
  int E, BM;
  const int32_t* expert_map;  // [map_size] or null
  int64_t map_size;
  int32_t* sorted;       // [max_pad]
  int32_t* expert_ids;   // [num_blocks]
  int32_t* post_padded;  // [1]
  int32_t* counts;       // [E]
  int32_t* offsets;      // [E + 1]
  int64_t max_pad, num_blocks;
  int32_t* block_hist;    // workspace [chunks][E]: counts, then each chunk's base per expert
  int32_t* region_start;  // workspace [E]
  int chunks;
};

}  // namespace align
}  // namespace moekit
