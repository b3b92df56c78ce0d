"""GPU tests of moe_align (SPEC section 5) against the NumPy oracle moekit.reference: exact equality
of every output (order included), poisoned outputs fully written, both paths (one launch, and
count / finalize / place), expert maps, skipped ids, two runs bitwise equal, graph replay.
"""

from __future__ import annotations

import numpy as np
import pytest

from moekit._hooks import tuning

from _util import POISON_PATTERNS, poisoned, same_bits, to_device, to_host

pytestmark = pytest.mark.gpu

NAMES = ("sorted_token_ids", "expert_ids", "num_tokens_post_padded", "expert_counts", "expert_offsets")


def _ids(T, K, E, rng, invalid=0.0, dtype="int32"):
    ids = np.stack([rng.permutation(E)[:K] if K <= E else rng.integers(0, E, K) for _ in range(T)]) \
        if T else np.zeros((0, K), np.int64)
    if invalid:
        mask = rng.random(ids.shape) < invalid
        bad = [-1, E, E + 7, -(2**31)] + ([2**32 + 1, -(2**32) + 3] if dtype == "int64" else [])
        ids = np.where(mask, rng.choice(bad, ids.shape), ids)  # int64: values a truncation would alias
    return ids.astype(dtype)


def _check(ids_host, E, BM, rng, expert_map=None, multi=None):
    import moekit
    from moekit import reference as ref

    ids = to_device(ids_host)
    emap = None if expert_map is None else to_device(np.asarray(expert_map, np.int32))
    T, K = ids_host.shape
    max_pad, blocks = moekit.moe_align_buffer_sizes(T, K, E, BM)
    shapes = ((max_pad,), (blocks,), (1,), (E,), (E + 1,))
    knobs = None if multi is None else {"align.force_multi": int(multi)}
    with tuning(knobs):
        runs = [moekit.moe_align(ids, E, BM, expert_map=emap)]
        for pattern in POISON_PATTERNS:
            out = tuple(poisoned(s, "int32", pattern) for s in shapes)
            runs.append(moekit.moe_align(ids, E, BM, expert_map=emap, out=out))
    for other in runs[1:]:
        for name, a, b in zip(NAMES, runs[0], other):
            assert same_bits(a, b), f"{name}: unwritten elements or non-determinism"
    want = ref.moe_align(ids_host, E, BM, expert_map=None if expert_map is None else np.asarray(expert_map, np.int32))
    for name, got, exp in zip(NAMES, runs[0], want):
        got = to_host(got)
        assert got.shape == exp.shape, (name, got.shape, exp.shape)
        bad = np.nonzero(got != exp)[0]
        assert bad.size == 0, f"{name}: {bad.size} differ, first at {bad[0]}: {got[bad[0]]} vs {exp[bad[0]]}"


@pytest.mark.parametrize("BM", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("E", [8, 64, 256, 257, 384, 1024])
@pytest.mark.parametrize("T", [0, 1, 16, 255, 4096])
def test_moe_align(T, E, BM, rng):
    _check(_ids(T, 8, E, rng), E, BM, rng)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("T,K,E", [(1, 1, 1), (3, 64, 8), (256, 8, 256), (255, 8, 7)])
def test_both_paths(T, K, E, multi, rng):
    _check(_ids(T, K, E, rng), E, 64, rng, multi=multi)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
@pytest.mark.parametrize("T,E,BM", [(1, 256, 64), (16, 256, 64), (5, 7, 16), (200, 1024, 256)])
def test_outputs_at_any_4_byte_offset(T, E, BM, offset, multi, rng):
    """sorted_token_ids starting 4, 8 or 12 bytes past a 16-byte boundary (a view into a larger
    buffer): every slot written, nothing beside it touched (the sentinel sweep's head and tail)."""
    import moekit
    import torch
    from moekit import reference as ref

    ids_host = _ids(T, 8, E, rng)
    max_pad, blocks = moekit.moe_align_buffer_sizes(T, 8, E, BM)
    guard = 8
    buf = torch.full((offset + max_pad + guard,), -7, dtype=torch.int32, device="cuda")
    out = (buf[offset:offset + max_pad], poisoned((blocks,), "int32", "nan"), poisoned((1,), "int32", "nan"),
           poisoned((E,), "int32", "nan"), poisoned((E + 1,), "int32", "nan"))
    with tuning({"align.force_multi": int(multi)}):
        moekit.moe_align(to_device(ids_host), E, BM, out=out)
    want = ref.moe_align(ids_host, E, BM)
    for name, got, exp in zip(NAMES, out, want):
        assert np.array_equal(to_host(got), exp), name
    host = to_host(buf)
    assert (host[:offset] == -7).all() and (host[offset + max_pad:] == -7).all(), "wrote outside sorted_token_ids"


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("T", [7, 3000, 70000])
def test_skipped_ids(T, dtype, rng):
    _check(_ids(T, 8, 256, rng, invalid=0.1, dtype=dtype), 256, 64, rng)


@pytest.mark.parametrize("kind", ["all", "half", "none", "random"])
def test_expert_map(kind, rng):
    E_global, E_local = 256, 64
    if kind == "all":
        emap = np.arange(E_global) % E_local
    elif kind == "half":
        emap = np.where(np.arange(E_global) < E_local, np.arange(E_global), -1)
    elif kind == "none":
        emap = np.full(E_global, -1)
    else:  # mapped values past E_local are skipped like -1
        emap = np.where(rng.random(E_global) < 0.3, rng.integers(0, E_local + 5, E_global), -1)
    for T in (5, 9000):
        _check(_ids(T, 8, E_global, rng, invalid=0.05), E_local, 32, rng, expert_map=emap)


def test_large_and_skewed(rng):
    T, K, E = 65536, 8, 256
    _check(_ids(T, K, E, rng), E, 64, rng)
    skew = np.zeros((T, K), np.int32)  # every pair to expert 0
    _check(skew, E, 128, rng)


def test_graph_replay(rng):
    import torch

    import moekit

    T, K, E, BM = 512, 8, 256, 64
    ids = to_device(_ids(T, K, E, rng))
    want = moekit.moe_align(ids, E, BM)
    max_pad, blocks = moekit.moe_align_buffer_sizes(T, K, E, BM)
    out = tuple(torch.empty(s, dtype=torch.int32, device="cuda") for s in ((max_pad,), (blocks,), (1,), (E,), (E + 1,)))
    ws = torch.empty(moekit.moe_align_workspace_size(T, K, E), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        moekit.moe_align(ids, E, BM, out=out, workspace=ws)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            moekit.moe_align(ids, E, BM, out=out, workspace=ws)
    for _ in range(3):
        new = to_device(_ids(T, K, E, rng))
        ids.copy_(new)
        graph.replay()
        want = moekit.moe_align(new, E, BM)
        torch.cuda.synchronize()
        assert all(same_bits(a, b) for a, b in zip(out, want))


# ---- grouped top-k ----------------------------------------------------------------------------------

SHAPES = {  # (E, G, Kg, K, rsf, S)
    "deepseek-v3": (256, 8, 4, 8, 2.5, 0),
    "deepseek-v3-shared": (256, 8, 4, 8, 2.5, 1),
    "kimi-k2": (384, 1, 1, 8, 2.827, 0),
    "e512k22": (512, 1, 1, 22, 1.0, 0),
    "e128g4k6": (128, 4, 2, 6, 1.0, 0),
    "e512g16k16": (512, 16, 8, 16, 2.5, 2),
    "e896k16": (896, 1, 1, 16, 1.0, 0),
}


def _check_topk(T, shape, rng, score="sigmoid", renormalize=True, apply_scale=True, logits=None, bias=None,
                ids_dtype="int32"):
    import moekit
    from moekit import reference as ref

    E, G, Kg, K, rsf, S = SHAPES[shape]
    x = rng.standard_normal((T, E)).astype(np.float32) if logits is None else logits
    b = (rng.standard_normal(E) * 0.5).astype(np.float32) if bias is None else bias
    kw = dict(num_groups=G, topk_group=Kg, score_function=score, renormalize=renormalize,
              routed_scaling_factor=rsf, apply_scale=apply_scale, num_shared=S, ids_dtype=ids_dtype)
    runs = [moekit.grouped_topk(to_device(x), to_device(b), K, **kw)]
    for pattern in POISON_PATTERNS:
        out = (poisoned((T, K + S), "float32", pattern), poisoned((T, K + S), ids_dtype, pattern))
        runs.append(moekit.grouped_topk(to_device(x), to_device(b), K, out=out, **kw))
    for w, i in runs[1:]:
        assert same_bits(w, runs[0][0]) and same_bits(i, runs[0][1]), "unwritten slots or non-determinism"
    if T == 0:
        return
    want_w, want_i = ref.grouped_topk(x, b, K, **kw)
    got_w, got_i = to_host(runs[0][0]), to_host(runs[0][1])
    # only near-ties may differ: fp32 keys (SPEC) within rounding of each other
    differ, explained = ref.grouped_topk_near_ties(x, b, K, got_i, want_i, num_groups=G, topk_group=Kg,
                                                   score_function=score)
    if differ.size:
        bad = differ[~explained]
        assert not bad.size, f"row {bad[0]}: ids {got_i[bad[0], :K]} vs {want_i[bad[0], :K]} (not a near-tie)"
        assert differ.size <= max(2, T // 2000), f"{differ.size} of {T} rows differ (near-ties)"
    same = np.setdiff1d(np.arange(T), differ)
    got_w, want_w = got_w[same], want_w[same]
    finite = np.isfinite(want_w)
    assert np.array_equal(finite, np.isfinite(got_w))
    err = np.abs(got_w[finite] - want_w[finite]) / np.maximum(np.abs(want_w[finite]), 1e-30)
    tol = 2e-6 if score == "softmax" else 1e-6  # softmax: x - max and a sum of E terms in fp32
    assert err.max(initial=0.0) <= tol, f"weights off by {err.max():.2e} (relative)"


@pytest.mark.parametrize("T", [0, 1, 2, 3, 8, 16, 64, 256, 1024, 8192, 65536, 70000])
@pytest.mark.parametrize("shape", SHAPES)
def test_grouped_topk_shapes(shape, T, rng):
    _check_topk(T, shape, rng)


@pytest.mark.parametrize("apply_scale", [False, True])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_grouped_topk_options(score, renormalize, apply_scale, rng):
    for shape in ("deepseek-v3-shared", "e512g16k16"):
        _check_topk(300, shape, rng, score=score, renormalize=renormalize, apply_scale=apply_scale)


@pytest.mark.parametrize("ids_dtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_grouped_topk_dtypes(dtype, ids_dtype, rng):
    """f16 / bf16 logits and bias (the oracle takes the same values), int64 ids."""
    from _util import rounded

    x = rounded(rng.standard_normal((77, 256)), dtype)
    b = rounded(rng.standard_normal(256) * 0.5, dtype)
    _check_topk(77, "deepseek-v3-shared", rng, logits=x, bias=b, ids_dtype=ids_dtype)


def test_grouped_topk_ties_and_nan(rng):
    """Exact ties (a repeated maximum counts twice in a group score), NaN and +-inf logits, negative bias."""
    E = 256
    x = np.round(rng.standard_normal((64, E)) * 2) / 2  # many equal logits
    x[0] = 0.0
    x[1, :40] = np.nan
    x[2, 7] = np.inf
    x[3, ::3] = -np.inf
    x[4] = np.nan
    b = -np.abs(np.round(rng.standard_normal(E) * 4) / 4)
    _check_topk(64, "deepseek-v3-shared", rng, logits=x.astype(np.float32), bias=b.astype(np.float32))


def test_torch_grouped_topk_op(rng):
    """moekit.torch.grouped_topk (vLLM / sglang names) equals moekit.grouped_topk, passes torch.library's
    opcheck (schema, fake impl, graph capture rules) and compiles with fullgraph=True."""
    import torch

    import moekit
    from moekit.torch import grouped_topk

    x = to_device(rng.standard_normal((64, 256)).astype(np.float32))
    bias = to_device((rng.standard_normal(256) * 0.3).astype(np.float32))
    hidden = torch.empty(64, 16, device="cuda")
    w, ids = grouped_topk(hidden, x, 8, True, num_expert_group=8, topk_group=4, scoring_func="sigmoid",
                          routed_scaling_factor=2.5, e_score_correction_bias=bias)
    w2, ids2 = moekit.grouped_topk(x, bias, 8, num_groups=8, topk_group=4, routed_scaling_factor=2.5)
    assert same_bits(w, w2) and same_bits(ids, ids2)
    torch.library.opcheck(torch.ops.moekit.grouped_topk.default, (x, bias, 8, 8, 4, "sigmoid", True, 2.5, True, 0))
    compiled = torch.compile(lambda h, g: grouped_topk(h, g, 8, True, 8, 4, "sigmoid", 2.5, bias), fullgraph=True)
    w3, ids3 = compiled(hidden, x)
    assert same_bits(w3, w) and same_bits(ids3, ids)
    with pytest.raises(NotImplementedError, match="e_score_correction_bias"):
        grouped_topk(hidden, x, 8, True, num_expert_group=8, topk_group=4)
