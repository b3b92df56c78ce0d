// Router entry points: argument validation, launch-shape choice, dispatch on dtype.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/api.h"
#include "router/router_launch.cuh"

namespace moekit {
namespace router {
namespace {

// Tuning knobs. Defaults are measured on an H100 (bench/router_crossover.py, bench/NOTES.md v2);
// the environment overrides them.
//
// Radix select from this K on, iterative rounds below it. A round costs about one pass over the
// lane's keys and one redux; radix select costs about the same for any K. Rounds are cheaper when
// the keys are index-packed (bf16/f16 softmax-post: one redux per round, see forward_row), so the
// crossover depends on it. First K at which radix won (softmax-post forward, T = 65536):
//   packed (bf16):   E = 128: 32, 256: 16, 512: 22, 1024: 32, 2304 (block teams): 4
//   unpacked (f32):  E = 128: 22, 256: 12, 512: 16, 1024: 32, 2304 (block teams): 4
int radix_min_k(int E, bool packed) {
  static const int forced = env_int("MOEKIT_ROUTER_RADIX_MIN_K", 0);
  if (forced > 0) return forced;
  if (E > 1024) return 4;
  if (E <= 128) return packed ? 32 : 22;
  if (E <= 256) return packed ? 16 : 12;
  if (E <= 512) return packed ? 22 : 16;
  return 32;
}
// Filtered top-k (router_kernels.cuh, filtered_select) on warp teams whose lanes hold at least this
// many keys, for unpacked keys and 6 <= K <= 24: it won only there (f32, E = 1024: 0.84-0.99x the time of
// the best other path; E <= 512 or packed keys: 3-20% slower; K = 32 overflows its 64 candidates).
// 0 turns it off, 1 tries it wherever K <= 32 (bench/router_crossover.py does that).
int filter_min_keys_per_lane() {
  static const int v = env_int("MOEKIT_ROUTER_FILTER_MIN_VPT", 32);
  return v;
}
// Rows up to this many experts go to one warp each, longer rows to one block each (at most 1024).
int warp_max_experts() {
  static const int v = env_int("MOEKIT_ROUTER_WARP_MAX_E", 1024);
  return v < 32 ? 32 : (v > 1024 ? 1024 : v);
}
constexpr int kWarpsPerBlock = 4;

int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

int vec_for(moekit_dtype_t t, int vpt) {
  const int per16 = 16 / dtype_size(t);
  return vpt < per16 ? vpt : per16;
}

// Programmatic dependent launch on sm_90 and later (router_launch.cuh, launch_one): a router kernel
// launches while the kernel before it in the stream finishes, and waits for it on the GPU. 0 turns
// it off (plain stream order, as on older GPUs).
bool pdl_enabled() {
  static const int v = env_int("MOEKIT_PDL", 1);
  return v != 0;
}

// Forward rows staged through shared memory by cp.async on persistent warps. Off by default: on the
// H100, plain loads took 0.81-0.99x its time in every forward row of the A/B (bench/NOTES.md v2),
// and 0.85-0.94x on the radix rows alone (e512k22, v3); 1 turns it on.
int pipeline_enabled() {
  static const int v = env_int("MOEKIT_ROUTER_PIPELINE", 0);
  return v;
}

// Team rows (forward_team_kernel) for softmax-post rows with E <= 512 and K up to this bound; above it
// radix select or filtered top-k is faster. Index-packed keys make a round cheaper, so their bound is
// higher. From bench/router_crossover.py "team" (T = 65536, H100, bench/NOTES.md v3): team rows won
//   packed (bf16):   E = 128 up to K = 22 (radix at 32), 256: 16 (radix at 22), 512: 22 (radix at 32)
//   unpacked (f32):  E = 128 up to K = 16 (radix at 22), 256: 8 (tie at 12), 512: 8 (filtered at 12)
// v4 (rounds without clearing; whole-warp rows at 256 < E <= 512 keep a list per lane): packed
// E = 128 up to K = 48 at least (60.3 us against radix 71.3), 256: 40 (105.0 against 106.2; radix
// at 48), 512: 48 (215.0 against 219.0; radix at 64). 0 turns team rows off.
int team_max_k(int E, bool packed, bool pack_f32) {
  static const int forced = env_int("MOEKIT_ROUTER_TEAM_MAX_K", -1);
  if (forced >= 0) return forced;
  if (packed) return E <= 128 ? 48 : E <= 256 ? 40 : 48;
  if (pack_f32 && E > 256) return 22;  // e512k22 (team_pack_f32_min_t; wide rows there since v7.6)
  return E <= 128 ? 18 : 10;
}
// Team rows for the other score modes (softmax-pre, sigmoid, sqrtsoftplus; bias; groups). Since v4
// (one kernel per score mode, each score computed once, rounds on packed keys with an exact
// fallback) they beat the whole-warp rows at E = 256, K = 8, sigmoid + bias + groups 8/4: 98.8
// against 153.1 us (bf16), 102.1 against 162.4 (f32) at T = 65536 (bench/NOTES.md v4). 0: off.
int team_any_score() {
  static const int v = env_int("MOEKIT_ROUTER_TEAM_ANY_SCORE", 1);
  return v;
}
// Chunks of 8 keys per lane of a team row: 2 (16 keys), or 1 (8 keys on twice the lanes: more warps,
// half the serial work per lane, 44 registers against 68 for sigmoid bf16). One chunk pays where two
// would leave the GPU short of warps: e256k8g8 forward on the H200 (132 SMs), one chunk against two:
// T = 2048 0.72-0.75x, 8192 0.89-0.91x, 16384 0.96-0.98x, 24576 1.00-1.01x, 32768 1.01-1.02x,
// 65536 1.04-1.05x; e128k8 lost at T = 8192 (1.01-1.07x) and 65536 (bench/NOTES.md v6).
// Since 16-lane teams reduce with redux (v7.7), f32 softmax-post rows on packed keys (pack_f32)
// at E <= 128 take one chunk too: e128k8 f32 T = 8192 0.91x, 16384 0.98x (bf16 1.00x / 1.03x: two).
// MOEKIT_ROUTER_TEAM_CHUNKS=1 or 2 forces one at 32 < E <= 256 (2 elsewhere).
int team_chunks(int E, int64_t T, bool pack_f32) {
  static const int forced = env_int("MOEKIT_ROUTER_TEAM_CHUNKS", -1);
  if (E <= 32 || E > 32 * kTeamVec) return 2;
  if (forced == 1 || forced == 2) return forced;
  return (E > 128 || pack_f32) && T <= 16384 ? 1 : 2;
}
// f32 softmax-post team rows: rounds on index-packed keys with a check and an exact fallback from
// this T on, clearing rounds below it. Packed rounds cost fewer instructions but lose at small T
// (likely: a warp that falls back runs both kinds of rounds, and with few waves such a warp sets the
// time). v7.1 on the H200 (bench/NOTES.md), packed against clearing rounds, e128k8: T = 2048 1.27x,
// 4096 1.13x, 8192 1.00-1.02x, 16384 0.91-0.92x, 32768 0.86x, 65536 0.82x; e512k22, packed team rows
// against radix select: 2048 1.40x, 4096 1.12x, 8192 1.02x, 16384 0.97x, 32768 0.93x, 65536 0.91x.
// Re-measured after v7.6 (e512k22 f32 runs on wide rows now), e128k8: T = 4096 1.08-1.09x, 8192
// 0.94x (7.6 -> 7.1 us), so packed from T = 8192.
int64_t team_pack_f32_min_t() {
  static const int64_t v = env_int("MOEKIT_ROUTER_TEAM_PACK_F32_MIN_T", 8192);
  return v;
}
// Lanes per row of a team row for this call, or 0 where team rows do not apply. Groups must be
// whole 8-element chunks of a power-of-2 number of lanes within the team, with K / Kg <= 2.
int choose_team_lanes(const ForwardArgs& a) {
  if (a.E > kTeamMaxExperts || a.K > team_max_k(a.E, a.packed != 0, a.team_pack_f32 != 0)) return 0;
  if (a.mode != kSoftmaxPost && !team_any_score()) return 0;
  const int keys = team_chunks(a.E, a.T, a.team_pack_f32 != 0) * kTeamVec;
  const int lanes = next_pow2((a.E + keys - 1) / keys);
  if (a.G > 0) {
    const int gsize = a.E / a.G, lanes_per_group = gsize / kTeamVec;
    if (gsize % kTeamVec != 0 || a.K / a.Kg > 2 || lanes_per_group > lanes ||
        (lanes_per_group & (lanes_per_group - 1)) != 0)
      return 0;
  }
  return lanes;
}

// Wide rows (forward_wide_packed_kernel, forward_wide_f32_kernel): softmax-post without groups,
// wide_min_experts(...) <= E <= 2560, K up to this bound (at most kWideMaxK). Since v7.6 they win at every K up to
// kWideMaxK = 64, both dtypes, against warp and block rows (iterative, radix, filtered); from
// bench/router_crossover.py "wide" (H200, bench/NOTES.md v7.6), f32 at T = 8192: E = 1024, K = 64
// 44.3 us against radix 72.0; E = 2304, K = 64 85.3 against 127.0 (K = 36: 76.6 against 127.7);
// T = 65536: E = 2304, K = 64 583.2 against 975.9. bf16 at T = 65536: E = 1024, K = 64 277.6 against
// 677.2 (radix); E = 2304, K = 64 464.2 against 995.8. (Before v7.6, f32 at E = 2304 lost to radix
// above K = 22 at T = 8192.) MOEKIT_ROUTER_WIDE_MAX_K forces a lower bound; 0 turns wide rows off.
int wide_max_k() {
  static const int forced = env_int("MOEKIT_ROUTER_WIDE_MAX_K", -1);
  return forced >= 0 ? std::min(forced, kWideMaxK) : kWideMaxK;
}
// f32 softmax-post on wide rows (keys packed, made exact by two fix-ups); 0 turns them off.
int wide_f32() {
  static const int v = env_int("MOEKIT_ROUTER_WIDE_F32", 1);
  return v;
}
// Wide rows from this E on (whole-warp team rows below it; wide rows need E > 256). At E = 512,
// K = 22 (bench/NOTES.md v7.6, H200), wide rows against team rows: f32 T = 2048 0.82x, 8192 0.64x,
// 16384 0.80x, 65536 0.85x (the team rows' f32 rounds are clearing rounds below T = 16384, packed
// ones with a full fallback above); bf16 T = 2048 1.09x, 8192 0.99x, 16384 0.94x, 65536 0.94x.
// MOEKIT_ROUTER_WIDE_MIN_E forces one bound.
int wide_min_experts(bool f32, int64_t T) {
  static const int forced = env_int("MOEKIT_ROUTER_WIDE_MIN_E", -1);
  if (forced > 0) return forced;
  return f32 || T >= 8192 ? 32 * kTeamVec + 1 : kTeamMaxExperts + 1;
}
// Chunks per lane of a wide row for this call, or 0 where they do not apply.
int choose_wide_chunks(const ForwardArgs& a, moekit_dtype_t logits_dtype) {
  const bool f32 = logits_dtype == MOEKIT_DTYPE_F32 && a.mode == kSoftmaxPost && wide_f32() != 0;
  if (!(a.packed || f32) || a.G > 0 || a.E < wide_min_experts(f32, a.T) || a.E <= 32 * kTeamVec * (kWideMinChunks - 1) ||
      a.K > wide_max_k())
    return 0;
  const int chunks = (a.E + 32 * kTeamVec - 1) / (32 * kTeamVec);
  return chunks <= kWideMaxChunks ? chunks : 0;
}

// `smem_words_per_team`: shared memory one team needs besides a block team's scratch.
// `pipeline_row_bytes` > 0 asks for the pipelined forward kernel (warp teams only).
// `team_lanes` > 0 asks for the team row kernel (`team_chunks` chunks of 8 keys per lane),
// `wide_chunks` > 0 for the wide packed one (forward only, choose_team_lanes, choose_wide_chunks).
LaunchShape choose_shape(int64_t T, int smem_words_per_team, int pipeline_row_bytes, int team_lanes,
                         int team_chunks, int wide_chunks, int E, const DeviceInfo& dev) {
  LaunchShape s{};
  s.sm_count = dev.sm_count;
  if (wide_chunks > 0) {
    s.wide_chunks = wide_chunks;
    s.vpt = wide_chunks * kTeamVec;
    s.threads = 32 * kWarpsPerBlock;
    s.blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  } else if (team_lanes > 0) {
    const int rows_per_block = kWarpsPerBlock * (32 / team_lanes);
    s.team_lanes = team_lanes;
    s.team_chunks = team_chunks;
    s.vpt = s.team_chunks * kTeamVec;
    s.threads = 32 * kWarpsPerBlock;
    s.blocks = (T + rows_per_block - 1) / rows_per_block;
  } else if (E <= warp_max_experts()) {
    s.block_team = false;
    s.vpt = next_pow2((E + 31) / 32);
    s.threads = 32 * kWarpsPerBlock;
    s.blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
    s.smem_bytes = (size_t)smem_words_per_team * 4 * kWarpsPerBlock;
    if (pipeline_row_bytes > 0) {
      const int stage_bytes = (pipeline_row_bytes + 15) / 16 * 16;
      const int stages = async::choose_stages(stage_bytes, kWarpsPerBlock, /*min_blocks_per_sm=*/4, (int)s.smem_bytes,
                                              dev.max_smem_per_sm, dev.max_smem_per_block_optin);
      s.pipelined = true;
      s.smem_bytes += (size_t)stages * stage_bytes * kWarpsPerBlock;
    }
  } else {
    s.block_team = true;
    // at most kMaxBlockThreads threads, each holding 8, 16 or 32 elements
    s.vpt = E <= 8 * kMaxBlockThreads ? 8 : E <= 16 * kMaxBlockThreads ? 16 : 32;
    s.threads = ((E + s.vpt - 1) / s.vpt + 31) / 32 * 32;
    s.blocks = T;
    s.smem_bytes = (size_t)(128 + smem_words_per_team) * 4;
  }
  return s;
}

const char* score_name(int s) {
  switch (s) {
    case MOEKIT_SCORE_SOFTMAX: return "softmax";
    case MOEKIT_SCORE_SIGMOID: return "sigmoid";
    case MOEKIT_SCORE_SQRTSOFTPLUS: return "sqrtsoftplus";
  }
  return "?";
}

// Checks shared by forward and backward. `op` prefixes every message.
moekit_status_t check_common(const char* op, moekit_dtype_t dtype, const char* dtype_arg, int64_t T, int64_t E,
                             int64_t K, moekit_score_function_t score, int use_pre_softmax) {
  MOEKIT_REQUIRE(is_float_dtype(dtype), "%s: %s (%s, value %d) must be float32, float16 or bfloat16", op, dtype_arg,
                 dtype_name(dtype), (int)dtype);
  MOEKIT_REQUIRE(T >= 0, "%s: num_tokens (%lld) must be >= 0", op, (long long)T);
  MOEKIT_REQUIRE(E >= 1, "%s: num_experts (%lld) must be >= 1", op, (long long)E);
  MOEKIT_REQUIRE(E <= MOEKIT_ROUTER_MAX_EXPERTS, "%s: num_experts (%lld) must be <= %d (MOEKIT_ROUTER_MAX_EXPERTS)", op,
                 (long long)E, MOEKIT_ROUTER_MAX_EXPERTS);
  MOEKIT_REQUIRE(K >= 1 && K <= E, "%s: topk (%lld) must be in [1, num_experts (%lld)]", op, (long long)K, (long long)E);
  MOEKIT_REQUIRE(T <= INT64_MAX / E, "%s: num_tokens * num_experts (%lld * %lld) overflows int64", op, (long long)T,
                 (long long)E);
  // One block per row for long rows, one block per 4 rows otherwise: the grid's x limit.
  MOEKIT_REQUIRE(T <= (int64_t)INT_MAX, "%s: num_tokens (%lld) must be <= %d", op, (long long)T, INT_MAX);
  MOEKIT_REQUIRE(score == MOEKIT_SCORE_SOFTMAX || score == MOEKIT_SCORE_SIGMOID || score == MOEKIT_SCORE_SQRTSOFTPLUS,
                 "%s: score_function (%d) must be softmax (0), sigmoid (1) or sqrtsoftplus (2)", op, (int)score);
  MOEKIT_REQUIRE(!use_pre_softmax || score == MOEKIT_SCORE_SOFTMAX,
                 "%s: use_pre_softmax (%d) applies only to score_function softmax, got %s", op, use_pre_softmax,
                 score_name(score));
  return MOEKIT_SUCCESS;
}

// `required` is false for T == 0: an empty [0, E] buffer is commonly NULL (torch, CuPy).
moekit_status_t check_ptr(const char* op, const char* arg, const void* p, int align, bool required) {
  if (p == nullptr && !required) return MOEKIT_SUCCESS;
  MOEKIT_REQUIRE(p != nullptr, "%s: %s must not be null", op, arg);
  MOEKIT_REQUIRE(aligned(p, align), "%s: %s (%p) must be aligned to %d bytes", op, arg, p, align);
  return MOEKIT_SUCCESS;
}

moekit_status_t check_selection(const char* op, const void* map, moekit_map_format_t map_format, const void* indices,
                                moekit_dtype_t index_dtype, bool exactly_one, bool required) {
  MOEKIT_REQUIRE(map_format == MOEKIT_MAP_NONE || map_format == MOEKIT_MAP_BYTEMAP || map_format == MOEKIT_MAP_BITMAP,
                 "%s: map_format (%d) must be none (0), bytemap (1) or bitmap (2)", op, (int)map_format);
  if (indices != nullptr)
    MOEKIT_REQUIRE(is_index_dtype(index_dtype), "%s: index_dtype (%s, value %d) must be int32 or int64", op,
                   dtype_name(index_dtype), (int)index_dtype);
  if (!required) return check_ptr(op, "topk_indices", indices, dtype_size(index_dtype), false);
  if (map_format == MOEKIT_MAP_NONE) {
    MOEKIT_REQUIRE(map == nullptr, "%s: routing_map (%p) must be null when map_format is none", op, map);
  } else {
    MOEKIT_REQUIRE(map != nullptr, "%s: routing_map must not be null when map_format is %s", op,
                   map_format == MOEKIT_MAP_BYTEMAP ? "bytemap" : "bitmap");
  }
  if (exactly_one) {
    MOEKIT_REQUIRE((map != nullptr) != (indices != nullptr),
                   "%s: give exactly one of routing_map and topk_indices (routing_map %p, topk_indices %p)", op, map,
                   indices);
  } else {
    MOEKIT_REQUIRE(map != nullptr || indices != nullptr,
                   "%s: routing_map and topk_indices are both null: at least one output is needed", op);
  }
  return check_ptr(op, "topk_indices", indices, dtype_size(index_dtype), false);
}

// Whether forward_row packs the index into the keys (ForwardArgs::packed): 16-bit logits,
// softmax-post, and E below 2^16 (bf16) or 2^13 (f16), the free low bits of those keys.
bool keys_packed(int mode, int E, moekit_dtype_t dtype) {
  if (mode != kSoftmaxPost) return false;
  return dtype == MOEKIT_DTYPE_BF16 || (dtype == MOEKIT_DTYPE_F16 && E < (1 << 13));
}

// Per-launch fields that depend on the launch shape.
void shape_args(ForwardArgs& a, const LaunchShape& s, int row_bytes) {
  const int min_vpt = filter_min_keys_per_lane();
  const bool wanted = min_vpt == 1 ? a.K <= 32 : (!a.packed && a.K >= 6 && a.K <= 24);
  a.topk = !s.block_team && min_vpt > 0 && s.vpt >= min_vpt && wanted ? kTopkFiltered : kTopkDefault;
  if (!s.pipelined) return;
  a.stage_bytes = (row_bytes + 15) / 16 * 16;
  const size_t team_bytes = (size_t)a.smem_words_per_team * 4 * kWarpsPerBlock;
  a.stages = (int)((s.smem_bytes - team_bytes) / ((size_t)a.stage_bytes * kWarpsPerBlock));
}
void shape_args(BackwardArgs&, const LaunchShape&, int) {}

// The kernels' element type for a float dtype (the caller has checked it), as a value of that type.
template <typename F>
cudaError_t with_element_type(moekit_dtype_t dtype, F&& f) {
  switch (dtype) {
    case MOEKIT_DTYPE_F32: return f(float{});
    case MOEKIT_DTYPE_F16: return f(__half{});
    default: return f(__nv_bfloat16{});
  }
}
cudaError_t launch(moekit_dtype_t dtype, const ForwardArgs& a, const LaunchShape& s, cudaStream_t stream) {
  return with_element_type(dtype, [&](auto t) { return launch_forward<decltype(t)>(a, s, stream); });
}
cudaError_t launch(moekit_dtype_t dtype, const BackwardArgs& a, const LaunchShape& s, cudaStream_t stream) {
  return with_element_type(dtype, [&](auto t) { return launch_backward<decltype(t)>(a, s, stream); });
}

// Common tail: device query, launch shape, shared-memory limit, vector-path flag, launch.
template <typename Args>
moekit_status_t run(const char* op, moekit_dtype_t dtype, Args& a, int64_t T, int smem_words_per_team,
                    int pipeline_row_bytes, int team_lanes, int team_chunks, int wide_chunks, cudaStream_t stream,
                    const void* const* vec_ptrs, int n_vec_ptrs) {
  const DeviceInfo* dev = nullptr;
  moekit_status_t st = current_device(op, &dev);
  if (st != MOEKIT_SUCCESS) return st;
  smem_words_per_team = (smem_words_per_team + 3) / 4 * 4;  // keeps later regions 16-byte aligned
  LaunchShape s = choose_shape(T, smem_words_per_team, pipeline_row_bytes, team_lanes, team_chunks, wide_chunks, a.E, *dev);
  s.pdl = dev->cc_major >= 9 && pdl_enabled();
  if (s.smem_bytes > (size_t)dev->max_smem_per_block_optin)
    return fail(MOEKIT_NOT_SUPPORTED, "%s: needs %zu bytes of shared memory per block, device %d allows %d", op,
                s.smem_bytes, dev->device, dev->max_smem_per_block_optin);
  // team and wide rows move 8-element chunks
  const int vec = s.team_lanes > 0 || s.wide_chunks > 0 ? kTeamVec : vec_for(dtype, s.vpt);
  bool ok = a.E % vec == 0;
  for (int i = 0; i < n_vec_ptrs; ++i) ok = ok && (vec_ptrs[i] == nullptr || aligned(vec_ptrs[i], 16));
  a.vec = ok;
  a.smem_words_per_team = smem_words_per_team;
  shape_args(a, s, pipeline_row_bytes);
  cudaError_t err = launch(dtype, a, s, stream);
  if (err != cudaSuccess) return cuda_fail(op, "kernel launch", err);
  return MOEKIT_SUCCESS;
}

}  // namespace
}  // namespace router
}  // namespace moekit

using namespace moekit;
using namespace moekit::router;

extern "C" MOEKIT_API moekit_status_t moekit_router_topk_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts, int64_t topk,
    moekit_score_function_t score_function, int use_pre_softmax, int64_t num_groups, int64_t group_topk,
    float scaling_factor, const void* expert_bias, moekit_dtype_t bias_dtype, void* probs, void* routing_map,
    moekit_map_format_t map_format, void* topk_indices, moekit_dtype_t index_dtype, float* intermediate,
    moekit_stream_t stream) {
  static const char* op = "router_topk_forward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st = check_common(op, logits_dtype, "logits_dtype", num_tokens, num_experts, topk, score_function,
                                      use_pre_softmax);
    if (st != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(logits_dtype);
    const bool required = num_tokens > 0;
    if ((st = check_ptr(op, "logits", logits, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "probs", probs, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_selection(op, routing_map, map_format, topk_indices, index_dtype, false, required)) != MOEKIT_SUCCESS)
      return st;
    MOEKIT_REQUIRE(num_groups >= 0 && group_topk >= 0, "%s: num_groups (%lld) and group_topk (%lld) must be >= 0", op,
                   (long long)num_groups, (long long)group_topk);
    MOEKIT_REQUIRE((num_groups > 0) == (group_topk > 0),
                   "%s: num_groups (%lld) and group_topk (%lld) must both be 0 (no groups) or both > 0", op,
                   (long long)num_groups, (long long)group_topk);
    if (num_groups > 0) {
      MOEKIT_REQUIRE(num_experts % num_groups == 0, "%s: num_experts (%lld) must be divisible by num_groups (%lld)", op,
                     (long long)num_experts, (long long)num_groups);
      MOEKIT_REQUIRE(group_topk <= num_groups, "%s: group_topk (%lld) must be <= num_groups (%lld)", op,
                     (long long)group_topk, (long long)num_groups);
      MOEKIT_REQUIRE(topk % group_topk == 0, "%s: topk (%lld) must be divisible by group_topk (%lld)", op,
                     (long long)topk, (long long)group_topk);
      MOEKIT_REQUIRE(topk / group_topk <= num_experts / num_groups,
                     "%s: topk / group_topk (%lld) must be <= experts per group (%lld)", op,
                     (long long)(topk / group_topk), (long long)(num_experts / num_groups));
    }
    if (expert_bias != nullptr) {
      MOEKIT_REQUIRE(score_function != MOEKIT_SCORE_SOFTMAX,
                     "%s: expert_bias applies only to sigmoid and sqrtsoftplus scores, got softmax", op);
      MOEKIT_REQUIRE(is_float_dtype(bias_dtype), "%s: bias_dtype (%s, value %d) must be float32, float16 or bfloat16",
                     op, dtype_name(bias_dtype), (int)bias_dtype);
      if ((st = check_ptr(op, "expert_bias", expert_bias, dtype_size(bias_dtype), true)) != MOEKIT_SUCCESS) return st;
    }
    if (num_tokens == 0) return MOEKIT_SUCCESS;

    ForwardArgs a{};
    a.logits = logits;
    a.bias = expert_bias;
    a.bias_dtype = (int)bias_dtype;
    a.bias_vec = expert_bias != nullptr && aligned(expert_bias, 16) && num_experts % kTeamVec == 0;
    a.probs = probs;
    a.map = static_cast<uint8_t*>(routing_map);
    a.indices = topk_indices;
    a.intermediate = intermediate;
    a.T = num_tokens;
    a.E = (int)num_experts;
    a.K = (int)topk;
    a.G = (int)num_groups;
    a.Kg = (int)group_topk;
    a.group_size = a.G > 0 ? a.E / a.G : 0;
    a.per_group = a.G > 0 ? a.K / a.Kg : 0;
    a.mode = score_function == MOEKIT_SCORE_SOFTMAX ? (use_pre_softmax ? kSoftmaxPre : kSoftmaxPost)
             : score_function == MOEKIT_SCORE_SIGMOID ? kSigmoid
                                                      : kSqrtSoftplus;
    a.map_kind = map_format == MOEKIT_MAP_BYTEMAP ? kMapBytes : map_format == MOEKIT_MAP_BITMAP ? kMapBits : kMapNone;
    a.idx64 = index_dtype == MOEKIT_DTYPE_I64;
    a.packed = keys_packed(a.mode, a.E, logits_dtype);
    a.radix = topk >= radix_min_k(a.E, a.packed != 0);
    a.team_pack_f32 = logits_dtype == MOEKIT_DTYPE_F32 && a.mode == kSoftmaxPost && num_tokens >= team_pack_f32_min_t();
    a.scale = scaling_factor;
    // team shared memory: radix histogram (+ pick), group keys, sorted-index list
    const int words = 256 + 4 + a.G + ((a.radix && topk_indices != nullptr) ? 2 * a.K : 0);
    const void* vec_ptrs[] = {logits, probs, intermediate, a.map_kind == kMapBytes ? a.map : nullptr};
    // cp.async needs 16-byte aligned rows
    const int row_bytes = (int)num_experts * esize;
    const int chunks = choose_wide_chunks(a, logits_dtype), lanes = chunks > 0 ? 0 : choose_team_lanes(a);
    const bool own_rows = lanes > 0 || chunks > 0;  // kernels without shared memory or pipeline
    const bool pipeline = !own_rows && pipeline_enabled() && row_bytes % 16 == 0 && aligned(logits, 16);
    const int tchunks = lanes > 0 ? team_chunks(a.E, a.T, a.team_pack_f32 != 0) : 0;
    return run(op, logits_dtype, a, num_tokens, own_rows ? 0 : words, pipeline ? row_bytes : 0, lanes, tchunks, chunks,
               reinterpret_cast<cudaStream_t>(stream), vec_ptrs, 4);
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_router_topk_backward(
    const void* grad_probs, moekit_dtype_t grad_dtype, int64_t num_tokens, int64_t num_experts,
    const float* intermediate, const void* routing_map, moekit_map_format_t map_format, const void* topk_indices,
    moekit_dtype_t index_dtype, int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    float scaling_factor, void* grad_logits, moekit_stream_t stream) {
  static const char* op = "router_topk_backward";
  return guarded(op, [&]() -> moekit_status_t {
    moekit_status_t st =
        check_common(op, grad_dtype, "grad_dtype", num_tokens, num_experts, topk, score_function, use_pre_softmax);
    if (st != MOEKIT_SUCCESS) return st;
    const int esize = dtype_size(grad_dtype);
    const bool required = num_tokens > 0;
    if ((st = check_ptr(op, "grad_probs", grad_probs, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "intermediate", intermediate, 4, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "grad_logits", grad_logits, esize, required)) != MOEKIT_SUCCESS) return st;
    if ((st = check_selection(op, routing_map, map_format, topk_indices, index_dtype, true, required)) != MOEKIT_SUCCESS)
      return st;
    if (num_tokens == 0) return MOEKIT_SUCCESS;

    BackwardArgs a{};
    a.grad = grad_probs;
    a.intermediate = intermediate;
    a.map = static_cast<const uint8_t*>(routing_map);
    a.indices = topk_indices;
    a.grad_logits = grad_logits;
    a.T = num_tokens;
    a.E = (int)num_experts;
    a.K = (int)topk;
    a.mode = score_function == MOEKIT_SCORE_SOFTMAX ? (use_pre_softmax ? kSoftmaxPre : kSoftmaxPost)
             : score_function == MOEKIT_SCORE_SIGMOID ? kSigmoid
                                                      : kSqrtSoftplus;
    a.map_kind = map_format == MOEKIT_MAP_BYTEMAP ? kMapBytes : map_format == MOEKIT_MAP_BITMAP ? kMapBits : kMapNone;
    a.idx64 = index_dtype == MOEKIT_DTYPE_I64;
    a.scale = scaling_factor;
    const int words = a.map_kind == kMapNone ? (a.E + 3) / 4 : 0;  // byte mask built from the indices
    const void* vec_ptrs[] = {grad_probs, intermediate, grad_logits, a.map_kind == kMapBytes ? a.map : nullptr};
    return run(op, grad_dtype, a, num_tokens, words, 0, 0, 0, 0, reinterpret_cast<cudaStream_t>(stream), vec_ptrs, 4);
  });
}
