"""NumPy float64 oracle of SPEC.md section 1: the router top-k with score function, fwd and bwd.

Imported by moekit.reference (which also holds the other families' oracles).

The tests compare the CUDA kernels against this module. It needs
NumPy only (ml_dtypes.bfloat16 arrays are accepted: they are upcast like every other input), never
imports the rest of the package and never touches a GPU. Everything is vectorized over rows, so it
stays usable at T ~ 9000, E = 8192.

The math is the plain float64 transcription of the SPEC formulas (max-subtracted softmax, etc.),
with no special casing beyond the SPEC ordering rules: a row holding NaN yields NaN under softmax,
a +inf logit yields NaN under softmax (inf - inf).
"""

import operator

import numpy as np

__all__ = [
    "router_topk_forward",
    "router_topk_backward",
    "router_keys",
    "router_group_scores",
    "topk_order",
    "bitmap_to_bytemap",
    "bytemap_to_bitmap",
    "indices_to_bytemap",
    "SCORE_FUNCTIONS",
    "MAP_FORMATS",
    "INDEX_DTYPES",
    "ROUTER_MAX_EXPERTS",
    "EPS",
]

SCORE_FUNCTIONS = ("softmax", "sigmoid", "sqrtsoftplus")
MAP_FORMATS = ("bytemap", "bitmap", "indices")
INDEX_DTYPES = ("int32", "int64")
ROUTER_MAX_EXPERTS = 16384  # MOEKIT_ROUTER_MAX_EXPERTS in moekit.h
EPS = 1e-20  # the SPEC's epsilon of the normalizations and of their backward
SOFTPLUS_LINEAR_ABOVE = 20.0  # softplus(x) = x for x > 20

# Top-k picks by repeated argmax up to this k (k passes over the rows), by one stable sort above:
# a pass costs ~1/300 of the sort at E = 8192.
_ITERATIVE_TOPK_MAX = 128

# Ranks of the int64 total-order encoding (see _total_order_ranks).
_RANK_TAKEN = np.iinfo(np.int64).min  # an expert already picked: below everything
_RANK_NAN = np.iinfo(np.int64).min + 1  # NaN: below every number, above "taken"
_NEGATIVE_FLIP = np.int64(0x7FFF_FFFF_FFFF_FFFF)


# ---- ordering ------------------------------------------------------------------------------------


def _total_order_ranks(keys):
    """int64 ranks whose integer order is the SPEC order of the float64 keys.

    NaN below -inf, -inf below every finite number, -0.0 == +0.0. Equal ranks <=> equal keys, so the
    remaining tie rule (lower index first) is applied by the selection itself.
    """
    canonical = keys + 0.0  # -0.0 + 0.0 is +0.0: both zeros get one rank (and a fresh copy)
    ranks = canonical.view(np.int64)
    # IEEE bits order non-negative floats; negative floats need their magnitude bits flipped.
    np.bitwise_xor(ranks, _NEGATIVE_FLIP, out=ranks, where=ranks < 0)
    ranks[np.isnan(keys)] = _RANK_NAN
    return ranks


def _topk_by_argmax(ranks, k):
    """k passes of argmax; np.argmax returns the first maximum, i.e. the lower index on ties."""
    rows = np.arange(ranks.shape[0])
    picked = np.empty((ranks.shape[0], k), dtype=np.int64)
    for j in range(k):
        best = np.argmax(ranks, axis=1)
        picked[:, j] = best
        ranks[rows, best] = _RANK_TAKEN
    return picked


def _topk_by_sort(ranks, k):
    """One stable ascending sort of ~rank (= -rank - 1, exact): descending rank, ties by index."""
    return np.argsort(~ranks, axis=1, kind="stable")[:, :k].astype(np.int64, copy=False)


def topk_order(keys, k):
    """Row-wise indices [T, k] (int64) of the k best keys, best first, under the SPEC total order.

    NaN ranks below everything (chosen only when nothing else is left), -inf below every finite
    number, -0.0 equals +0.0, and among equal keys the lower index comes first.
    """
    keys = np.asarray(keys, dtype=np.float64)
    if keys.ndim != 2:
        raise ValueError(f"keys must be 2-D [T, E], got shape {keys.shape}")
    k = _as_int(k, "k")
    if not 0 <= k <= keys.shape[1]:
        raise ValueError(f"k ({k}) must be in [0, {keys.shape[1]}]")
    ranks = _total_order_ranks(keys)
    if k <= _ITERATIVE_TOPK_MAX:
        return _topk_by_argmax(ranks, k)
    return _topk_by_sort(ranks, k)


# ---- routing-map formats -------------------------------------------------------------------------


def bytemap_to_bitmap(bytemap):
    """bool/u8 [T, E] -> u8 [T, ceil(E/8)], bit e%8 (LSB first) of byte e//8, padding bits 0."""
    bytemap = np.asarray(bytemap)
    if bytemap.ndim != 2:
        raise ValueError(f"bytemap must be 2-D [T, E], got shape {bytemap.shape}")
    return np.packbits(bytemap != 0, axis=1, bitorder="little")


def bitmap_to_bytemap(bitmap, num_experts):
    """u8 [T, ceil(E/8)] LSB-first -> bool [T, E] (padding bits past E are ignored)."""
    num_experts = _as_int(num_experts, "num_experts")
    bitmap = np.asarray(bitmap)
    expected_cols = (num_experts + 7) // 8
    if bitmap.ndim != 2 or bitmap.shape[1] != expected_cols:
        raise ValueError(
            f"bitmap must have shape [T, {expected_cols}] for num_experts={num_experts}, "
            f"got {bitmap.shape}")
    if bitmap.dtype != np.uint8:
        raise ValueError(f"bitmap must be uint8, got {bitmap.dtype}")
    return np.unpackbits(bitmap, axis=1, count=num_experts, bitorder="little").astype(bool)


def indices_to_bytemap(indices, num_experts):
    """int [T, K] expert ids -> bool [T, E]. Ids must lie in [0, E)."""
    num_experts = _as_int(num_experts, "num_experts")
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be 2-D [T, K], got shape {indices.shape}")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be an integer array, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_experts):
        raise ValueError(f"indices must lie in [0, {num_experts}), got values in "
                         f"[{indices.min()}, {indices.max()}]")
    bytemap = np.zeros((indices.shape[0], num_experts), dtype=bool)
    np.put_along_axis(bytemap, indices.astype(np.int64), True, axis=1)
    return bytemap


def _encode_selection(selected, num_experts, map_format, index_dtype):
    if map_format == "indices":
        return selected.astype(index_dtype)
    bytemap = np.zeros((selected.shape[0], num_experts), dtype=bool)
    np.put_along_axis(bytemap, selected, True, axis=1)
    if map_format == "bitmap":
        return bytemap_to_bitmap(bytemap)
    return bytemap


def _decode_selection(routing, num_tokens, num_experts, topk, map_format):
    """The bool mask [T, E] of the selected experts, from any of the three formats."""
    name = "routing_map_or_indices"
    routing = np.asarray(routing)
    if map_format == "bytemap":
        if routing.shape != (num_tokens, num_experts):
            raise ValueError(f"{name}: a bytemap must have shape {(num_tokens, num_experts)}, "
                             f"got {routing.shape}")
        if not (routing.dtype == np.bool_ or np.issubdtype(routing.dtype, np.integer)):
            raise ValueError(f"{name}: a bytemap must be bool or uint8, got {routing.dtype}")
        return routing != 0
    if map_format == "bitmap":
        expected = (num_tokens, (num_experts + 7) // 8)
        if routing.shape != expected or routing.dtype != np.uint8:
            raise ValueError(f"{name}: a bitmap must be uint8 with shape {expected}, "
                             f"got {routing.dtype} {routing.shape}")
        return bitmap_to_bytemap(routing, num_experts)
    # indices
    if routing.shape != (num_tokens, topk):
        raise ValueError(f"{name}: indices must have shape {(num_tokens, topk)}, "
                         f"got {routing.shape}")
    if not np.issubdtype(routing.dtype, np.integer):
        raise ValueError(f"{name}: indices must be int32 or int64, got {routing.dtype}")
    try:
        mask = indices_to_bytemap(routing, num_experts)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if num_tokens and not np.all(mask.sum(axis=1) == topk):
        raise ValueError(f"{name}: a row holds a repeated expert index")
    return mask


# ---- argument checks -----------------------------------------------------------------------------


def _as_int(value, name):
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _as_float64(array, name, ndim):
    array = np.asarray(array)
    # bfloat16 (ml_dtypes) is a NumPy "void"-kind dtype; it is recognised by name.
    if not (array.dtype.kind == "f" or array.dtype.name == "bfloat16"):
        raise ValueError(f"{name} must be float32, float16, bfloat16 or float64, got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array.astype(np.float64)


def _check_num_experts(num_experts, name):
    if num_experts < 1:
        raise ValueError(f"{name}: num_experts ({num_experts}) must be >= 1")
    if num_experts > ROUTER_MAX_EXPERTS:
        raise ValueError(f"{name}: num_experts ({num_experts}) must be <= {ROUTER_MAX_EXPERTS}")


def _check_topk(topk, num_experts):
    topk = _as_int(topk, "topk")
    if not 1 <= topk <= num_experts:
        raise ValueError(f"topk ({topk}) must be in [1, num_experts={num_experts}]")
    return topk


def _check_score_function(score_function, use_pre_softmax):
    if not isinstance(score_function, str) or score_function not in SCORE_FUNCTIONS:
        raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS}, got {score_function!r}")
    if use_pre_softmax and score_function != "softmax":
        raise ValueError(f"use_pre_softmax applies to score_function='softmax' only, "
                         f"got score_function={score_function!r}")
    return score_function, bool(use_pre_softmax)


def _check_map_format(map_format):
    if not isinstance(map_format, str) or map_format not in MAP_FORMATS:
        raise ValueError(f"map_format must be one of {MAP_FORMATS}, got {map_format!r}")
    return map_format


def _check_dtype_choice(value, name, allowed):
    """np.dtype(value) if its name is in `allowed`, else a ValueError naming the argument."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return dtype


def _check_index_dtype(index_dtype):
    return _check_dtype_choice(index_dtype, "index_dtype", INDEX_DTYPES)


def _check_groups(num_groups, group_topk, topk, num_experts):
    num_groups = _as_int(num_groups, "num_groups")
    group_topk = _as_int(group_topk, "group_topk")
    if num_groups < 0:
        raise ValueError(f"num_groups ({num_groups}) must be >= 0")
    if group_topk < 0:
        raise ValueError(f"group_topk ({group_topk}) must be >= 0")
    if (num_groups == 0) != (group_topk == 0):
        raise ValueError(f"num_groups ({num_groups}) and group_topk ({group_topk}) must both be 0 "
                         f"(no groups) or both be > 0")
    if group_topk == 0:
        return 0, 0
    if num_experts % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide num_experts ({num_experts})")
    if group_topk > num_groups:
        raise ValueError(f"group_topk ({group_topk}) must be <= num_groups ({num_groups})")
    if topk % group_topk:
        raise ValueError(f"group_topk ({group_topk}) must divide topk ({topk})")
    if topk // group_topk > num_experts // num_groups:
        raise ValueError(f"topk/group_topk ({topk // group_topk}) must be <= experts per group "
                         f"num_experts/num_groups ({num_experts // num_groups})")
    return num_groups, group_topk


def _check_bias(expert_bias, score_function, num_experts):
    if expert_bias is None:
        return None
    if score_function == "softmax":
        raise ValueError("expert_bias is supported with score_function 'sigmoid' or 'sqrtsoftplus' "
                         "only, got 'softmax'")
    bias = _as_float64(expert_bias, "expert_bias", 1)
    if bias.shape != (num_experts,):
        raise ValueError(f"expert_bias must have shape ({num_experts},), got {bias.shape}")
    return bias


# ---- score functions -----------------------------------------------------------------------------


def _softmax(x):
    """Max-subtracted softmax over the last axis, plain float64 (NaN in: NaN out; +inf: NaN)."""
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _sqrtsoftplus(x):
    # The clamp only keeps exp() from overflowing in the branch that where() discards.
    softplus = np.where(x > SOFTPLUS_LINEAR_ABOVE, x,
                        np.log1p(np.exp(np.minimum(x, SOFTPLUS_LINEAR_ABOVE))))
    return np.sqrt(softplus)


def _scores_and_keys(x, score_function, use_pre_softmax, bias):
    """(values the weights are taken from, selection keys before group masking)."""
    if score_function == "softmax":
        if use_pre_softmax:
            p = _softmax(x)
            return p, p
        return x, x
    scores = _sigmoid(x) if score_function == "sigmoid" else _sqrtsoftplus(x)
    keys = scores if bias is None else scores + bias
    return scores, keys


def _group_scores(keys, topk, num_groups, group_topk):
    """[T, G]: the sum of the top K/Kg keys of each group."""
    num_tokens, num_experts = keys.shape
    k_in_group = topk // group_topk
    grouped = keys.reshape(num_tokens * num_groups, num_experts // num_groups)
    best_in_group = np.take_along_axis(grouped, topk_order(grouped, k_in_group), axis=1)
    # Sequential sum, best key first: a fixed order, so equal multisets give equal bits.
    scores = best_in_group[:, 0].copy()
    for j in range(1, k_in_group):
        scores += best_in_group[:, j]
    return scores.reshape(num_tokens, num_groups)


def _group_limited(keys, topk, num_groups, group_topk):
    """Keys with the experts of every non-kept group set to -inf (SPEC section 1, step 2)."""
    num_tokens, num_experts = keys.shape
    per_group = num_experts // num_groups
    kept_groups = topk_order(_group_scores(keys, topk, num_groups, group_topk), group_topk)
    kept = np.zeros((num_tokens, num_groups), dtype=bool)
    np.put_along_axis(kept, kept_groups, True, axis=1)
    return np.where(np.repeat(kept, per_group, axis=1), keys, -np.inf)


def _selected_weights(chosen, score_function, use_pre_softmax, topk):
    """Weights [T, K] (before scaling) from the chosen scores/logits [T, K] (step 4)."""
    if score_function == "softmax":
        return chosen if use_pre_softmax else _softmax(chosen)
    if topk > 1:
        return chosen / (np.sum(chosen, axis=1, keepdims=True) + EPS)
    return chosen


def _validated_forward_options(x, topk, score_function, use_pre_softmax, num_groups, group_topk,
                               expert_bias):
    num_experts = x.shape[1]
    _check_num_experts(num_experts, "logits")
    topk = _check_topk(topk, num_experts)
    score_function, use_pre_softmax = _check_score_function(score_function, use_pre_softmax)
    num_groups, group_topk = _check_groups(num_groups, group_topk, topk, num_experts)
    bias = _check_bias(expert_bias, score_function, num_experts)
    return topk, score_function, use_pre_softmax, num_groups, group_topk, bias


def _keys_after_groups(x, topk, score_function, use_pre_softmax, num_groups, group_topk, bias):
    scores, keys = _scores_and_keys(x, score_function, use_pre_softmax, bias)
    if group_topk > 0:
        keys = _group_limited(keys, topk, num_groups, group_topk)
    return scores, keys


# ---- public ops ----------------------------------------------------------------------------------


def router_keys(logits, topk, *, score_function="softmax", use_pre_softmax=False, num_groups=0,
                group_topk=0, expert_bias=None):
    """float64 [T, E]: the keys top-k is taken over (after group masking: non-kept groups -inf).

    Tests use it to find near-ties, where fp32 GPU math may legitimately pick another expert.
    """
    x = _as_float64(logits, "logits", 2)
    topk, score_function, use_pre_softmax, num_groups, group_topk, bias = \
        _validated_forward_options(x, topk, score_function, use_pre_softmax, num_groups,
                                   group_topk, expert_bias)
    with np.errstate(all="ignore"):
        return _keys_after_groups(x, topk, score_function, use_pre_softmax, num_groups,
                                  group_topk, bias)[1]


def router_group_scores(logits, topk, *, score_function="softmax", use_pre_softmax=False,
                        num_groups=0, group_topk=0, expert_bias=None):
    """float64 [T, G]: the group scores the Kg kept groups are chosen by (needs group_topk > 0).

    A near-tie here changes which groups are kept, which router_keys alone cannot reveal.
    """
    x = _as_float64(logits, "logits", 2)
    topk, score_function, use_pre_softmax, num_groups, group_topk, bias = \
        _validated_forward_options(x, topk, score_function, use_pre_softmax, num_groups,
                                   group_topk, expert_bias)
    if group_topk == 0:
        raise ValueError("group_topk must be > 0 for router_group_scores (no groups: no scores)")
    with np.errstate(all="ignore"):
        keys = _scores_and_keys(x, score_function, use_pre_softmax, bias)[1]
        return _group_scores(keys, topk, num_groups, group_topk)


def router_topk_forward(logits, topk, *, score_function="softmax", use_pre_softmax=False,
                        num_groups=0, group_topk=0, scaling_factor=1.0, expert_bias=None,
                        map_format="bytemap", index_dtype="int32"):
    """SPEC section 1 forward: (probs f64 [T,E], routing map per map_format, intermediate f64).

    map_format "bytemap": bool [T, E]; "bitmap": uint8 [T, ceil(E/8)] LSB-first, padding bits 0;
    "indices": [T, K] index_dtype, best key first, ties lower index first.
    """
    x = _as_float64(logits, "logits", 2)
    topk, score_function, use_pre_softmax, num_groups, group_topk, bias = \
        _validated_forward_options(x, topk, score_function, use_pre_softmax, num_groups,
                                   group_topk, expert_bias)
    map_format = _check_map_format(map_format)
    index_dtype = _check_index_dtype(index_dtype)
    scale = float(scaling_factor)
    num_tokens, num_experts = x.shape

    with np.errstate(all="ignore"):
        scores, keys = _keys_after_groups(x, topk, score_function, use_pre_softmax, num_groups,
                                          group_topk, bias)
        selected = topk_order(keys, topk)
        weights = _selected_weights(np.take_along_axis(scores, selected, axis=1), score_function,
                                    use_pre_softmax, topk)
        probs = np.zeros((num_tokens, num_experts))
        np.put_along_axis(probs, selected, weights * scale, axis=1)

        if score_function == "softmax" and not use_pre_softmax:
            intermediate = np.full((num_tokens, num_experts), -np.inf)
            np.put_along_axis(intermediate, selected, weights, axis=1)
        elif score_function == "sqrtsoftplus":
            intermediate = x.copy()  # the backward recomputes v from x
        else:
            intermediate = scores.copy()  # softmax-pre: p; sigmoid: y (unbiased)

    routing = _encode_selection(selected, num_experts, map_format, index_dtype)
    return probs, routing, intermediate


def router_topk_backward(grad_probs, intermediate, routing_map_or_indices, topk, *, score_function,
                         use_pre_softmax=False, scaling_factor=1.0, map_format="bytemap"):
    """SPEC section 1 backward: grad_logits float64 [T, E] (every element defined).

    The selection comes as a routing map in map_format ("bytemap", "bitmap") or as the [T, K]
    indices (map_format="indices"). Gradients at unselected positions are ignored.
    """
    g = _as_float64(grad_probs, "grad_probs", 2)
    saved = _as_float64(intermediate, "intermediate", 2)
    if saved.shape != g.shape:
        raise ValueError(f"intermediate shape {saved.shape} must equal grad_probs shape {g.shape}")
    num_tokens, num_experts = g.shape
    _check_num_experts(num_experts, "grad_probs")
    topk = _check_topk(topk, num_experts)
    score_function, use_pre_softmax = _check_score_function(score_function, use_pre_softmax)
    map_format = _check_map_format(map_format)
    mask = _decode_selection(routing_map_or_indices, num_tokens, num_experts, topk, map_format)
    g = g * float(scaling_factor)

    def row_sum(a):
        return np.sum(a, axis=1, keepdims=True)

    with np.errstate(all="ignore"):
        # where(), never mask * value: unselected entries may hold -inf (softmax-post) or junk.
        g_sel = np.where(mask, g, 0.0)
        if score_function == "softmax":
            p = saved
            dot = row_sum(np.where(mask, g * p, 0.0))
            if use_pre_softmax:
                return p * (g_sel - dot)
            return np.where(mask, p * (g - dot), 0.0)

        if score_function == "sigmoid":
            scores = saved
        else:
            x = saved
            scores = _sqrtsoftplus(x)
        if topk > 1:
            denom = row_sum(np.where(mask, scores, 0.0)) + EPS
            dot = row_sum(np.where(mask, g * scores, 0.0))
            h = g_sel / denom - dot / (denom * denom)
        else:
            h = g_sel
        if score_function == "sigmoid":
            local = scores * (1.0 - scores)
        else:
            slope = np.where(x > SOFTPLUS_LINEAR_ABOVE, 1.0, _sigmoid(x))
            local = slope / (2.0 * scores + EPS)
        return np.where(mask, h * local, 0.0)
