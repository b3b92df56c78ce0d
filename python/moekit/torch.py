"""PyTorch integration: torch.library custom ops with fake (meta) kernels and autograd, so that the
router works under torch.compile(fullgraph=True) and CUDA-graph capture, plus drop-in wrappers
named after TransformerEngine's fused router functions.

The ops call the C entry points directly with data_ptr() (the generic interop layer in _array is
for arrays of any framework and costs more per call), allocate with torch, and launch on
torch.cuda.current_stream() (switching devices only where the tensors' is not current).
"""

from typing import Optional, Tuple

import torch

from . import _lib
from ._array import choice, launch, torch_current_stream
from ._lib import DType, MapFormat
from .router import SCORE_FUNCTIONS

__all__ = ["fused_topk_with_score_function"]

_FLOAT_DTYPES = {torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16}


def _float_cuda_2d(tensor, name):
    """Validate a [T, E] float CUDA tensor; returns it C-contiguous with its moekit dtype."""
    if tensor.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor, got a tensor on {tensor.device}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_tokens, num_experts], got shape {list(tensor.shape)}")
    dtype = _FLOAT_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    return tensor.contiguous(), dtype


@torch.library.custom_op("moekit::router_topk_forward", mutates_args=())
def router_topk_forward(
    logits: torch.Tensor,
    topk: int,
    score_function: str,
    use_pre_softmax: bool,
    num_groups: int,
    group_topk: int,
    scaling_factor: float,
    expert_bias: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (probs [T, E] logits dtype, routing_map [T, E] bool, intermediate [T, E] float32)."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    logits, logits_dtype = _float_cuda_2d(logits, "logits")
    num_tokens, num_experts = logits.shape
    bias_ptr, bias_dtype = None, DType.F32
    if expert_bias is not None:
        if expert_bias.device != logits.device:
            raise ValueError(f"expert_bias is on {expert_bias.device} but logits on {logits.device}")
        if expert_bias.shape != (num_experts,):
            raise ValueError(f"expert_bias must have shape [{num_experts}], got {list(expert_bias.shape)}")
        bias_dtype = _FLOAT_DTYPES.get(expert_bias.dtype)
        if bias_dtype is None:
            raise ValueError(f"expert_bias must be float32, float16 or bfloat16, got {expert_bias.dtype}")
        expert_bias = expert_bias.contiguous()
        bias_ptr = expert_bias.data_ptr()
    probs = torch.empty_like(logits)
    routing_map = torch.empty((num_tokens, num_experts), dtype=torch.bool, device=logits.device)
    intermediate = torch.empty((num_tokens, num_experts), dtype=torch.float32, device=logits.device)
    device = logits.get_device()
    stream = torch_current_stream(device)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_router_topk_forward,
        logits.data_ptr(), logits_dtype, num_tokens, num_experts,
        topk, score_code, use_pre_softmax,
        num_groups, group_topk, scaling_factor,
        bias_ptr, bias_dtype,
        probs.data_ptr(), routing_map.data_ptr(), MapFormat.BYTEMAP,
        None, DType.I32,
        intermediate.data_ptr(), stream,
    )  # fmt: skip
    _lib.check(status)
    return probs, routing_map, intermediate


@router_topk_forward.register_fake
def _router_topk_forward_fake(
    logits, topk, score_function, use_pre_softmax, num_groups, group_topk, scaling_factor, expert_bias
):
    choice(score_function, "score_function", SCORE_FUNCTIONS)  # fail while tracing, not at run time
    shape = logits.shape
    return (
        logits.new_empty(shape),
        logits.new_empty(shape, dtype=torch.bool),
        logits.new_empty(shape, dtype=torch.float32),
    )


@torch.library.custom_op("moekit::router_topk_backward", mutates_args=())
def router_topk_backward(
    grad_probs: torch.Tensor,
    intermediate: torch.Tensor,
    routing_map: torch.Tensor,
    topk: int,
    score_function: str,
    use_pre_softmax: bool,
    scaling_factor: float,
) -> torch.Tensor:
    """-> grad_logits [T, E] in grad_probs' dtype, from the forward's intermediate and routing map."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    grad_probs, grad_dtype = _float_cuda_2d(grad_probs, "grad_probs")
    shape = grad_probs.shape
    for tensor, name, dtypes in (
        (intermediate, "intermediate", (torch.float32,)),
        (routing_map, "routing_map", (torch.bool, torch.uint8)),
    ):
        if tensor.device != grad_probs.device or tensor.shape != shape or tensor.dtype not in dtypes:
            raise ValueError(
                f"{name} must be a {' or '.join(map(str, dtypes))} tensor of shape {list(shape)} on "
                f"{grad_probs.device}, got {tensor.dtype} {list(tensor.shape)} on {tensor.device}"
            )
    intermediate = intermediate.contiguous()
    routing_map = routing_map.contiguous()
    grad_logits = torch.empty_like(grad_probs)
    device = grad_probs.get_device()
    stream = torch_current_stream(device)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_router_topk_backward,
        grad_probs.data_ptr(), grad_dtype, shape[0], shape[1],
        intermediate.data_ptr(),
        routing_map.data_ptr(), MapFormat.BYTEMAP,
        None, DType.I32,
        topk, score_code, use_pre_softmax,
        scaling_factor, grad_logits.data_ptr(), stream,
    )  # fmt: skip
    _lib.check(status)
    return grad_logits


@router_topk_backward.register_fake
def _router_topk_backward_fake(
    grad_probs, intermediate, routing_map, topk, score_function, use_pre_softmax, scaling_factor
):
    return grad_probs.new_empty(grad_probs.shape)


def _forward_setup_context(ctx, inputs, output):
    _, topk, score_function, use_pre_softmax, _, _, scaling_factor, _ = inputs
    _, routing_map, intermediate = output
    ctx.save_for_backward(intermediate, routing_map)
    ctx.mark_non_differentiable(routing_map, intermediate)
    ctx.options = (topk, score_function, use_pre_softmax, scaling_factor)


def _forward_backward(ctx, grad_probs, grad_routing_map, grad_intermediate):
    intermediate, routing_map = ctx.saved_tensors
    grad_logits = None
    if grad_probs is not None and ctx.needs_input_grad[0]:
        grad_logits = router_topk_backward(grad_probs, intermediate, routing_map, *ctx.options)
    # expert_bias only moves the selection: no gradient flows to it (as in TransformerEngine).
    return grad_logits, None, None, None, None, None, None, None


router_topk_forward.register_autograd(_forward_backward, setup_context=_forward_setup_context)


def fused_topk_with_score_function(
    logits: torch.Tensor,
    topk: int,
    use_pre_softmax: bool = False,
    num_groups: Optional[int] = None,
    group_topk: Optional[int] = None,
    scaling_factor: Optional[float] = None,
    score_function: str = "softmax",
    expert_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """TransformerEngine-compatible router: -> (probs [T, E], routing_map [T, E] bool).

    None means what it means in TransformerEngine: no group-limited routing, scaling 1.0.
    Differentiable w.r.t. logits.
    """
    probs, routing_map, _ = router_topk_forward(
        logits,
        topk,
        score_function,
        use_pre_softmax,
        0 if num_groups is None else num_groups,
        0 if group_topk is None else group_topk,
        1.0 if scaling_factor is None else float(scaling_factor),
        expert_bias,
    )
    return probs, routing_map
