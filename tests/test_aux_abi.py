"""The aux-loss entry points' argument validation through ctypes, with fake device pointers: no
GPU needed (CI). Every invalid call is refused with INVALID_ARGUMENT before any CUDA call, with a
message naming the op, the argument and its value."""

import ctypes

import pytest

from moekit import _lib
from moekit._lib import DType, MapFormat, ScoreFunction, Status

from test_abi import abi_caller, assert_invalid, assert_invalid_op

LOGITS, SCORES, MAP, INTER, GRAD, GRAD_LOGITS, PROBS, TOKENS, LOSS, CONST, WS, NDEV = (
    0x10000 * (i + 1) for i in range(12))

SCORES_FWD = dict(
    logits=LOGITS, logits_dtype=DType.BF16, num_tokens=4, num_experts=8, topk=2,
    score_function=ScoreFunction.SIGMOID, scores=SCORES, routing_map=MAP, map_format=MapFormat.BYTEMAP,
    intermediate=INTER, stream=None,
)  # fmt: skip
SCORES_BWD = dict(
    grad_scores=GRAD, intermediate=INTER, num_tokens=4, num_experts=8, score_function=ScoreFunction.SOFTMAX,
    grad_logits=GRAD_LOGITS, grad_logits_dtype=DType.F16, stream=None,
)  # fmt: skip
LOSS_FWD = dict(
    probs=PROBS, probs_dtype=DType.F32, num_rows=4, num_cols=16, tokens_per_expert=TOKENS,
    tokens_dtype=DType.I64, total_num_tokens=100, total_num_tokens_device=None, num_experts=8, topk=2,
    coeff=0.01, loss=LOSS, const_buf=CONST, workspace=WS, workspace_bytes=1 << 20, stream=None,
)  # fmt: skip
LOSS_BWD = dict(
    const_buf=CONST, tokens_per_expert=TOKENS, tokens_dtype=DType.I32, num_rows=4, num_cols=16, grad_loss=LOSS,
    grad_dtype=DType.BF16, grad_probs=PROBS, stream=None,
)  # fmt: skip

CALLS = {
    "aux_scores_forward": (SCORES_FWD, "moekit_aux_scores_forward"),
    "aux_scores_backward": (SCORES_BWD, "moekit_aux_scores_backward"),
    "aux_loss_forward": (LOSS_FWD, "moekit_aux_loss_forward"),
    "aux_loss_backward": (LOSS_BWD, "moekit_aux_loss_backward"),
}


call = abi_caller(CALLS)


INVALID = {
    "scores: null logits": ("aux_scores_forward", dict(logits=None), "logits", None),
    "scores: null scores": ("aux_scores_forward", dict(scores=None), "scores", None),
    "scores: null intermediate": ("aux_scores_forward", dict(intermediate=None), "intermediate", None),
    "scores: null map": ("aux_scores_forward", dict(routing_map=None), "routing_map", None),
    "scores: map_format none": ("aux_scores_forward", dict(map_format=MapFormat.NONE), "map_format", 0),
    "scores: map_format 5": ("aux_scores_forward", dict(map_format=5), "map_format", 5),
    "scores: topk 0": ("aux_scores_forward", dict(topk=0), "topk", 0),
    "scores: topk > E": ("aux_scores_forward", dict(topk=9), "topk", 9),
    "scores: E 0": ("aux_scores_forward", dict(num_experts=0, topk=1), "num_experts", 0),
    "scores: E above max": ("aux_scores_forward", dict(num_experts=16385), "num_experts", 16385),
    "scores: T < 0": ("aux_scores_forward", dict(num_tokens=-2), "num_tokens", -2),
    "scores: int32 logits": ("aux_scores_forward", dict(logits_dtype=DType.I32), "logits_dtype", "int32"),
    "scores: score 9": ("aux_scores_forward", dict(score_function=9), "score_function", 9),
    "scores: T*E overflow": ("aux_scores_forward", dict(num_tokens=2**62), "num_tokens", None),
    "scores: misaligned scores": ("aux_scores_forward", dict(scores=SCORES + 2), "scores", None),
    "scores bwd: null grad": ("aux_scores_backward", dict(grad_scores=None), "grad_scores", None),
    "scores bwd: null intermediate": ("aux_scores_backward", dict(intermediate=None), "intermediate", None),
    "scores bwd: null grad_logits": ("aux_scores_backward", dict(grad_logits=None), "grad_logits", None),
    "scores bwd: u8 out": ("aux_scores_backward", dict(grad_logits_dtype=DType.U8), "grad_logits_dtype", "uint8"),
    "scores bwd: score -1": ("aux_scores_backward", dict(score_function=-1), "score_function", -1),
    "loss: C % E": ("aux_loss_forward", dict(num_experts=6), "num_cols", 16),
    "loss: N 0": ("aux_loss_forward", dict(total_num_tokens=0), "total_num_tokens", 0),
    "loss: N < 0": ("aux_loss_forward", dict(total_num_tokens=-5), "total_num_tokens", -5),
    "loss: K 0": ("aux_loss_forward", dict(topk=0), "topk", 0),
    "loss: K > E": ("aux_loss_forward", dict(topk=9), "topk", 9),
    "loss: E 0": ("aux_loss_forward", dict(num_experts=0), "num_experts", 0),
    "loss: R < 0": ("aux_loss_forward", dict(num_rows=-1), "num_rows", -1),
    "loss: C 0": ("aux_loss_forward", dict(num_cols=0), "num_cols", 0),
    "loss: R*C overflow": ("aux_loss_forward", dict(num_rows=2**60, num_cols=16), "num_rows", None),
    "loss: null probs": ("aux_loss_forward", dict(probs=None), "probs", None),
    "loss: null tokens": ("aux_loss_forward", dict(tokens_per_expert=None), "tokens_per_expert", None),
    "loss: u8 tokens": ("aux_loss_forward", dict(tokens_dtype=DType.U8), "tokens_dtype", "uint8"),
    "loss: f16 tokens": ("aux_loss_forward", dict(tokens_dtype=DType.F16), "tokens_dtype", "float16"),
    "loss: i32 probs": ("aux_loss_forward", dict(probs_dtype=DType.I32), "probs_dtype", "int32"),
    "loss: null loss": ("aux_loss_forward", dict(loss=None), "loss", None),
    "loss: null const_buf": ("aux_loss_forward", dict(const_buf=None), "const_buf", None),
    "loss: null workspace": ("aux_loss_forward", dict(workspace=None), "workspace", None),
    "loss: small workspace": ("aux_loss_forward", dict(workspace_bytes=16), "workspace_bytes", 16),
    "loss: misaligned workspace": ("aux_loss_forward", dict(workspace=WS + 8), "workspace", None),
    "loss: misaligned device N": ("aux_loss_forward", dict(total_num_tokens_device=NDEV + 4),
                                  "total_num_tokens_device", None),
    "loss bwd: null const_buf": ("aux_loss_backward", dict(const_buf=None), "const_buf", None),
    "loss bwd: null grad_loss": ("aux_loss_backward", dict(grad_loss=None), "grad_loss", None),
    "loss bwd: null grad_probs": ("aux_loss_backward", dict(grad_probs=None), "grad_probs", None),
    "loss bwd: i64 grad": ("aux_loss_backward", dict(grad_dtype=DType.I64), "grad_dtype", "int64"),
    "loss bwd: u8 tokens": ("aux_loss_backward", dict(tokens_dtype=DType.U8), "tokens_dtype", "uint8"),
    "loss bwd: R < 0": ("aux_loss_backward", dict(num_rows=-3), "num_rows", -3),
}  # fmt: skip


@pytest.mark.parametrize("op, changes, names, value", INVALID.values(), ids=INVALID.keys())
def test_invalid_argument(op, changes, names, value):
    assert_invalid_op(call(op, **changes), op, names, value)


def test_zero_sizes_launch_nothing():
    # T == 0 scores and R == 0 backward: success, nothing launched (no GPU here)
    assert call("aux_scores_forward", num_tokens=0) == Status.SUCCESS, _lib.last_error()
    assert call("aux_loss_backward", num_rows=0, grad_probs=None) == Status.SUCCESS, _lib.last_error()


def test_workspace_size_query():
    size = ctypes.c_size_t(0)
    assert _lib.lib.moekit_aux_loss_workspace_size(65536, 256, ctypes.addressof(size)) == Status.SUCCESS
    assert size.value >= 256 + 4 * (65536 * 256 // 8192)  # one float per f32 chunk
    small = ctypes.c_size_t(0)
    assert _lib.lib.moekit_aux_loss_workspace_size(0, 8, ctypes.addressof(small)) == Status.SUCCESS
    assert 4 <= small.value <= size.value
    assert_invalid(_lib.lib.moekit_aux_loss_workspace_size(4, 0, ctypes.addressof(small)), "num_cols", 0)
    assert_invalid(_lib.lib.moekit_aux_loss_workspace_size(4, 8, None), "bytes")


def test_python_errors_name_the_argument():
    import numpy as np

    import moekit

    with pytest.raises((ValueError, TypeError), match="logits"):
        moekit.aux_scores_forward(np.zeros((4, 8), np.float32), 2)  # host memory
    with pytest.raises(ValueError, match="score_function"):
        moekit.aux_scores_forward(np.zeros((4, 8), np.float32), 2, score_function="relu")
    with pytest.raises(ValueError, match="map_format"):
        moekit.aux_scores_forward(np.zeros((4, 8), np.float32), 2, map_format="indices")
    with pytest.raises((ValueError, TypeError), match="probs"):
        moekit.aux_loss_forward(np.zeros((4, 8), np.float32), np.zeros(8, np.int32), 10, 8, 2, 0.1)
