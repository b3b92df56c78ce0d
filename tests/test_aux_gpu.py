"""GPU tests of the aux-loss scores (SPEC section 2) and the aux loss (section 3) against the NumPy
float64 oracle moekit.reference, plus the torch wrappers (TransformerEngine's names).

Every case runs the op three times, into fresh arrays and into out= buffers poisoned with two
patterns that differ in every byte: the three results must be bitwise equal (every element
written, deterministic). The aux loss must also give the same bits over 10 runs and over grid
sizes, and be right under CUDA-graph replay with the token count read on the device.
"""

from __future__ import annotations

import numpy as np
import pytest

from moekit._hooks import PRESETS, tuning

from _util import (
    FLOAT_DTYPES,
    NUMPY_DTYPES,
    POISON_PATTERNS,
    as_float64,
    first_difference,
    poisoned,
    rounded,
    same_bits,
    to_device,
    to_host,
)

pytestmark = pytest.mark.gpu

SCORES = ("softmax", "sigmoid", "sqrtsoftplus")
TIE_RTOL = 1e-4  # reference scores closer than this at the K-th place may be ordered either way by fp32
REF_MAX_ELEMENTS = 1 << 21  # rows beyond this many elements: a sample is compared with the reference


def _sample_rows(T, E, rng):
    if T * E <= REF_MAX_ELEMENTS:
        return np.arange(T)
    count = max(8, REF_MAX_ELEMENTS // E)
    return np.unique(np.concatenate([[0, T - 1], rng.integers(0, T, count)]))


def _logits(T, E, dtype, rng):
    return rounded(rng.standard_normal((T, E)) * 2.0, dtype)


def _three_runs(run, make_out):
    """run(out) three times: fresh, into "nan" poison, into "bytes" poison; all bitwise equal."""
    results = [run(None)] + [run(make_out(pattern)) for pattern in POISON_PATTERNS]
    for other in results[1:]:
        for a, b in zip(results[0] if isinstance(results[0], tuple) else (results[0],),
                        other if isinstance(other, tuple) else (other,)):
            assert same_bits(a, b), f"differs at {first_difference(a, b)} (unwritten element or non-determinism)"
    return results[0]


# ---- aux-loss scores ----------------------------------------------------------------------------

def run_aux_scores_case(T, E, K, score, dtype, rng, map_format="bytemap"):
    import torch

    import moekit
    from moekit import reference as ref

    x_host = _logits(T, E, dtype, rng)
    x = to_device(x_host)
    map_shape = (T, (E + 7) // 8) if map_format == "bitmap" else (T, E)
    map_dtype = "uint8" if map_format == "bitmap" else "bool"
    scores, routing_map, inter = _three_runs(
        lambda out: moekit.aux_scores_forward(x, K, score_function=score, map_format=map_format, out=out),
        lambda p: (poisoned((T, E), "float32", p), poisoned(map_shape, map_dtype, p), poisoned((T, E), "float32", p)),
    )
    if T == 0:
        return
    bytemap = routing_map if map_format == "bytemap" else None
    if bytemap is not None:
        counts = bytemap.to(torch.int32).sum(dim=1)
        assert bool((counts == K).all()), f"rows without exactly {K} experts: {torch.nonzero(counts != K)[:5]}"
    rows = _sample_rows(T, E, rng)
    r_scores, r_map, r_inter = ref.aux_scores_forward(x_host[rows], K, score_function=score, map_format=map_format)
    got_scores = as_float64(to_host(scores)[rows])
    np.testing.assert_allclose(got_scores, r_scores, rtol=2e-5, atol=1e-7, err_msg="scores")
    np.testing.assert_allclose(as_float64(to_host(inter)[rows]), r_inter, rtol=2e-5, atol=1e-7, err_msg="intermediate")
    got_map = to_host(routing_map)[rows]
    if map_format == "bitmap":
        got_map = ref.bitmap_to_bytemap(got_map, E)
        r_map = ref.bitmap_to_bytemap(r_map, E)
    differ = np.nonzero((got_map != r_map).any(axis=1))[0]
    if differ.size:
        # only near-ties may differ, and the device's set must still be a top-K of the scores
        ordered = -np.sort(-r_scores[differ], axis=1)
        kth, next_ = ordered[:, K - 1], ordered[:, K] if K < E else ordered[:, K - 1]
        near = np.abs(kth - next_) <= TIE_RTOL * np.maximum(np.abs(kth), 1e-30)
        assert near.all(), f"rows {rows[differ[~near]][:5]} select other experts than the reference"
        picked_min = np.where(got_map[differ], r_scores[differ], np.inf).min(axis=1)
        assert (picked_min >= kth * (1 - TIE_RTOL) - 1e-30).all(), "a near-tie row picked a non-top-K expert"

    # backward, fed the device's own intermediate
    g_host = rng.standard_normal((T, E)).astype(np.float32)
    g = to_device(g_host)
    grad = _three_runs(
        lambda out: moekit.aux_scores_backward(g, inter, score_function=score, out_dtype=dtype, out=out),
        lambda p: poisoned((T, E), dtype, p),
    )
    r_grad = ref.aux_scores_backward(g_host[rows], to_host(inter)[rows], score_function=score)
    got = as_float64(to_host(grad)[rows])
    scale = np.linalg.norm(r_grad, axis=1) + 1e-30
    err = np.linalg.norm(got - r_grad, axis=1) / scale
    tol = 1e-5 if dtype == "float32" else 1e-2
    assert err.max() <= tol, f"grad rows {rows[np.argsort(-err)[:3]]} relative error {err.max():.2e} > {tol}"


MATRIX = [(E, K) for E in (32, 128, 256, 1024) for K in (1, 4, 8, 16, 32) if K <= E]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("E, K", MATRIX)
def test_aux_scores_matrix(E, K, score, dtype, rng):
    run_aux_scores_case(2048, E, K, score, dtype, rng)


@pytest.mark.parametrize("T", [0, 1, 7168, 14234, 70000])
@pytest.mark.parametrize("E, K", [(128, 8), (256, 16), (1024, 32)])
@pytest.mark.parametrize("score", SCORES)
def test_aux_scores_sizes(T, E, K, score, rng):
    run_aux_scores_case(T, E, K, score, "bfloat16", rng)


@pytest.mark.parametrize("E, K", [(7, 3), (100, 6), (257, 8), (520, 9), (1500, 4), (4096, 33), (16384, 8)])
@pytest.mark.parametrize("map_format", ["bytemap", "bitmap"])
def test_aux_scores_odd_sizes_and_bitmap(E, K, map_format, rng):
    for score in SCORES:
        run_aux_scores_case(37, E, K, score, "float32", rng, map_format=map_format)


@pytest.mark.parametrize("preset", PRESETS)
def test_aux_scores_every_topk_path(preset, rng):
    with tuning(preset):
        for score in SCORES:
            run_aux_scores_case(300, 256, 8, score, "float32", rng)
            run_aux_scores_case(300, 64, 4, score, "bfloat16", rng)


def test_aux_scores_ties_take_lowest_index(rng):
    import torch

    import moekit

    # every logit equal: the K lowest experts, on every path
    for preset in [None, *PRESETS]:
        with tuning(preset):
            for score in SCORES:
                x = torch.zeros((16, 128), dtype=torch.float32, device="cuda")
                _, routing_map, _ = moekit.aux_scores_forward(x, 8, score_function=score)
                assert bool(routing_map[:, :8].all()) and not bool(routing_map[:, 8:].any()), (preset, score)


# ---- aux loss ------------------------------------------------------------------------------------

TOKEN_DTYPES = ("int32", "int64", "float32", "bfloat16")


def _aux_loss_inputs(R, C, E, dtype, tokens_dtype, rng):
    probs = rounded(rng.random((R, C)), dtype)
    tokens = rng.integers(0, 4 * max(R, 1), C).astype(np.float64)
    tokens = rounded(tokens, tokens_dtype) if tokens_dtype in NUMPY_DTYPES and "int" not in tokens_dtype else (
        tokens.astype(NUMPY_DTYPES[tokens_dtype]))
    return probs, tokens


def _loss_tol(dtype):
    return {"float32": 2e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype]


def run_aux_loss_case(R, C, E, K, dtype, tokens_dtype, rng, device_total=False):
    import torch

    import moekit
    from moekit import reference as ref

    probs_host, tokens_host = _aux_loss_inputs(R, C, E, dtype, tokens_dtype, rng)
    probs, tokens = to_device(probs_host), to_device(tokens_host)
    N, coeff = max(R, 1) * K, 1e-2
    total = torch.tensor(N, dtype=torch.int64, device="cuda") if device_total else N
    loss, const_buf = _three_runs(
        lambda out: moekit.aux_loss_forward(probs, tokens, total, E, K, coeff, out=out),
        lambda p: (poisoned((), dtype, p), poisoned((1,), "float32", p)),
    )
    r_loss, r_const = ref.aux_loss_forward(probs_host, tokens_host, N, E, K, coeff)
    np.testing.assert_allclose(float(to_host(const_buf)[0]), r_const[0], rtol=1e-7)
    np.testing.assert_allclose(float(as_float64(to_host(loss))), float(r_loss), rtol=_loss_tol(dtype), atol=1e-30)
    # backward
    grad_loss = torch.tensor(1.5, dtype=probs.dtype, device="cuda")
    grad = _three_runs(
        lambda out: moekit.aux_loss_backward(const_buf, tokens, grad_loss, R, out=out),
        lambda p: poisoned((R, C), dtype, p),
    )
    r_grad = ref.aux_loss_backward(to_host(const_buf), tokens_host, 1.5, R)
    # f16 grads of these sizes are subnormal (below 6e-5): within one subnormal step, 2^-24
    atol = 2.0**-24 if dtype == "float16" else 0.0
    np.testing.assert_allclose(as_float64(to_host(grad)), r_grad, rtol=_loss_tol(dtype) / 2 + 1e-6, atol=atol)
    return loss


@pytest.mark.parametrize("tokens_dtype", TOKEN_DTYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("E", [32, 128, 256, 1024])
@pytest.mark.parametrize("cols", [1, 2])
def test_aux_loss_matrix(cols, E, dtype, tokens_dtype, rng):
    run_aux_loss_case(2048, cols * E, E, min(8, E), dtype, tokens_dtype, rng)


# R x (C, E), leaving out the R * C above 2^27 (the wide C runs at the smaller R)
LOSS_SIZES = [(R, C, E) for R in (0, 1, 3, 7168, 14234, 70000)
              for C, E in ((256, 256), (512, 256), (3, 1), (5, 5), (20000, 10000)) if R * C <= 1 << 27]


@pytest.mark.parametrize("R, C, E", LOSS_SIZES)
def test_aux_loss_sizes(R, C, E, rng):
    run_aux_loss_case(R, C, E, 1, "float32", "int64", rng)


def test_aux_loss_device_total_and_misaligned(rng):
    import torch

    import moekit

    run_aux_loss_case(1000, 256, 256, 8, "bfloat16", "int32", rng, device_total=True)
    # a probs view 2 bytes off 16-byte alignment takes the scalar path
    base = to_device(rounded(rng.random(1000 * 256 + 1), "bfloat16"))
    probs = base[1:].view(1000, 256)
    tokens = torch.ones(256, dtype=torch.int32, device="cuda")
    loss, _ = moekit.aux_loss_forward(probs, tokens, 100, 256, 8, 1.0)
    expected = 256 / (8 * 100 * 100) * float(probs.double().sum())
    assert abs(float(loss) - expected) <= 8e-3 * abs(expected)


def test_aux_loss_bitwise_over_runs_and_grids(rng):
    import torch

    import moekit

    probs = to_device(rng.random((65536, 256)).astype(np.float32))
    tokens = to_device(rng.integers(0, 9000, 256).astype(np.int32))
    first = None
    for blocks in (0, 1, 3, 17, 131, 100000):
        with tuning({"aux_loss.blocks": blocks} if blocks else None):
            for _ in range(10 if blocks == 0 else 2):
                loss, const_buf = moekit.aux_loss_forward(probs, tokens, 65536 * 8, 256, 8, 1e-2)
                torch.cuda.synchronize()
                first = loss.clone() if first is None else first
                assert same_bits(loss, first), f"blocks={blocks}: {float(loss)!r} != {float(first)!r}"


def test_aux_loss_graph_replay_with_device_token_counts(rng):
    import torch

    import moekit
    from moekit import reference as ref

    probs_host = rng.random((4096, 512)).astype(np.float32)
    tokens_host = rng.integers(0, 4096, 512).astype(np.int64)
    probs, tokens = to_device(probs_host), to_device(tokens_host)
    total = torch.tensor(1000, dtype=torch.int64, device="cuda")
    workspace = torch.zeros(moekit.aux_loss_workspace_size(4096, 512), dtype=torch.uint8, device="cuda")
    loss = torch.empty((), dtype=torch.float32, device="cuda")
    const_buf = torch.empty(1, dtype=torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture
        moekit.aux_loss_forward(probs, tokens, total, 256, 8, 0.1, workspace=workspace, out=(loss, const_buf))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        moekit.aux_loss_forward(probs, tokens, total, 256, 8, 0.1, workspace=workspace, out=(loss, const_buf))
    for N in (1000, 4096, 77, 123456):
        total.fill_(N)
        graph.replay()
        torch.cuda.synchronize()
        r_loss, r_const = ref.aux_loss_forward(probs_host, tokens_host, N, 256, 8, 0.1)
        np.testing.assert_allclose(float(loss), float(r_loss), rtol=2e-6)
        np.testing.assert_allclose(float(const_buf[0]), r_const[0], rtol=1e-7)
    assert int(workspace[:4].view(torch.int32)[0]) == 0, "the ticket counter must be left at 0"


# ---- torch wrappers: a Megatron-style router ----------------------------------------------------

def _example():
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "python" / "megatron_router.py"
    spec = importlib.util.spec_from_file_location("megatron_router_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile looks the function's module up by name
    spec.loader.exec_module(module)
    return module


def _megatron_reference(logits, routing_map_router, aux_map, topk, coeff):
    """float64 torch autograd of the same computation, with the device's selections fixed."""
    import torch

    x = logits.detach().double().requires_grad_(True)
    E = x.shape[1]
    w = torch.where(routing_map_router, x, torch.full_like(x, -float("inf")))
    probs = torch.softmax(w, dim=-1) * routing_map_router
    scores = torch.softmax(x, dim=-1)
    tokens = aux_map.sum(dim=0).double()
    N = x.shape[0]
    aux = E * coeff / (topk * N * N) * (scores.sum(dim=0) * tokens).sum()
    return x, probs, aux


@pytest.mark.parametrize("pair", [False, True], ids=["two_calls", "pair"])
@pytest.mark.parametrize("mode", ["eager", "compile", "graph"])
def test_megatron_router_example(mode, pair, rng):
    import functools

    import torch

    megatron_router_step = functools.partial(_example().megatron_router_step, pair=pair)

    T, E, K, coeff = 512, 64, 6, 1e-2
    logits = to_device(rng.standard_normal((T, E)).astype(np.float32))
    weight = to_device(rng.standard_normal((T, E)).astype(np.float32))
    step = megatron_router_step
    if mode == "compile":
        step = torch.compile(megatron_router_step, fullgraph=True)
    x = logits.clone().requires_grad_(True)
    if mode == "graph":
        static_x = logits.clone().requires_grad_(True)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                static_x.grad = None
                out = step(static_x, weight, K, coeff)
                out[0].backward()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        static_x.grad = None
        with torch.cuda.graph(graph):
            out = step(static_x, weight, K, coeff)
            out[0].backward()
        graph.replay()
        torch.cuda.synchronize()
        total, probs, routing_map, aux_map, aux = out
        grad = static_x.grad
    else:
        total, probs, routing_map, aux_map, aux = step(x, weight, K, coeff)
        total.backward()
        grad = x.grad
    rx, rprobs, raux = _megatron_reference(logits, routing_map, aux_map, K, coeff)
    rtotal = (rprobs * weight.double()).sum() + raux
    rtotal.backward()
    torch.testing.assert_close(probs.double(), rprobs.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux.double(), raux.detach(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grad.double(), rx.grad, rtol=1e-4, atol=1e-6)
