"""GPU tests of the router + aux-scores pair (moekit.router_aux_forward / router_aux_backward): its
forward gives exactly the single ops' bits (moekit.router_topk_forward and moekit.aux_scores_forward
on the same logits), fused or not, every output element written; its backward equals the sum of the
two single backwards up to the one rounding it saves, and the float64 oracle within tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from moekit._hooks import tuning

from _util import (POISON_PATTERNS, as_float64, first_difference, poisoned, relative_norm_error, rounded,
                   row_relative_errors, same_bits, to_device, to_host)

pytestmark = pytest.mark.gpu

# (E, K, score, pre, groups, bias): the Megatron shapes (fused team rows), warp and block rows, the
# wide-rows router (two launches), groups with a bias.
CASES = [
    (128, 8, "softmax", False, (0, 0), False),
    (128, 8, "softmax", True, (0, 0), False),
    (64, 6, "softmax", False, (0, 0), False),
    (256, 8, "sigmoid", False, (8, 4), True),
    (160, 4, "sqrtsoftplus", False, (0, 0), False),
    (40, 2, "sigmoid", False, (0, 0), False),
    (1024, 8, "sqrtsoftplus", False, (0, 0), False),
    (4096, 16, "softmax", False, (0, 0), False),
    (512, 22, "softmax", False, (0, 0), False),
    (128, 32, "softmax", False, (0, 0), False),
]
DTYPES = ("float32", "bfloat16", "float16")


def _forward(x, K, score, pre, groups, bias, map_format, out=None):
    import moekit

    return moekit.router_aux_forward(x, K, score_function=score, use_pre_softmax=pre, num_groups=groups[0],
                                     group_topk=groups[1], expert_bias=bias, scaling_factor=2.5 if groups[0] else 1.0,
                                     map_format=map_format, aux_map_format="bitmap" if K % 2 else "bytemap", out=out)


def _singles(x, K, score, pre, groups, bias, map_format):
    import moekit

    router = moekit.router_topk_forward(x, K, score_function=score, use_pre_softmax=pre, num_groups=groups[0],
                                        group_topk=groups[1], expert_bias=bias,
                                        scaling_factor=2.5 if groups[0] else 1.0, map_format=map_format)
    aux = moekit.aux_scores_forward(x, K, score_function=score, map_format="bitmap" if K % 2 else "bytemap")
    return (*router, *aux)


def _poison_like(results, pattern):
    return tuple(poisoned(tuple(r.shape), str(r.dtype).rpartition(".")[2], pattern) for r in results)


def _assert_same(got, want, names):
    for g, w, name in zip(got, want, names):
        assert same_bits(g, w), f"{name} differs at {first_difference(g, w)}"


NAMES = ("probs", "routing", "intermediate", "aux_scores", "aux_map", "aux_intermediate")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E, K, score, pre, groups, with_bias", CASES)
def test_forward_equals_the_single_ops(E, K, score, pre, groups, with_bias, dtype, rng):
    import torch

    T = 1031
    x = to_device(rounded(rng.standard_normal((T, E)) * 2.0, dtype))
    bias = to_device(rng.standard_normal(E).astype(np.float32) * 0.1) if with_bias else None
    map_format = "indices" if E == 4096 else "bytemap"
    want = _singles(x, K, score, pre, groups, bias, map_format)
    got = _forward(x, K, score, pre, groups, bias, map_format)
    _assert_same(got, want, NAMES)
    for pattern in POISON_PATTERNS:  # every element written
        _assert_same(_forward(x, K, score, pre, groups, bias, map_format, out=_poison_like(want, pattern)), want,
                     NAMES)
    with tuning({"router.pair_fused": 0}):  # the two-launch path gives the same bits
        _assert_same(_forward(x, K, score, pre, groups, bias, map_format), want, NAMES)
    torch.cuda.synchronize()


@pytest.mark.parametrize("T", [0, 1, 3, 70000])
def test_forward_sizes(T, rng):
    x = to_device(rounded(rng.standard_normal((T, 256)), "bfloat16"))
    got = _forward(x, 8, "sigmoid", False, (8, 4), None, "bytemap")
    want = _singles(x, 8, "sigmoid", False, (8, 4), None, "bytemap")
    assert all(tuple(g.shape) == tuple(w.shape) for g, w in zip(got, want))
    _assert_same(got, want, NAMES)


def _backward_case(T, E, K, score, pre, dtype, rng, map_format="bytemap"):
    import moekit
    from moekit import reference as ref

    x_host = rounded(rng.standard_normal((T, E)) * 2.0, dtype)
    x = to_device(x_host)
    probs, routing, inter, aux, _, aux_inter = moekit.router_aux_forward(
        x, K, score_function=score, use_pre_softmax=pre, map_format=map_format)
    g = to_device(rounded(rng.standard_normal((T, E)), dtype))
    g_aux = to_device(rng.standard_normal((T, E)).astype(np.float32))

    def run(out=None):
        return moekit.router_aux_backward(g, inter, routing, g_aux, aux_inter, K, score_function=score,
                                          use_pre_softmax=pre, map_format=map_format, out=out)

    got = run()
    for pattern in POISON_PATTERNS:  # every element written, deterministic
        again = run(poisoned((T, E), dtype, pattern))
        assert same_bits(got, again), f"differs at {first_difference(got, again)}"
    if T == 0:
        return
    # the two single backwards, each rounded to the dtype, then added in fp32
    parts = [moekit.router_topk_backward(g, inter, routing, K, score_function=score, use_pre_softmax=pre,
                                         map_format=map_format).float(),
             moekit.aux_scores_backward(g_aux, aux_inter, score_function=score, out_dtype=dtype).float()]
    single = parts[0] + parts[1]
    # Each part carries its own rounding: where the two nearly cancel, the sum's error is relative to
    # the parts' sizes, not to the (small) sum.
    part_norms = sum(np.linalg.norm(as_float64(to_host(t)), axis=1) for t in parts)

    def host(t):
        return as_float64(to_host(t))

    want = ref.router_aux_backward(host(g), host(inter), to_host(routing), host(g_aux), host(aux_inter), K,
                                   score_function=score, use_pre_softmax=pre, map_format=map_format)
    _check_grad(host(got), want, dtype, "the oracle")
    _check_grad(host(got), as_float64(single.cpu().numpy()), dtype, "the two single backwards", part_norms)


GRAD_TOLERANCE = {"float32": (1e-5, 1e-4), "bfloat16": (1e-2, 2e-2), "float16": (1e-2, 2e-2)}  # as test_router_gpu


def _check_grad(got, want, dtype, what, row_floor=0.0):
    """Relative-norm error over the whole gradient, and per row (rows with a tiny gradient judged
    against the typical row, or against row_floor where larger), as the router's GPU tests do."""
    total_tol, row_tol = GRAD_TOLERANCE[dtype]
    error = relative_norm_error(got, want)
    assert error < total_tol, f"grad_logits relative-norm error {error:.3g} against {what}"
    norms = np.linalg.norm(want, axis=1)
    per_row = row_relative_errors(got, want, np.maximum(1e-2 * float(np.median(norms)), row_floor))
    assert (per_row < row_tol).all(), f"row {int(np.argmax(per_row))}: error {per_row.max():.3g} against {what}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E, K, score, pre", [(128, 8, "softmax", False), (128, 8, "softmax", True),
                                              (256, 8, "sigmoid", False), (1024, 16, "sqrtsoftplus", False),
                                              (4096, 8, "sigmoid", False), (33, 3, "softmax", False)])
def test_backward(E, K, score, pre, dtype, rng):
    _backward_case(1031, E, K, score, pre, dtype, rng)


@pytest.mark.parametrize("map_format", ["bitmap", "indices"])
def test_backward_selection_formats(map_format, rng):
    _backward_case(517, 128, 8, "softmax", False, "bfloat16", rng, map_format=map_format)


@pytest.mark.parametrize("T", [0, 1, 70000])
def test_backward_sizes(T, rng):
    _backward_case(T, 128, 8, "softmax", False, "bfloat16", rng)


# ---- moekit.torch.fused_topk_and_score_for_moe_aux_loss ------------------------------------------

def _megatron_step(fn, logits, w, w_aux):
    """A Megatron router step: the probs and aux scores feed a loss, whose gradient reaches the logits."""
    probs, routing_map, aux_scores, aux_map = fn(logits)
    loss = (probs.float() * w).sum() + (aux_scores * w_aux).sum()
    loss.backward()
    return probs, routing_map, aux_scores, aux_map


@pytest.mark.parametrize("score, dtype", [("softmax", "bfloat16"), ("sigmoid", "float32"), ("sqrtsoftplus", "float16")])
def test_torch_op_matches_the_te_pair(score, dtype, rng):
    import torch

    import moekit.torch as mt

    T, E, K = 777, 128, 8
    x = to_device(rounded(rng.standard_normal((T, E)), dtype))
    w, w_aux = (to_device(rng.standard_normal((T, E)).astype(np.float32)) for _ in range(2))

    def pair(logits):
        return mt.fused_topk_and_score_for_moe_aux_loss(logits, K, score_function=score)

    def two_calls(logits):
        probs, routing_map = mt.fused_topk_with_score_function(logits, K, score_function=score)
        aux_map, aux_scores = mt.fused_compute_score_for_moe_aux_loss(logits, K, score)
        return probs, routing_map, aux_scores, aux_map

    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    got = _megatron_step(pair, a, w, w_aux)
    want = _megatron_step(two_calls, b, w, w_aux)
    _assert_same(got, want, ("probs", "routing_map", "aux_scores", "aux_map"))
    tol = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}[dtype]
    assert torch.allclose(a.grad.float(), b.grad.float(), rtol=tol, atol=tol * float(b.grad.abs().max()))

    # fullgraph compile and a CUDA graph give the eager bits
    compiled = torch.compile(pair, fullgraph=True)
    c = x.clone().requires_grad_()
    _assert_same(_megatron_step(compiled, c, w, w_aux), got, ("probs", "routing_map", "aux_scores", "aux_map"))
    assert same_bits(c.grad, a.grad)

    static = x.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        _megatron_step(pair, static, w, w_aux)
    torch.cuda.current_stream().wait_stream(stream)
    static.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _megatron_step(pair, static, w, w_aux)
    for _ in range(2):
        with torch.no_grad():
            static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        _assert_same(out, got, ("probs", "routing_map", "aux_scores", "aux_map"))
        assert same_bits(static.grad, a.grad)
