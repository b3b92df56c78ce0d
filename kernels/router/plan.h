// The router's plans: pure host functions from (problem, device properties, tuning) to the plan
// struct that names the kernel path and its launch shape. The measured cut-offs are the tuning table
// below (RouterTuning's defaults); bench/NOTES.md holds each measurement. The C entry points
// (router.cu, aux_scores.cu) validate, plan, then run the plan through the one launch switch (launch.cuh).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/api.h"
#include "common/hooks.h"
#include "common/launch.h"
#include "router/params.h"

namespace moekit {
namespace router {

// A cut-off that depends on E: the first row with E <= max_experts applies (the last row: any E).
// `packed`: rows whose keys are index-packed (16-bit softmax-post: rounds are cheaper); `other`: the rest.
struct ByExperts {
  int max_experts, packed, other;
};

struct RouterTuning {
  // Radix select from this K on, rounds below: the first K at which radix won (softmax-post forward,
  // T = 65536, H100; bench/NOTES.md v3, router_crossover.py).
  ByExperts radix_min_k[5] = {{128, 32, 22}, {256, 16, 12}, {512, 22, 16}, {1024, 32, 32}, {MOEKIT_ROUTER_MAX_EXPERTS, 4, 4}};
  // Filtered top-k on warp rows whose lanes hold at least this many keys, not packed, 6 <= K <= 24:
  // it won only there (f32, E = 1024: 0.84-0.99x; v2). 0: off; 1: wherever K <= 32.
  int filter_min_keys_per_lane = 32;
  // Rows up to this E get a warp each, longer ones a block (at most 1024; v1).
  int warp_max_experts = 1024;
  // Team rows up to this K (E <= 512; above it radix or filtered rows win; v3, v4) ...
  ByExperts team_max_k[3] = {{128, 48, 18}, {256, 40, 10}, {512, 48, 10}};
  // ... and for f32 softmax-post rows with packed rounds at 256 < E <= 512 (e512k22; v7.1).
  int team_max_k_f32_packed = 22;
  // Team rows for softmax-pre, sigmoid and sqrtsoftplus too (e256k8g8: 0.65x of whole-warp rows; v4).
  int team_any_score = 1;
  // One chunk of 8 keys per lane (twice the lanes) where T is at most this, at 128 < E <= 256, and
  // for f32 softmax-post packed rows at 32 < E <= 128: more warps where the grid is short (v6, v7.7).
  int64_t team_one_chunk_max_t = 16384;
  // 0: the rule above; 1 or 2: that many chunks per lane at 32 < E <= 256 (tests and benchmarks).
  int team_chunks = 0;
  // f32 softmax-post team rows: packed rounds with a check and an exact fallback from this T on,
  // clearing rounds below (e128k8: 0.94x at T = 8192, 1.08x at 4096; v7.7).
  int64_t team_pack_f32_min_t = 8192;
  // Wide rows (softmax-post, no groups, E up to 2560) up to this K (at most kWideMaxK; they win at
  // every K measured: v7.6).
  int wide_max_k = kWideMaxK;
  // f32 logits on wide rows too (packed with a check; v7.6). 0: 16-bit logits only.
  int wide_f32 = 1;
  // Wide rows from this E on (they need E > 256) for f32 logits, and for 16-bit logits from
  // wide_16bit_min_t tokens on; below that T, 16-bit rows take team rows up to E = 512 (v7.6).
  int wide_min_experts = 257;
  int wide_min_experts_16bit = 513;
  int64_t wide_16bit_min_t = 8192;
  // moekit_router_aux_forward: one kernel for both passes where the two plans share a row layout
  // (0: always two launches; benchmarks).
  int pair_fused = 1;
};

// The tuning the plans read: the table above, unless a test or benchmark overrode knobs in-process
// (hooks.h). Each knob replaces its rule with one value, as its name says.
inline RouterTuning router_tuning() {
  RouterTuning t;
  const TuningOverrides o = tuning_overrides();
  if (!o.any()) return t;
  int64_t v;
  if (o.get("router.radix_min_k", &v) && v > 0)
    for (ByExperts& r : t.radix_min_k) r.packed = r.other = (int)v;
  if (o.get("router.filter_min_keys_per_lane", &v)) t.filter_min_keys_per_lane = (int)v;
  if (o.get("router.warp_max_experts", &v)) t.warp_max_experts = (int)std::min<int64_t>(std::max<int64_t>(v, 32), 1024);
  if (o.get("router.team_max_k", &v) && v >= 0) {
    for (ByExperts& r : t.team_max_k) r.packed = r.other = (int)v;
    t.team_max_k_f32_packed = (int)v;
  }
  if (o.get("router.team_any_score", &v)) t.team_any_score = (int)v;
  if (o.get("router.team_chunks", &v) && (v == 1 || v == 2)) t.team_chunks = (int)v;
  if (o.get("router.team_pack_f32_min_t", &v)) t.team_pack_f32_min_t = v;
  if (o.get("router.wide_max_k", &v) && v >= 0) t.wide_max_k = (int)std::min<int64_t>(v, kWideMaxK);
  if (o.get("router.wide_f32", &v)) t.wide_f32 = (int)v;
  if (o.get("router.wide_min_experts", &v) && v > 0) t.wide_min_experts = t.wide_min_experts_16bit = (int)v;
  if (o.get("router.pair_fused", &v)) t.pair_fused = (int)v;
  return t;
}

inline int by_experts(const ByExperts* rows, int n, int E, bool packed) {
  for (int i = 0; i < n - 1; ++i)
    if (E <= rows[i].max_experts) return packed ? rows[i].packed : rows[i].other;
  return packed ? rows[n - 1].packed : rows[n - 1].other;
}

// ---- forward ------------------------------------------------------------------------------------

// The validated call, as the plan sees it.
struct ForwardProblem {
  moekit_dtype_t dtype;
  int64_t T;
  int E, K, G, Kg;
  int mode;      // ScoreMode
  int map_kind;  // MapKind
  bool indices;  // topk_indices requested
  bool aligned;  // logits, probs, intermediate (and a bytemap) 16-byte aligned
  bool aux;      // the aux-loss scores (params.h, kTeamAux): no groups, bias or indices
};

enum class ForwardPath : int { kTeamRows, kWideRows, kWarpRows, kBlockRows };

struct ForwardPlan {
  ForwardPath path;
  int kernel;  // team rows: a ScoreMode or TeamKernel
  int lanes;   // team rows: lanes per row
  int chunks;  // team and wide rows: chunks of kTeamVec keys per lane
  bool full;   // team rows: E == lanes * chunks * 8 with vector access (no bounds tests)
  int vpt;     // warp and block rows: elements per thread
  bool radix;  // warp and block rows: radix select, else rounds
  bool filtered;  // warp rows: filtered top-k first
  bool packed;    // keys carry the index in their low bits
  bool vec;       // whole-chunk vector access
  int smem_words_per_team;
  LaunchShape shape;
};

inline int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Softmax-post keys of 16-bit logits have 16 (bf16) or 13 (f16) free low bits: room for the index
// where E fits in them.
inline bool keys_packed(int mode, int E, moekit_dtype_t dtype) {
  if (mode != kSoftmaxPost) return false;
  return dtype == MOEKIT_DTYPE_BF16 || (dtype == MOEKIT_DTYPE_F16 && E < (1 << 13));
}

inline int team_chunks(const RouterTuning& t, int E, int64_t T, bool pack_f32) {
  if (E <= 32 || E > 32 * kTeamVec) return 2;
  if (t.team_chunks == 1 || t.team_chunks == 2) return t.team_chunks;
  return (E > 128 || pack_f32) && T <= t.team_one_chunk_max_t ? 1 : 2;
}

// Lanes per row of team rows for this problem, or 0 where they do not apply. Groups must be whole
// 8-element chunks of a power-of-2 number of lanes within the team, with K / Kg <= 2.
inline int team_lanes(const RouterTuning& t, const ForwardProblem& p, bool packed, bool pack_f32) {
  const int max_k = !packed && pack_f32 && p.E > 256 ? t.team_max_k_f32_packed : by_experts(t.team_max_k, 3, p.E, packed);
  if (p.E > kTeamMaxExperts || p.K > max_k) return 0;
  if (p.mode != kSoftmaxPost && !t.team_any_score) return 0;
  const int keys = team_chunks(t, p.E, p.T, pack_f32) * kTeamVec;
  const int lanes = next_pow2((p.E + keys - 1) / keys);
  if (p.G > 0) {
    const int gsize = p.E / p.G, lanes_per_group = gsize / kTeamVec;
    if (gsize % kTeamVec != 0 || p.K / p.Kg > 2 || lanes_per_group > lanes || (lanes_per_group & (lanes_per_group - 1)) != 0)
      return 0;
  }
  return lanes;
}

// Chunks per lane of wide rows for this problem, or 0 where they do not apply.
inline int wide_chunks(const RouterTuning& t, const ForwardProblem& p, bool packed) {
  const bool f32 = p.dtype == MOEKIT_DTYPE_F32 && p.mode == kSoftmaxPost && t.wide_f32 != 0;
  const int min_e = f32 || p.T >= t.wide_16bit_min_t ? t.wide_min_experts : t.wide_min_experts_16bit;
  if (!(packed || f32) || p.G > 0 || p.E < min_e || p.E <= 32 * kTeamVec * (kWideMinChunks - 1) || p.K > t.wide_max_k)
    return 0;
  const int chunks = (p.E + 32 * kTeamVec - 1) / (32 * kTeamVec);
  return chunks <= kWideMaxChunks ? chunks : 0;
}

constexpr int kWarpsPerBlock = 4;

// Warp rows (E <= warp_max_experts) or block rows: elements per thread, threads, blocks, and the
// shared memory of `words` per team (block teams: plus their 128-word reduction scratch).
inline void general_rows(ForwardPath* path, int* vpt, LaunchShape* s, int64_t T, int E, int words,
                         const RouterTuning& t) {
  if (E <= t.warp_max_experts) {
    *path = ForwardPath::kWarpRows;
    *vpt = next_pow2((E + 31) / 32);
    s->threads = 32 * kWarpsPerBlock;
    s->blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
    s->smem_bytes = (size_t)words * 4 * kWarpsPerBlock;
  } else {
    *path = ForwardPath::kBlockRows;
    // at most kMaxBlockThreads threads, each holding 8, 16 or 32 elements
    *vpt = E <= 8 * kMaxBlockThreads ? 8 : E <= 16 * kMaxBlockThreads ? 16 : 32;
    s->threads = ((E + *vpt - 1) / *vpt + 31) / 32 * 32;
    s->blocks = T;
    s->smem_bytes = (size_t)(128 + words) * 4;
  }
}

inline ForwardPlan plan_forward(const ForwardProblem& p, const DeviceInfo& dev, const RouterTuning& t) {
  ForwardPlan plan{};
  plan.packed = keys_packed(p.mode, p.E, p.dtype);
  plan.radix = p.K >= by_experts(t.radix_min_k, 5, p.E, plan.packed);
  const bool pack_f32 = p.dtype == MOEKIT_DTYPE_F32 && p.mode == kSoftmaxPost && p.T >= t.team_pack_f32_min_t;
  plan.shape.pdl = dev.cc_major >= 9;
  int vec_elems = kTeamVec;  // team and wide rows move 8-element chunks
  if ((plan.chunks = wide_chunks(t, p, plan.packed)) > 0) {
    plan.path = ForwardPath::kWideRows;
    plan.shape.threads = 32 * kWarpsPerBlock;
    plan.shape.blocks = (p.T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  } else if ((plan.lanes = team_lanes(t, p, plan.packed, pack_f32)) > 0) {
    plan.path = ForwardPath::kTeamRows;
    plan.chunks = team_chunks(t, p.E, p.T, pack_f32);
    // softmax-post: 16-bit logits always have packed keys at E <= 512 (keys_packed)
    plan.kernel = p.aux                    ? kTeamAux + p.mode
                  : p.mode != kSoftmaxPost ? p.mode
                  : plan.packed          ? (int)kTeamSoftmaxPostPacked
                  : pack_f32             ? (int)kTeamSoftmaxPostF32Packed
                                         : (int)kSoftmaxPost;
    const int rows_per_block = kWarpsPerBlock * (32 / plan.lanes);
    plan.shape.threads = 32 * kWarpsPerBlock;
    plan.shape.blocks = (p.T + rows_per_block - 1) / rows_per_block;
  } else {
    // team shared memory: radix histogram (+ pick), group keys, sorted-index list; 16-byte multiples
    const int words = 256 + 4 + p.G + ((plan.radix && p.indices) ? 2 * p.K : 0);
    plan.smem_words_per_team = (words + 3) / 4 * 4;
    general_rows(&plan.path, &plan.vpt, &plan.shape, p.T, p.E, plan.smem_words_per_team, t);
    vec_elems = vec_width(dtype_size(p.dtype), plan.vpt);
    const int min_vpt = t.filter_min_keys_per_lane;
    const bool wanted = min_vpt == 1 ? p.K <= 32 : (!plan.packed && p.K >= 6 && p.K <= 24);
    plan.filtered = plan.path == ForwardPath::kWarpRows && min_vpt > 0 && plan.vpt >= min_vpt && wanted;
  }
  plan.vec = p.E % vec_elems == 0 && p.aligned;
  plan.full = plan.path == ForwardPath::kTeamRows && plan.lanes >= 8 && plan.vec &&
              p.E == plan.lanes * plan.chunks * kTeamVec;
  return plan;
}

inline void describe(const ForwardPlan& plan, PlanText& out) {
  static const char* const kPaths[] = {"team_rows", "wide_rows", "warp_rows", "block_rows"};
  static const char* const kKernels[] = {"softmax_pre", "softmax_post", "sigmoid", "sqrtsoftplus", "softmax_post_packed",
                                         "softmax_post_f32_packed"};
  out.add("path=%s", kPaths[(int)plan.path]);
  if (plan.path == ForwardPath::kTeamRows)
    out.add("kernel=%s%s lanes=%d chunks=%d full=%d", plan.kernel >= kTeamAux ? "aux_" : "",
            kKernels[plan.kernel % kTeamAux], plan.lanes, plan.chunks, (int)plan.full);
  else if (plan.path == ForwardPath::kWideRows)
    out.add("chunks=%d", plan.chunks);
  else
    out.add("vpt=%d topk=%s", plan.vpt, plan.filtered ? "filtered" : plan.radix ? "radix" : "rounds");
  out.add("packed=%d vec=%d smem_words=%d threads=%d blocks=%lld smem_bytes=%zu pdl=%d", (int)plan.packed,
          (int)plan.vec, plan.smem_words_per_team, plan.shape.threads, (long long)plan.shape.blocks,
          plan.shape.smem_bytes, (int)plan.shape.pdl);
}

// ---- router + aux-loss scores (moekit_router_aux_forward) ------------------------------------------

struct PairForwardProblem {
  ForwardProblem router, aux;  // the same logits, T, E and K
};

struct PairForwardPlan {
  ForwardPlan router, aux;
  bool fused;         // one kernel runs both passes on the same rows (launch.cuh)
  LaunchShape shape;  // the fused kernel's, else the router's (the aux launch keeps its own)
};

// Fused where both plans use team rows (the aux pass then takes the router's lanes and chunks: an
// aux team kernel exists for each), or both warp rows, or both block rows (same elements per
// thread; the shared memory slice sized for the larger). Otherwise (wide rows, or paths that differ)
// two launches, still one call.
inline PairForwardPlan plan_pair_forward(const PairForwardProblem& p, const DeviceInfo& dev, const RouterTuning& t) {
  PairForwardPlan plan{};
  plan.router = plan_forward(p.router, dev, t);
  plan.aux = plan_forward(p.aux, dev, t);
  plan.shape = plan.router.shape;
  const ForwardPlan& r = plan.router;
  ForwardPlan& x = plan.aux;
  if (!t.pair_fused || r.path != x.path || r.path == ForwardPath::kWideRows) return plan;
  if (r.path == ForwardPath::kTeamRows) {
    if (r.full && !x.vec) return plan;  // the aux pass runs FULL too: its buffers must allow vectors
    x.lanes = r.lanes;
    x.chunks = r.chunks;
    x.full = r.full;
  } else {
    const int words = std::max(r.smem_words_per_team, x.smem_words_per_team);
    ForwardPath path;
    int vpt;
    general_rows(&path, &vpt, &plan.shape, p.router.T, p.router.E, words, t);
    plan.shape.pdl = r.shape.pdl;
    plan.router.smem_words_per_team = x.smem_words_per_team = words;
  }
  plan.fused = true;
  return plan;
}

inline void describe(const PairForwardPlan& plan, PlanText& out) {
  static const char* const kPaths[] = {"team_rows", "wide_rows", "warp_rows", "block_rows"};
  out.add("fused=%d aux_path=%s aux_lanes=%d aux_chunks=%d aux_vec=%d", (int)plan.fused, kPaths[(int)plan.aux.path],
          plan.aux.lanes, plan.aux.chunks, (int)plan.aux.vec);
  describe(plan.router, out);
  if (plan.fused) out.add("pair_blocks=%lld pair_smem_bytes=%zu", (long long)plan.shape.blocks, plan.shape.smem_bytes);
}

// ---- backward -----------------------------------------------------------------------------------

struct BackwardProblem {
  moekit_dtype_t dtype;  // of grad_logits (and of grad_probs but for the aux scores' f32)
  int64_t T;
  int E, K;
  int map_kind;  // MapKind; kMapNone: the selection comes as indices
  bool aligned;  // grad_probs, intermediate, grad_logits (and a bytemap) 16-byte aligned
};

struct BackwardPlan {
  ForwardPath path;  // kWarpRows or kBlockRows
  int vpt;
  bool vec;
  int smem_words_per_team;
  LaunchShape shape;
};

inline BackwardPlan plan_backward(const BackwardProblem& p, const DeviceInfo& dev, const RouterTuning& t) {
  BackwardPlan plan{};
  const int words = p.map_kind == kMapNone ? (p.E + 3) / 4 : 0;  // byte mask built from the indices
  plan.smem_words_per_team = (words + 3) / 4 * 4;
  general_rows(&plan.path, &plan.vpt, &plan.shape, p.T, p.E, plan.smem_words_per_team, t);
  plan.shape.pdl = dev.cc_major >= 9;
  plan.vec = p.E % vec_width(dtype_size(p.dtype), plan.vpt) == 0 && p.aligned;
  return plan;
}

inline void describe(const BackwardPlan& plan, PlanText& out) {
  out.add("path=%s vpt=%d vec=%d smem_words=%d threads=%d blocks=%lld smem_bytes=%zu pdl=%d",
          plan.path == ForwardPath::kWarpRows ? "warp_rows" : "block_rows", plan.vpt, (int)plan.vec,
          plan.smem_words_per_team, plan.shape.threads, (long long)plan.shape.blocks, plan.shape.smem_bytes,
          (int)plan.shape.pdl);
}

// The one launch switch (launch.cuh), instantiated per logits dtype (router_f32.cu, ...).
template <typename T>
cudaError_t launch_forward(const ForwardPlan& plan, const ForwardParams& a, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward(const BackwardPlan& plan, const BackwardParams& a, cudaStream_t stream);
// The same switch for the aux-loss scores (aux_scores_f32.cu, ...).
template <typename T>
cudaError_t launch_aux_forward(const ForwardPlan& plan, const ForwardParams& a, cudaStream_t stream);
template <typename T>
cudaError_t launch_aux_backward(const BackwardPlan& plan, const BackwardParams& a, cudaStream_t stream);
// The router and the aux-loss scores in one call (router_aux_f32.cu, ...): `a` the router's
// parameters, `b` the aux scores'.
template <typename T>
cudaError_t launch_pair_forward(const PairForwardPlan& plan, const ForwardParams& a, const ForwardParams& b,
                                cudaStream_t stream);
template <typename T, int KIND>  // the fused team-rows kernels of one router kind (launch_pair_team.cuh)
cudaError_t launch_pair_team(const PairForwardPlan& plan, const ForwardParams& a, const ForwardParams& b,
                             cudaStream_t stream);
template <typename T>
cudaError_t launch_pair_backward(const BackwardPlan& plan, const BackwardParams& a, const BackwardParams& b,
                                 cudaStream_t stream);

}  // namespace router
}  // namespace moekit
