"""Inference routing (SPEC.md sections 4, 5): moe_align, the deterministic moe_align_block_size.

(grouped_topk, section 4, is not built yet.)
"""

import ctypes

from . import _lib
from ._array import MOEKIT_DTYPES, as_device_array, empty, input_like, int64_arg, launch, output, require, stream_handle
from ._lib import lib

__all__ = ["moe_align", "moe_align_buffer_sizes", "moe_align_workspace_size"]


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
