"""Aux-loss scores (SPEC.md section 2) and the aux loss (section 3), forward and backward.

As in router.py: Python checks what the C side cannot see (where the arrays live, shapes, dtypes,
layout); the integer and option rules are checked by the library and come back as ValueError.
"""

import ctypes

import numpy as np

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
    zeros,
)
from ._lib import MapFormat, lib
from .router import SCORE_FUNCTIONS

__all__ = [
    "aux_scores_forward",
    "aux_scores_backward",
    "aux_loss_forward",
    "aux_loss_backward",
    "aux_loss_workspace_size",
]

_MAP_FORMATS = {"bytemap": MapFormat.BYTEMAP, "bitmap": MapFormat.BITMAP}
_TOKEN_DTYPES = ("int32", "int64", "float32", "bfloat16")


def aux_scores_forward(logits, topk, *, score_function="softmax", map_format="bytemap", out=None, stream=None):
    """Aux-loss scores of logits [T, E] -> (scores float32 [T, E], routing_map, intermediate float32).

    routing_map: bool [T, E] ("bytemap") or uint8 [T, ceil(E/8)] LSB-first ("bitmap") of the top-k
    scores. out: an optional (scores, routing_map, intermediate) tuple to write into.
    """
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    map_code = choice(map_format, "map_format", _MAP_FORMATS)
    topk = int64_arg(topk, "topk")
    x = as_device_array(logits, "logits")
    require(x, "logits", (None, None), FLOAT_DTYPES)
    num_tokens, num_experts = x.shape
    stream = stream_handle(stream, x)
    if out is None:
        out = (None, None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ValueError("out must be a tuple (scores, routing_map, intermediate)")
    results, args = scores_outputs(x, map_format, map_code, out, ("scores", "routing_map", "intermediate"), 0)
    status = launch(
        x.framework, x.device_id, stream, lib.moekit_aux_scores_forward,
        x.ptr, MOEKIT_DTYPES[x.dtype], num_tokens, num_experts, topk, score_code, *args, stream,
    )  # fmt: skip
    _lib.check(status)
    return results


def scores_outputs(x, map_format, map_code, out, names, first):
    """The aux scores' outputs for logits x (out[first:first + 3] where given) -> ((scores, routing_map,
    intermediate), their C arguments (scores, routing_map, map_format, intermediate))."""
    num_tokens, num_experts = x.shape
    scores, scores_array = output(out[first], f"out[{first}] ({names[0]})", x, "logits", x.shape, "float32")
    if map_format == "bitmap":
        map_shape, map_dtype, accepted = (num_tokens, (num_experts + 7) // 8), "uint8", ("uint8",)
    else:
        map_shape, map_dtype, accepted = x.shape, "bool", ("bool", "uint8")
    routing_map, map_array = output(out[first + 1], f"out[{first + 1}] ({names[1]})", x, "logits", map_shape,
                                    map_dtype, accepted)
    intermediate, intermediate_array = output(out[first + 2], f"out[{first + 2}] ({names[2]})", x, "logits", x.shape,
                                              "float32")
    return (scores, routing_map, intermediate), (scores_array.ptr, map_array.ptr, map_code, intermediate_array.ptr)


def aux_scores_backward(grad_scores, intermediate, *, score_function, out_dtype="float32", out=None, stream=None):
    """Gradient of aux_scores_forward's scores w.r.t. the logits -> grad_logits [T, E] in out_dtype
    (the logits' dtype: "float32", "float16" or "bfloat16"). grad_scores and intermediate: float32."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    out_dtype = choice(out_dtype, "out_dtype", {name: name for name in FLOAT_DTYPES})
    grad = as_device_array(grad_scores, "grad_scores")
    require(grad, "grad_scores", (None, None), ("float32",))
    num_tokens, num_experts = grad.shape
    stream = stream_handle(stream, grad)
    saved = input_like(intermediate, "intermediate", grad, "grad_scores", grad.shape, ("float32",))
    grad_logits, grad_logits_array = output(out, "out", grad, "grad_scores", grad.shape, out_dtype)
    status = launch(
        grad.framework, grad.device_id, stream, lib.moekit_aux_scores_backward,
        grad.ptr, saved.ptr, num_tokens, num_experts, score_code,
        grad_logits_array.ptr, MOEKIT_DTYPES[grad_logits_array.dtype], stream,
    )  # fmt: skip
    _lib.check(status)
    return grad_logits


def aux_loss_workspace_size(num_rows, num_cols):
    """Bytes of workspace moekit_aux_loss_forward needs for probs [num_rows, num_cols]."""
    size = ctypes.c_size_t(0)
    _lib.check(lib.moekit_aux_loss_workspace_size(
        int64_arg(num_rows, "num_rows"), int64_arg(num_cols, "num_cols"), ctypes.addressof(size)))
    return size.value


def _tokens(tokens_per_expert, reference, num_cols):
    return input_like(tokens_per_expert, "tokens_per_expert", reference, "probs", (num_cols,), _TOKEN_DTYPES)


def aux_loss_forward(probs, tokens_per_expert, total_num_tokens, num_experts, topk, coeff, *, workspace=None,
                     out=None, stream=None):
    """Aux loss of probs [R, C] -> (loss, a 0-d array in probs' dtype; const_buf float32 [1]).

    total_num_tokens: an int, or a device int64 scalar (read on the GPU: graph replay with varying
    counts). workspace: a zero-filled uint8 device array of at least aux_loss_workspace_size(R, C)
    bytes, left zero-filled for reuse on the same stream; default: a new one per call.
    out: an optional (loss, const_buf) tuple to write into.
    """
    p = as_device_array(probs, "probs")
    require(p, "probs", (None, None), FLOAT_DTYPES)
    num_rows, num_cols = p.shape
    stream = stream_handle(stream, p)
    tokens = _tokens(tokens_per_expert, p, num_cols)
    if isinstance(total_num_tokens, (int, np.integer)):
        host_total, device_total = int64_arg(total_num_tokens, "total_num_tokens"), None
    else:
        device_total = as_device_array(total_num_tokens, "total_num_tokens")
        if device_total.dtype != "int64" or len(device_total.shape) > 1 or (device_total.shape or (1,))[0] != 1:
            raise ValueError(
                f"total_num_tokens must be an int or a device int64 scalar, got {device_total.dtype} "
                f"shape {list(device_total.shape)}"
            )
        require_same_device(p, "probs", device_total, "total_num_tokens")
        host_total = 0
    if out is None:
        out = (None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError("out must be a tuple (loss, const_buf)")
    loss, loss_array = output(out[0], "out[0] (loss)", p, "probs", (), p.dtype)
    const_buf, const_array = output(out[1], "out[1] (const_buf)", p, "probs", (1,), "float32")
    needed = aux_loss_workspace_size(num_rows, num_cols)
    if workspace is None:
        workspace = zeros(p, (max(needed, 1),), "uint8")
    ws = as_device_array(workspace, "workspace")
    require(ws, "workspace", (None,), ("uint8",))
    require_same_device(p, "probs", ws, "workspace")
    status = launch(
        p.framework, p.device_id, stream, lib.moekit_aux_loss_forward,
        p.ptr, MOEKIT_DTYPES[p.dtype], num_rows, num_cols,
        tokens.ptr, MOEKIT_DTYPES[tokens.dtype],
        host_total, None if device_total is None else device_total.ptr,
        int64_arg(num_experts, "num_experts"), int64_arg(topk, "topk"), float_arg(coeff, "coeff"),
        loss_array.ptr, const_array.ptr, ws.ptr, ws.shape[0], stream,
    )  # fmt: skip
    _lib.check(status)
    return loss, const_buf


def aux_loss_backward(const_buf, tokens_per_expert, grad_loss, num_rows, *, out=None, stream=None):
    """Gradient of the aux loss w.r.t. probs -> grad_probs [num_rows, C] in grad_loss' dtype:
    const_buf[0] * tokens_per_expert[c] * grad_loss (grad_loss: a device scalar)."""
    cb = as_device_array(const_buf, "const_buf")
    require(cb, "const_buf", (1,), ("float32",))
    stream = stream_handle(stream, cb)
    tokens = as_device_array(tokens_per_expert, "tokens_per_expert")
    require(tokens, "tokens_per_expert", (None,), _TOKEN_DTYPES)
    require_same_device(cb, "const_buf", tokens, "tokens_per_expert")
    g = as_device_array(grad_loss, "grad_loss")
    if len(g.shape) > 1 or (g.shape or (1,))[0] != 1:
        raise ValueError(f"grad_loss must be a scalar (shape [] or [1]), got shape {list(g.shape)}")
    require(g, "grad_loss", g.shape, FLOAT_DTYPES)
    require_same_device(cb, "const_buf", g, "grad_loss")
    num_rows = int64_arg(num_rows, "num_rows")
    num_cols = tokens.shape[0]
    grad_probs, grad_array = output(out, "out", cb, "const_buf", (max(num_rows, 0), num_cols), g.dtype)
    status = launch(
        cb.framework, cb.device_id, stream, lib.moekit_aux_loss_backward,
        cb.ptr, tokens.ptr, MOEKIT_DTYPES[tokens.dtype], num_rows, num_cols,
        g.ptr, MOEKIT_DTYPES[g.dtype], grad_array.ptr, stream,
    )  # fmt: skip
    _lib.check(status)
    return grad_probs
