"""The router and the aux-loss scores in one call (SPEC.md sections 1 and 2 on the same logits, as a
Megatron router computes them): the forward reads the logits once where the two passes share a row
layout; the backward sums both gradients in fp32 and writes grad_logits once.
"""

from . import _lib
from ._array import choice, input_like, launch
from ._lib import lib
from .aux import _MAP_FORMATS as _AUX_MAP_FORMATS
from .aux import scores_outputs
from .router import _Backward, _Forward

__all__ = ["router_aux_forward", "router_aux_backward"]

_AUX_NAMES = ("aux_scores", "aux_routing_map", "aux_intermediate")


def router_aux_forward(
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
    aux_map_format="bytemap",
    out=None,
    stream=None,
):
    """router_topk_forward and aux_scores_forward of the same logits [T, E], topk and score_function
    -> (probs, routing_map_or_indices, intermediate, aux_scores, aux_routing_map, aux_intermediate),
    bit for bit the two ops' outputs. out: an optional 6-tuple to write into."""
    aux_map_code = choice(aux_map_format, "aux_map_format", _AUX_MAP_FORMATS)
    f = _Forward(logits, topk, score_function, use_pre_softmax, num_groups, group_topk, scaling_factor,
                 expert_bias, map_format, index_dtype, out, stream, n_out=6)
    aux, aux_args = scores_outputs(f.x, aux_map_format, aux_map_code, f.out, _AUX_NAMES, 3)
    status = launch(f.x.framework, f.x.device_id, f.stream, lib.moekit_router_aux_forward, *f.args, *aux_args,
                    f.stream)
    _lib.check(status)
    return (f.probs, f.selection, f.intermediate, *aux)


def router_aux_backward(
    grad_probs,
    intermediate,
    routing_map_or_indices,
    grad_aux_scores,
    aux_intermediate,
    topk,
    *,
    score_function,
    use_pre_softmax=False,
    scaling_factor=1.0,
    map_format="bytemap",
    out=None,
    stream=None,
):
    """router_topk_backward(grad_probs, ...) + aux_scores_backward(grad_aux_scores, aux_intermediate)
    -> grad_logits [T, E] in grad_probs' dtype, the two summed in fp32 and rounded once.
    grad_aux_scores and aux_intermediate: float32 [T, E]."""
    b = _Backward(grad_probs, intermediate, routing_map_or_indices, topk, score_function, use_pre_softmax,
                  scaling_factor, map_format, out, stream)
    shape = b.grad.shape
    grad_aux = input_like(grad_aux_scores, "grad_aux_scores", b.grad, "grad_probs", shape, ("float32",))
    saved_aux = input_like(aux_intermediate, "aux_intermediate", b.grad, "grad_probs", shape, ("float32",))
    status = launch(b.grad.framework, b.grad.device_id, b.stream, lib.moekit_router_aux_backward, *b.args,
                    grad_aux.ptr, saved_aux.ptr, b.grad_logits_array.ptr, b.stream)
    _lib.check(status)
    return b.grad_logits
