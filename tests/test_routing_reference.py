"""The NumPy oracles of SPEC.md sections 4 and 5 (grouped_topk, moe_align) against brute-force
transcriptions written with Python loops and sorted() over an explicit comparison key. CPU only.

Score functions come from NumPy (scalar exp for sigmoid, the row formula for softmax), so the keys
the two sides rank carry the same bits and every selection difference is a real difference; the
brute force differs in everything after: group scores, group masking, selection, weights, slots.
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _util import load_reference

ref = load_reference()

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
NAN, INF = math.nan, math.inf
EPS = 1e-20

GRID = [round(0.25 * i + 0.1, 2) for i in range(-12, 13)] + [25.0, -27.5]
SPECIALS = [0.0, -0.0, INF, -INF, NAN]
logit_values = st.one_of(st.sampled_from(GRID), st.sampled_from(GRID), st.sampled_from(SPECIALS))
bias_values = st.sampled_from([0.125 * i for i in range(-8, 9)])  # negative ones included


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=0, equal_nan=True)


# ---- grouped top-k: brute force, one row at a time -----------------------------------------------


def order_key(values):
    """sorted() key of the SPEC order: best first, NaN last, equal values by lower index."""
    def key(i):
        v = values[i]
        return (1, 0.0, i) if math.isnan(v) else (0, -v, i)
    return key


def bf_best(values, k):
    return sorted(range(len(values)), key=order_key(values))[:k]


def bf_scores(row, score_function):
    if score_function == "sigmoid":
        return [float(1.0 / (1.0 + np.exp(np.float64(-v)))) for v in row]
    with np.errstate(all="ignore"):
        x = np.array(row, dtype=np.float64)
        e = np.exp(x - np.max(x))
        return (e / np.sum(e)).tolist()


def bf_group_score(members):
    """The largest key plus the largest of the others (so a repeated maximum counts twice)."""
    rest = list(members)
    first = rest.pop(bf_best(rest, 1)[0])
    if not rest:
        return first
    return first + rest[bf_best(rest, 1)[0]]


def bf_grouped_row(row, bias, topk, num_groups, topk_group, score_function, renormalize,
                   rsf, apply_scale, num_shared):
    """(ids, weights, masked keys, group scores) of one row, as lists."""
    num_experts = len(row)
    per_group = num_experts // num_groups
    s = bf_scores(row, score_function)
    keys = [s[e] + (0.0 if bias is None else bias[e]) for e in range(num_experts)]
    group_scores = [bf_group_score(keys[g * per_group:(g + 1) * per_group])
                    for g in range(num_groups)]
    kept = bf_best(group_scores, topk_group)
    masked = [keys[e] if e // per_group in kept else -INF for e in range(num_experts)]
    ids = bf_best(masked, topk)
    total = 0.0
    for e in ids:
        total += s[e]
    weights = [s[e] for e in ids] + [total / rsf for _ in range(num_shared)]
    if renormalize:
        weights = [w / (total + EPS) for w in weights]
    if apply_scale:
        weights = [w * rsf for w in weights]
    return ids + [num_experts + i for i in range(num_shared)], weights, masked, group_scores


@st.composite
def grouped_cases(draw, max_tokens=4):
    num_groups = draw(st.sampled_from([1, 2, 4, 8]))
    per_group = draw(st.sampled_from([1, 2, 2, 3, 4]))
    topk_group = draw(st.one_of(st.just(num_groups), st.integers(1, num_groups)))
    topk = draw(st.integers(1, topk_group * per_group))
    num_experts = num_groups * per_group
    rows = []
    for _ in range(draw(st.integers(0, max_tokens))):
        if draw(st.integers(0, 5)) == 0:  # a constant row: every score ties
            rows.append([draw(logit_values)] * num_experts)
        else:
            rows.append(draw(st.lists(logit_values, min_size=num_experts, max_size=num_experts)))
    bias = None
    if draw(st.booleans()):
        bias = np.array(draw(st.lists(bias_values, min_size=num_experts, max_size=num_experts)))
    return dict(logits=np.array(rows, dtype=np.float64).reshape(len(rows), num_experts),
                bias=bias, topk=topk, num_groups=num_groups, topk_group=topk_group,
                score_function=draw(st.sampled_from(["sigmoid", "softmax"])),
                renormalize=draw(st.booleans()), apply_scale=draw(st.booleans()),
                routed_scaling_factor=draw(st.sampled_from([1.0, 2.5, 0.5])),
                num_shared=draw(st.sampled_from([0, 1, 2])),
                ids_dtype=draw(st.sampled_from(["int32", "int64"])))


def check_against_brute_force(case):
    kwargs = {k: v for k, v in case.items() if k not in ("logits", "bias", "topk")}
    logits, bias, topk = case["logits"], case["bias"], case["topk"]
    weights, ids = ref.grouped_topk(logits, bias, topk, **kwargs)
    num_tokens, num_experts = logits.shape
    width = topk + case["num_shared"]
    assert weights.dtype == np.float64 and weights.shape == (num_tokens, width)
    assert ids.dtype == np.dtype(case["ids_dtype"]) and ids.shape == (num_tokens, width)
    masked, group_scores = ref.grouped_topk_keys(
        logits, bias, topk, num_groups=case["num_groups"], topk_group=case["topk_group"],
        score_function=case["score_function"])
    for t in range(num_tokens):
        bf_ids, bf_weights, bf_masked, bf_groups = bf_grouped_row(
            logits[t].tolist(), None if bias is None else bias.tolist(), topk,
            case["num_groups"], case["topk_group"], case["score_function"], case["renormalize"],
            case["routed_scaling_factor"], case["apply_scale"], case["num_shared"])
        assert ids[t].tolist() == bf_ids, (logits[t], masked[t])
        assert len(set(ids[t, :topk].tolist())) == topk
        assert 0 <= ids[t, :topk].min() and ids[t, :topk].max() < num_experts
        assert_close(weights[t], bf_weights)
        assert_close(masked[t], bf_masked)
        assert_close(group_scores[t], bf_groups)


@SETTINGS
@given(grouped_cases())
def test_grouped_topk_matches_brute_force(case):
    check_against_brute_force(case)


@pytest.mark.parametrize("num_shared", [0, 1])
@pytest.mark.parametrize("renormalize,apply_scale", [(True, True), (True, False), (False, True)])
def test_deepseek_v3_shape(rng, num_shared, renormalize, apply_scale):
    logits = rng.normal(size=(48, 256)).astype(np.float32)
    bias = (0.1 * rng.normal(size=256)).astype(np.float32)
    case = dict(logits=logits.astype(np.float64), bias=bias.astype(np.float64), topk=8,
                num_groups=8, topk_group=4, score_function="sigmoid", renormalize=renormalize,
                apply_scale=apply_scale, routed_scaling_factor=2.5, num_shared=num_shared,
                ids_dtype="int64")
    check_against_brute_force(case)


def test_deepseek_v3_gate(rng):
    """DeepSeek-V3's Gate.forward (inference/model.py), transcribed; float32 inputs accepted."""
    logits = rng.normal(size=(48, 256)).astype(np.float32)
    bias = (0.1 * rng.normal(size=256)).astype(np.float32)
    weights, ids = ref.grouped_topk(logits, bias, 8, num_groups=8, topk_group=4, num_shared=1,
                                    routed_scaling_factor=2.5)
    s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    keys = (s + bias).reshape(48, 8, 32)
    group_scores = np.sort(keys, axis=-1)[..., -2:].sum(axis=-1)
    dropped = np.argsort(-group_scores, axis=1, kind="stable")[:, 4:]
    np.put_along_axis(keys, dropped[:, :, None], -np.inf, axis=1)
    expected_ids = np.argsort(-keys.reshape(48, 256), axis=1, kind="stable")[:, :8]
    expected = np.take_along_axis(s, expected_ids, axis=1)
    expected = expected / expected.sum(axis=1, keepdims=True) * 2.5
    np.testing.assert_array_equal(ids[:, :8], expected_ids)
    np.testing.assert_array_equal(ids[:, 8], 256)
    assert_close(weights[:, :8], expected)
    assert_close(weights[:, 8], np.ones(48))


@pytest.mark.parametrize("renormalize,apply_scale,routed,shared", [
    (False, False, 0.5, 0.75), (True, False, 1 / 3, 0.5), (False, True, 1.0, 1.5),
    (True, True, 2 / 3, 1.0)])
def test_shared_weights(renormalize, apply_scale, routed, shared):
    """s = 0.5 everywhere, K = 3 (routed sum 1.5), rsf = 2: every renormalize x apply_scale."""
    weights, ids = ref.grouped_topk(np.zeros((1, 8)), None, 3, num_groups=4, topk_group=2,
                                    renormalize=renormalize, apply_scale=apply_scale,
                                    routed_scaling_factor=2.0, num_shared=2)
    assert ids.tolist() == [[0, 1, 2, 8, 9]] and ids.dtype == np.int32  # all tied: lowest ids
    assert_close(weights[0], [routed] * 3 + [shared] * 2)


def test_group_score_counts_a_repeated_maximum_twice():
    # keys (s = 0.5 + bias): group 0 {0.9, 0.9} = 1.8 beats group 1 {0.95, 0.8} = 1.75
    bias = np.array([0.4, 0.4, 0.45, 0.3])
    _, ids = ref.grouped_topk(np.zeros((1, 4)), bias, 1, num_groups=2, topk_group=1)
    assert ids.tolist() == [[0]]
    assert_close(ref.grouped_topk_keys(np.zeros((1, 4)), bias, 1, num_groups=2,
                                       topk_group=1)[1], [[1.8, 1.75]])


def test_nan_keys_rank_lowest():
    # Group 0 = {NaN, s(1)}: its two largest keys include the NaN, so its score is NaN and the
    # strongly negative group 1 (about -16) is kept.
    logits = np.array([[NAN, 1.0, 5.0, 6.0]])
    _, ids = ref.grouped_topk(logits, np.array([0.0, 0.0, -9.0, -9.0]), 2, num_groups=2,
                              topk_group=1)
    assert ids.tolist() == [[3, 2]]
    # Both groups NaN: group 0 is kept (lower index); its one number first, then the masked
    # (-inf) expert 2 before the kept NaN expert 0, since -inf ranks above NaN.
    _, ids = ref.grouped_topk(np.array([[NAN, 1.0, NAN, 6.0]]), None, 2, num_groups=2,
                              topk_group=1)
    assert ids.tolist() == [[1, 2]]
    # A row of NaN still gets K distinct in-range ids: group 0 is kept, so group 1's masked (-inf)
    # experts rank above group 0's NaN keys.
    weights, ids = ref.grouped_topk(np.full((1, 8), NAN), None, 4, num_groups=2, topk_group=1)
    assert ids.tolist() == [[4, 5, 6, 7]] and np.all(np.isnan(weights))


GROUPED_ERRORS = [  # (overrides of logits [2, 4], bias None, topk 2; the argument named)
    (dict(logits=np.zeros(4)), "logits"), (dict(logits=np.zeros((2, 4), np.int32)), "logits"),
    (dict(bias=np.zeros(3)), "bias"), (dict(topk=0), "topk"), (dict(topk=5), "topk"),
    (dict(topk=2.0), "topk"), (dict(num_groups=3), "num_groups"),
    (dict(num_groups=8), "num_groups"),
    (dict(topk_group=0), "topk_group"), (dict(topk_group=3), "topk_group"),
    (dict(num_groups=2, topk_group=1, topk=3), "topk"),
    (dict(score_function="sqrtsoftplus"), "score_function"),
    (dict(renormalize="yes"), "renormalize"), (dict(apply_scale=2), "apply_scale"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor"),
    (dict(routed_scaling_factor=NAN), "routed_scaling_factor"),
    (dict(num_shared=-1), "num_shared"), (dict(ids_dtype="int16"), "ids_dtype"),
]


@pytest.mark.parametrize("overrides,name", GROUPED_ERRORS)
def test_grouped_topk_errors(overrides, name):
    args = dict(logits=np.zeros((2, 4)), bias=None, topk=2)
    args.update(overrides)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        ref.grouped_topk(args.pop("logits"), args.pop("bias"), args.pop("topk"), **args)


# ---- moe_align: brute force ----------------------------------------------------------------------


def bf_align(rows, topk, num_experts, block_size, expert_map):
    num_pairs = len(rows) * topk
    members = [[] for _ in range(num_experts)]
    for t, row in enumerate(rows):
        for j, i in enumerate(row):
            if expert_map is not None:
                if not 0 <= i < len(expert_map):
                    continue
                i = expert_map[i]
            if 0 <= i < num_experts:
                members[i].append(t * topk + j)
    sorted_ids, expert_ids = [], []
    for e, pairs in enumerate(members):
        blocks = (len(pairs) + block_size - 1) // block_size
        sorted_ids += pairs + [num_pairs] * (blocks * block_size - len(pairs))
        expert_ids += [e] * blocks
    post_padded = len(sorted_ids)
    max_pad = num_pairs + min(num_pairs, num_experts) * (block_size - 1)
    sorted_ids += [num_pairs] * (max_pad - post_padded)
    expert_ids += [-1] * (math.ceil(max_pad / block_size) - len(expert_ids))
    counts = [len(pairs) for pairs in members]
    offsets = [0, *itertools.accumulate(counts)]
    return sorted_ids, expert_ids, [post_padded], counts, offsets


def check_invariants(out, flat_ids, num_experts, block_size, local_of):
    """Every valid pair once, in its expert's BM-aligned region, ascending; sentinel elsewhere."""
    sorted_ids, expert_ids, post_padded, counts, offsets = out
    sentinel, npp = flat_ids.size, int(post_padded[0])
    valid = [p for p in range(sentinel) if 0 <= local_of(flat_ids[p]) < num_experts]
    placed = sorted_ids[sorted_ids != sentinel]
    assert sorted(placed.tolist()) == valid and npp % block_size == 0
    assert np.all(sorted_ids[npp:] == sentinel) and np.all(expert_ids[npp // block_size:] == -1)
    for b in range(npp // block_size):
        block = sorted_ids[b * block_size:(b + 1) * block_size]
        e = int(expert_ids[b])
        assert all(local_of(flat_ids[p]) == e for p in block if p != sentinel)
        if b == 0 or expert_ids[b - 1] != e:  # a region starts: its first slot is a pair
            assert block[0] != sentinel
    for e in range(num_experts):
        slots = np.flatnonzero(np.repeat(expert_ids == e, block_size)[:sorted_ids.size])
        mine = sorted_ids[slots][sorted_ids[slots] != sentinel]
        assert np.all(np.diff(mine) > 0) and mine.size == counts[e] == offsets[e + 1] - offsets[e]


@st.composite
def align_cases(draw):
    num_experts = draw(st.integers(1, 12))
    topk = draw(st.integers(1, 6))
    kind = draw(st.sampled_from([None, "all", "half", "none", "random"]))
    expert_map = None
    if kind == "all":
        expert_map = draw(st.permutations(range(num_experts)))
    elif kind == "half":
        expert_map = [g // 2 if g % 2 == 0 else -1 for g in range(2 * num_experts)]
    elif kind == "none":
        expert_map = [-1] * draw(st.integers(1, 2 * num_experts))
    elif kind == "random":
        expert_map = draw(st.lists(st.integers(-2, num_experts + 1), min_size=1, max_size=16))
    id_range = len(expert_map) if expert_map is not None else num_experts
    rows = draw(st.lists(st.lists(st.integers(-2, id_range + 2), min_size=topk, max_size=topk),
                         max_size=8))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    return dict(rows=rows, topk=topk, num_experts=num_experts,
                block_size=draw(st.sampled_from(ref.MOE_ALIGN_BLOCK_SIZES)),
                expert_map=None if expert_map is None else np.array(expert_map, dtype=dtype),
                dtype=dtype)


def check_align(rows, topk, num_experts, block_size, expert_map, dtype):
    ids = np.array(rows, dtype=dtype).reshape(len(rows), topk)
    out = ref.moe_align(ids, num_experts, block_size, expert_map=expert_map)
    expected = bf_align(rows, topk, num_experts, block_size,
                        None if expert_map is None else expert_map.tolist())
    max_pad, num_blocks = ref.moe_align_buffer_sizes(ids.shape[0], ids.shape[1], num_experts, block_size)
    assert [a.size for a in out] == [max_pad, num_blocks, 1, num_experts, num_experts + 1]
    for actual, want in zip(out, expected):
        assert actual.dtype == np.int32
        assert actual.tolist() == want

    def local_of(i):
        if expert_map is None:
            return i
        return expert_map[i] if 0 <= i < expert_map.size else -1
    check_invariants(out, ids.reshape(-1), num_experts, block_size, local_of)


@SETTINGS
@given(align_cases())
def test_moe_align_matches_brute_force(case):
    check_align(**case)


@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256])
def test_moe_align_large(rng, block_size):
    ids = rng.integers(-1, 260, size=(150, 8))  # 256 experts; -1 and >= E ids skipped
    check_align(ids.tolist(), 8, 256, block_size, None, np.int64)
    expert_map = np.where(np.arange(512) % 3 == 0, np.arange(512) // 3, -1).astype(np.int32)
    check_align(rng.integers(0, 512, size=(40, 6)).tolist(), 6, 171, block_size, expert_map,
                np.int32)


def test_moe_align_buffer_sizes():
    assert ref.moe_align_buffer_sizes(0, 8, 8, 16) == (0, 0)
    assert ref.moe_align_buffer_sizes(5, 1, 256, 64) == (5 + 5 * 63, 5)
    assert ref.moe_align_buffer_sizes(100, 3, 4, 64) == (300 + 4 * 63, 9)  # 552 = 8.6 blocks
    assert ref.moe_align_buffer_sizes(512, 8, 256, 128) == (4096 + 256 * 127, 286)


ALIGN_ERRORS = [  # (overrides of topk_ids int32 [2, 2], E 4, BM 16; the argument named)
    (dict(topk_ids=np.zeros((2, 2), np.float32)), "topk_ids"),
    (dict(topk_ids=np.zeros(4, np.int32)), "topk_ids"),
    (dict(topk_ids=np.zeros((2, 0), np.int32)), "topk_ids"),
    (dict(num_experts=0), "num_experts"), (dict(num_experts=4097), "num_experts"),
    (dict(block_size=48), "block_size"),
    (dict(expert_map=np.zeros((2, 2), np.int32)), "expert_map"),
    (dict(expert_map=np.zeros(4, np.float32)), "expert_map"),
    (dict(expert_map=np.zeros(0, np.int32)), "expert_map"),
]


@pytest.mark.parametrize("overrides,name", ALIGN_ERRORS)
def test_moe_align_errors(overrides, name):
    args = dict(topk_ids=np.zeros((2, 2), dtype=np.int32), num_experts=4, block_size=16)
    args.update(overrides)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        ref.moe_align(args.pop("topk_ids"), args.pop("num_experts"), args.pop("block_size"), **args)


@pytest.mark.parametrize("args,name", [((-1, 1, 4, 16), "num_pairs"), ((4, 1, 0, 16), "num_experts"),
                                       ((4, 1, 4, 8), "block_size"), ((2**30, 2, 4, 16), "num_pairs")])
def test_moe_align_buffer_sizes_errors(args, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        ref.moe_align_buffer_sizes(*args)


def test_grouped_topk_near_ties():
    """The tie rule the GPU tests and the sanitizer cases share: a swap of two experts whose keys are
    within 1e-6 is explained, a swap of distinct keys is not, equal rows are not listed."""
    x = np.array([[0.0, 1.0, 1.0 + 1e-8, 2.0], [0.0, 1.0, 3.0, 2.0]], dtype=np.float64)
    want_w, want = ref.grouped_topk(x, None, 2)
    got = want.copy()
    assert ref.grouped_topk_near_ties(x, None, 2, got, want)[0].size == 0
    assert want[0].tolist() == [3, 2] and want[1].tolist() == [2, 3]
    got[0] = [3, 1]  # key of expert 1 within 1e-6 of expert 2's: a near-tie
    got[1] = [2, 1]  # expert 1 far below expert 3: not one
    rows, explained = ref.grouped_topk_near_ties(x, None, 2, got, want)
    assert rows.tolist() == [0, 1] and explained.tolist() == [True, False]
