"""The NumPy oracle (moekit.reference) against the definitions of SPEC.md section 1. CPU only.

The forward is checked against a brute-force per-row transcription written with Python loops and
sorted() over an explicit comparison key; the backward against central finite differences of the
forward. Both run under hypothesis, with exact ties, repeated values, NaN, +-inf and -0.0/+0.0.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _util import load_reference

ref = load_reference()

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
NAN, INF = math.nan, math.inf
EPS = 1e-20

# Logit values: a coarse grid (exact ties and repeats are frequent), values past the softplus
# threshold, and the special values. The elementary functions below are NumPy's own scalar ufuncs,
# which give the same bits as the array ufuncs; with a coarse grid there are no near-ties, so every
# selection difference between oracle and brute force is a real difference.
GRID = [round(0.25 * i + 0.1, 2) for i in range(-12, 13)] + [25.0, -27.5, 31.0]
SPECIALS = [0.0, -0.0, INF, -INF, NAN]
logit_values = st.one_of(st.sampled_from(GRID), st.sampled_from(GRID),
                         st.sampled_from(GRID), st.sampled_from(SPECIALS))
bias_values = st.sampled_from([0.125 * i for i in range(-8, 9)])


# ---- brute force, one row at a time --------------------------------------------------------------


def bf_rank_key(keys):
    """Comparison key of the SPEC order for sorted(): best first, NaN last, ties by lower index."""
    def key(i):
        v = keys[i]
        if math.isnan(v):
            return (1, 0.0, i)
        return (0, -v, i)  # -(-0.0) == -(+0.0) compare equal in tuples: the index decides
    return key


def bf_best(keys, k):
    return sorted(range(len(keys)), key=bf_rank_key(keys))[:k]


def bf_softmax(values):
    if any(math.isnan(v) for v in values):
        return [NAN] * len(values)
    top = max(values)
    exps = [float(np.exp(np.float64(v - top))) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def bf_sigmoid(v):
    return float(1.0 / (1.0 + np.exp(np.float64(-v))))


def bf_sqrtsoftplus(v):
    softplus = v if v > 20 else float(np.log1p(np.exp(np.float64(v))))
    return math.sqrt(softplus) if not math.isnan(softplus) else NAN


def bf_row_forward(x, topk, score_function, pre, num_groups, group_topk, scale, bias):
    """(selected experts best first, probs row, intermediate row, keys row) of one row."""
    num_experts = len(x)
    if score_function == "softmax":
        scores = bf_softmax(x) if pre else list(x)
        keys = list(scores)
    else:
        fn = bf_sigmoid if score_function == "sigmoid" else bf_sqrtsoftplus
        scores = [fn(v) for v in x]
        keys = [s + (bias[e] if bias is not None else 0.0) for e, s in enumerate(scores)]
    if group_topk:
        per_group = num_experts // num_groups
        group_scores = []
        for g in range(num_groups):
            members = keys[g * per_group:(g + 1) * per_group]
            total = 0.0
            for i in bf_best(members, topk // group_topk):
                total += members[i]
            group_scores.append(total)
        kept = set(bf_best(group_scores, group_topk))
        keys = [k if e // per_group in kept else -INF for e, k in enumerate(keys)]
    selected = bf_best(keys, topk)
    chosen = [scores[e] for e in selected]
    if score_function == "softmax":
        weights = chosen if pre else bf_softmax(chosen)
    elif topk > 1:
        denom = sum(chosen) + EPS
        weights = [c / denom for c in chosen]
    else:
        weights = chosen
    probs = [0.0] * num_experts
    for e, w in zip(selected, weights):
        probs[e] = w * scale
    if score_function == "softmax" and not pre:
        intermediate = [-INF] * num_experts
        for e, w in zip(selected, weights):
            intermediate[e] = w
    elif score_function == "sqrtsoftplus":
        intermediate = list(x)
    else:
        intermediate = scores
    return selected, probs, intermediate, keys


# ---- strategies ----------------------------------------------------------------------------------


@st.composite
def router_cases(draw, max_tokens=5):
    """A forward configuration and logits covering every option of SPEC section 1."""
    score_function = draw(st.sampled_from(ref.SCORE_FUNCTIONS))
    pre = score_function == "softmax" and draw(st.booleans())
    if draw(st.booleans()):
        num_groups = draw(st.sampled_from([1, 2, 3, 4]))
        per_group = draw(st.integers(1, 5))
        group_topk = draw(st.integers(1, num_groups))
        topk = group_topk * draw(st.integers(1, per_group))
        num_experts = num_groups * per_group
    else:
        num_groups = group_topk = 0
        num_experts = draw(st.integers(1, 14))
        topk = draw(st.integers(1, num_experts))
    num_tokens = draw(st.integers(0, max_tokens))
    rows = []
    for _ in range(num_tokens):
        if draw(st.integers(0, 5)) == 0:  # a constant row: every key ties
            rows.append([draw(logit_values)] * num_experts)
        else:
            rows.append(draw(st.lists(logit_values, min_size=num_experts, max_size=num_experts)))
    bias = None
    if score_function != "softmax" and draw(st.booleans()):
        bias = draw(st.lists(bias_values, min_size=num_experts, max_size=num_experts))
    scale = draw(st.sampled_from([1.0, 0.5, 1.3, 2.5]))
    logits = np.array(rows, dtype=np.float64).reshape(num_tokens, num_experts)
    return dict(logits=logits, topk=topk, score_function=score_function, use_pre_softmax=pre,
                num_groups=num_groups, group_topk=group_topk, scaling_factor=scale,
                expert_bias=None if bias is None else np.array(bias))


def forward_kwargs(case, **overrides):
    kwargs = {k: v for k, v in case.items() if k not in ("logits", "topk")}
    kwargs.update(overrides)
    return kwargs


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=0, equal_nan=True)


# ---- forward against the brute force -------------------------------------------------------------


@SETTINGS
@given(router_cases())
def test_forward_matches_brute_force(case):
    logits, topk = case["logits"], case["topk"]
    num_tokens, num_experts = logits.shape
    probs, indices, intermediate = ref.router_topk_forward(
        logits, topk, **forward_kwargs(case, map_format="indices", index_dtype="int64"))
    keys = ref.router_keys(logits, topk, **{k: v for k, v in forward_kwargs(case).items()
                                            if k != "scaling_factor"})
    assert probs.dtype == np.float64 and probs.shape == (num_tokens, num_experts)
    assert intermediate.dtype == np.float64 and intermediate.shape == (num_tokens, num_experts)
    assert indices.dtype == np.int64 and indices.shape == (num_tokens, topk)
    bias = case["expert_bias"]
    for t in range(num_tokens):
        selected, bf_probs, bf_intermediate, bf_keys = bf_row_forward(
            list(logits[t]), topk, case["score_function"], case["use_pre_softmax"],
            case["num_groups"], case["group_topk"], case["scaling_factor"],
            None if bias is None else list(bias))
        assert indices[t].tolist() == selected, (logits[t], keys[t])
        assert len(set(selected)) == topk
        assert_close(probs[t], bf_probs)
        assert_close(intermediate[t], bf_intermediate)
        assert_close(keys[t], bf_keys)


@SETTINGS
@given(router_cases())
def test_map_formats_agree(case):
    logits, topk = case["logits"], case["topk"]
    num_experts = logits.shape[1]
    results = {
        fmt: ref.router_topk_forward(logits, topk, **forward_kwargs(case, map_format=fmt))
        for fmt in ref.MAP_FORMATS
    }
    p_idx, indices, i_idx = results["indices"]
    p_byte, bytemap, i_byte = results["bytemap"]
    p_bit, bitmap, i_bit = results["bitmap"]
    for probs, inter in ((p_byte, i_byte), (p_bit, i_bit)):
        np.testing.assert_array_equal(probs, p_idx)
        np.testing.assert_array_equal(inter, i_idx)
    assert indices.dtype == np.int32
    assert bytemap.dtype == np.bool_ and bytemap.shape == logits.shape
    assert bitmap.dtype == np.uint8 and bitmap.shape == (logits.shape[0], (num_experts + 7) // 8)
    np.testing.assert_array_equal(ref.indices_to_bytemap(indices, num_experts), bytemap)
    np.testing.assert_array_equal(ref.bytemap_to_bitmap(bytemap), bitmap)
    np.testing.assert_array_equal(ref.bitmap_to_bytemap(bitmap, num_experts), bytemap)
    assert np.all(bytemap.sum(axis=1) == topk)
    # probs are nonzero only at selected experts (a selected weight may itself be 0 or NaN).
    assert np.all(p_byte[~bytemap] == 0)
    # Padding bits of the last byte are 0.
    if num_experts % 8:
        assert np.all(bitmap[:, -1] >> (num_experts % 8) == 0)


# ---- ordering and tie rules ----------------------------------------------------------------------


order_values = st.one_of(st.sampled_from([-1.5, -0.5, 0.5, 1.0, 2.0]), st.sampled_from(SPECIALS),
                         st.floats(allow_nan=True, allow_infinity=True))


@SETTINGS
@given(st.data())
def test_topk_order_matches_brute_force(data):
    num_experts = data.draw(st.integers(1, 80))
    num_tokens = data.draw(st.integers(0, 4))
    keys = np.array(data.draw(st.lists(
        st.lists(order_values, min_size=num_experts, max_size=num_experts),
        min_size=num_tokens, max_size=num_tokens)), dtype=np.float64)
    keys = keys.reshape(num_tokens, num_experts)
    k = data.draw(st.integers(0, num_experts))
    picked = ref.topk_order(keys, k)
    assert picked.shape == (num_tokens, k)
    expected = [bf_best(list(row), k) for row in keys]
    assert picked.tolist() == expected
    # The two internal strategies (repeated argmax, stable sort) agree at every k.
    by_argmax = ref._router._topk_by_argmax(ref._router._total_order_ranks(keys), k)
    by_sort = ref._router._topk_by_sort(ref._router._total_order_ranks(keys), k)
    assert by_argmax.tolist() == expected and by_sort.tolist() == expected


def test_topk_order_special_values():
    keys = np.array([
        [NAN, 1.0, NAN, 2.0],
        [NAN, NAN, NAN, NAN],
        [NAN, -INF, 1.0, -INF],
        [0.0, -0.0, 0.0, -0.0],
        [-0.0, 0.0, -1.0, INF],
        [1e-300, -1e-300, 0.0, -0.0],
    ])
    assert ref.topk_order(keys, 4).tolist() == [
        [3, 1, 0, 2],
        [0, 1, 2, 3],
        [2, 1, 3, 0],
        [0, 1, 2, 3],
        [3, 0, 1, 2],
        [0, 2, 3, 1],
    ]
    # Both strategies of a wide row (k past the repeated-argmax limit).
    wide = np.tile(np.array([NAN, 3.0, -0.0, 0.0, -INF]), (2, 60))
    k_sorted = ref._router._ITERATIVE_TOPK_MAX + 20
    assert k_sorted <= wide.shape[1]
    expected = [bf_best(list(row), k_sorted) for row in wide]
    assert ref.topk_order(wide, k_sorted).tolist() == expected
    assert ref.topk_order(wide, 30).tolist() == [e[:30] for e in expected]


@pytest.mark.parametrize("score_function,pre", [
    ("softmax", False), ("softmax", True), ("sigmoid", False), ("sqrtsoftplus", False)])
@pytest.mark.parametrize("groups", [(0, 0), (4, 2)])
def test_all_equal_row_selects_lowest_experts(score_function, pre, groups):
    num_groups, group_topk = groups
    logits = np.full((3, 16), 0.7)
    for topk in (1, 2, 4, 6, 8):
        if num_groups and (topk % group_topk or topk // group_topk > 16 // num_groups):
            continue
        _, indices, _ = ref.router_topk_forward(
            logits, topk, score_function=score_function, use_pre_softmax=pre,
            num_groups=num_groups, group_topk=group_topk, map_format="indices")
        # With groups, groups 0..Kg-1 are kept (ties -> lower group) and hold experts 0..K-1.
        assert indices.tolist() == [list(range(topk))] * 3


def test_nan_positions_chosen_last():
    logits = np.array([[NAN, 0.3, NAN, -2.0, NAN, 1.0]])
    for score_function in ref.SCORE_FUNCTIONS:
        if score_function == "softmax":
            continue  # softmax of a row with NaN is NaN everywhere: every key ties at NaN
        _, indices, _ = ref.router_topk_forward(logits, 5, score_function=score_function,
                                                map_format="indices")
        assert indices.tolist() == [[5, 1, 3, 0, 2]]
    _, indices, _ = ref.router_topk_forward(logits, 5, score_function="softmax",
                                            map_format="indices")
    assert indices.tolist() == [[5, 1, 3, 0, 2]]  # softmax-post keys are the logits themselves
    probs, indices, _ = ref.router_topk_forward(logits, 2, score_function="softmax",
                                                use_pre_softmax=True, map_format="indices")
    assert indices.tolist() == [[0, 1]] and np.isnan(probs[0, :2]).all()


def test_group_with_nan_score_ranks_last():
    # Group 0 = {5, NaN, 1}: its top-3 sum is NaN, so group 1 (0.8) is kept despite the 5.
    logits = np.array([[5.0, NAN, 1.0, 0.5, 0.1, 0.2]])
    _, indices, _ = ref.router_topk_forward(logits, 3, num_groups=2, group_topk=1,
                                            map_format="indices")
    assert indices.tolist() == [[3, 5, 4]]


def test_masked_keys_rank_above_nan():
    # Literal SPEC: keys of non-kept groups become -inf, and NaN ranks below -inf. Both groups score
    # NaN, group 0 is kept (tie), its keys are NaN, so the -inf keys of group 1 are selected first.
    logits = np.array([[NAN, NAN, NAN, 1.0]])
    keys = ref.router_keys(logits, 2, num_groups=2, group_topk=1)
    assert np.isnan(keys[0, :2]).all() and np.isneginf(keys[0, 2:]).all()
    _, indices, _ = ref.router_topk_forward(logits, 2, num_groups=2, group_topk=1,
                                            map_format="indices")
    assert indices.tolist() == [[2, 3]]


def test_group_scores():
    logits = np.array([[0.5, 2.0, 1.0, -1.0, 3.0, -2.0]])
    scores = ref.router_group_scores(logits, 4, num_groups=3, group_topk=2)
    assert_close(scores, [[2.5, 0.0, 1.0]])  # sums of the top 2 logits (softmax-post keys)
    keys = ref.router_keys(logits, 4, num_groups=3, group_topk=2)
    assert_close(keys, [[0.5, 2.0, -INF, -INF, 3.0, -2.0]])
    with pytest.raises(ValueError, match="group_topk"):
        ref.router_group_scores(logits, 4)


def test_zero_signs_tie():
    logits = np.array([[-0.0, 0.0, -1.0], [0.0, -0.0, -1.0]])
    _, indices, _ = ref.router_topk_forward(logits, 1, map_format="indices")
    assert indices.tolist() == [[0], [0]]


def test_bias_moves_selection_not_weights():
    logits = np.array([[0.5, 1.0, -0.25, 0.0]])
    bias = np.array([0.0, 0.0, 2.0, 0.0])
    for score_function in ("sigmoid", "sqrtsoftplus"):
        probs, indices, inter = ref.router_topk_forward(
            logits, 2, score_function=score_function, expert_bias=bias, map_format="indices")
        assert indices.tolist() == [[2, 1]]
        fn = bf_sigmoid if score_function == "sigmoid" else bf_sqrtsoftplus
        s2, s1 = fn(-0.25), fn(1.0)
        assert_close(probs[0], [0.0, s1 / (s1 + s2 + EPS), s2 / (s1 + s2 + EPS), 0.0])


def test_empty_batch_and_bfloat16():
    for fmt in ref.MAP_FORMATS:
        probs, routing, inter = ref.router_topk_forward(np.zeros((0, 10), np.float32), 3,
                                                        map_format=fmt)
        assert probs.shape == inter.shape == (0, 10)
        assert routing.shape == {"bytemap": (0, 10), "bitmap": (0, 2), "indices": (0, 3)}[fmt]
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 24)).astype(ml_dtypes.bfloat16)
    for score_function in ref.SCORE_FUNCTIONS:
        got = ref.router_topk_forward(x, 4, score_function=score_function)
        want = ref.router_topk_forward(x.astype(np.float64), 4, score_function=score_function)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    half = ref.router_topk_forward(x.astype(np.float16), 4)
    np.testing.assert_array_equal(half[1], ref.router_topk_forward(x.astype(np.float64), 4)[1])


def test_vectorized_matches_brute_force_on_wide_rows():
    rng = np.random.default_rng(1)
    logits = np.round(rng.standard_normal((64, 512)) * 4) / 4  # many exact ties
    for topk, score_function in ((8, "sigmoid"), (40, "softmax"), (3, "sqrtsoftplus")):
        _, indices, _ = ref.router_topk_forward(logits, topk, score_function=score_function,
                                                num_groups=8, group_topk=1 if topk == 3 else 4,
                                                map_format="indices")
        for t in range(0, 64, 7):
            selected, *_ = bf_row_forward(list(logits[t]), topk, score_function, False, 8,
                                          1 if topk == 3 else 4, 1.0, None)
            assert indices[t].tolist() == selected


# ---- backward against finite differences ---------------------------------------------------------


def _separated_logits(rng, num_tokens, num_experts, score_function):
    """Distinct logits at least ~0.03 apart, so the selection survives a tiny perturbation."""
    if score_function == "sqrtsoftplus":
        grid = np.concatenate([np.arange(-4.0, 4.0, 0.05), np.arange(21.0, 30.0, 0.05)])
    else:
        grid = np.arange(-3.0, 3.0, 0.05)
    rows = [rng.choice(grid, size=num_experts, replace=False) for _ in range(num_tokens)]
    return np.array(rows) + rng.uniform(-0.01, 0.01, size=(num_tokens, num_experts))


BACKWARD_MODES = [("softmax", False), ("softmax", True), ("sigmoid", False),
                  ("sqrtsoftplus", False)]


@pytest.mark.parametrize("score_function,pre", BACKWARD_MODES)
@pytest.mark.parametrize("topk_mode", ["one", "many"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1.0, 0.7, 2.5]),
       use_groups=st.booleans(), use_bias=st.booleans())
def test_backward_matches_finite_differences(score_function, pre, topk_mode, seed, scale,
                                             use_groups, use_bias):
    rng = np.random.default_rng(seed)
    num_tokens = 3
    if use_groups:
        num_groups, per_group = 4, 4
        group_topk = 1 if topk_mode == "one" else 2
        topk = 1 if topk_mode == "one" else group_topk * int(rng.integers(1, 3))
    else:
        num_groups = group_topk = 0
        per_group = int(rng.integers(3, 9))
        topk = 1 if topk_mode == "one" else int(rng.integers(2, per_group + 1))
    num_experts = num_groups * per_group if use_groups else per_group
    x = _separated_logits(rng, num_tokens, num_experts, score_function)
    bias = None
    if use_bias and score_function != "softmax":
        bias = rng.uniform(-0.3, 0.3, size=num_experts)
    options = dict(score_function=score_function, use_pre_softmax=pre, num_groups=num_groups,
                   group_topk=group_topk, expert_bias=bias)
    grad = rng.standard_normal((num_tokens, num_experts))

    probs, bytemap, inter = ref.router_topk_forward(x, topk, scaling_factor=scale, **options)
    analytic = ref.router_topk_backward(grad, inter, bytemap, topk, score_function=score_function,
                                        use_pre_softmax=pre, scaling_factor=scale)

    # Rows are independent: every +-h perturbation of every element is one row of a single batch.
    step = 1e-6
    offsets = np.eye(num_experts) * step
    plus = (x[:, None, :] + offsets).reshape(-1, num_experts)
    minus = (x[:, None, :] - offsets).reshape(-1, num_experts)
    p_plus, m_plus, _ = ref.router_topk_forward(plus, topk, scaling_factor=scale, **options)
    p_minus, m_minus, _ = ref.router_topk_forward(minus, topk, scaling_factor=scale, **options)
    base_map = np.repeat(bytemap, num_experts, axis=0)
    assume(np.array_equal(m_plus, base_map) and np.array_equal(m_minus, base_map))
    g_rep = np.repeat(grad, num_experts, axis=0)
    numeric = (np.sum(g_rep * p_plus, axis=1) - np.sum(g_rep * p_minus, axis=1)) / (2 * step)
    np.testing.assert_allclose(analytic, numeric.reshape(num_tokens, num_experts),
                               rtol=1e-5, atol=1e-7)

    # Same gradient from every selection format; grads at unselected positions are ignored.
    noisy = np.where(bytemap, grad, np.nan)
    for fmt, routing in (("bitmap", ref.bytemap_to_bitmap(bytemap)),
                         ("indices", ref.topk_order(np.where(bytemap, 1.0, 0.0), topk)[:, ::-1]),
                         ("bytemap", bytemap.astype(np.uint8))):
        again = ref.router_topk_backward(noisy, inter, routing, topk,
                                         score_function=score_function, use_pre_softmax=pre,
                                         scaling_factor=scale, map_format=fmt)
        np.testing.assert_allclose(again, analytic, rtol=1e-13, atol=1e-300)
    if not (score_function == "softmax" and pre):
        assert np.all(analytic[~bytemap] == 0)


def test_backward_closed_forms():
    # K = 1 sigmoid: dx = g * s * y * (1 - y) at the selected expert.
    x = np.array([[0.3, -1.2, 2.0]])
    probs, bytemap, inter = ref.router_topk_forward(x, 1, score_function="sigmoid",
                                                    scaling_factor=2.0)
    grad = np.array([[1.0, 5.0, 3.0]])
    dx = ref.router_topk_backward(grad, inter, bytemap, 1, score_function="sigmoid",
                                  scaling_factor=2.0)
    y = 1 / (1 + np.exp(-2.0))
    assert_close(dx, [[0.0, 0.0, 3.0 * 2.0 * y * (1 - y)]])
    # softmax-post with K = 1: the weight is always 1, so the gradient is 0 everywhere.
    probs, bytemap, inter = ref.router_topk_forward(x, 1)
    assert_close(probs, [[0.0, 0.0, 1.0]])
    assert np.all(np.isneginf(inter[~bytemap]))
    dx = ref.router_topk_backward(grad, inter, bytemap, 1, score_function="softmax")
    assert not np.isnan(dx).any() and np.all(dx == 0)
    # sqrtsoftplus above the threshold: v = sqrt(x), dv/dx = 1 / (2 sqrt(x)).
    x = np.array([[25.0, 0.0]])
    _, bytemap, inter = ref.router_topk_forward(x, 1, score_function="sqrtsoftplus")
    assert_close(inter, x)
    dx = ref.router_topk_backward(np.ones_like(x), inter, bytemap, 1,
                                  score_function="sqrtsoftplus")
    assert_close(dx, [[1 / (2 * 5.0 + EPS), 0.0]])


# ---- argument errors -----------------------------------------------------------------------------


LOGITS = np.zeros((2, 8))
FORWARD_ERRORS = [
    (dict(topk=0), "topk"),
    (dict(topk=9), "topk"),
    (dict(topk=2.0), "topk"),
    (dict(topk=2, score_function="relu"), "score_function"),
    (dict(topk=2, score_function="sigmoid", use_pre_softmax=True), "use_pre_softmax"),
    (dict(topk=2, expert_bias=np.zeros(8)), "expert_bias"),
    (dict(topk=2, score_function="sigmoid", expert_bias=np.zeros(7)), "expert_bias"),
    (dict(topk=2, num_groups=3, group_topk=1), "num_groups"),
    (dict(topk=2, num_groups=4, group_topk=0), "group_topk"),
    (dict(topk=2, num_groups=0, group_topk=1), "group_topk"),
    (dict(topk=2, num_groups=-2, group_topk=-1), "num_groups"),
    (dict(topk=3, num_groups=4, group_topk=2), "group_topk"),
    (dict(topk=4, num_groups=2, group_topk=4), "group_topk"),
    (dict(topk=6, num_groups=4, group_topk=2), "topk/group_topk"),
    (dict(topk=2, map_format="csr"), "map_format"),
    (dict(topk=2, index_dtype="int16"), "index_dtype"),
    (dict(topk=2, index_dtype="float32"), "index_dtype"),
]


@pytest.mark.parametrize("kwargs,name", FORWARD_ERRORS)
def test_forward_argument_errors(kwargs, name):
    kwargs = dict(kwargs)
    topk = kwargs.pop("topk")
    with pytest.raises(ValueError, match=name.replace("/", ".")):
        ref.router_topk_forward(LOGITS, topk, **kwargs)


def test_forward_input_errors():
    with pytest.raises(ValueError, match="logits"):
        ref.router_topk_forward(np.zeros(8), 2)
    with pytest.raises(ValueError, match="logits"):
        ref.router_topk_forward(np.zeros((2, 8), np.int32), 2)
    with pytest.raises(ValueError, match="num_experts"):
        ref.router_topk_forward(np.zeros((1, ref.ROUTER_MAX_EXPERTS + 1), np.float32), 2)
    with pytest.raises(ValueError, match="num_experts"):
        ref.router_topk_forward(np.zeros((2, 0)), 1)
    with pytest.raises(ValueError, match="topk"):
        ref.router_keys(LOGITS, 9)


def test_backward_argument_errors():
    probs, bytemap, inter = ref.router_topk_forward(LOGITS, 2)

    def call(**overrides):
        args = dict(grad_probs=probs, intermediate=inter, routing_map_or_indices=bytemap, topk=2,
                    score_function="softmax")
        args.update(overrides)
        return ref.router_topk_backward(args.pop("grad_probs"), args.pop("intermediate"),
                                        args.pop("routing_map_or_indices"), args.pop("topk"),
                                        **args)

    call()  # the baseline is valid
    cases = [
        (dict(topk=0), "topk"),
        (dict(topk=9), "topk"),
        (dict(score_function="tanh"), "score_function"),
        (dict(score_function="sigmoid", use_pre_softmax=True), "use_pre_softmax"),
        (dict(map_format="dense"), "map_format"),
        (dict(intermediate=inter[:, :4]), "intermediate"),
        (dict(grad_probs=np.zeros(8)), "grad_probs"),
        (dict(routing_map_or_indices=bytemap[:, :4]), "routing_map_or_indices"),
        (dict(map_format="bitmap"), "routing_map_or_indices"),
        (dict(map_format="indices"), "routing_map_or_indices"),
        (dict(map_format="indices", routing_map_or_indices=np.array([[0, 8], [1, 2]])),
         "routing_map_or_indices"),
        (dict(map_format="indices", routing_map_or_indices=np.array([[1, 1], [1, 2]])),
         "routing_map_or_indices"),
        (dict(map_format="indices", routing_map_or_indices=np.zeros((2, 2))),
         "routing_map_or_indices"),
    ]
    for overrides, name in cases:
        with pytest.raises(ValueError, match=name):
            call(**overrides)
    with pytest.raises(TypeError):  # score_function has no default in the backward
        ref.router_topk_backward(probs, inter, bytemap, 2)


def test_helper_errors():
    with pytest.raises(ValueError, match="bitmap"):
        ref.bitmap_to_bytemap(np.zeros((2, 1), np.uint8), 9)
    with pytest.raises(ValueError, match="indices"):
        ref.indices_to_bytemap(np.array([[3]]), 3)
    with pytest.raises(ValueError, match="k"):
        ref.topk_order(np.zeros((1, 3)), 4)
