// moe_align's C entry points (SPEC section 5): validate, plan (plan.h), then launch (launch.cuh) or
// record the plan in plan-only mode.
#include <climits>
#include <cstdint>

#include "align/launch.cuh"
#include "common/checks.h"
#include "common/run.h"

using namespace moekit;
using namespace moekit::align;

namespace {

struct Sizes {
  int64_t pairs, max_pad, num_blocks;
};

moekit_status_t check_sizes(const char* op, int64_t T, int64_t K, int64_t E, int64_t BM, Sizes* out) {
  MOEKIT_REQUIRE(T >= 0, "%s: num_tokens (%lld) must be >= 0", op, (long long)T);
  MOEKIT_REQUIRE(K >= 1 && K <= 64, "%s: topk (%lld) must be in [1, 64]", op, (long long)K);
  MOEKIT_REQUIRE(E >= 1 && E <= kMaxExperts, "%s: num_experts (%lld) must be in [1, %d]", op, (long long)E,
                 kMaxExperts);
  MOEKIT_REQUIRE(BM == 16 || BM == 32 || BM == 64 || BM == 128 || BM == 256,
                 "%s: block_size (%lld) must be 16, 32, 64, 128 or 256", op, (long long)BM);
  MOEKIT_REQUIRE(T <= INT_MAX / K, "%s: num_tokens * topk (%lld * %lld) must fit int32 (the output ids)", op,
                 (long long)T, (long long)K);
  const int64_t pairs = T * K;
  const int64_t max_pad = pairs + std::min<int64_t>(pairs, E) * (BM - 1);
  MOEKIT_REQUIRE(max_pad <= INT_MAX, "%s: the padded size (%lld) for num_tokens %lld must fit int32", op,
                 (long long)max_pad, (long long)T);
  *out = Sizes{pairs, max_pad, (max_pad + BM - 1) / BM};
  return MOEKIT_SUCCESS;
}

}  // namespace

extern "C" MOEKIT_API moekit_status_t moekit_moe_align_buffer_sizes(int64_t num_tokens, int64_t topk,
                                                                    int64_t num_experts, int64_t block_size,
                                                                    int64_t* max_padded, int64_t* num_blocks) {
  static const char* op = "moe_align_buffer_sizes";
  return guarded(op, [&]() -> moekit_status_t {
    MOEKIT_REQUIRE(max_padded != nullptr && num_blocks != nullptr, "%s: max_padded and num_blocks must not be null",
                   op);
    Sizes s;
    moekit_status_t st = check_sizes(op, num_tokens, topk, num_experts, block_size, &s);
    if (st != MOEKIT_SUCCESS) return st;
    *max_padded = s.max_pad;
    *num_blocks = s.num_blocks;
    return MOEKIT_SUCCESS;
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_moe_align_workspace_size(int64_t num_tokens, int64_t topk,
                                                                      int64_t num_experts, size_t* bytes) {
  static const char* op = "moe_align_workspace_size";
  return guarded(op, [&]() -> moekit_status_t {
    MOEKIT_REQUIRE(bytes != nullptr, "%s: bytes must not be null", op);
    Sizes s;
    moekit_status_t st = check_sizes(op, num_tokens, topk, num_experts, 16, &s);
    if (st != MOEKIT_SUCCESS) return st;
    WorkspaceLayout layout;
    carve_workspace(layout, s.pairs, (int)num_experts);
    *bytes = layout.bytes();
    return MOEKIT_SUCCESS;
  });
}

extern "C" MOEKIT_API moekit_status_t moekit_moe_align(
    const void* topk_ids, moekit_dtype_t ids_dtype, int64_t num_tokens, int64_t topk, int64_t num_experts,
    int64_t block_size, const int32_t* expert_map, int64_t expert_map_size, int32_t* sorted_token_ids,
    int32_t* expert_ids, int32_t* num_tokens_post_padded, int32_t* expert_counts, int32_t* expert_offsets,
    void* workspace, size_t workspace_bytes, moekit_stream_t stream) {
  static const char* op = "moe_align";
  return guarded(op, [&]() -> moekit_status_t {
    Sizes s;
    moekit_status_t st = check_sizes(op, num_tokens, topk, num_experts, block_size, &s);
    if (st != MOEKIT_SUCCESS) return st;
    MOEKIT_REQUIRE(ids_dtype == MOEKIT_DTYPE_I32 || ids_dtype == MOEKIT_DTYPE_I64,
                   "%s: ids_dtype (%s, value %d) must be int32 or int64", op, dtype_name(ids_dtype), (int)ids_dtype);
    const bool any = s.pairs > 0;
    if ((st = check_ptr(op, "topk_ids", topk_ids, dtype_size(ids_dtype), any)) != MOEKIT_SUCCESS) return st;
    if (expert_map != nullptr) {
      MOEKIT_REQUIRE(expert_map_size >= 1 && expert_map_size <= INT_MAX,
                     "%s: expert_map_size (%lld) must be in [1, %d] when expert_map is given", op,
                     (long long)expert_map_size, INT_MAX);
      if ((st = check_ptr(op, "expert_map", expert_map, 4, true)) != MOEKIT_SUCCESS) return st;
    }
    if ((st = check_ptr(op, "sorted_token_ids", sorted_token_ids, 4, any)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "expert_ids", expert_ids, 4, any)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "num_tokens_post_padded", num_tokens_post_padded, 4, true)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "expert_counts", expert_counts, 4, true)) != MOEKIT_SUCCESS) return st;
    if ((st = check_ptr(op, "expert_offsets", expert_offsets, 4, true)) != MOEKIT_SUCCESS) return st;
    WorkspaceLayout count;
    carve_workspace(count, s.pairs, (int)num_experts);
    if ((st = check_workspace(op, workspace, workspace_bytes, count.bytes())) != MOEKIT_SUCCESS) return st;
    WorkspaceLayout carve(workspace);
    const Workspace ws = carve_workspace(carve, s.pairs, (int)num_experts);

    Params a{};
    a.ids = topk_ids;
    a.ids_i64 = ids_dtype == MOEKIT_DTYPE_I64;
    a.pairs = s.pairs;
    a.E = (int)num_experts;
    a.BM = (int)block_size;
    a.expert_map = expert_map;
    a.map_size = expert_map_size;
    a.sorted = sorted_token_ids;
    a.expert_ids = expert_ids;
    a.post_padded = num_tokens_post_padded;
    a.counts = expert_counts;
    a.offsets = expert_offsets;
    a.max_pad = s.max_pad;
    a.num_blocks = s.num_blocks;
    a.block_hist = ws.block_hist;
    a.region_start = ws.region_start;
    a.chunks = (int)chunks_of(s.pairs);
    Problem problem{s.pairs, (int)num_experts};
    const cudaStream_t stream_ = reinterpret_cast<cudaStream_t>(stream);
    // T == 0 launches too: the counts, offsets and num_tokens_post_padded (all 0) are still written
    return run_plan(op, problem, &plan_align, align_tuning(), [&](const Plan& plan) {
      return launch_align(plan, a, stream_);
    });
  });
}
