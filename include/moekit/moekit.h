/*
 * moekit: CUDA kernels around the grouped GEMMs of a Mixture-of-Experts layer.
 *
 * The whole C ABI. C99-compatible; include it from C or C++. Every entry point:
 *   - returns a moekit_status_t (never throws, never exits);
 *   - takes raw device pointers, a moekit_dtype_t per tensor, int64_t sizes, scalars,
 *     and the CUDA stream last (NULL = the legacy default stream);
 *   - validates every argument on the host before any CUDA call; on failure it launches
 *     nothing and moekit_last_error() names the op, the argument and the value;
 *   - never allocates device memory, never synchronizes, never changes the current device: an op
 *     that needs scratch memory takes a caller workspace (void* workspace, size_t workspace_bytes,
 *     256-byte aligned) whose size moekit_<op>_workspace_size(...) returns.
 * Tensors are row-major with a contiguous last dimension. Semantics: docs/spec.md.
 */
#ifndef MOEKIT_MOEKIT_H_
#define MOEKIT_MOEKIT_H_

#include <stddef.h>
#include <stdint.h>

#define MOEKIT_VERSION_MAJOR 0
#define MOEKIT_VERSION_MINOR 1
#define MOEKIT_VERSION_PATCH 0
#define MOEKIT_VERSION (MOEKIT_VERSION_MAJOR * 10000 + MOEKIT_VERSION_MINOR * 100 + MOEKIT_VERSION_PATCH)
/* Bumped on any incompatible change of a signature or an enum value; the SONAME carries it. */
#define MOEKIT_ABI_VERSION 1

/* Largest num_experts the router ops accept. */
#define MOEKIT_ROUTER_MAX_EXPERTS 16384

#if defined(_WIN32)
#define MOEKIT_API __declspec(dllexport)
#else
#define MOEKIT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t / CUstream, declared here so that the header needs no CUDA headers. */
typedef struct CUstream_st* moekit_stream_t;

/* Values are explicit and only ever appended. */
typedef enum moekit_status_t {
  MOEKIT_SUCCESS = 0,
  MOEKIT_INVALID_ARGUMENT = 1,
  MOEKIT_NOT_SUPPORTED = 2,
  MOEKIT_CUDA_ERROR = 3,
  MOEKIT_INTERNAL = 4
} moekit_status_t;

typedef enum moekit_dtype_t {
  MOEKIT_DTYPE_F32 = 0,
  MOEKIT_DTYPE_F16 = 1,
  MOEKIT_DTYPE_BF16 = 2,
  MOEKIT_DTYPE_I32 = 3,
  MOEKIT_DTYPE_I64 = 4,
  MOEKIT_DTYPE_U8 = 5,
  MOEKIT_DTYPE_F8_E4M3 = 6
} moekit_dtype_t;

typedef enum moekit_score_function_t {
  MOEKIT_SCORE_SOFTMAX = 0,
  MOEKIT_SCORE_SIGMOID = 1,
  MOEKIT_SCORE_SQRTSOFTPLUS = 2
} moekit_score_function_t;

/* How the set of selected experts of each row is stored. */
typedef enum moekit_map_format_t {
  MOEKIT_MAP_NONE = 0,    /* no routing map */
  MOEKIT_MAP_BYTEMAP = 1, /* u8 [T, E], 1 = selected, 0 = not */
  MOEKIT_MAP_BITMAP = 2   /* u8 [T, ceil(E/8)], bit e%8 (LSB first) of byte e/8; padding bits 0 */
} moekit_map_format_t;

/* How the per-group scales of the FP8 quantization are laid out (SPEC.md section 6). */
typedef enum moekit_scale_format_t {
  MOEKIT_SCALE_ROW_F32 = 0,           /* f32 [T, G] row-major */
  MOEKIT_SCALE_COL_F32_TMA = 1,       /* f32 [T, G], strides (1, Ta): stored [G, Ta], Ta = T rounded up to 4 */
  MOEKIT_SCALE_COL_F32_TMA_UE8M0 = 2, /* the same, scales rounded up to powers of two */
  MOEKIT_SCALE_PACKED_UE8M0 = 3       /* i32 [T, ceil(G/4)], strides (1, Ta): 4 exponent bytes per word */
} moekit_scale_format_t;

/* ---- library ------------------------------------------------------------------------------ */

MOEKIT_API int moekit_version(void);     /* MOEKIT_VERSION the library was built as */
MOEKIT_API int moekit_abi_version(void); /* MOEKIT_ABI_VERSION the library was built as */
MOEKIT_API const char* moekit_status_string(moekit_status_t status);
/* "cuda_archs=90a cuda_toolkit=13.0.48": what the library was compiled for (moekit info). */
MOEKIT_API const char* moekit_build_info(void);
/* The calling thread's message for its last failed call ("" if none). Valid until its next call. */
MOEKIT_API const char* moekit_last_error(void);

/* ---- router (training): top-k with score function. SPEC.md section 1. ----------------------
 *
 * Forward. logits [T, E] (f32, f16, bf16). Outputs:
 *   probs        [T, E], logits dtype: the scaled weight at selected experts, 0 elsewhere;
 *   routing_map  per map_format (MOEKIT_MAP_NONE: routing_map must be NULL);
 *   topk_indices [T, K], index_dtype i32 or i64, the selected experts in descending key order
 *                (ties: lower expert first); NULL for none. A map, indices, or both must be given;
 *   intermediate [T, E] f32: what the backward needs.
 * num_groups = group_topk = 0 disables group-limited routing. expert_bias [E] (f32, f16, bf16) or
 * NULL; only with sigmoid / sqrtsoftplus. use_pre_softmax only with softmax.
 * E <= MOEKIT_ROUTER_MAX_EXPERTS; T * E < 2^63.
 */
MOEKIT_API moekit_status_t moekit_router_topk_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts,
    int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    int64_t num_groups, int64_t group_topk, float scaling_factor,
    const void* expert_bias, moekit_dtype_t bias_dtype,
    void* probs, void* routing_map, moekit_map_format_t map_format,
    void* topk_indices, moekit_dtype_t index_dtype,
    float* intermediate, moekit_stream_t stream);

/* Backward. grad_probs [T, E] and grad_logits [T, E] in grad_dtype (f32, f16, bf16);
 * intermediate [T, E] f32 from the forward; the selection as a routing map (map_format BYTEMAP or
 * BITMAP, topk_indices NULL) or as topk_indices [T, K] (map_format NONE, routing_map NULL).
 * Every element of grad_logits is written; grad at unselected positions is ignored.
 */
MOEKIT_API moekit_status_t moekit_router_topk_backward(
    const void* grad_probs, moekit_dtype_t grad_dtype, int64_t num_tokens, int64_t num_experts,
    const float* intermediate,
    const void* routing_map, moekit_map_format_t map_format,
    const void* topk_indices, moekit_dtype_t index_dtype,
    int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    float scaling_factor, void* grad_logits, moekit_stream_t stream);

/* ---- aux-loss scores: SPEC.md section 2. ----------------------------------------------------
 *
 * Forward. logits [T, E] (f32, f16, bf16). Outputs: scores [T, E] f32 (softmax over all E; sigmoid
 * or sqrtsoftplus normalized over all E, at every K); routing_map (BYTEMAP or BITMAP) of the top-K
 * scores; intermediate [T, E] f32 (what the backward needs). No groups, bias or scaling.
 * Same limits as the router (E <= MOEKIT_ROUTER_MAX_EXPERTS).
 */
MOEKIT_API moekit_status_t moekit_aux_scores_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts,
    int64_t topk, moekit_score_function_t score_function,
    float* scores, void* routing_map, moekit_map_format_t map_format,
    float* intermediate, moekit_stream_t stream);

/* Backward. grad_scores [T, E] f32 and the forward's intermediate [T, E] f32 -> grad_logits [T, E]
 * in grad_logits_dtype (f32, f16, bf16): the score function and the full-row normalization
 * differentiated, no mask, no scaling. Every element is written.
 */
MOEKIT_API moekit_status_t moekit_aux_scores_backward(
    const float* grad_scores, const float* intermediate, int64_t num_tokens, int64_t num_experts,
    moekit_score_function_t score_function, void* grad_logits, moekit_dtype_t grad_logits_dtype,
    moekit_stream_t stream);

/* ---- the router and the aux-loss scores in one call (sections 1 and 2 on the same logits). -------
 *
 * Forward: exactly moekit_router_topk_forward's outputs (probs, routing_map and/or topk_indices,
 * intermediate) and moekit_aux_scores_forward's for the same logits, topk and score_function
 * (aux_scores, aux_routing_map in aux_map_format, aux_intermediate), bit for bit, from one read of
 * the logits where the two plans share a row layout (one launch; otherwise two). Outputs must not
 * overlap.
 */
MOEKIT_API moekit_status_t moekit_router_aux_forward(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts,
    int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    int64_t num_groups, int64_t group_topk, float scaling_factor,
    const void* expert_bias, moekit_dtype_t bias_dtype,
    void* probs, void* routing_map, moekit_map_format_t map_format,
    void* topk_indices, moekit_dtype_t index_dtype, float* intermediate,
    float* aux_scores, void* aux_routing_map, moekit_map_format_t aux_map_format,
    float* aux_intermediate, moekit_stream_t stream);

/* Backward: grad_logits = the router backward of grad_probs + the aux-scores backward of
 * grad_aux_scores [T, E] f32, summed in fp32 and rounded once to grad_dtype (two separate calls and
 * an add round each term first). One launch; the arguments are the two backwards'.
 */
MOEKIT_API moekit_status_t moekit_router_aux_backward(
    const void* grad_probs, moekit_dtype_t grad_dtype, int64_t num_tokens, int64_t num_experts,
    const float* intermediate,
    const void* routing_map, moekit_map_format_t map_format,
    const void* topk_indices, moekit_dtype_t index_dtype,
    int64_t topk, moekit_score_function_t score_function, int use_pre_softmax,
    float scaling_factor, const float* grad_aux_scores, const float* aux_intermediate,
    void* grad_logits, moekit_stream_t stream);

/* ---- aux loss: SPEC.md section 3. ------------------------------------------------------------
 *
 * Forward. probs [R, C] (f32, f16, bf16), C a multiple of num_experts (the sequence-level loss
 * stacks sequences along C); tokens_per_expert [C] (i32, i64, f32, bf16). total_num_tokens N: the
 * host value (> 0), or, when total_num_tokens_device is not NULL, the int64 it points to, read on the
 * GPU (graph replay with varying N; a device N <= 0 gives a NaN loss). Outputs: loss, a scalar in the
 * probs dtype, C_coef * sum(probs[r, c] * tokens_per_expert[c]), and const_buf f32[1] = C_coef =
 * E * coeff / (K * N * N), which the backward reads. One launch; the sum has a fixed order (no float
 * atomics): the same bits on every run, whatever the grid. R == 0 gives loss 0.
 * Workspace: moekit_aux_loss_workspace_size bytes whose first 4 bytes (a ticket counter) must be
 * zero before the first call (cudaMemsetAsync once); every call leaves them zero, so a workspace is
 * reused as is by later calls on the same stream (and by graph replays). Calls that may run
 * concurrently need workspaces of their own.
 */
MOEKIT_API moekit_status_t moekit_aux_loss_workspace_size(int64_t num_rows, int64_t num_cols, size_t* bytes);
MOEKIT_API moekit_status_t moekit_aux_loss_forward(
    const void* probs, moekit_dtype_t probs_dtype, int64_t num_rows, int64_t num_cols,
    const void* tokens_per_expert, moekit_dtype_t tokens_dtype,
    int64_t total_num_tokens, const int64_t* total_num_tokens_device,
    int64_t num_experts, int64_t topk, float coeff,
    void* loss, float* const_buf, void* workspace, size_t workspace_bytes, moekit_stream_t stream);

/* Backward. grad_probs [R, C] = const_buf[0] * tokens_per_expert[c] * grad_loss, with grad_loss a
 * device scalar and grad_probs in grad_dtype (f32, f16, bf16).
 */
MOEKIT_API moekit_status_t moekit_aux_loss_backward(
    const float* const_buf, const void* tokens_per_expert, moekit_dtype_t tokens_dtype,
    int64_t num_rows, int64_t num_cols, const void* grad_loss, moekit_dtype_t grad_dtype,
    void* grad_probs, moekit_stream_t stream);

/* ---- FP8 quantization: SPEC.md section 6. --------------------------------------------------
 *
 * silu_mul_quant_fp8: x [T, 2H] (f32, f16, bf16), [gate | up] when gate_first (else [up | gate]);
 * y = silu(gate) * up in fp32 (round_act: silu rounded to the x dtype, the product too: the unfused
 * pipeline's bits); per group of group_size (32, 64, 128; H % group_size == 0) consecutive columns
 * of a row, scale = max(amax |y|, 1e-10) / 448 (UE8M0 formats: rounded up to a power of two by its
 * bits) and q [T, H] e4m3fn = y / scale, saturated, round to nearest even. scales per scale_format
 * (moekit_scale_format_t), every padding element written 0. x and q 16-byte aligned, scales 4-byte;
 * x, q and scales must not overlap. Any T; T == 0 launches nothing.
 */
MOEKIT_API moekit_status_t moekit_silu_mul_quant_fp8(
    const void* x, moekit_dtype_t x_dtype, int64_t num_tokens, int64_t hidden,
    int64_t group_size, moekit_scale_format_t scale_format, int gate_first, int round_act,
    void* q, void* scales, moekit_stream_t stream);

/* The masked layout: x [E, M, 2H], q [E, M, H]; counts [E] (i32 or i64, on the device, clamped to
 * [0, M]) valid rows per expert; E <= 4096. Rows past counts[e] are not read and their q is not
 * written; their scales are written 0. scales: f32 [E, M, G] (ROW_F32), or per expert the column
 * layouts above with M in place of T: storage [E, G, Ta_M] (packed: [E, ceil(G/4), Ta_M]),
 * Ta_M = M rounded up to 4.
 */
MOEKIT_API moekit_status_t moekit_silu_mul_quant_fp8_masked(
    const void* x, moekit_dtype_t x_dtype, int64_t num_experts, int64_t max_tokens, int64_t hidden,
    const void* counts, moekit_dtype_t counts_dtype,
    int64_t group_size, moekit_scale_format_t scale_format, int gate_first, int round_act,
    void* q, void* scales, moekit_stream_t stream);

/* quant_fp8: the same quantization of an existing x [T, H] (y = x). */
MOEKIT_API moekit_status_t moekit_quant_fp8(
    const void* x, moekit_dtype_t x_dtype, int64_t num_tokens, int64_t hidden,
    int64_t group_size, moekit_scale_format_t scale_format, void* q, void* scales, moekit_stream_t stream);

/* ---- fused epilogues: SPEC.md section 7. ------------------------------------------------------
 *
 * shared_expert_gate: hidden [T, H] += sigmoid(gate) * shared [T, H], in place, fp32 math; gate
 * [T, 1] (gate_per_token) or [T, H]; every tensor in dtype (f32, f16, bf16). hidden must not
 * overlap shared or gate.
 */
MOEKIT_API moekit_status_t moekit_shared_expert_gate(
    void* hidden, const void* shared, const void* gate, moekit_dtype_t dtype,
    int64_t num_tokens, int64_t hidden_size, int gate_per_token, moekit_stream_t stream);

/* add_rmsnorm: residual = x + residual; x = residual * rsqrt(mean(residual^2) + eps) * weight, in
 * place, with the fp32 sum (not its rounding) normalized. x, residual [T, H] in dtype; weight [H]
 * in dtype or f32. H <= MOEKIT_NORM_MAX_HIDDEN. Any T; the sum of squares has a fixed order.
 * rmsnorm: y = x * rsqrt(mean(x^2) + eps) * weight; y may be x (in place) but not overlap it otherwise.
 */
#define MOEKIT_NORM_MAX_HIDDEN 32768
MOEKIT_API moekit_status_t moekit_add_rmsnorm(
    void* x, void* residual, const void* weight, moekit_dtype_t dtype, moekit_dtype_t weight_dtype,
    int64_t num_tokens, int64_t hidden_size, float eps, moekit_stream_t stream);
MOEKIT_API moekit_status_t moekit_rmsnorm(
    const void* x, const void* weight, void* y, moekit_dtype_t dtype, moekit_dtype_t weight_dtype,
    int64_t num_tokens, int64_t hidden_size, float eps, moekit_stream_t stream);

/* ---- token alignment for grouped GEMMs (moe_align_block_size): SPEC.md section 5. -------------
 *
 * topk_ids [T, K] (i32 or i64; K <= 64) -> the flat pair indices t*K + j grouped by expert, each
 * expert's region starting at a multiple of block_size (16..256) with ceil(count/BS)*BS slots,
 * ascending pair index inside a region (deterministic), unused slots = T*K:
 *   sorted_token_ids [max_padded] i32, expert_ids [num_blocks] i32 (-1 past the end),
 *   num_tokens_post_padded [1] i32, expert_counts [E] i32 (unpadded), expert_offsets [E+1] i32
 *   (exclusive prefix of expert_counts); max_padded = T*K + min(T*K, E)*(BS-1) and num_blocks =
 *   ceil(max_padded/BS) come from moekit_moe_align_buffer_sizes.
 * Ids outside [0, E) are skipped (never counted or placed); with expert_map [expert_map_size] i32,
 * an id in [0, expert_map_size) counts as expert expert_map[id] when that is in [0, E), and is
 * skipped otherwise. E <= 1024. T == 0 still writes the counts, offsets and num_tokens_post_padded.
 * Workspace: moekit_moe_align_workspace_size bytes (no initial content needed).
 */
MOEKIT_API moekit_status_t moekit_moe_align_buffer_sizes(int64_t num_tokens, int64_t topk, int64_t num_experts,
                                                         int64_t block_size, int64_t* max_padded, int64_t* num_blocks);
MOEKIT_API moekit_status_t moekit_moe_align_workspace_size(int64_t num_tokens, int64_t topk, int64_t num_experts,
                                                           size_t* bytes);
MOEKIT_API moekit_status_t moekit_moe_align(
    const void* topk_ids, moekit_dtype_t ids_dtype, int64_t num_tokens, int64_t topk, int64_t num_experts,
    int64_t block_size, const int32_t* expert_map, int64_t expert_map_size,
    int32_t* sorted_token_ids, int32_t* expert_ids, int32_t* num_tokens_post_padded,
    int32_t* expert_counts, int32_t* expert_offsets, void* workspace, size_t workspace_bytes,
    moekit_stream_t stream);

/* ---- grouped top-k for inference (DeepSeek-V3 "noaux_tc"): SPEC.md section 4. ----------------
 *
 * logits [T, E] (f32, f16, bf16), bias [E] (f32, f16, bf16) or NULL; score = sigmoid (or softmax)
 * in fp32, key = score + bias; group score = the sum of the two largest keys of each of the
 * num_groups groups (1, 2, 4, ..., 32); the topk_group best groups are kept (the others' keys become
 * -inf); the topk best keys in descending order (ties: lower id; NaN lowest). weights [T, K + S] f32
 * = the unbiased scores (renormalize: / (sum + 1e-20); apply_scale: * routed_scaling_factor), ids
 * [T, K + S] (i32 or i64); shared slot i: id E + i, weight (sum / rsf) renormalized and scaled the
 * same way. E <= 1024 (512 when num_groups > 1), topk + num_shared <= 32. One launch.
 */
MOEKIT_API moekit_status_t moekit_grouped_topk(
    const void* logits, moekit_dtype_t logits_dtype, int64_t num_tokens, int64_t num_experts,
    const void* bias, moekit_dtype_t bias_dtype, int64_t topk, int64_t num_groups, int64_t topk_group,
    moekit_score_function_t score_function, int renormalize, float routed_scaling_factor, int apply_scale,
    int64_t num_shared, float* weights, void* ids, moekit_dtype_t ids_dtype, moekit_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEKIT_MOEKIT_H_ */
