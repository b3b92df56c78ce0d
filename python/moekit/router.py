"""Router (training): top-k with a score function, forward and backward. SPEC.md section 1.

Python checks what the C side cannot see (where the arrays live, their shapes, dtypes and
layout); the integer and option rules (topk range, groups, bias with softmax, ...) are checked
once, by the library, and come back as ValueError with its message.
"""

from . import _lib
from ._array import (
    FLOAT_DTYPES,
    MOEKIT_DTYPES,
    as_device_array,
    choice,
    float_arg,
    input_like,
    int64_arg,
    launch,
    output,
    require,
    require_same_device,
    stream_handle,
)
from ._lib import DType, MapFormat, ScoreFunction, lib

__all__ = ["router_topk_forward", "router_topk_backward"]

SCORE_FUNCTIONS = {
    "softmax": ScoreFunction.SOFTMAX,
    "sigmoid": ScoreFunction.SIGMOID,
    "sqrtsoftplus": ScoreFunction.SQRTSOFTPLUS,
}
# "indices" is no map at all: the C call gets MAP_NONE and an indices pointer.
_MAP_FORMATS = {"bytemap": MapFormat.BYTEMAP, "bitmap": MapFormat.BITMAP, "indices": MapFormat.NONE}
_INDEX_DTYPES = {"int32": "int32", "int64": "int64"}
_MAP_DTYPES = ("bool", "uint8")


def _selection_layout(map_format, num_tokens, num_experts, topk, index_dtype):
    """(shape, dtype of a new array, dtypes accepted) of the routing map or the indices."""
    if map_format == "indices":
        # topk outside [1, E] is the library's to reject; keep the allocation sane until then.
        return (num_tokens, max(0, min(topk, num_experts))), index_dtype, (index_dtype,)
    if map_format == "bitmap":
        return (num_tokens, (num_experts + 7) // 8), "uint8", ("uint8",)
    return (num_tokens, num_experts), "bool", _MAP_DTYPES


class _Forward:
    """router_topk_forward's checked arguments and outputs (shared with router_aux_forward)."""

    def __init__(self, logits, topk, score_function, use_pre_softmax, num_groups, group_topk, scaling_factor,
                 expert_bias, map_format, index_dtype, out, stream, n_out=3):
        self.score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
        self.map_code = choice(map_format, "map_format", _MAP_FORMATS)
        index_dtype = choice(index_dtype, "index_dtype", _INDEX_DTYPES)
        self.topk = int64_arg(topk, "topk")
        self.num_groups = int64_arg(num_groups, "num_groups")
        self.group_topk = int64_arg(group_topk, "group_topk")
        self.scaling_factor = float_arg(scaling_factor, "scaling_factor")
        self.use_pre_softmax = bool(use_pre_softmax)
        self.index_dtype = index_dtype

        x = self.x = as_device_array(logits, "logits")
        require(x, "logits", (None, None), FLOAT_DTYPES)
        self.num_tokens, self.num_experts = x.shape
        self.stream = stream_handle(stream, x)
        self.bias = None
        if expert_bias is not None:
            self.bias = input_like(expert_bias, "expert_bias", x, "logits", (self.num_experts,), FLOAT_DTYPES)

        if out is None:
            out = (None,) * n_out
        elif not isinstance(out, (tuple, list)) or len(out) != n_out:
            names = "probs, routing_map_or_indices, intermediate" + (
                ", aux_scores, aux_routing_map, aux_intermediate" if n_out == 6 else "")
            raise ValueError(f"out must be a tuple ({names})")
        self.out = out
        self.probs, probs_array = output(out[0], "out[0] (probs)", x, "logits", x.shape, x.dtype)
        shape, dtype, accepted = _selection_layout(map_format, self.num_tokens, self.num_experts, self.topk,
                                                   index_dtype)
        self.selection, selection_array = output(
            out[1], "out[1] (routing_map_or_indices)", x, "logits", shape, dtype, accepted
        )
        self.intermediate, intermediate_array = output(
            out[2], "out[2] (intermediate)", x, "logits", x.shape, "float32"
        )
        if self.map_code == MapFormat.NONE:
            map_ptr, indices_ptr = None, selection_array.ptr
        else:
            map_ptr, indices_ptr = selection_array.ptr, None
        # the C arguments from logits to intermediate
        self.args = (
            x.ptr, MOEKIT_DTYPES[x.dtype], self.num_tokens, self.num_experts,
            self.topk, self.score_code, self.use_pre_softmax,
            self.num_groups, self.group_topk, self.scaling_factor,
            None if self.bias is None else self.bias.ptr,
            DType.F32 if self.bias is None else MOEKIT_DTYPES[self.bias.dtype],
            probs_array.ptr, map_ptr, self.map_code,
            indices_ptr, MOEKIT_DTYPES[index_dtype],
            intermediate_array.ptr,
        )  # fmt: skip


def router_topk_forward(
    logits,
    topk,
    *,
    score_function="softmax",
    use_pre_softmax=False,
    num_groups=0,
    group_topk=0,
    scaling_factor=1.0,
    expert_bias=None,
    map_format="bytemap",
    index_dtype="int32",
    out=None,
    stream=None,
):
    """Top-k routing of logits [T, E] -> (probs, routing_map_or_indices, intermediate).

    probs [T, E] in the logits' dtype; routing_map_or_indices: bool [T, E] ("bytemap"),
    uint8 [T, ceil(E/8)] LSB-first ("bitmap") or [T, topk] index_dtype ("indices");
    intermediate float32 [T, E] (what router_topk_backward needs).
    out: an optional (probs, routing_map_or_indices, intermediate) tuple to write into.
    stream: int handle, framework stream, or object with __cuda_stream__; default: the
    current stream of the logits' framework.
    """
    f = _Forward(logits, topk, score_function, use_pre_softmax, num_groups, group_topk, scaling_factor,
                 expert_bias, map_format, index_dtype, out, stream)
    status = launch(f.x.framework, f.x.device_id, f.stream, lib.moekit_router_topk_forward, *f.args, f.stream)
    _lib.check(status)
    return f.probs, f.selection, f.intermediate


class _Backward:
    """router_topk_backward's checked arguments and output (shared with router_aux_backward)."""

    def __init__(self, grad_probs, intermediate, routing_map_or_indices, topk, score_function, use_pre_softmax,
                 scaling_factor, map_format, out, stream):
        score_code = self.score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
        map_code = choice(map_format, "map_format", _MAP_FORMATS)
        topk = int64_arg(topk, "topk")
        scaling_factor = float_arg(scaling_factor, "scaling_factor")

        grad = self.grad = as_device_array(grad_probs, "grad_probs")
        require(grad, "grad_probs", (None, None), FLOAT_DTYPES)
        num_tokens, num_experts = grad.shape
        self.stream = stream_handle(stream, grad)

        saved = input_like(intermediate, "intermediate", grad, "grad_probs", grad.shape, ("float32",))

        selection = as_device_array(routing_map_or_indices, "routing_map_or_indices")
        if map_format == "indices":
            if len(selection.shape) == 2 and selection.shape[0] == num_tokens and selection.shape[1] != topk:
                raise ValueError(
                    f"routing_map_or_indices holds {selection.shape[1]} indices per row but topk is {topk}"
                )
            require(selection, "routing_map_or_indices", (num_tokens, topk), ("int32", "int64"))
        else:
            shape, _, accepted = _selection_layout(map_format, num_tokens, num_experts, topk, None)
            require(selection, "routing_map_or_indices", shape, accepted)
        require_same_device(grad, "grad_probs", selection, "routing_map_or_indices")

        self.grad_logits, self.grad_logits_array = output(out, "out", grad, "grad_probs", grad.shape, grad.dtype)

        if map_code == MapFormat.NONE:
            map_ptr, indices_ptr, index_code = None, selection.ptr, MOEKIT_DTYPES[selection.dtype]
        else:
            map_ptr, indices_ptr, index_code = selection.ptr, None, DType.I32
        # the C arguments from grad_probs to scaling_factor
        self.args = (
            grad.ptr, MOEKIT_DTYPES[grad.dtype], num_tokens, num_experts,
            saved.ptr,
            map_ptr, map_code,
            indices_ptr, index_code,
            topk, score_code, bool(use_pre_softmax),
            scaling_factor,
        )  # fmt: skip


def router_topk_backward(
    grad_probs,
    intermediate,
    routing_map_or_indices,
    topk,
    *,
    score_function,
    use_pre_softmax=False,
    scaling_factor=1.0,
    map_format="bytemap",
    out=None,
    stream=None,
):
    """Gradient of router_topk_forward's probs w.r.t. the logits -> grad_logits [T, E] in
    grad_probs' dtype. Takes the forward's intermediate and its routing map or indices, with the
    same options. out: an optional [T, E] array to write into."""
    b = _Backward(grad_probs, intermediate, routing_map_or_indices, topk, score_function, use_pre_softmax,
                  scaling_factor, map_format, out, stream)
    status = launch(b.grad.framework, b.grad.device_id, b.stream, lib.moekit_router_topk_backward, *b.args,
                    b.grad_logits_array.ptr, b.stream)
    _lib.check(status)
    return b.grad_logits
