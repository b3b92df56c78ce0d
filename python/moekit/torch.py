"""PyTorch integration: torch.library custom ops with fake (meta) kernels and autograd, so that the
router and the aux loss work under torch.compile(fullgraph=True) and CUDA-graph capture, plus drop-in wrappers
named after TransformerEngine's fused router and aux-loss functions.

The ops call the C entry points directly with data_ptr() (the generic interop layer in _array is
for arrays of any framework and costs more per call), allocate with torch, and launch on
torch.cuda.current_stream() (switching devices only where the tensors' is not current).
"""

from typing import Optional, Tuple

import torch

from . import _lib
from ._array import choice, launch, torch_current_stream
from ._lib import DType, MapFormat
from .aux import aux_loss_workspace_size
from .router import SCORE_FUNCTIONS

from ._torch_ffn import add_rmsnorm_, quant_fp8, rmsnorm, shared_expert_gate_, silu_mul_quant_fp8  # noqa: E402
from ._torch_routing import grouped_topk  # noqa: E402 - serving engines' names (vLLM / sglang)

__all__ = ["fused_topk_with_score_function", "fused_compute_score_for_moe_aux_loss", "fused_moe_aux_loss",
           "fused_topk_and_score_for_moe_aux_loss", "grouped_topk", "silu_mul_quant_fp8", "quant_fp8", "shared_expert_gate_", "add_rmsnorm_", "rmsnorm"]

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


def _bias_arg(expert_bias, logits):
    """-> (the bias kept alive, its pointer, its moekit dtype); (None, None, F32) without one."""
    if expert_bias is None:
        return None, None, DType.F32
    num_experts = logits.shape[1]
    if expert_bias.device != logits.device:
        raise ValueError(f"expert_bias is on {expert_bias.device} but logits on {logits.device}")
    if expert_bias.shape != (num_experts,):
        raise ValueError(f"expert_bias must have shape [{num_experts}], got {list(expert_bias.shape)}")
    bias_dtype = _FLOAT_DTYPES.get(expert_bias.dtype)
    if bias_dtype is None:
        raise ValueError(f"expert_bias must be float32, float16 or bfloat16, got {expert_bias.dtype}")
    expert_bias = expert_bias.contiguous()
    return expert_bias, expert_bias.data_ptr(), bias_dtype


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
    expert_bias, bias_ptr, bias_dtype = _bias_arg(expert_bias, logits)
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


# ---- aux-loss scores and aux loss (SPEC sections 2, 3) -------------------------------------------

_AUX_MAP_FORMATS = {"bytemap": MapFormat.BYTEMAP, "bitmap": MapFormat.BITMAP}
_TOKEN_DTYPES = {torch.int32: DType.I32, torch.int64: DType.I64, torch.float32: DType.F32, torch.bfloat16: DType.BF16}


def _aux_map_shape(shape, map_format):
    return (shape[0], (shape[1] + 7) // 8) if map_format == "bitmap" else tuple(shape)


@torch.library.custom_op("moekit::aux_scores_forward", mutates_args=())
def aux_scores_forward(
    logits: torch.Tensor, topk: int, score_function: str, map_format: str
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (scores [T, E] float32, routing_map (bool [T, E] or uint8 bitmap), intermediate float32)."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    map_code = choice(map_format, "map_format", _AUX_MAP_FORMATS)
    logits, logits_dtype = _float_cuda_2d(logits, "logits")
    num_tokens, num_experts = logits.shape
    scores = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    map_dtype = torch.uint8 if map_format == "bitmap" else torch.bool
    routing_map = torch.empty(_aux_map_shape(logits.shape, map_format), dtype=map_dtype, device=logits.device)
    intermediate = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    device = logits.get_device()
    stream = torch_current_stream(device)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_aux_scores_forward,
        logits.data_ptr(), logits_dtype, num_tokens, num_experts, topk, score_code,
        scores.data_ptr(), routing_map.data_ptr(), map_code, intermediate.data_ptr(), stream,
    )  # fmt: skip
    _lib.check(status)
    return scores, routing_map, intermediate


@aux_scores_forward.register_fake
def _aux_scores_forward_fake(logits, topk, score_function, map_format):
    choice(score_function, "score_function", SCORE_FUNCTIONS)
    choice(map_format, "map_format", _AUX_MAP_FORMATS)
    map_dtype = torch.uint8 if map_format == "bitmap" else torch.bool
    return (
        logits.new_empty(logits.shape, dtype=torch.float32),
        logits.new_empty(_aux_map_shape(logits.shape, map_format), dtype=map_dtype),
        logits.new_empty(logits.shape, dtype=torch.float32),
    )


@torch.library.custom_op("moekit::aux_scores_backward", mutates_args=())
def aux_scores_backward(
    grad_scores: torch.Tensor, intermediate: torch.Tensor, score_function: str, out_dtype: torch.dtype
) -> torch.Tensor:
    """-> grad_logits [T, E] in out_dtype (the logits' dtype)."""
    score_code = choice(score_function, "score_function", SCORE_FUNCTIONS)
    out_code = _FLOAT_DTYPES.get(out_dtype)
    if out_code is None:
        raise ValueError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    grad_scores = grad_scores.contiguous().float()
    if intermediate.shape != grad_scores.shape or intermediate.dtype != torch.float32:
        raise ValueError(f"intermediate must be float32 {list(grad_scores.shape)}, got {intermediate.dtype} "
                         f"{list(intermediate.shape)}")
    intermediate = intermediate.contiguous()
    grad_logits = torch.empty(grad_scores.shape, dtype=out_dtype, device=grad_scores.device)
    device = grad_scores.get_device()
    stream = torch_current_stream(device)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_aux_scores_backward,
        grad_scores.data_ptr(), intermediate.data_ptr(), grad_scores.shape[0], grad_scores.shape[1],
        score_code, grad_logits.data_ptr(), out_code, stream,
    )  # fmt: skip
    _lib.check(status)
    return grad_logits


@aux_scores_backward.register_fake
def _aux_scores_backward_fake(grad_scores, intermediate, score_function, out_dtype):
    return grad_scores.new_empty(grad_scores.shape, dtype=out_dtype)


def _aux_scores_setup_context(ctx, inputs, output):
    logits, _, score_function, _ = inputs
    _, routing_map, intermediate = output
    ctx.save_for_backward(intermediate)
    ctx.mark_non_differentiable(routing_map, intermediate)
    ctx.options = (score_function, logits.dtype)


def _aux_scores_backward_rule(ctx, grad_scores, grad_routing_map, grad_intermediate):
    (intermediate,) = ctx.saved_tensors
    if grad_scores is None or not ctx.needs_input_grad[0]:
        return None, None, None, None
    score_function, logits_dtype = ctx.options
    return aux_scores_backward(grad_scores, intermediate, score_function, logits_dtype), None, None, None


aux_scores_forward.register_autograd(_aux_scores_backward_rule, setup_context=_aux_scores_setup_context)


def fused_compute_score_for_moe_aux_loss(
    logits: torch.Tensor, topk: int, score_function: str, routing_map_format: str = "bytemap"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """TransformerEngine-compatible aux-loss scores: -> (routing_map, scores float32 [T, E]).

    Differentiable w.r.t. logits. Unlike TransformerEngine, sigmoid / sqrtsoftplus scores are
    normalized over all experts at every topk (SPEC section 2), K = 1 included.
    """
    fmt = {1: "bytemap", 2: "bitmap", "bitmap_u8": "bitmap"}.get(routing_map_format, routing_map_format)
    scores, routing_map, _ = aux_scores_forward(logits, topk, score_function, fmt)
    return routing_map, scores


_WORKSPACES = {}  # (device, stream) -> a zero-filled uint8 workspace the aux loss leaves zero-filled


def _aux_loss_workspace(device, stream, needed):
    """A workspace for the aux loss on `stream`: cached per (device, stream), or, while a CUDA graph
    is being captured, a new zero-filled one (its memset is captured with the kernel)."""
    needed = max(needed, 1)
    if torch.cuda.is_current_stream_capturing():
        return torch.zeros(needed, dtype=torch.uint8, device=device)
    key = (device, stream)
    workspace = _WORKSPACES.get(key)
    if workspace is None or workspace.numel() < needed:
        workspace = torch.zeros(max(needed, 2 * (0 if workspace is None else workspace.numel())),
                                dtype=torch.uint8, device=device)
        _WORKSPACES[key] = workspace
    return workspace


def _tokens_cuda(tokens, probs):
    code = _TOKEN_DTYPES.get(tokens.dtype)
    if code is None or tokens.device != probs.device or tokens.shape != (probs.shape[1],):
        raise ValueError(
            f"tokens_per_expert must be an int32, int64, float32 or bfloat16 tensor of shape "
            f"[{probs.shape[1]}] on {probs.device}, got {tokens.dtype} {list(tokens.shape)} on {tokens.device}"
        )
    return tokens.contiguous(), code


@torch.library.custom_op("moekit::aux_loss_forward", mutates_args=())
def aux_loss_forward(
    probs: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    total_num_tokens: int,
    total_num_tokens_device: Optional[torch.Tensor],
    num_experts: int,
    topk: int,
    coeff: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (loss, a 0-d tensor in probs' dtype; const_buf float32 [1])."""
    probs, probs_dtype = _float_cuda_2d(probs, "probs")
    tokens, tokens_dtype = _tokens_cuda(tokens_per_expert, probs)
    device_ptr = None
    if total_num_tokens_device is not None:
        if total_num_tokens_device.dtype != torch.int64 or total_num_tokens_device.numel() != 1 or (
            total_num_tokens_device.device != probs.device
        ):
            raise ValueError(f"total_num_tokens must be an int or an int64 scalar tensor on {probs.device}")
        device_ptr = total_num_tokens_device.data_ptr()
    num_rows, num_cols = probs.shape
    loss = torch.empty((), dtype=probs.dtype, device=probs.device)
    const_buf = torch.empty(1, dtype=torch.float32, device=probs.device)
    device = probs.get_device()
    stream = torch_current_stream(device)
    needed = aux_loss_workspace_size(num_rows, num_cols)
    workspace = _aux_loss_workspace(device, stream, needed)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_aux_loss_forward,
        probs.data_ptr(), probs_dtype, num_rows, num_cols, tokens.data_ptr(), tokens_dtype,
        total_num_tokens, device_ptr, num_experts, topk, coeff,
        loss.data_ptr(), const_buf.data_ptr(), workspace.data_ptr(), workspace.numel(), stream,
    )  # fmt: skip
    _lib.check(status)
    return loss, const_buf


@aux_loss_forward.register_fake
def _aux_loss_forward_fake(probs, tokens_per_expert, total_num_tokens, total_num_tokens_device, num_experts, topk,
                           coeff):
    return probs.new_empty(()), probs.new_empty((1,), dtype=torch.float32)


@torch.library.custom_op("moekit::aux_loss_backward", mutates_args=())
def aux_loss_backward(
    const_buf: torch.Tensor, tokens_per_expert: torch.Tensor, grad_loss: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """-> grad_probs [num_rows, C] in grad_loss' dtype."""
    code = _TOKEN_DTYPES.get(tokens_per_expert.dtype)
    grad_dtype = _FLOAT_DTYPES.get(grad_loss.dtype)
    if code is None or grad_dtype is None or grad_loss.numel() != 1:
        raise ValueError(f"tokens_per_expert ({tokens_per_expert.dtype}) or grad_loss ({grad_loss.dtype} "
                         f"{list(grad_loss.shape)}) has an unsupported dtype or shape")
    tokens = tokens_per_expert.contiguous()
    grad_loss = grad_loss.contiguous()
    grad_probs = torch.empty((num_rows, tokens.shape[0]), dtype=grad_loss.dtype, device=grad_loss.device)
    device = grad_loss.get_device()
    stream = torch_current_stream(device)
    status = launch(
        "torch", device, stream, _lib.lib.moekit_aux_loss_backward,
        const_buf.data_ptr(), tokens.data_ptr(), code, num_rows, tokens.shape[0],
        grad_loss.data_ptr(), grad_dtype, grad_probs.data_ptr(), stream,
    )  # fmt: skip
    _lib.check(status)
    return grad_probs


@aux_loss_backward.register_fake
def _aux_loss_backward_fake(const_buf, tokens_per_expert, grad_loss, num_rows):
    return grad_loss.new_empty((num_rows, tokens_per_expert.shape[0]))


def _aux_loss_setup_context(ctx, inputs, output):
    probs, tokens_per_expert = inputs[0], inputs[1]
    _, const_buf = output
    ctx.save_for_backward(const_buf, tokens_per_expert)
    ctx.mark_non_differentiable(const_buf)
    ctx.num_rows = probs.shape[0]


def _aux_loss_backward_rule(ctx, grad_loss, grad_const_buf):
    const_buf, tokens_per_expert = ctx.saved_tensors
    grad_probs = None
    if grad_loss is not None and ctx.needs_input_grad[0]:
        grad_probs = aux_loss_backward(const_buf, tokens_per_expert, grad_loss, ctx.num_rows)
    return grad_probs, None, None, None, None, None, None


aux_loss_forward.register_autograd(_aux_loss_backward_rule, setup_context=_aux_loss_setup_context)


def fused_moe_aux_loss(
    probs: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    total_num_tokens,
    num_experts: int,
    topk: int,
    coeff: float,
) -> torch.Tensor:
    """TransformerEngine-compatible aux loss: -> loss, a scalar tensor in probs' dtype.

    total_num_tokens: an int, or a 0-d int64 CUDA tensor (read on the GPU: CUDA-graph safe).
    Deterministic: the same bits on every run. Differentiable w.r.t. probs.
    """
    if isinstance(total_num_tokens, torch.Tensor):
        loss, _ = aux_loss_forward(probs, tokens_per_expert, 0, total_num_tokens, num_experts, topk, float(coeff))
    else:
        loss, _ = aux_loss_forward(probs, tokens_per_expert, int(total_num_tokens), None, num_experts, topk,
                                   float(coeff))
    return loss


# The router and the aux-loss scores in one op (after the single ops: it uses their backwards).
from ._torch_router_aux import fused_topk_and_score_for_moe_aux_loss  # noqa: E402
