"""NumPy float64 oracle of SPEC.md sections 2 and 3: the aux-loss scores and the aux loss."""

import numpy as np

from ._router import (
    EPS,
    SOFTPLUS_LINEAR_ABOVE,
    _as_float64,
    _as_int,
    _check_num_experts,
    _check_score_function,
    _check_topk,
    _encode_selection,
    _sigmoid,
    _softmax,
    _sqrtsoftplus,
    router_topk_backward,
    router_topk_forward,
    topk_order,
)

__all__ = ["aux_scores_forward", "aux_scores_backward", "aux_loss_forward", "aux_loss_backward",
           "router_aux_forward", "router_aux_backward"]

AUX_MAP_FORMATS = ("bytemap", "bitmap")


def _row_sum(a):
    return np.sum(a, axis=1, keepdims=True)


def aux_scores_forward(logits, topk, *, score_function="softmax", map_format="bytemap"):
    """SPEC section 2 forward: (scores f64 [T, E], routing map, intermediate f64 [T, E]).

    softmax: scores = softmax(x), intermediate = scores; sigmoid / sqrtsoftplus: y (or v) divided by
    (its sum over all E + 1e-20) at every K, intermediate y (sigmoid) or x (sqrtsoftplus). The map
    marks the top-K scores (bytemap bool [T, E] or bitmap uint8 [T, ceil(E/8)]).
    """
    x = _as_float64(logits, "logits", 2)
    num_experts = x.shape[1]
    _check_num_experts(num_experts, "logits")
    topk = _check_topk(topk, num_experts)
    score_function, _ = _check_score_function(score_function, False)
    if not isinstance(map_format, str) or map_format not in AUX_MAP_FORMATS:
        raise ValueError(f"map_format must be one of {AUX_MAP_FORMATS}, got {map_format!r}")
    with np.errstate(all="ignore"):
        if score_function == "softmax":
            scores = _softmax(x)
            intermediate = scores.copy()
        else:
            values = _sigmoid(x) if score_function == "sigmoid" else _sqrtsoftplus(x)
            scores = values / (_row_sum(values) + EPS)
            intermediate = values if score_function == "sigmoid" else x.copy()
        selected = topk_order(scores, topk)
    return scores, _encode_selection(selected, num_experts, map_format, None), intermediate


def aux_scores_backward(grad_scores, intermediate, *, score_function, out_dtype=None):
    """SPEC section 2 backward: grad_logits float64 [T, E] (out_dtype is the GPU op's; ignored)."""
    del out_dtype
    g = _as_float64(grad_scores, "grad_scores", 2)
    saved = _as_float64(intermediate, "intermediate", 2)
    if saved.shape != g.shape:
        raise ValueError(f"intermediate shape {saved.shape} must equal grad_scores shape {g.shape}")
    score_function, _ = _check_score_function(score_function, False)
    with np.errstate(all="ignore"):
        if score_function == "softmax":
            return saved * (g - _row_sum(g * saved))
        values = saved if score_function == "sigmoid" else _sqrtsoftplus(saved)
        denom = _row_sum(values) + EPS
        h = g / denom - _row_sum(g * values) / (denom * denom)
        if score_function == "sigmoid":
            return h * values * (1.0 - values)
        slope = np.where(saved > SOFTPLUS_LINEAR_ABOVE, 1.0, _sigmoid(saved))
        return h * slope / (2.0 * values + EPS)


def router_aux_forward(logits, topk, *, score_function="softmax", use_pre_softmax=False, num_groups=0,
                       group_topk=0, scaling_factor=1.0, expert_bias=None, map_format="bytemap",
                       index_dtype="int32", aux_map_format="bytemap"):
    """The router and the aux-loss scores of the same logits, topk and score function: the six outputs
    of router_topk_forward and aux_scores_forward."""
    router = router_topk_forward(logits, topk, score_function=score_function, use_pre_softmax=use_pre_softmax,
                                 num_groups=num_groups, group_topk=group_topk, scaling_factor=scaling_factor,
                                 expert_bias=expert_bias, map_format=map_format, index_dtype=index_dtype)
    aux = aux_scores_forward(logits, topk, score_function=score_function, map_format=aux_map_format)
    return (*router, *aux)


def router_aux_backward(grad_probs, intermediate, routing_map_or_indices, grad_aux_scores, aux_intermediate, topk, *,
                        score_function, use_pre_softmax=False, scaling_factor=1.0, map_format="bytemap"):
    """grad_logits float64: the router's backward plus the aux-loss scores' backward."""
    return router_topk_backward(grad_probs, intermediate, routing_map_or_indices, topk, score_function=score_function,
                                use_pre_softmax=use_pre_softmax, scaling_factor=scaling_factor,
                                map_format=map_format) + \
        aux_scores_backward(grad_aux_scores, aux_intermediate, score_function=score_function)


def _aux_loss_options(num_cols, total_num_tokens, num_experts, topk):
    num_experts = _as_int(num_experts, "num_experts")
    if num_experts < 1:
        raise ValueError(f"num_experts ({num_experts}) must be >= 1")
    if num_cols % num_experts:
        raise ValueError(f"num_cols ({num_cols}) must be a multiple of num_experts ({num_experts})")
    topk = _check_topk(topk, num_experts)
    total = _as_int(total_num_tokens, "total_num_tokens")
    if total <= 0:
        raise ValueError(f"total_num_tokens ({total}) must be > 0")
    return num_experts, topk, total


def aux_loss_forward(probs, tokens_per_expert, total_num_tokens, num_experts, topk, coeff):
    """SPEC section 3 forward: (loss, a float64 0-d array; const_buf float64 [1] = C_coef)."""
    p = _as_float64(probs, "probs", 2)
    tokens = np.asarray(tokens_per_expert).astype(np.float64)
    if tokens.shape != (p.shape[1],):
        raise ValueError(f"tokens_per_expert must have shape ({p.shape[1]},), got {tokens.shape}")
    num_experts, topk, total = _aux_loss_options(p.shape[1], total_num_tokens, num_experts, topk)
    coef = num_experts * float(coeff) / (topk * float(total) * float(total))
    with np.errstate(all="ignore"):
        loss = coef * np.sum(np.sum(p, axis=0) * tokens)
    return np.asarray(loss, dtype=np.float64), np.array([coef])


def aux_loss_backward(const_buf, tokens_per_expert, grad_loss, num_rows):
    """SPEC section 3 backward: grad_probs float64 [num_rows, C] = C_coef * tokens[c] * grad_loss."""
    coef = float(np.asarray(const_buf, dtype=np.float64).reshape(-1)[0])
    tokens = np.asarray(tokens_per_expert).astype(np.float64)
    if tokens.ndim != 1:
        raise ValueError(f"tokens_per_expert must be 1-D, got shape {tokens.shape}")
    num_rows = _as_int(num_rows, "num_rows")
    if num_rows < 0:
        raise ValueError(f"num_rows ({num_rows}) must be >= 0")
    g = float(np.asarray(grad_loss, dtype=np.float64).reshape(-1)[0])
    return np.broadcast_to(coef * tokens * g, (num_rows, tokens.shape[0])).copy()
