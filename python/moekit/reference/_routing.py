"""NumPy float64 oracle of SPEC.md sections 4 and 5: inference grouped top-k and token alignment.

grouped_topk is DeepSeek-V3's "noaux_tc" gate (and vLLM / sglang's grouped_topk): scores, biased
keys, groups ranked by the sum of their two largest keys, the K best keys of the kept groups, the
unbiased scores as weights, optional renormalization and scaling, optional shared-expert slots.
moe_align is vLLM / sglang's moe_align_block_size with the order inside a region pinned down.

Everything is vectorized over rows and uses the SPEC total order of _router.topk_order (NaN below
-inf below every finite number, -0.0 == +0.0, lower index first among equals). Non-finite inputs
follow the plain float64 formulas: a NaN logit gives a NaN score (under softmax the whole row), a
+inf logit under softmax gives NaN (inf - inf); NaN scores propagate into the weights.
"""

import math

import numpy as np

from ._router import EPS, _as_float64, _as_int, _check_dtype_choice, _sigmoid, _softmax, topk_order

__all__ = [
    "grouped_topk",
    "grouped_topk_keys",
    "grouped_topk_near_ties",
    "moe_align",
    "moe_align_buffer_sizes",
    "GROUPED_TOPK_SCORE_FUNCTIONS",
    "GROUPED_TOPK_NUM_GROUPS",
    "MOE_ALIGN_BLOCK_SIZES",
    "MOE_ALIGN_MAX_EXPERTS",
]

GROUPED_TOPK_SCORE_FUNCTIONS = ("sigmoid", "softmax")
GROUPED_TOPK_NUM_GROUPS = (1, 2, 4, 8, 16, 32)
IDS_DTYPES = ("int32", "int64")
MOE_ALIGN_BLOCK_SIZES = (16, 32, 64, 128, 256)
MOE_ALIGN_MAX_EXPERTS = 1024  # the kernels keep per-warp counts of every expert in shared memory
_INT32_MAX = np.iinfo(np.int32).max


# ---- argument checks -----------------------------------------------------------------------------


def _as_flag(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}")


def _check_ids_dtype(ids_dtype):
    return _check_dtype_choice(ids_dtype, "ids_dtype", IDS_DTYPES)


def _grouped_options(num_experts, topk, num_groups, topk_group, score_function):
    """(topk, G, Kg, score_function), validated against SPEC section 4."""
    if num_experts < 1:
        raise ValueError(f"logits: num_experts ({num_experts}) must be >= 1")
    topk = _as_int(topk, "topk")
    num_groups = _as_int(num_groups, "num_groups")
    topk_group = _as_int(topk_group, "topk_group")
    if num_groups not in GROUPED_TOPK_NUM_GROUPS:
        raise ValueError(f"num_groups ({num_groups}) must be one of {GROUPED_TOPK_NUM_GROUPS}")
    if num_experts % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide num_experts ({num_experts})")
    if not 1 <= topk_group <= num_groups:
        raise ValueError(f"topk_group ({topk_group}) must be in [1, num_groups={num_groups}]")
    kept_experts = topk_group * (num_experts // num_groups)
    if not 1 <= topk <= kept_experts:
        raise ValueError(f"topk ({topk}) must be in [1, topk_group * num_experts / num_groups = "
                         f"{kept_experts}]")
    if not isinstance(score_function, str) or score_function not in GROUPED_TOPK_SCORE_FUNCTIONS:
        raise ValueError(f"score_function must be one of {GROUPED_TOPK_SCORE_FUNCTIONS}, "
                         f"got {score_function!r}")
    return topk, num_groups, topk_group, score_function


def _check_grouped_bias(bias, num_experts):
    if bias is None:
        return None
    bias = _as_float64(bias, "bias", 1)
    if bias.shape != (num_experts,):
        raise ValueError(f"bias must have shape ({num_experts},), got {bias.shape}")
    return bias


# ---- grouped top-k (SPEC section 4) --------------------------------------------------------------


def _scores_and_keys(x, bias, score_function):
    """(unbiased scores s, keys s + bias) [T, E] (step 1)."""
    scores = _sigmoid(x) if score_function == "sigmoid" else _softmax(x)
    return scores, (scores.copy() if bias is None else scores + bias)


def _group_scores(keys, num_groups):
    """[T, G]: largest + second largest key of each group (total order); a lone expert: its key."""
    num_tokens, num_experts = keys.shape
    grouped = keys.reshape(num_tokens * num_groups, num_experts // num_groups)
    if grouped.shape[1] == 1:
        return grouped.reshape(num_tokens, num_groups).copy()
    top2 = np.take_along_axis(grouped, topk_order(grouped, 2), axis=1)
    return (top2[:, 0] + top2[:, 1]).reshape(num_tokens, num_groups)


def _masked_keys(keys, num_groups, topk_group):
    """Keys with every expert of a non-kept group set to -inf (step 2)."""
    num_tokens, num_experts = keys.shape
    kept_groups = topk_order(_group_scores(keys, num_groups), topk_group)
    kept = np.zeros((num_tokens, num_groups), dtype=bool)
    np.put_along_axis(kept, kept_groups, True, axis=1)
    return np.where(np.repeat(kept, num_experts // num_groups, axis=1), keys, -np.inf)


def grouped_topk_keys(logits, bias, topk, *, num_groups=1, topk_group=1, score_function="sigmoid"):
    """(keys float64 [T, E] after group masking, group scores float64 [T, G]).

    The values the selection ranks: tests use them to find near-ties, where fp32 GPU math may
    legitimately pick another group or expert. With G = 1 the group score is still computed.
    """
    x = _as_float64(logits, "logits", 2)
    num_experts = x.shape[1]
    topk, num_groups, topk_group, score_function = _grouped_options(
        num_experts, topk, num_groups, topk_group, score_function)
    bias = _check_grouped_bias(bias, num_experts)
    with np.errstate(all="ignore"):
        keys = _scores_and_keys(x, bias, score_function)[1]
        return _masked_keys(keys, num_groups, topk_group), _group_scores(keys, num_groups)


def grouped_topk_near_ties(logits, bias, topk, got_ids, want_ids, *, num_groups=1, topk_group=1,
                           score_function="sigmoid", rel=1e-6):
    """(rows, explained): the rows whose first topk ids differ between got_ids and want_ids, and for
    each whether a near-tie explains it: the Kg-th and (Kg+1)-th group scores, or the keys of the two
    id lists position by position, within rel (relative, at least absolute for |value| < 1). fp32
    GPU keys may rank such rows differently from this float64 oracle."""
    got, want = np.asarray(got_ids)[:, :topk], np.asarray(want_ids)[:, :topk]
    rows = np.nonzero((got != want).any(axis=1))[0]
    explained = np.zeros(rows.size, dtype=bool)
    if rows.size:
        keys, groups = grouped_topk_keys(logits, bias, topk, num_groups=num_groups, topk_group=topk_group,
                                         score_function=score_function)
        for n, r in enumerate(rows):
            g = np.sort(groups[r])[::-1]
            group_tie = num_groups > 1 and abs(g[topk_group - 1] - g[topk_group]) <= rel * max(abs(g[topk_group - 1]), 1.0)
            a, w = keys[r, got[r]], keys[r, want[r]]
            explained[n] = group_tie or bool(np.all(np.abs(a - w) <= rel * np.maximum(np.abs(w), 1.0)))
    return rows, explained


def grouped_topk(logits, bias, topk, *, num_groups=1, topk_group=1, score_function="sigmoid",
                 renormalize=True, routed_scaling_factor=1.0, apply_scale=True, num_shared=0,
                 ids_dtype="int32"):
    """SPEC section 4: (weights float64 [T, K+S], ids [T, K+S] ids_dtype).

    1. s = sigmoid(x), or softmax over the row; key = s + bias (bias None: key = s).
    2. Group score = the largest plus the second largest key of the group under the SPEC total order
       (a repeated maximum counts twice; a NaN key enters the sum only when the group holds fewer
       than two non-NaN keys, and then makes the score NaN); a group of one expert scores its key.
       The topk_group best groups are kept (ties: lower group index); every key of the other groups
       becomes -inf. With G = 1 (so topk_group = 1) nothing is masked.
    3. ids[:, :K] = the K best masked keys, best first, ties lower id. A masked -inf still ranks
       above a NaN key, so a kept group's NaN-keyed expert is chosen only after every other expert;
       the K ids are always distinct and in [0, E).
    4. Routed weights = the unbiased s of the chosen ids.
    5. Shared slot i in [0, S): id E + i, weight (sum of the K routed s) / rsf.
    Then, on the routed and the shared weights alike: renormalize divides by (the routed sum +
    1e-20); apply_scale multiplies by rsf (independently of renormalize). So a shared weight is
    sum / rsf, sum / (sum + 1e-20) / rsf, sum / rsf * rsf or sum / (sum + 1e-20) / rsf * rsf.
    routed_scaling_factor must be finite and > 0 (it divides the shared weight).
    """
    x = _as_float64(logits, "logits", 2)
    num_tokens, num_experts = x.shape
    topk, num_groups, topk_group, score_function = _grouped_options(
        num_experts, topk, num_groups, topk_group, score_function)
    bias = _check_grouped_bias(bias, num_experts)
    renormalize = _as_flag(renormalize, "renormalize")
    apply_scale = _as_flag(apply_scale, "apply_scale")
    try:
        rsf = float(routed_scaling_factor)
    except (TypeError, ValueError):
        rsf = math.nan
    if not (math.isfinite(rsf) and rsf > 0.0):
        raise ValueError(f"routed_scaling_factor must be finite and > 0, "
                         f"got {routed_scaling_factor!r}")
    num_shared = _as_int(num_shared, "num_shared")
    if num_shared < 0:
        raise ValueError(f"num_shared ({num_shared}) must be >= 0")
    ids_dtype = _check_ids_dtype(ids_dtype)

    with np.errstate(all="ignore"):
        scores, keys = _scores_and_keys(x, bias, score_function)
        if num_groups > 1:
            keys = _masked_keys(keys, num_groups, topk_group)
        chosen = topk_order(keys, topk)
        routed = np.take_along_axis(scores, chosen, axis=1)
        routed_sum = np.sum(routed, axis=1, keepdims=True)
        shared = np.repeat(routed_sum / rsf, num_shared, axis=1)
        weights = np.concatenate([routed, shared], axis=1)
        if renormalize:
            weights = weights / (routed_sum + EPS)
        if apply_scale:
            weights = weights * rsf
    shared_ids = np.broadcast_to(num_experts + np.arange(num_shared, dtype=np.int64),
                                 (num_tokens, num_shared))
    ids = np.concatenate([chosen, shared_ids], axis=1).astype(ids_dtype)
    return weights, ids


# ---- token alignment (SPEC section 5) ------------------------------------------------------------


def _check_align_sizes(num_experts, block_size):
    num_experts = _as_int(num_experts, "num_experts")
    block_size = _as_int(block_size, "block_size")
    if not 1 <= num_experts <= MOE_ALIGN_MAX_EXPERTS:
        raise ValueError(f"num_experts ({num_experts}) must be in [1, {MOE_ALIGN_MAX_EXPERTS}]")
    if block_size not in MOE_ALIGN_BLOCK_SIZES:
        raise ValueError(f"block_size ({block_size}) must be one of {MOE_ALIGN_BLOCK_SIZES}")
    return num_experts, block_size


def moe_align_buffer_sizes(num_tokens, topk, num_experts, block_size):
    """(max_pad, num_blocks): the lengths of sorted_token_ids and expert_ids for T*K pairs (the
    same arguments as moekit.moe_align_buffer_sizes).

    max_pad = num_pairs + min(num_pairs, E) * (BM - 1), num_blocks = ceil(max_pad / BM). Both must
    fit int32 (the sentinel num_pairs too, since max_pad >= num_pairs).
    """
    num_pairs = _as_int(num_tokens, "num_tokens") * _as_int(topk, "topk")
    num_experts, block_size = _check_align_sizes(num_experts, block_size)
    if num_pairs < 0:
        raise ValueError(f"num_pairs ({num_pairs}) must be >= 0")
    max_pad = num_pairs + min(num_pairs, num_experts) * (block_size - 1)
    if max_pad > _INT32_MAX:
        raise ValueError(f"num_pairs ({num_pairs}): the padded length {max_pad} must fit int32")
    return max_pad, -(-max_pad // block_size)


def _int_array(array, name, ndim):
    array = np.asarray(array)
    if array.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise ValueError(f"{name} must be int32 or int64, got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array.astype(np.int64)


def _local_experts(flat_ids, num_experts, expert_map):
    """(valid mask, local expert id) per pair; invalid pairs are never counted nor placed."""
    if expert_map is None:
        return (flat_ids >= 0) & (flat_ids < num_experts), flat_ids
    in_map = (flat_ids >= 0) & (flat_ids < expert_map.shape[0])
    local = np.full(flat_ids.shape, -1, dtype=np.int64)
    local[in_map] = expert_map[flat_ids[in_map]]
    return in_map & (local >= 0) & (local < num_experts), local


def moe_align(topk_ids, num_experts, block_size, *, expert_map=None):
    """SPEC section 5: (sorted_token_ids, expert_ids, num_tokens_post_padded, expert_counts,
    expert_offsets), all int32, of lengths max_pad, ceil(max_pad / BM), 1, E and E + 1.

    Pair p = t * K + j is valid when its id is in [0, E) (no expert_map), or in [0, E_global)
    with expert_map[id] in [0, E) (its local expert; any other map value, -1 included, skips it).
    Local experts ascending, each with ceil(count / BM) * BM slots from a multiple of BM (none when
    empty), its pairs in ascending p, unused slots = T * K. expert_ids[b] = the expert owning block
    b, -1 for every block at or past num_tokens_post_padded. expert_counts = valid pairs per expert
    (unpadded), expert_offsets = their exclusive prefix sum (offsets[E] = number of valid pairs).
    """
    ids = _int_array(topk_ids, "topk_ids", 2)
    num_experts, block_size = _check_align_sizes(num_experts, block_size)
    num_tokens, topk = ids.shape
    if topk < 1:
        raise ValueError(f"topk_ids: topk (its second dimension, {topk}) must be >= 1")
    if expert_map is not None:
        expert_map = _int_array(expert_map, "expert_map", 1)
        if expert_map.shape[0] < 1:
            raise ValueError("expert_map must hold at least one entry, got shape (0,)")
    num_pairs = num_tokens * topk
    max_pad, num_blocks = moe_align_buffer_sizes(num_tokens, topk, num_experts, block_size)

    valid, local = _local_experts(ids.reshape(-1), num_experts, expert_map)
    pairs = np.flatnonzero(valid)  # ascending
    experts = local[pairs]
    counts = np.bincount(experts, minlength=num_experts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    padded = -(-counts // block_size) * block_size
    region_starts = np.concatenate([[0], np.cumsum(padded)])
    total_padded = int(region_starts[-1])

    order = np.argsort(experts, kind="stable")  # by expert, then ascending pair index
    pairs, experts = pairs[order], experts[order]
    slots = region_starts[experts] + np.arange(pairs.size) - offsets[experts]
    sorted_token_ids = np.full(max_pad, num_pairs, dtype=np.int32)
    sorted_token_ids[slots] = pairs
    expert_ids = np.full(num_blocks, -1, dtype=np.int32)
    owners = np.repeat(np.arange(num_experts), padded // block_size)
    expert_ids[:owners.size] = owners
    return (sorted_token_ids, expert_ids, np.array([total_padded], dtype=np.int32),
            counts.astype(np.int32), offsets.astype(np.int32))
