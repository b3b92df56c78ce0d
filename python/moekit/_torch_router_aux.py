"""moekit.torch's router + aux-scores op: a Megatron router's top-k probs and its aux-loss scores from
one read of the logits (moekit_router_aux_forward), and one backward pass for both gradients. A
torch.library op with a fake kernel and autograd, as the single ops in moekit.torch."""

from typing import Optional, Tuple

import torch

from . import _lib
from ._array import choice, launch, torch_current_stream
from ._lib import DType, MapFormat
from .router import SCORE_FUNCTIONS
from .torch import _bias_arg, _float_cuda_2d, aux_scores_backward, router_topk_backward


@torch.library.custom_op("moekit::router_aux_forward", mutates_args=())
def router_aux_forward(
    logits: torch.Tensor,
    topk: int,
    score_function: str,
    use_pre_softmax: bool,
    num_groups: int,
    group_topk: int,
    scaling_factor: float,
    expert_bias: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (probs, routing_map bool, intermediate, aux_scores float32, aux_routing_map bool, aux_intermediate)."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    logits, logits_dtype = _float_cuda_2d(logits, "logits")
    num_tokens, num_experts = logits.shape
    expert_bias, bias_ptr, bias_dtype = _bias_arg(expert_bias, logits)
    shape, device = logits.shape, logits.device
    probs = torch.empty_like(logits)
    routing_map = torch.empty(shape, dtype=torch.bool, device=device)
    intermediate = torch.empty(shape, dtype=torch.float32, device=device)
    aux_scores = torch.empty(shape, dtype=torch.float32, device=device)
    aux_map = torch.empty(shape, dtype=torch.bool, device=device)
    aux_intermediate = torch.empty(shape, dtype=torch.float32, device=device)
    index = logits.get_device()
    stream = torch_current_stream(index)
    status = launch(
        "torch", index, stream, _lib.lib.moekit_router_aux_forward,
        logits.data_ptr(), logits_dtype, num_tokens, num_experts,
        topk, score_code, use_pre_softmax,
        num_groups, group_topk, scaling_factor,
        bias_ptr, bias_dtype,
        probs.data_ptr(), routing_map.data_ptr(), MapFormat.BYTEMAP,
        None, DType.I32, intermediate.data_ptr(),
        aux_scores.data_ptr(), aux_map.data_ptr(), MapFormat.BYTEMAP, aux_intermediate.data_ptr(), stream,
    )  # fmt: skip
    _lib.check(status)
    return probs, routing_map, intermediate, aux_scores, aux_map, aux_intermediate


@router_aux_forward.register_fake
def _router_aux_forward_fake(logits, topk, score_function, use_pre_softmax, num_groups, group_topk, scaling_factor,
                             expert_bias):
    choice(score_function, "score_function", SCORE_FUNCTIONS)
    shape = logits.shape
    return (logits.new_empty(shape), logits.new_empty(shape, dtype=torch.bool),
            logits.new_empty(shape, dtype=torch.float32), logits.new_empty(shape, dtype=torch.float32),
            logits.new_empty(shape, dtype=torch.bool), logits.new_empty(shape, dtype=torch.float32))


@torch.library.custom_op("moekit::router_aux_backward", mutates_args=())
def router_aux_backward(
    grad_probs: torch.Tensor,
    intermediate: torch.Tensor,
    routing_map: torch.Tensor,
    grad_aux_scores: torch.Tensor,
    aux_intermediate: torch.Tensor,
    topk: int,
    score_function: str,
    use_pre_softmax: bool,
    scaling_factor: float,
) -> torch.Tensor:
    """-> grad_logits [T, E] in grad_probs' dtype: both gradients summed in fp32, rounded once."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    grad_probs, grad_dtype = _float_cuda_2d(grad_probs, "grad_probs")
    shape = grad_probs.shape
    grad_aux_scores = grad_aux_scores.contiguous().float()
    for tensor, name in ((intermediate, "intermediate"), (grad_aux_scores, "grad_aux_scores"),
                         (aux_intermediate, "aux_intermediate")):
        if tensor.device != grad_probs.device or tensor.shape != shape or tensor.dtype != torch.float32:
            raise ValueError(f"{name} must be a float32 tensor of shape {list(shape)} on {grad_probs.device}, got "
                             f"{tensor.dtype} {list(tensor.shape)} on {tensor.device}")
    if routing_map.shape != shape or routing_map.dtype not in (torch.bool, torch.uint8):
        raise ValueError(f"routing_map must be a bool tensor of shape {list(shape)}, got {routing_map.dtype} "
                         f"{list(routing_map.shape)}")
    intermediate, aux_intermediate, routing_map = (t.contiguous() for t in (intermediate, aux_intermediate,
                                                                           routing_map))
    grad_logits = torch.empty_like(grad_probs)
    index = grad_probs.get_device()
    stream = torch_current_stream(index)
    status = launch(
        "torch", index, stream, _lib.lib.moekit_router_aux_backward,
        grad_probs.data_ptr(), grad_dtype, shape[0], shape[1],
        intermediate.data_ptr(), routing_map.data_ptr(), MapFormat.BYTEMAP, None, DType.I32,
        topk, score_code, use_pre_softmax, scaling_factor,
        grad_aux_scores.data_ptr(), aux_intermediate.data_ptr(), grad_logits.data_ptr(), stream,
    )  # fmt: skip
    _lib.check(status)
    return grad_logits


@router_aux_backward.register_fake
def _router_aux_backward_fake(grad_probs, intermediate, routing_map, grad_aux_scores, aux_intermediate, topk,
                              score_function, use_pre_softmax, scaling_factor):
    return grad_probs.new_empty(grad_probs.shape)


def _setup_context(ctx, inputs, output):
    logits, topk, score_function, use_pre_softmax, _, _, scaling_factor, _ = inputs
    _, routing_map, intermediate, _, aux_map, aux_intermediate = output
    ctx.save_for_backward(intermediate, routing_map, aux_intermediate)
    ctx.mark_non_differentiable(routing_map, intermediate, aux_map, aux_intermediate)
    ctx.options = (topk, score_function, use_pre_softmax, scaling_factor)
    ctx.logits_dtype = logits.dtype


def _backward(ctx, grad_probs, grad_map, grad_intermediate, grad_aux, grad_aux_map, grad_aux_intermediate):
    none = (None,) * 7
    if not ctx.needs_input_grad[0] or (grad_probs is None and grad_aux is None):
        return (None, *none)
    intermediate, routing_map, aux_intermediate = ctx.saved_tensors
    topk, score_function, use_pre_softmax, scaling_factor = ctx.options
    if grad_aux is None:
        return (router_topk_backward(grad_probs, intermediate, routing_map, *ctx.options), *none)
    if grad_probs is None:
        return (aux_scores_backward(grad_aux, aux_intermediate, score_function, ctx.logits_dtype), *none)
    return (router_aux_backward(grad_probs, intermediate, routing_map, grad_aux, aux_intermediate, topk,
                                score_function, use_pre_softmax, scaling_factor), *none)


router_aux_forward.register_autograd(_backward, setup_context=_setup_context)


def fused_topk_and_score_for_moe_aux_loss(
    logits: torch.Tensor,
    topk: int,
    use_pre_softmax: bool = False,
    num_groups: Optional[int] = None,
    group_topk: Optional[int] = None,
    scaling_factor: Optional[float] = None,
    score_function: str = "softmax",
    expert_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """fused_topk_with_score_function and fused_compute_score_for_moe_aux_loss on the same logits in one
    op: -> (probs, routing_map, aux_scores float32, aux_routing_map), bit for bit the two calls' outputs,
    from one read of the logits; the backward computes both gradients in one pass. Differentiable
    w.r.t. logits through probs and aux_scores."""
    probs, routing_map, _, aux_scores, aux_map, _ = router_aux_forward(
        logits, topk, score_function, use_pre_softmax, 0 if num_groups is None else num_groups,
        0 if group_topk is None else group_topk, 1.0 if scaling_factor is None else float(scaling_factor),
        expert_bias)
    return probs, routing_map, aux_scores, aux_map
