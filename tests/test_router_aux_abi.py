"""The router + aux-scores pair's argument validation through ctypes, with fake device pointers: no
GPU needed (CI). Each invalid call is refused with INVALID_ARGUMENT before any CUDA call, with a
message naming the pair's op, the argument and its value; the router's own rules apply unchanged."""

import numpy as np
import pytest

from moekit import _hooks, _lib
from moekit._lib import DType, MapFormat, ScoreFunction, Status

from test_abi import abi_caller, assert_invalid_op

# 1 MiB apart: the pair's overlap checks see distinct buffers
(LOGITS, PROBS, MAP, INDICES, INTER, AUX_SCORES, AUX_MAP, AUX_INTER, GRAD, GRAD_AUX, GRAD_LOGITS) = (
    0x100000 * (i + 1) for i in range(11))

FWD = dict(
    logits=LOGITS, logits_dtype=DType.BF16, num_tokens=4, num_experts=8, topk=2,
    score_function=ScoreFunction.SOFTMAX, use_pre_softmax=0, num_groups=0, group_topk=0, scaling_factor=1.0,
    expert_bias=None, bias_dtype=DType.F32, probs=PROBS, routing_map=MAP, map_format=MapFormat.BYTEMAP,
    topk_indices=None, index_dtype=DType.I32, intermediate=INTER, aux_scores=AUX_SCORES, aux_routing_map=AUX_MAP,
    aux_map_format=MapFormat.BITMAP, aux_intermediate=AUX_INTER, stream=None,
)  # fmt: skip
BWD = dict(
    grad_probs=GRAD, grad_dtype=DType.BF16, num_tokens=4, num_experts=8, intermediate=INTER, routing_map=MAP,
    map_format=MapFormat.BYTEMAP, topk_indices=None, index_dtype=DType.I32, topk=2,
    score_function=ScoreFunction.SIGMOID, use_pre_softmax=0, scaling_factor=1.0, grad_aux_scores=GRAD_AUX,
    aux_intermediate=AUX_INTER, grad_logits=GRAD_LOGITS, stream=None,
)  # fmt: skip
CALLS = {"router_aux_forward": (FWD, "moekit_router_aux_forward"),
         "router_aux_backward": (BWD, "moekit_router_aux_backward")}
call = abi_caller(CALLS)

F, B = "router_aux_forward", "router_aux_backward"
INVALID = {
    "null logits": (F, dict(logits=None), "logits", None),
    "K > E": (F, dict(topk=9), "topk", 9),
    "E 0": (F, dict(num_experts=0), "num_experts", 0),
    "score 7": (F, dict(score_function=7), "score_function", 7),
    "pre with sigmoid": (F, dict(score_function=ScoreFunction.SIGMOID, use_pre_softmax=1), "use_pre_softmax", None),
    "groups": (F, dict(num_groups=3, group_topk=1), "num_groups", 3),
    "bias with softmax": (F, dict(expert_bias=0x7000000), "expert_bias", None),
    "u8 logits": (F, dict(logits_dtype=DType.U8), "logits_dtype", "uint8"),
    "null probs": (F, dict(probs=None), "probs", None),
    "no router selection": (F, dict(routing_map=None, map_format=MapFormat.NONE), "routing_map", None),
    "null aux_scores": (F, dict(aux_scores=None), "aux_scores", None),
    "null aux map": (F, dict(aux_routing_map=None), "aux_routing_map", None),
    "aux map none": (F, dict(aux_map_format=MapFormat.NONE), "aux_map_format", 0),
    "aux map 4": (F, dict(aux_map_format=4), "aux_map_format", 4),
    "null aux_intermediate": (F, dict(aux_intermediate=None), "aux_intermediate", None),
    "misaligned aux_scores": (F, dict(aux_scores=AUX_SCORES + 2), "aux_scores", None),
    "aux_scores on probs": (F, dict(aux_scores=PROBS + 16), ("probs", "aux_scores"), None),
    "aux intermediate on intermediate": (F, dict(aux_intermediate=INTER), "aux_intermediate", None),
    "aux map on map": (F, dict(aux_routing_map=MAP + 1), "aux_routing_map", None),
    "T*E overflow": (F, dict(num_tokens=2**62), "num_tokens", None),
    "bwd: null grad_probs": (B, dict(grad_probs=None), "grad_probs", None),
    "bwd: null grad_aux": (B, dict(grad_aux_scores=None), "grad_aux_scores", None),
    "bwd: null aux_intermediate": (B, dict(aux_intermediate=None), "aux_intermediate", None),
    "bwd: misaligned grad_aux": (B, dict(grad_aux_scores=GRAD_AUX + 2), "grad_aux_scores", None),
    "bwd: map and indices": (B, dict(topk_indices=0x7000000), ("routing_map", "topk_indices"), None),
    "bwd: i32 grad": (B, dict(grad_dtype=DType.I32), "grad_dtype", "int32"),
    "bwd: K 0": (B, dict(topk=0), "topk", 0),
}  # fmt: skip


@pytest.mark.parametrize("op, changes, names, value", INVALID.values(), ids=INVALID.keys())
def test_invalid_argument(op, changes, names, value):
    assert_invalid_op(call(op, **changes), op, names, value)


def test_zero_tokens_launch_nothing():
    assert call(F, num_tokens=0) == Status.SUCCESS, _lib.last_error()
    assert call(B, num_tokens=0) == Status.SUCCESS, _lib.last_error()


def test_bitmaps_side_by_side_do_not_overlap():
    # a bitmap is T * ceil(E / 8) bytes: two of them may sit 4 bytes apart at T = 4, E = 8
    with _hooks.plan_only():
        status = call(F, map_format=MapFormat.BITMAP, aux_routing_map=MAP + 4)
    assert status == Status.SUCCESS, _lib.last_error()
    with _hooks.plan_only():
        assert_invalid_op(call(F, map_format=MapFormat.BITMAP, aux_routing_map=MAP + 3), F, "aux_routing_map")


def test_python_errors_name_the_argument():
    import moekit

    with pytest.raises((ValueError, TypeError), match="logits"):
        moekit.router_aux_forward(np.zeros((4, 8), np.float32), 2)  # host memory
    with pytest.raises(ValueError, match="aux_map_format"):
        moekit.router_aux_forward(np.zeros((4, 8), np.float32), 2, aux_map_format="indices")
