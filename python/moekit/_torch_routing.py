"""torch.library custom op for the inference routing (SPEC.md section 4), with a fake impl so that it
captures in CUDA graphs and compiles, and the wrapper with serving engines' argument names (vLLM and
sglang `grouped_topk`). Re-exported by moekit.torch."""

from typing import Optional, Tuple

import torch

from . import _lib
from ._array import choice, launch, torch_current_stream
from ._lib import DType, ScoreFunction

_FLOAT_DTYPES = {torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16}
_SCORES = {"sigmoid": ScoreFunction.SIGMOID, "softmax": ScoreFunction.SOFTMAX}


@torch.library.custom_op("moekit::grouped_topk", mutates_args=())
def grouped_topk_op(
    logits: torch.Tensor,
    bias: Optional[torch.Tensor],
    topk: int,
    num_groups: int,
    topk_group: int,
    score_function: str,
    renormalize: bool,
    routed_scaling_factor: float,
    apply_scale: bool,
    num_shared: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (weights [T, K + S] float32, ids [T, K + S] int32)."""
    score = choice(score_function, "score_function", _SCORES)
    if logits.device.type != "cuda" or logits.dim() != 2 or logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits must be a 2-D float CUDA tensor, got {logits.dtype} {list(logits.shape)} "
                         f"on {logits.device}")
    logits = logits.contiguous()
    num_tokens, num_experts = logits.shape
    bias_ptr, bias_dtype = None, DType.F32
    if bias is not None:
        if bias.device != logits.device or bias.shape != (num_experts,) or bias.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"e_score_correction_bias must be a float [{num_experts}] tensor on {logits.device}")
        bias = bias.contiguous()
        bias_ptr, bias_dtype = bias.data_ptr(), _FLOAT_DTYPES[bias.dtype]
    slots = max(topk + num_shared, 0)
    weights = torch.empty((num_tokens, slots), dtype=torch.float32, device=logits.device)
    ids = torch.empty((num_tokens, slots), dtype=torch.int32, device=logits.device)
    device = logits.device.index
    stream = torch_current_stream(device)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_grouped_topk,
        logits.data_ptr(), _FLOAT_DTYPES[logits.dtype], num_tokens, num_experts, bias_ptr, bias_dtype,
        topk, num_groups, topk_group, score, int(renormalize), routed_scaling_factor, int(apply_scale), num_shared,
        weights.data_ptr(), ids.data_ptr(), DType.I32, stream,
    )  # fmt: skip
    _lib.check(status)
    return weights, ids


@grouped_topk_op.register_fake
def _(logits, bias, topk, num_groups, topk_group, score_function, renormalize, routed_scaling_factor, apply_scale,
      num_shared):
    slots = max(topk + num_shared, 0)
    return (logits.new_empty((logits.shape[0], slots), dtype=torch.float32),
            logits.new_empty((logits.shape[0], slots), dtype=torch.int32))


def grouped_topk(hidden_states, gating_output, topk, renormalize, num_expert_group=0, topk_group=0,
                 scoring_func="softmax", routed_scaling_factor=1.0, e_score_correction_bias=None, num_fused_shared=0):
    """vLLM's / sglang's grouped_topk with moekit's one-launch kernel -> (topk_weights float32,
    topk_ids int32) [T, topk (+ num_fused_shared)]. hidden_states only fixes the number of tokens."""
    if hidden_states.shape[0] != gating_output.shape[0]:
        raise ValueError(f"hidden_states has {hidden_states.shape[0]} tokens but gating_output "
                         f"{gating_output.shape[0]}")
    groups = num_expert_group or 1
    if groups > 1 and e_score_correction_bias is None:
        # vLLM / sglang score a group by its maximum when there is no correction bias (DeepSeek-V2);
        # moekit's kernel (SPEC section 4) sums its two largest keys.
        raise NotImplementedError("grouped_topk: num_expert_group > 1 without e_score_correction_bias (groups "
                                  "scored by their maximum, DeepSeek-V2) is not supported; moekit scores groups by "
                                  "the sum of their two largest keys (DeepSeek-V3)")
    return torch.ops.moekit.grouped_topk(
        gating_output, e_score_correction_bias, int(topk), int(groups), int(topk_group or groups), scoring_func,
        bool(renormalize), float(routed_scaling_factor), routed_scaling_factor != 1.0, int(num_fused_shared))
