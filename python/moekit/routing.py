"""Inference routing (SPEC.md sections 4, 5): grouped_topk (DeepSeek-V3's "noaux_tc" routing in one
launch) and moe_align, the deterministic moe_align_block_size.
"""

import ctypes

from . import _lib
from ._array import (
    FLOAT_DTYPES,
    MOEKIT_DTYPES,
    as_device_array,
    choice,
    empty,
    float_arg,
    input_like,
    int64_arg,
    launch,
    output,
    require,
    stream_handle,
)
from ._lib import ScoreFunction, lib

__all__ = ["grouped_topk", "moe_align", "moe_align_buffer_sizes", "moe_align_workspace_size"]

_SCORES = {"sigmoid": ScoreFunction.SIGMOID, "softmax": ScoreFunction.SOFTMAX}


def grouped_topk(logits, bias, topk, *, num_groups=1, topk_group=1, score_function="sigmoid", renormalize=True,
                 routed_scaling_factor=1.0, apply_scale=True, num_shared=0, ids_dtype="int32", out=None,
                 stream=None):
    """DeepSeek-V3 grouped top-k of logits [T, E] -> (weights float32 [T, K + S], ids [T, K + S]).

    bias [E] or None. Groups score by the sum of their two largest biased scores; the topk_group
    best groups are kept; ids in descending key order (ties: lower id). weights are the unbiased
    scores, renormalized (renormalize) and scaled (apply_scale) independently; num_shared slots
    hold ids E + i with the weight SPEC section 4 gives. out: an optional (weights, ids) tuple."""
    score_code = choice(score_function, "score_function", _SCORES)
    ids_dtype = choice(ids_dtype, "ids_dtype", {"int32": "int32", "int64": "int64"})
    x = as_device_array(logits, "logits")
    require(x, "logits", (None, None), FLOAT_DTYPES)
    num_tokens, num_experts = x.shape
    stream = stream_handle(stream, x)
    b = None if bias is None else input_like(bias, "bias", x, "logits", (num_experts,), FLOAT_DTYPES)
    topk, num_shared = int64_arg(topk, "topk"), int64_arg(num_shared, "num_shared")
    slots = topk + num_shared
    if out is None:
        out = (None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError("out must be a tuple (weights, ids)")
    weights, w_array = output(out[0], "out[0] (weights)", x, "logits", (num_tokens, max(slots, 0)), "float32")
    ids, i_array = output(out[1], "out[1] (ids)", x, "logits", (num_tokens, max(slots, 0)), ids_dtype)
    status = launch(
        x.framework, x.device_id, stream, lib.moekit_grouped_topk,
        x.ptr, MOEKIT_DTYPES[x.dtype], num_tokens, num_experts,
        None if b is None else b.ptr, MOEKIT_DTYPES[b.dtype] if b is not None else 0,
        topk, int64_arg(num_groups, "num_groups"), int64_arg(topk_group, "topk_group"), score_code,
        int(bool(renormalize)), float_arg(routed_scaling_factor, "routed_scaling_factor"), int(bool(apply_scale)),
        num_shared, w_array.ptr, i_array.ptr, MOEKIT_DTYPES[i_array.dtype], stream,
    )  # fmt: skip
    _lib.check(status)
    return weights, ids


def moe_align_buffer_sizes(num_tokens, topk, num_experts, block_size):
    """(max_padded, num_blocks): the lengths of sorted_token_ids and expert_ids."""
    max_pad, blocks = ctypes.c_int64(0), ctypes.c_int64(0)
    _lib.check(lib.moekit_moe_align_buffer_sizes(
        int64_arg(num_tokens, "num_tokens"), int64_arg(topk, "topk"), int64_arg(num_experts, "num_experts"),
        int64_arg(block_size, "block_size"), ctypes.addressof(max_pad), ctypes.addressof(blocks)))
    return max_pad.value, blocks.value


def moe_align_workspace_size(num_tokens, topk, num_experts):
    """Bytes of workspace moe_align needs (no initial content required)."""
    size = ctypes.c_size_t(0)
    _lib.check(lib.moekit_moe_align_workspace_size(
        int64_arg(num_tokens, "num_tokens"), int64_arg(topk, "topk"), int64_arg(num_experts, "num_experts"),
        ctypes.addressof(size)))
    return size.value


def moe_align(topk_ids, num_experts, block_size, *, expert_map=None, workspace=None, out=None, stream=None):
    """topk_ids [T, K] (int32/int64) -> (sorted_token_ids, expert_ids, num_tokens_post_padded,
    expert_counts, expert_offsets), all int32: pair indices t*K + j grouped by expert in regions
    padded to block_size, ascending inside a region, the sentinel T*K in unused slots. expert_map
    (int32 [E_global]): global id -> local expert, or -1 to skip. out: an optional 5-tuple."""
    ids = as_device_array(topk_ids, "topk_ids")
    require(ids, "topk_ids", (None, None), ("int32", "int64"))
    num_tokens, topk = ids.shape
    num_experts = int64_arg(num_experts, "num_experts")
    max_pad, blocks = moe_align_buffer_sizes(num_tokens, topk, num_experts, block_size)
    stream = stream_handle(stream, ids)
    emap, map_size = None, 0
    if expert_map is not None:
        emap = as_device_array(expert_map, "expert_map")
        require(emap, "expert_map", (None,), ("int32",))
        emap = input_like(expert_map, "expert_map", ids, "topk_ids", emap.shape, ("int32",))
        map_size = emap.shape[0]
    if out is None:
        out = (None,) * 5
    elif not isinstance(out, (tuple, list)) or len(out) != 5:
        raise ValueError("out must be a 5-tuple (sorted_token_ids, expert_ids, num_tokens_post_padded, "
                         "expert_counts, expert_offsets)")
    names = ("sorted_token_ids", "expert_ids", "num_tokens_post_padded", "expert_counts", "expert_offsets")
    shapes = ((max_pad,), (blocks,), (1,), (num_experts,), (num_experts + 1,))
    results = [output(o, f"out[{i}] ({n})", ids, "topk_ids", s, "int32")
               for i, (o, n, s) in enumerate(zip(out, names, shapes))]
    if workspace is None:
        workspace = empty(ids, (max(moe_align_workspace_size(num_tokens, topk, num_experts), 1),), "uint8")
    ws = as_device_array(workspace, "workspace")
    require(ws, "workspace", (None,), ("uint8",))
    status = launch(
        ids.framework, ids.device_id, stream, lib.moekit_moe_align,
        ids.ptr, MOEKIT_DTYPES[ids.dtype], num_tokens, topk, num_experts, int64_arg(block_size, "block_size"),
        None if emap is None else emap.ptr, map_size, *(array.ptr for _, array in results),
        ws.ptr, ws.shape[0], stream,
    )  # fmt: skip
    _lib.check(status)
    return tuple(obj for obj, _ in results)
