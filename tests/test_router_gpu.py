"""GPU tests of the router (SPEC section 1): moekit.router_topk_forward / router_topk_backward and
moekit.torch.fused_topk_with_score_function against the NumPy float64 oracle moekit.reference.

Every test needs a CUDA device, torch and the built library; tests/conftest.py skips them otherwise.
The module imports with NumPy alone (torch, CuPy and moekit are imported inside the tests), so it
collects on CI machines.

How a case is judged (run_router_case):
- inputs are random in the case's dtype; the reference sees the same rounded values (upcast);
- the op runs three times: into fresh arrays, and into out= buffers poisoned with two patterns that
  differ in every byte. The three results must be bitwise equal: that proves every element was
  written and the op is deterministic;
- on the device, for every row: the map holds only 0/1 (bitmap padding bits 0), exactly K experts,
  indices in range and distinct, probs 0 off the selection and finite, intermediate per the SPEC;
- on the host, against the reference (on a sample of rows when T*E is large): the selection must be
  identical except on rows with a near-tie that fp32 may resolve either way (and there it must still
  be a valid top-k); indices in reference order; probs/intermediate within the dtype's tolerance;
  the backward (fed the device forward's own intermediate and map) within a relative-norm bound.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

import numpy as np
import pytest

from moekit._hooks import PRESETS, tuning

from _util import (
    FLOAT_DTYPES,
    NUMPY_DTYPES,
    POISON_PATTERNS,
    SHORT_NAMES,
    StreamProtocolObject,
    as_float64,
    first_difference,
    poisoned,
    relative_norm_error,
    row_relative_errors,
    rounded,
    same_bits,
    stall_then,
    to_device,
    to_host,
    torch_dtype,
)

pytestmark = pytest.mark.gpu

# The tie / NaN / near-tie tests run with the default plans and again with each preset that forces
# one family of top-k paths (moekit._hooks.PRESETS): rounds, radix select, filtered, team and wide rows.
PLAN_PRESETS = [None, *PRESETS]

# Where the op runs. A constant so that the host-side logic can be dry-run on "cpu" with a stand-in.
DEVICE = "cuda"

# name -> (score_function, use_pre_softmax)
SCORES = {
    "softmax_pre": ("softmax", True),
    "softmax_post": ("softmax", False),
    "sigmoid": ("sigmoid", False),
    "sqrtsoftplus": ("sqrtsoftplus", False),
}
BIASED_SCORES = ("sigmoid", "sqrtsoftplus")  # the only score functions that take an expert bias
MAP_FORMATS = ("bytemap", "bitmap", "indices")
GROUPS = (8, 4)  # (num_groups, group_topk), TransformerEngine's test setting
MAX_EXPERTS = 16384  # MOEKIT_ROUTER_MAX_EXPERTS

LOGIT_SCALE = 2.0
BIAS_SCALE = 0.2

# Rows whose K-th and (K+1)-th keys (or Kg-th and (Kg+1)-th group scores) lie within this relative
# distance may be resolved differently by fp32 math; the keys are fp32 for every input dtype.
TIE_RTOL = 1e-4

# The reference sees at most this many [T, E] elements per case; beyond, a sample of rows (first,
# last and random ones) is compared. The device-side checks always cover every row.
REF_MAX_ELEMENTS = 1 << 21

# (rtol, atol) of outputs rounded to the logits' dtype (probs); the intermediate is always f32.
PROBS_TOLERANCE = {"float32": (1e-5, 1e-9), "bfloat16": (1e-2, 1e-6), "float16": (2e-3, 1e-7)}
INTERMEDIATE_TOLERANCE = (1e-5, 1e-9)
# Backward: relative-norm bound over the compared rows, and (looser) per row.
GRAD_TOLERANCE = {"float32": (1e-5, 1e-4), "bfloat16": (1e-2, 2e-2), "float16": (1e-2, 2e-2)}


@dataclasses.dataclass(frozen=True)
class Case:
    T: int
    E: int
    K: int
    score: str = "softmax_post"
    dtype: str = "float32"
    groups: Optional[tuple] = None  # (num_groups, group_topk)
    scaling: float = 1.0
    bias_dtype: Optional[str] = None  # None: no expert bias
    map_format: str = "bytemap"
    index_dtype: str = "int32"

    @property
    def score_function(self):
        return SCORES[self.score][0]

    @property
    def use_pre_softmax(self):
        return SCORES[self.score][1]

    def forward_kwargs(self):
        num_groups, group_topk = self.groups or (0, 0)
        return dict(
            score_function=self.score_function,
            use_pre_softmax=self.use_pre_softmax,
            num_groups=num_groups,
            group_topk=group_topk,
            scaling_factor=self.scaling,
            map_format=self.map_format,
            index_dtype=self.index_dtype,
        )

    def backward_kwargs(self):
        return dict(
            score_function=self.score_function,
            use_pre_softmax=self.use_pre_softmax,
            scaling_factor=self.scaling,
            map_format=self.map_format,
        )

    def with_(self, **changes):
        return dataclasses.replace(self, **changes)

    def __str__(self):
        parts = [self.score, SHORT_NAMES[self.dtype], f"T{self.T}", f"E{self.E}", f"K{self.K}"]
        if self.groups:
            parts.append(f"G{self.groups[0]}x{self.groups[1]}")
        if self.scaling != 1.0:
            parts.append(f"s{self.scaling:g}")
        if self.bias_dtype:
            parts.append(f"bias{SHORT_NAMES[self.bias_dtype]}")
        fmt = self.map_format
        if fmt == "indices":
            fmt += self.index_dtype[3:]
        parts.append(fmt)
        return "-".join(parts)


def groups_valid(E, K, groups):
    if groups is None:
        return True
    num_groups, group_topk = groups
    return (E % num_groups == 0 and K % group_topk == 0 and group_topk <= num_groups
            and K // group_topk <= E // num_groups)


# ---- the random matrix ---------------------------------------------------------------------------
#
# Per (score function, dtype) pair, MATRIX_PER_COMBO cases; each axis is a balanced column (every
# value appears about equally often, so every value meets every score function and dtype), shuffled
# with a fixed seed, then repaired by swapping values between cases until every case is valid.
# Big T goes only with small E (the reference's cost); the full-size cases are listed apart.

T_VALUES = (1, 7, 2048, 7168, 8992)
E_VALUES = (32, 128, 256, 1024, 2304, 8192)
K_VALUES = (1, 4, 8, 16, 22, 32, 36)
BIG_T_MAX_E = 256
MATRIX_PER_COMBO = 30
MATRIX_SEED = 13  # chosen so that every feasible pair of axis values is covered too


def _axis_values(score):
    return {
        "T": T_VALUES,
        "E": E_VALUES,
        "K": K_VALUES,
        "groups": (None, GROUPS),
        "scaling": (1.0, 1.2),
        "bias": (False, True) if score in BIASED_SCORES else (False,),
        "map_format": MAP_FORMATS,
    }


def _row_valid(row):
    if row["K"] > row["E"]:
        return False
    if not groups_valid(row["E"], row["K"], row["groups"]):
        return False
    if row["T"] > 2048 and row["E"] > BIG_T_MAX_E:
        return False
    return True


def _repair(rows, axes, r):
    """Swap single axis values between rows until all rows are valid (keeps every column balanced).
    Returns False when stuck."""
    for _ in range(10):
        broken = [i for i, row in enumerate(rows) if not _row_valid(row)]
        if not broken:
            return True
        for i in broken:
            if _row_valid(rows[i]):
                continue
            for axis in r.sample(axes, len(axes)):
                for j in r.sample(range(len(rows)), len(rows)):
                    rows[i][axis], rows[j][axis] = rows[j][axis], rows[i][axis]
                    if j != i and _row_valid(rows[i]) and _row_valid(rows[j]):
                        break
                    rows[i][axis], rows[j][axis] = rows[j][axis], rows[i][axis]
                else:
                    continue
                break
    return all(_row_valid(row) for row in rows)


def _balanced_rows(values, count, r):
    """`count` rows whose every column holds each of its values about equally often, all valid."""
    axes = list(values)
    for _ in range(100):
        columns = {}
        for axis in axes:
            column = [values[axis][i % len(values[axis])] for i in range(count)]
            r.shuffle(column)
            columns[axis] = column
        rows = [{axis: columns[axis][i] for axis in axes} for i in range(count)]
        if _repair(rows, axes, r):
            return rows
    raise RuntimeError("could not build a valid router test matrix; change MATRIX_SEED")


def build_matrix(per_combo=MATRIX_PER_COMBO, seed=MATRIX_SEED):
    r = random.Random(seed)
    cases = []
    for score in SCORES:
        for dtype in FLOAT_DTYPES:
            for row in _balanced_rows(_axis_values(score), per_combo, r):
                case = Case(
                    T=row["T"], E=row["E"], K=row["K"], score=score, dtype=dtype,
                    groups=row["groups"], scaling=row["scaling"],
                    bias_dtype=r.choice(("float32", dtype)) if row["bias"] else None,
                    map_format=row["map_format"], index_dtype=r.choice(("int32", "int64")),
                )  # fmt: skip
                if case not in cases:
                    cases.append(case)
    return cases


MATRIX = build_matrix()

# Full size, T = 8992 and E = 8192: a few, one per score function, mixed options.
FULL_SIZE = [
    Case(8992, 8192, 8, "softmax_post", "float32", None, 1.0, None, "bytemap"),
    Case(8992, 8192, 22, "softmax_pre", "bfloat16", None, 1.2, None, "indices", "int64"),
    Case(8992, 8192, 32, "sigmoid", "bfloat16", GROUPS, 1.2, "float32", "bitmap"),
    Case(8992, 8192, 36, "sqrtsoftplus", "float16", GROUPS, 1.0, "float16", "indices"),
]


# ---- inputs --------------------------------------------------------------------------------------


def random_logits(rng, T, E, dtype, score="softmax_post"):
    values = rng.standard_normal((T, E)) * LOGIT_SCALE
    if score == "sqrtsoftplus" and values.size:
        # Some logits past 20, where softplus(x) = x (forward) and its slope is 1 (backward).
        spots = rng.random((T, E)) < 0.01
        values[spots] = rng.uniform(15.0, 30.0, size=int(spots.sum()))
    return rounded(values, dtype)


def random_bias(rng, E, dtype):
    return rounded(rng.standard_normal(E) * BIAS_SCALE, dtype)


def random_grad(rng, T, E, dtype):
    return rounded(rng.standard_normal((T, E)), dtype)


def reference_rows(T, E, rng):
    """Row ids the reference checks: all of them, or first/last rows plus a random sample."""
    if T * E <= REF_MAX_ELEMENTS:
        return np.arange(T)
    count = max(8, REF_MAX_ELEMENTS // E)
    edge = min(16, count // 4)
    middle = rng.choice(np.arange(edge, T - edge), size=count - 2 * edge, replace=False)
    return np.unique(np.concatenate([np.arange(edge), np.arange(T - edge, T), middle]))


# ---- host side: reference comparison -------------------------------------------------------------


def _reference():
    import moekit.reference

    return moekit.reference


def reference_mask(selection, map_format, E):
    ref = _reference()
    if map_format == "bytemap":
        return np.asarray(selection) != 0
    if map_format == "bitmap":
        return ref.bitmap_to_bytemap(selection, E)
    return ref.indices_to_bytemap(selection, E)


def _best_sorted(keys, count):
    """Indices [R, count] of each row's `count` best keys (finite or -inf, no NaN), best first,
    equal keys by lower index."""
    rows, n = keys.shape
    if count < n:
        part = np.argpartition(-keys, count - 1, axis=1)[:, :count]
    else:
        part = np.broadcast_to(np.arange(n), (rows, n)).copy()
    values = np.take_along_axis(keys, part, axis=1)
    order = np.lexsort((part, -values), axis=-1)
    return np.take_along_axis(part, order, axis=1)


def boundary_ambiguous(keys, mags, k, rtol=TIE_RTOL):
    """Rows where the k-th and (k+1)-th best keys are within rtol (relative to the magnitude of the
    terms they were computed from) and that band of keys holds two or more distinct values.

    A band of equal keys is not ambiguous: equal float64 keys come from equal inputs, which give
    equal fp32 keys on the device too, so there the lowest-index rule must pick exactly as the
    reference did.
    """
    rows, n = keys.shape
    ambiguous = np.zeros(rows, dtype=bool)
    if k >= n or rows == 0:
        return ambiguous
    best = _best_sorted(keys, k + 1)
    values = np.take_along_axis(keys, best, axis=1)
    scale = np.take_along_axis(mags, best, axis=1)
    kth, following = values[:, k - 1], values[:, k]
    tol = rtol * np.maximum(scale[:, k - 1], scale[:, k])
    with np.errstate(invalid="ignore"):
        close = np.nonzero(kth - following <= tol)[0]
    if close.size:
        band_keys = keys[close]
        lo = (following[close] - tol[close])[:, None]
        hi = (kth[close] + tol[close])[:, None]
        in_band = (band_keys >= lo) & (band_keys <= hi)
        top = np.where(in_band, band_keys, -np.inf).max(axis=1)
        bottom = np.where(in_band, band_keys, np.inf).min(axis=1)
        ambiguous[close] = top > bottom
    return ambiguous


def order_ambiguous(keys, mags, k, rtol=TIE_RTOL):
    """Rows whose k best keys hold two distinct keys within rtol: their order may differ in fp32."""
    rows, n = keys.shape
    if k < 2 or rows == 0:
        return np.zeros(rows, dtype=bool)
    best = _best_sorted(keys, k)
    values = np.take_along_axis(keys, best, axis=1)
    scale = np.take_along_axis(mags, best, axis=1)
    gaps = values[:, :-1] - values[:, 1:]
    tol = rtol * np.maximum(scale[:, :-1], scale[:, 1:])
    with np.errstate(invalid="ignore"):
        return np.any((gaps > 0) & (gaps <= tol), axis=1)


@dataclasses.dataclass
class TieAnalysis:
    raw_keys: np.ndarray  # [R, E] keys before group masking
    keys: np.ndarray  # [R, E] keys after group masking (non-kept groups -inf)
    mags: np.ndarray  # [R, E] magnitude of the terms behind each key (sets the tie tolerance)
    group: np.ndarray  # [R] the kept groups may differ
    boundary: np.ndarray  # [R] the selected set may differ (includes group)
    order: np.ndarray  # [R] the order of the selected may differ


def analyse_ties(case, logits, bias):
    ref = _reference()
    options = dict(score_function=case.score_function, use_pre_softmax=case.use_pre_softmax,
                   expert_bias=bias)
    raw = ref.router_keys(logits, case.K, **options)
    if bias is None:
        mags = np.abs(raw)
    else:
        bias64 = as_float64(bias)
        mags = np.abs(raw - bias64) + np.abs(bias64)
    rows = raw.shape[0]
    group = np.zeros(rows, dtype=bool)
    keys = raw
    if case.groups:
        num_groups, group_topk = case.groups
        keys = ref.router_keys(logits, case.K, num_groups=num_groups, group_topk=group_topk,
                               **options)
        per_group = case.E // num_groups
        in_group = case.K // group_topk
        grouped = raw.reshape(rows * num_groups, per_group)
        top = np.argpartition(-grouped, in_group - 1, axis=1)[:, :in_group]
        group_scores = np.take_along_axis(grouped, top, axis=1).sum(axis=1).reshape(rows, -1)
        group_mags = np.take_along_axis(mags.reshape(rows * num_groups, per_group), top, axis=1)
        group_mags = group_mags.sum(axis=1).reshape(rows, -1)
        group = boundary_ambiguous(group_scores, group_mags, group_topk)
    boundary = boundary_ambiguous(keys, mags, case.K) | group
    order = order_ambiguous(keys, mags, case.K)
    return TieAnalysis(raw, keys, mags, group, boundary, order)


def _row_story(row_id, gpu_mask_row, ref_mask_row, keys_row):
    gpu = np.nonzero(gpu_mask_row)[0]
    ref = np.nonzero(ref_mask_row)[0]
    only_gpu = np.setdiff1d(gpu, ref)
    only_ref = np.setdiff1d(ref, gpu)
    return (f"row {row_id}: device picked {only_gpu.tolist()} (keys {keys_row[only_gpu].tolist()}) "
            f"where the reference picked {only_ref.tolist()} (keys {keys_row[only_ref].tolist()})")


def _fail_rows(bad, message, describe, row_ids, limit=4):
    where = np.nonzero(bad)[0]
    if where.size:
        stories = "\n  ".join(describe(i) for i in where[:limit])
        raise AssertionError(f"{message}: {where.size} row(s), e.g.\n  {stories}\n"
                             f"(rows as numbered in the case: {row_ids[where[:limit]].tolist()})")


def order_consistent(order, keys, mags, rtol=TIE_RTOL):
    """Per row: the device's indices are in non-increasing key order (within the tie tolerance) and
    equal keys come lower index first."""
    if order.shape[1] < 2:
        return np.ones(order.shape[0], dtype=bool)
    values = np.take_along_axis(keys, order, axis=1)
    scale = np.take_along_axis(mags, order, axis=1)
    gaps = values[:, :-1] - values[:, 1:]
    tol = rtol * np.maximum(scale[:, :-1], scale[:, 1:])
    lower_first = order[:, :-1] < order[:, 1:]
    with np.errstate(invalid="ignore"):
        fine = (gaps > 0) | ((gaps == 0) & lower_first) | ((gaps < 0) & (-gaps <= tol))
    return fine.all(axis=1)


def compare_forward(case, logits, bias, device_out, ref_out, row_ids, *, strict=False):
    """Host-side comparison of one forward on rows `row_ids` (device_out/ref_out hold those rows).

    device_out: (probs, mask bool [R,E], order int [R,K] or None, intermediate) as NumPy arrays.
    strict: no near-tie allowance (inputs built so that every tie is exact).
    """
    probs, mask, order, inter = device_out
    ref_probs, ref_selection, ref_inter = ref_out
    ref_mask = reference_mask(ref_selection, case.map_format, case.E)
    rows = mask.shape[0]
    x64 = as_float64(logits)
    if strict:
        analysis = None
        excused = np.zeros(rows, dtype=bool)
        order_excused = np.zeros(rows, dtype=bool)
        raw_keys = keys = _reference().router_keys(
            logits, case.K, score_function=case.score_function,
            use_pre_softmax=case.use_pre_softmax, expert_bias=bias)
        mags = np.abs(np.nan_to_num(raw_keys))
    else:
        analysis = analyse_ties(case, logits, bias)
        excused, order_excused = analysis.boundary, analysis.order
        raw_keys, keys, mags = analysis.raw_keys, analysis.keys, analysis.mags

    same = np.all(mask == ref_mask, axis=1)
    _fail_rows(~same & ~excused, f"{case}: selection differs from the reference",
               lambda i: _row_story(row_ids[i], mask[i], ref_mask[i], raw_keys[i]), row_ids)

    if analysis is not None:
        # Where a near-tie let the device choose differently, its choice must still be a top-K of
        # the keys within the tolerance (unless the kept groups themselves are in doubt).
        check = ~same & ~analysis.group
        if check.any():
            k = keys[check]
            m = mags[check]
            picked = mask[check]
            worst_in = np.argmin(np.where(picked, k, np.inf), axis=1)
            best_out = np.argmax(np.where(picked, -np.inf, k), axis=1)
            lo = np.take_along_axis(k, worst_in[:, None], axis=1)[:, 0]
            hi = np.take_along_axis(k, best_out[:, None], axis=1)[:, 0]
            tol = TIE_RTOL * np.maximum(np.take_along_axis(m, worst_in[:, None], axis=1)[:, 0],
                                        np.take_along_axis(m, best_out[:, None], axis=1)[:, 0])
            invalid = np.zeros(rows, dtype=bool)
            invalid[check] = ~(lo >= hi - tol)
            _fail_rows(invalid, f"{case}: at a near-tie the device picked a set that is no top-K",
                       lambda i: _row_story(row_ids[i], mask[i], ref_mask[i], keys[i]), row_ids)

    if order is not None:
        ref_order = np.asarray(ref_selection).astype(np.int64)
        exact = same & ~order_excused
        mismatch = exact & np.any(order != ref_order, axis=1)
        _fail_rows(mismatch, f"{case}: indices differ from the reference order",
                   lambda i: f"row {row_ids[i]}: device {order[i].tolist()} reference "
                             f"{ref_order[i].tolist()}", row_ids)
        loose = ~exact
        if loose.any() and strict is False:
            bad = np.zeros(rows, dtype=bool)
            bad[loose] = ~order_consistent(order[loose], raw_keys[loose], mags[loose])
            _fail_rows(bad, f"{case}: indices not in descending key order",
                       lambda i: f"row {row_ids[i]}: device {order[i].tolist()} keys "
                                 f"{raw_keys[i][order[i]].tolist()}", row_ids)

    rtol, atol = PROBS_TOLERANCE[case.dtype]
    np.testing.assert_allclose(
        as_float64(probs)[same], ref_probs[same], rtol=rtol, atol=atol,
        err_msg=f"{case}: probs differ from the reference (rows with the reference's selection)")

    rtol, atol = INTERMEDIATE_TOLERANCE
    inter = as_float64(inter)
    if case.score == "sqrtsoftplus":
        # intermediate is x itself: exact, every row.
        np.testing.assert_array_equal(inter, x64, err_msg=f"{case}: intermediate is not the logits")
    elif case.score == "softmax_post":
        np.testing.assert_allclose(
            inter[same], ref_inter[same], rtol=rtol, atol=atol,
            err_msg=f"{case}: intermediate (selected softmax, -inf elsewhere) differs")
    else:
        # p or y does not depend on the selection: every row.
        np.testing.assert_allclose(inter, ref_inter, rtol=rtol, atol=atol,
                                   err_msg=f"{case}: intermediate differs from the reference")
    return same


def compare_backward(case, grad, ref_grad, grad_probs, row_ids, rows_to_check=None):
    """Relative-norm comparison of grad_logits (device) with the reference backward."""
    out = as_float64(grad)
    ref = np.asarray(ref_grad, dtype=np.float64)
    if rows_to_check is not None:
        out, ref, row_ids = out[rows_to_check], ref[rows_to_check], row_ids[rows_to_check]
    if out.size == 0:
        return
    finite = np.isfinite(ref)
    _fail_rows(np.any(finite & ~np.isfinite(out), axis=1),
               f"{case}: grad_logits not finite where the reference is",
               lambda i: f"row {row_ids[i]}: {out[i][finite[i] & ~np.isfinite(out[i])][:8]}",
               row_ids)
    total_tol, row_tol = GRAD_TOLERANCE[case.dtype]
    error = relative_norm_error(np.where(finite, out, 0), np.where(finite, ref, 0))
    assert error < total_tol, (
        f"{case}: grad_logits relative-norm error {error:.3g} >= {total_tol:g}")
    # Per row too, so that one broken row among thousands cannot hide; rows whose gradient is tiny
    # next to the typical row are judged against the typical row's size.
    ref_norms = np.linalg.norm(np.where(finite, ref, 0), axis=1)
    floor = 1e-2 * float(np.median(ref_norms)) if ref_norms.size else 0.0
    per_row = row_relative_errors(np.where(finite, out, 0), np.where(finite, ref, 0), floor)
    _fail_rows(per_row >= row_tol, f"{case}: grad_logits row error >= {row_tol:g}",
               lambda i: f"row {row_ids[i]}: error {per_row[i]:.3g}", row_ids)


# ---- device side ---------------------------------------------------------------------------------


def _torch():
    import torch

    return torch


def _moekit():
    import moekit

    return moekit


def _sync():
    if DEVICE == "cuda":
        _torch().cuda.synchronize()


def _assert_rows(ok_rows, message, describe):
    """ok_rows: bool tensor [T]; on failure name the first bad row (describe(row) adds detail)."""
    torch = _torch()
    if ok_rows.numel() and not bool(ok_rows.all()):
        bad = torch.nonzero(~ok_rows)[:, 0]
        first = int(bad[0])
        raise AssertionError(
            f"{message}: {bad.numel()} row(s), first row {first}: {describe(first)}")


def _row_text(tensor, row, limit=40):
    values = tensor[row].float() if tensor.dtype.is_floating_point else tensor[row]
    return str(values[:limit].tolist())


def expected_selection_shape(case):
    if case.map_format == "bytemap":
        return (case.T, case.E)
    if case.map_format == "bitmap":
        return (case.T, (case.E + 7) // 8)
    return (case.T, case.K)


def check_output_types(case, probs, selection, intermediate):
    torch = _torch()
    assert isinstance(probs, torch.Tensor) and isinstance(selection, torch.Tensor)
    assert isinstance(intermediate, torch.Tensor)
    assert probs.dtype == torch_dtype(case.dtype) and tuple(probs.shape) == (case.T, case.E)
    assert intermediate.dtype == torch.float32 and tuple(intermediate.shape) == (case.T, case.E)
    wanted = {"bytemap": (torch.bool,), "bitmap": (torch.uint8,),
              "indices": (torch_dtype(case.index_dtype),)}[case.map_format]
    assert selection.dtype in wanted, f"{case}: selection dtype {selection.dtype}"
    assert tuple(selection.shape) == expected_selection_shape(case)
    for tensor in (probs, selection, intermediate):
        assert tensor.device.type == DEVICE


def selection_mask(case, selection):
    """The bool mask [T, E] of the selection, after checking the map/indices are well formed:
    bytes 0/1, bitmap padding bits 0, indices in range and distinct, K experts per row."""
    torch = _torch()
    T, E, K = case.T, case.E, case.K
    if case.map_format == "bytemap":
        raw = selection.view(torch.uint8)
        _assert_rows((raw <= 1).all(dim=1), f"{case}: bytemap holds bytes other than 0/1",
                     lambda r: _row_text(raw, r))
        mask = raw.bool()
    elif case.map_format == "bitmap":
        shifts = torch.arange(8, dtype=torch.uint8, device=selection.device)
        bits = ((selection.unsqueeze(-1) >> shifts) & 1).reshape(T, 8 * selection.shape[1])
        _assert_rows((bits[:, E:] == 0).all(dim=1), f"{case}: bitmap padding bits past E are set",
                     lambda r: _row_text(bits[:, E:], r))
        mask = bits[:, :E].bool()
    else:
        idx = selection.long()
        # Range first: scattering an out-of-range index would fault the device.
        _assert_rows(((idx >= 0) & (idx < E)).all(dim=1), f"{case}: indices out of [0, {E})",
                     lambda r: _row_text(idx, r))
        if K > 1:
            ordered = idx.sort(dim=1).values
            _assert_rows((ordered[:, 1:] != ordered[:, :-1]).all(dim=1),
                         f"{case}: repeated expert in a row of indices",
                         lambda r: _row_text(idx, r))
        mask = torch.zeros((T, E), dtype=torch.bool, device=selection.device)
        mask.scatter_(1, idx, True)
    counts = mask.sum(dim=1)
    _assert_rows(counts == K, f"{case}: rows do not select exactly K={K} experts",
                 lambda r: f"{int(counts[r])} selected")
    return mask


def check_structure(case, x, probs, selection, intermediate):
    """Every-row checks on the device. Returns the selection mask (bool tensor [T, E])."""
    torch = _torch()
    mask = selection_mask(case, selection)
    xf = x.float()
    clean_rows = ~torch.isnan(xf).any(dim=1)  # rows without NaN logits must give finite results
    p = probs.float()
    _assert_rows(torch.where(mask, torch.zeros_like(p), p).eq(0).all(dim=1),
                 f"{case}: probs nonzero at unselected experts", lambda r: _row_text(p, r))
    _assert_rows((torch.isfinite(p) & (p >= 0)).all(dim=1) | ~clean_rows,
                 f"{case}: probs negative or not finite", lambda r: _row_text(p, r))
    if case.score == "sqrtsoftplus":
        same = (intermediate == xf) | (torch.isnan(intermediate) & torch.isnan(xf))
        _assert_rows(same.all(dim=1), f"{case}: intermediate is not the logits",
                     lambda r: _row_text(intermediate, r))
    elif case.score == "softmax_post":
        _assert_rows(torch.eq(torch.isneginf(intermediate), ~mask).all(dim=1),
                     f"{case}: intermediate is not -inf exactly at the unselected experts",
                     lambda r: _row_text(intermediate, r))
        _assert_rows(torch.where(mask, torch.isfinite(intermediate), True).all(dim=1) | ~clean_rows,
                     f"{case}: intermediate not finite at selected experts",
                     lambda r: _row_text(intermediate, r))
    else:
        _assert_rows(torch.isfinite(intermediate).all(dim=1) | ~clean_rows,
                     f"{case}: intermediate not finite", lambda r: _row_text(intermediate, r))
    return mask


def poisoned_forward_outputs(case, pattern):
    # The bytemap goes in as bool once and as uint8 once: both are accepted.
    map_dtype = {"bytemap": "bool" if pattern == "nan" else "uint8", "bitmap": "uint8",
                 "indices": case.index_dtype}[case.map_format]
    return (
        poisoned((case.T, case.E), case.dtype, pattern, DEVICE),
        poisoned(expected_selection_shape(case), map_dtype, pattern, DEVICE),
        poisoned((case.T, case.E), "float32", pattern, DEVICE),
    )


def _element_text(tensor, where):
    element = tensor[where]
    raw = element.reshape(1).view(_torch().uint8).tolist()
    return f"{element.item()!r} (bytes {bytes(raw).hex()})"


def _assert_same_bits(case, what, first, second):
    if not same_bits(first, second):
        where = first_difference(first, second)
        raise AssertionError(
            f"{case}: {what} differs bitwise between runs at {where} (an element left unwritten, "
            f"or a nondeterministic result): {_element_text(first, where)} vs "
            f"{_element_text(second, where)}")


@dataclasses.dataclass
class DeviceResult:
    probs: object
    selection: object
    intermediate: object
    grad_logits: object
    mask: object  # bool tensor [T, E]


def run_device(case, logits, bias, grad_probs):
    """Forward and backward on the device, three times each (fresh outputs and two poisoned out=
    sets), checking the runs agree bitwise and the outputs are well formed on every row."""
    mk = _moekit()
    x = to_device(logits, DEVICE)
    b = None if bias is None else to_device(bias, DEVICE)
    g = to_device(grad_probs, DEVICE)
    kwargs = case.forward_kwargs()

    fresh = mk.router_topk_forward(x, case.K, expert_bias=b, **kwargs)
    check_output_types(case, *fresh)
    for pattern in POISON_PATTERNS:
        out = poisoned_forward_outputs(case, pattern)
        got = mk.router_topk_forward(x, case.K, expert_bias=b, out=out, **kwargs)
        assert all(a is o for a, o in zip(got, out)), f"{case}: out= buffers were not returned"
        for name, first, second in zip(("probs", "selection", "intermediate"), fresh, out):
            _assert_same_bits(case, f"forward {name} (out= poisoned with {pattern!r})",
                              first, second)
    probs, selection, intermediate = fresh
    mask = check_structure(case, x, probs, selection, intermediate)

    bkwargs = case.backward_kwargs()
    grad = mk.router_topk_backward(g, intermediate, selection, case.K, **bkwargs)
    torch = _torch()
    assert isinstance(grad, torch.Tensor) and grad.dtype == torch_dtype(case.dtype)
    assert tuple(grad.shape) == (case.T, case.E)
    for pattern in POISON_PATTERNS:
        out = poisoned((case.T, case.E), case.dtype, pattern, DEVICE)
        got = mk.router_topk_backward(g, intermediate, selection, case.K, out=out, **bkwargs)
        assert got is out, f"{case}: backward out= buffer was not returned"
        _assert_same_bits(case, f"grad_logits (out= poisoned with {pattern!r})", grad, out)
    _sync()
    return DeviceResult(probs, selection, intermediate, grad, mask)


def _rows_to_host(tensor, rows_tensor):
    return to_host(tensor.index_select(0, rows_tensor))


def check_against_reference(case, logits, bias, grad_probs, result, rows, *, strict=False):
    """Compare a device result with the reference on `rows` (NumPy row ids)."""
    if rows.size == 0:
        return
    torch = _torch()
    ref = _reference()
    rows_tensor = torch.as_tensor(rows, device=result.mask.device)
    x = logits[rows]
    gp = grad_probs[rows]
    mask = _rows_to_host(result.mask, rows_tensor)
    selection = _rows_to_host(result.selection, rows_tensor)
    order = selection.astype(np.int64) if case.map_format == "indices" else None
    probs = _rows_to_host(result.probs, rows_tensor)
    inter = _rows_to_host(result.intermediate, rows_tensor)
    grad = _rows_to_host(result.grad_logits, rows_tensor)

    ref_out = ref.router_topk_forward(x, case.K, expert_bias=bias, **case.forward_kwargs())
    compare_forward(case, x, bias, (probs, mask, order, inter), ref_out, rows, strict=strict)

    # The backward is judged on the device's own selection and intermediate.
    ref_grad = ref.router_topk_backward(gp, inter, selection, case.K, **case.backward_kwargs())
    # Rows with NaN logits: what the backward gives at NaN positions is not pinned down (IEEE 0*NaN
    # vs "ignored"), so only rows without NaN are compared; they are still checked fully written.
    clean = ~np.isnan(as_float64(x)).any(axis=1)
    compare_backward(case, grad, ref_grad, gp, rows, rows_to_check=clean)


def run_router_case(case, rng, *, logits=None, bias=None, grad_probs=None, strict=False):
    """One case end to end: device runs + every-row checks + reference comparison. Inputs default to
    random ones (bias only when case.bias_dtype is set). Returns the DeviceResult."""
    if logits is None:
        logits = random_logits(rng, case.T, case.E, case.dtype, case.score)
    if bias is None and case.bias_dtype is not None:
        bias = random_bias(rng, case.E, case.bias_dtype)
    if grad_probs is None:
        grad_probs = random_grad(rng, case.T, case.E, case.dtype)
    result = run_device(case, logits, bias, grad_probs)
    check_against_reference(case, logits, bias, grad_probs, result,
                            reference_rows(case.T, case.E, rng), strict=strict)
    return result


# ---- the matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_router_matrix(case, rng):
    run_router_case(case, rng)


@pytest.mark.parametrize("case", FULL_SIZE, ids=str)
def test_router_full_size(case, rng):
    run_router_case(case, rng)


# ---- boundaries ----------------------------------------------------------------------------------

ODD_E_CASES = [
    Case(7, 33, 1, "softmax_pre", "float32", map_format="bitmap"),
    Case(300, 33, 8, "sigmoid", "bfloat16", bias_dtype="float32", map_format="indices"),
    Case(1, 33, 22, "softmax_post", "float16", map_format="bytemap"),
    Case(300, 100, 4, "sqrtsoftplus", "float32", scaling=1.2, map_format="bitmap"),
    Case(7, 100, 36, "softmax_pre", "bfloat16", map_format="indices", index_dtype="int64"),
    Case(300, 257, 8, "softmax_post", "float32", map_format="indices"),
    Case(7, 257, 22, "sigmoid", "float16", map_format="bitmap"),
    Case(1, 257, 1, "sqrtsoftplus", "bfloat16", bias_dtype="bfloat16", map_format="bytemap"),
    # wide rows without vector access (E % 8 != 0): f32 with its boundary and rank fix-ups, K = 64
    Case(300, 1001, 22, "softmax_post", "float32", map_format="bitmap"),
    Case(7, 2551, 64, "softmax_post", "bfloat16", map_format="bytemap"),
    Case(64, 2303, 64, "softmax_post", "float32", map_format="indices", index_dtype="int64"),
    # f32 wide rows of two chunks (256 < E <= 512), K past the team rows' bound
    Case(300, 384, 36, "softmax_post", "float32", map_format="bitmap"),
    Case(64, 512, 64, "softmax_post", "float32", map_format="bytemap"),
    Case(300, 1000, 32, "sigmoid", "float32", GROUPS, 1.2, "float32", "bitmap"),
    Case(7, 1000, 8, "softmax_pre", "float16", GROUPS, map_format="indices"),
    Case(300, 1000, 1, "softmax_post", "bfloat16", map_format="bytemap"),
    Case(7, 3000, 36, "sqrtsoftplus", "float32", GROUPS, 1.0, "float32", "indices"),
    Case(300, 3000, 22, "softmax_post", "bfloat16", map_format="bitmap"),
    Case(300, 3000, 4, "sigmoid", "float16", map_format="bytemap"),
]

K_EQUALS_E_CASES = [
    Case(7, 1, 1, "softmax_post", "float32", map_format="indices"),
    Case(7, 1, 1, "sigmoid", "bfloat16", scaling=1.2, map_format="bitmap"),
    Case(300, 8, 8, "softmax_pre", "float16", map_format="bytemap"),
    Case(300, 33, 33, "sqrtsoftplus", "float32", bias_dtype="float32", map_format="indices"),
    Case(64, 36, 36, "softmax_post", "bfloat16", map_format="bitmap"),
    Case(64, 128, 128, "sigmoid", "float32", map_format="indices", index_dtype="int64"),
    Case(64, 128, 128, "softmax_pre", "bfloat16", map_format="bytemap"),
]

MAX_E_CASES = [
    Case(5, MAX_EXPERTS, 1, "softmax_pre", "float32", map_format="indices"),
    Case(64, MAX_EXPERTS, 8, "softmax_post", "bfloat16", map_format="bitmap"),
    Case(64, MAX_EXPERTS, 36, "sigmoid", "float16", bias_dtype="float32", map_format="bytemap"),
    Case(64, MAX_EXPERTS, 32, "sqrtsoftplus", "bfloat16", GROUPS, 1.2, None, "indices"),
    Case(5, MAX_EXPERTS, 22, "sigmoid", "float32", map_format="indices", index_dtype="int64"),
]


@pytest.mark.parametrize("case", ODD_E_CASES + K_EQUALS_E_CASES + MAX_E_CASES, ids=str)
def test_router_boundary_sizes(case, rng):
    run_router_case(case, rng)


# SPEC "Errors": a pointer that is not 16-byte aligned takes a scalar path, never a fault. Views one
# element past an aligned allocation are contiguous and naturally aligned, but not 16-byte aligned.
MISALIGNED_CASES = [
    Case(300, 128, 8, "softmax_post", "bfloat16", map_format="bytemap"),  # warp rows (cp.async when aligned)
    Case(300, 256, 8, "sigmoid", "float32", GROUPS, 2.5, "float32", "bitmap"),
    Case(64, 2304, 36, "softmax_pre", "float16", map_format="indices", index_dtype="int64"),  # block rows
    Case(64, 2304, 36, "softmax_post", "float32", map_format="bytemap"),  # wide rows, scalar access
    Case(64, 1536, 48, "softmax_post", "bfloat16", map_format="bitmap"),
]


def _offset_copy(tensor):
    """The same values in a contiguous view whose data starts one element past an allocation."""
    torch = _torch()
    flat = torch.empty(tensor.numel() + 1, dtype=tensor.dtype, device=tensor.device)
    view = flat[1:].view(tensor.shape)
    view.copy_(tensor)
    return view


@pytest.mark.parametrize("case", MISALIGNED_CASES, ids=str)
def test_router_misaligned_views_match_aligned(case, rng):
    mk = _moekit()
    logits = random_logits(rng, case.T, case.E, case.dtype, case.score)
    bias = None if case.bias_dtype is None else to_device(random_bias(rng, case.E, case.bias_dtype), DEVICE)
    x = to_device(logits, DEVICE)
    g = to_device(random_grad(rng, case.T, case.E, case.dtype), DEVICE)
    aligned = mk.router_topk_forward(x, case.K, expert_bias=bias, **case.forward_kwargs())
    grad = mk.router_topk_backward(g, aligned[2], aligned[1], case.K, **case.backward_kwargs())

    x_off, g_off = _offset_copy(x), _offset_copy(g)
    assert x_off.data_ptr() % 16 != 0 and x_off.is_contiguous()
    outs = tuple(_offset_copy(t) for t in poisoned_forward_outputs(case, "bytes"))
    got = mk.router_topk_forward(x_off, case.K, expert_bias=bias, out=outs, **case.forward_kwargs())
    grad_out = _offset_copy(poisoned((case.T, case.E), case.dtype, "bytes", DEVICE))
    got_grad = mk.router_topk_backward(g_off, _offset_copy(aligned[2]), _offset_copy(aligned[1]), case.K,
                                       out=grad_out, **case.backward_kwargs())
    _sync()
    # Same arithmetic, narrower accesses: the results must be the same bits.
    for name, first, second in zip(("probs", "selection", "intermediate"), aligned, got):
        if first.dtype != second.dtype:  # bool bytemap vs the uint8 out= buffer: compare the bytes
            first = first.view(second.dtype)
        _assert_same_bits(case, f"forward {name} from misaligned views", first, second)
    _assert_same_bits(case, "grad_logits from misaligned views", grad, got_grad)


@pytest.mark.parametrize("score", list(SCORES))
@pytest.mark.parametrize("map_format", MAP_FORMATS)
def test_router_zero_tokens(score, map_format, rng):
    bias_dtype = "float32" if score in BIASED_SCORES else None
    case = Case(0, 64, 4, score, "bfloat16", GROUPS, 1.2, bias_dtype, map_format)
    result = run_router_case(case, rng)
    assert result.probs.numel() == 0 and result.grad_logits.numel() == 0


@pytest.mark.parametrize("score", list(SCORES))
def test_router_one_token(score, rng):
    for fmt in MAP_FORMATS:
        run_router_case(Case(1, 256, 8, score, "float32", GROUPS, 1.2, None, fmt), rng)


def test_router_too_many_experts_is_a_value_error():
    torch = _torch()
    mk = _moekit()
    E = MAX_EXPERTS + 1
    x = torch.zeros((2, E), dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="num_experts"):
        mk.router_topk_forward(x, 4)
    inter = torch.zeros((2, E), dtype=torch.float32, device=DEVICE)
    routing = torch.zeros((2, E), dtype=torch.bool, device=DEVICE)
    routing[:, :4] = True
    with pytest.raises(ValueError, match="num_experts"):
        mk.router_topk_backward(x, inter, routing, 4, score_function="softmax")
    _sync()


# ---- ties, NaN, -0.0, -inf on every top-k path ---------------------------------------------------
#
# Logits here are multiples of 0.25 (exact in every dtype): equal logits give exactly equal keys on
# the device and in the reference, and unequal ones are far apart, so every tie is exact and the
# comparison is strict. With groups, a row is one pattern repeated in every group (so group scores
# tie exactly), with some groups lifted by +2 (so they win by a wide margin).

# (E, K, groups): warp-sized and block-sized E, small and large K, with and without groups
TIE_PATHS = [
    (32, 1, None), (32, 22, None), (32, 4, GROUPS), (32, 16, GROUPS),
    (1024, 4, None), (1024, 36, None), (1024, 8, GROUPS), (1024, 32, GROUPS),
    (2304, 1, None), (2304, 36, None), (2304, 8, GROUPS), (2304, 36, GROUPS),
    (MAX_EXPERTS, 8, None), (MAX_EXPERTS, 32, GROUPS),
    # team rows (E <= 512): 8 / 16 / 32 lanes, padded lanes (E = 100), groups of whole chunks (E = 256)
    (128, 8, None), (100, 6, None), (512, 20, None), (256, 24, None), (256, 8, GROUPS), (512, 8, GROUPS),
    # wide packed rows (16-bit softmax-post, 512 < E <= 2560): padded chunks (E = 1000), 10 chunks
    (1000, 9, None), (2560, 64, None),
]
_TIE_PARAMS = [
    pytest.param(E, K, groups, score, dtype, bool(i % 2) and score in BIASED_SCORES,
                 id=f"E{E}-K{K}-{'G8x4' if groups else 'nogroups'}-{score}-{SHORT_NAMES[dtype]}")
    for i, (E, K, groups) in enumerate(TIE_PATHS)
    for score in SCORES
    for dtype in ("float32", ("bfloat16", "float16")[i % 2])
]


def _grid(rng, size, lo, hi):
    """Multiples of 0.25 in [lo, hi)."""
    return rng.integers(int(lo * 4), int(hi * 4), size=size) / 4.0


def tie_rows(E, K, groups, rng):
    """(logits float64 [R, E], kinds [R]) of rows that stress the tie / NaN / -inf rules."""
    num_groups, group_topk = groups or (1, 1)
    per_group = E // num_groups
    k_in = K // group_topk
    rows, kinds = [], []

    def add(kind, pattern, lifted=0, flip_zero_signs=False):
        row = np.tile(pattern, num_groups)
        if lifted:
            for g in rng.choice(num_groups, size=lifted, replace=False):
                row[g * per_group:(g + 1) * per_group] += 2.0
        if flip_zero_signs:
            for g in range(1, num_groups, 2):
                part = row[g * per_group:(g + 1) * per_group]
                zeros = part == 0
                part[zeros] = -part[zeros]  # -0.0 <-> +0.0
        rows.append(row)
        kinds.append(kind)

    def positions(count):
        return rng.choice(per_group, size=count, replace=False)

    lifts = [0] if num_groups == 1 else sorted({0, group_topk - 1, min(num_groups, group_topk + 1)})

    add("all_equal", np.full(per_group, 0.5))
    for lifted in lifts:
        add("random_grid", _grid(rng, per_group, -4, 4), lifted)
        pattern = _grid(rng, per_group, -4, 2)
        pattern[positions(max(1, k_in // 2))] = 3.0
        add("few_repeated_max", pattern, lifted)
    pattern = _grid(rng, per_group, -4, 2)
    pattern[positions(min(per_group, 2 * k_in + 1))] = 3.0
    add("many_repeated_max", pattern)

    pattern = _grid(rng, per_group, -4, 0)
    spots = np.sort(positions(min(per_group, max(2, 2 * k_in))))
    pattern[spots] = np.where(np.arange(spots.size) % 2 == 0, -0.0, 0.0)  # -0.0 at the lower index
    add("signed_zeros", pattern, flip_zero_signs=num_groups > 1)

    n_special = min(per_group - k_in, max(1, per_group // 3))
    if n_special > 0:
        pattern = _grid(rng, per_group, -4, 4)
        pattern[positions(n_special)] = np.nan
        add("some_nan", pattern)
        pattern = _grid(rng, per_group, -4, 4)
        pattern[positions(n_special)] = -np.inf
        add("some_neginf", pattern)
    if num_groups > 1 and group_topk < num_groups:
        row = np.tile(_grid(rng, per_group, -4, 4), num_groups)
        for g in rng.choice(num_groups, size=num_groups - group_topk, replace=False):
            row[g * per_group:(g + 1) * per_group] = np.nan
        rows.append(row)
        kinds.append("nan_groups")
    add("all_nan", np.full(per_group, np.nan))
    if k_in >= 2:
        pattern = np.full(per_group, -np.inf)
        pattern[positions(k_in - 1)] = _grid(rng, k_in - 1, -4, 4)
        add("mostly_neginf", pattern)  # fewer finite than needed: some -inf get picked
    if per_group >= 2:
        pattern = np.full(per_group, np.nan)
        finite = max(0, k_in - 2)
        spots = positions(finite + 2)
        pattern[spots[:finite]] = _grid(rng, finite, -4, 4)
        pattern[spots[finite:]] = -np.inf
        add("nan_and_neginf", pattern)  # NaN ranks below -inf
    return np.stack(rows), kinds


@pytest.mark.parametrize("preset", PLAN_PRESETS)
@pytest.mark.parametrize("E, K, groups, score, dtype, with_bias", _TIE_PARAMS)
def test_router_ties_nan_and_signed_zeros(E, K, groups, score, dtype, with_bias, preset, rng):
    with tuning(preset):
        check_ties_nan_and_signed_zeros(E, K, groups, score, dtype, with_bias, rng)


def check_ties_nan_and_signed_zeros(E, K, groups, score, dtype, with_bias, rng):
    values, kinds = tie_rows(E, K, groups, rng)
    logits = rounded(values, dtype)
    assert np.array_equal(as_float64(logits), values, equal_nan=True)  # the grid is exact
    bias = None
    if with_bias:
        # +1 on some experts: exact, and it moves selection without breaking exact ties. The same
        # pattern in every group, so that the groups stay exact copies of each other.
        num_groups = groups[0] if groups else 1
        pattern = (rng.random(E // num_groups) < 0.3).astype(np.float64)
        bias = rounded(np.tile(pattern, num_groups), "float32")
    grad_probs = random_grad(rng, len(kinds), E, dtype)
    masks = []
    for map_format in MAP_FORMATS:
        case = Case(len(kinds), E, K, score, dtype, groups, 1.0,
                    "float32" if bias is not None else None, map_format, "int64")
        result = run_router_case(case, rng, logits=logits, bias=bias, grad_probs=grad_probs,
                                 strict=True)
        masks.append(to_host(result.mask))
        if map_format == "indices":
            order = to_host(result.selection).astype(np.int64)
            probs = as_float64(to_host(result.probs))
    for other, fmt in zip(masks[1:], MAP_FORMATS[1:]):
        assert np.array_equal(masks[0], other), f"bytemap and {fmt} select different experts"

    lowest = np.arange(K)
    nan_at = np.isnan(values)
    for row, kind in enumerate(kinds):
        where = f"row {row} ({kind}): indices {order[row].tolist()}"
        if kind == "all_equal" and bias is None:
            assert np.array_equal(order[row], lowest), where
            weights = probs[row, order[row]]
            assert np.all(weights == weights[0]), f"{where}: unequal weights {weights.tolist()}"
        every_key_nan = kind == "all_nan" or (score == "softmax_pre" and nan_at[row].any())
        if every_key_nan:
            # Every key is NaN (softmax spreads a NaN over the row). Without groups the lowest
            # indices win. With groups, the dropped groups' keys become -inf, which ranks above NaN,
            # so the SPEC (and the reference, compared above) picks from the first dropped group.
            if groups is None:
                assert np.array_equal(order[row], lowest), where
        elif nan_at[row].any():
            assert not nan_at[row, order[row]].any(), f"{where}: a NaN expert was picked"


# Group layouts of team rows (E <= 512), whose group stage counts for each group the groups that
# beat it (L lanes per group share the count) or, with many small groups per team, runs Kg rounds:
# fewer groups per chunk sweep than lanes per group (E = 512, G = 8), as many (E = 256 on 16 lanes),
# more (E = 128), and the rounds (E = 64 with G = 8, E = 256 with G = 32). T = 37 and 20000 take one
# and two chunks per lane at 128 < E <= 256. Rows: tie_rows tiled (groups that are exact copies,
# some lifted: compared strictly), and random grid rows (softmax-post: group sums of grid logits are
# exact, so strictly too; sigmoid sums may near-tie, judged as everywhere else).
# (Kg >= 2 everywhere: with Kg = 1, K = 2, a tie row of one finite logit per group selects one
# nonzero score, whose gradient is all cancellation, TE's formula in f32 as in float64.)
TEAM_GROUP_LAYOUTS = [(64, 8, (8, 4)), (128, 8, (8, 4)), (128, 4, (4, 2)), (256, 8, (8, 4)),
                      (256, 4, (4, 2)), (256, 8, (32, 4)), (512, 8, (8, 4)), (512, 16, (16, 8))]


@pytest.mark.parametrize("T", [37, 20000])
@pytest.mark.parametrize("score", ["sigmoid", "softmax_post"])
@pytest.mark.parametrize("E, K, groups", TEAM_GROUP_LAYOUTS,
                         ids=[f"E{e}-K{k}-G{g[0]}x{g[1]}" for e, k, g in TEAM_GROUP_LAYOUTS])
def test_router_team_group_layouts(E, K, groups, score, T, rng):
    assert groups_valid(E, K, groups)
    dtype = "float32" if T == 37 else "bfloat16"
    ties, _ = tie_rows(E, K, groups, rng)
    ties = ties[~np.isnan(ties).any(axis=1)]  # NaN rows are the tie test's; here: the group order
    tiled = np.tile(ties, (T // len(ties) + 1, 1))[:T]
    case = Case(T, E, K, score, dtype, groups, 1.0, None, "indices", "int32")
    run_router_case(case, rng, logits=rounded(tiled, dtype), strict=True)
    grid = _grid(rng, (T, E), -4, 4)
    run_router_case(case, rng, logits=rounded(grid, dtype), strict=score == "softmax_post")


# Near ties a few ulps apart, in shuffled positions. Team rows pack the f32 keys of sigmoid /
# sqrtsoftplus with the index in their low 8-10 bits (buckets of 256-1024 ulps) and redo a row with
# the full keys where two keys the rounds compared agree above those bits; the other paths compare
# full keys. Keys here are exact in f32 and float64 alike, so the comparison is strict:
# softmax-post: the key is the logit itself; sigmoid + bias: y is 0.5 (x = 0) or 0 (x = -inf) and
# the bias a ladder in [1, 1.5), so y + b is exact in f32.
NEAR_TIE_SHAPES = [(128, 16), (100, 6), (256, 8), (512, 8), (512, 10), (2304, 36), (1000, 22), (2560, 64)]
NEAR_TIE_STEPS = ("consecutive", "few_ulps", "spread", "same_low_bits")


def ulp_steps(kind, n, rng):
    """Offsets in ulps: consecutive floats, a few ulps with exact ties, across several buckets, or
    multiples of 1024 (the same low bits in different buckets)."""
    if kind == "consecutive":
        return rng.permutation(n)
    if kind == "few_ulps":
        return rng.integers(0, 4, size=n)
    if kind == "spread":
        return rng.integers(-1500, 1500, size=n)
    return rng.integers(0, 3, size=n) * 1024


def ulp_ladder(base, steps):
    return (np.array(base, dtype=np.float32).view(np.int32) + steps.astype(np.int32)).view(np.float32)


@pytest.mark.parametrize("steps", NEAR_TIE_STEPS)
@pytest.mark.parametrize("score, dtype", [("softmax_post", "float32"), ("sigmoid", "float32"),
                                          ("sigmoid", "bfloat16")])
@pytest.mark.parametrize("E, K", NEAR_TIE_SHAPES, ids=[f"E{e}-K{k}" for e, k in NEAR_TIE_SHAPES])
@pytest.mark.parametrize("preset", PLAN_PRESETS)
def test_router_ulp_near_ties_are_exact(E, K, score, dtype, steps, preset, rng):
    with tuning(preset):
        check_ulp_near_ties(E, K, score, dtype, steps, rng)


def check_ulp_near_ties(E, K, score, dtype, steps, rng):
    n = min(E, 2 * K + 3)  # competitors per row
    rows, bias = [], None
    if score == "softmax_post":
        for sign in (1.0, -1.0, 1.0, 1.0):
            row = (rng.standard_normal(E) - 8.0).astype(np.float32)  # below every competitor
            spots = rng.choice(E, size=n, replace=False)
            row[spots] = ulp_ladder(sign * rng.uniform(0.5, 3.0), ulp_steps(steps, n, rng))
            rows.append(row)
        rows[-1][spots[:K - 1]] += np.float32(1.0)  # K - 1 clear winners, near ties at the boundary
    else:
        bias = ulp_ladder(1.25, ulp_steps(steps, E, rng))
        for _ in range(4):
            row = np.full(E, -np.inf, dtype=np.float32)  # y = 0: key = b
            row[rng.choice(E, size=n, replace=False)] = 0.0  # y = 0.5: key = b + 0.5
            rows.append(row)
        rows.append(np.zeros(E, dtype=np.float32))
    logits = rounded(np.stack(rows).astype(np.float64), dtype)  # 0 and -inf are exact in bf16
    case = Case(logits.shape[0], E, K, score, dtype, None, 1.0,
                None if bias is None else "float32", "indices", "int64")
    run_router_case(case, rng, logits=logits, bias=bias, strict=True)


# ---- the sigmoid itself ---------------------------------------------------------------------------

SIGMOID_MAX_ULP = 6.0  # hardware exp2 and reciprocal: 4.4 ulp measured on an H200 (bench/NOTES.md v7.3)
SMALLEST_SUBNORMAL = 2.0 ** -149


def test_router_sigmoid_accuracy_subnormals_and_specials(rng):
    """The sigmoid intermediate over a dense sweep of f32 logits: within SIGMOID_MAX_ULP of the
    correctly rounded value where that is a normal float, subnormal results kept (not flushed to 0),
    and the special inputs exact."""
    torch = _torch()
    mk = _moekit()
    E = 256
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -1e-40, 20.0, 88.0, 128.0, 1e30,
                         -104.0, -128.0, -1e30], dtype=np.float32)
    expected = np.array([1.0, 0.0, np.nan, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    sweep = np.concatenate([np.linspace(-110.0, 110.0, 1_000_001), rng.standard_normal(200_000) * 4.0])
    x = np.concatenate([sweep, specials]).astype(np.float32)
    x = np.concatenate([x, np.zeros((-len(x)) % E, dtype=np.float32)])  # whole rows
    _, _, inter = mk.router_topk_forward(torch.from_numpy(x.reshape(-1, E)).to(DEVICE), 1,
                                         score_function="sigmoid")
    y = inter.cpu().numpy().ravel().astype(np.float64)
    xf = x.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = 1.0 / (1.0 + np.exp(-xf))
    ref32 = ref.astype(np.float32)
    finite = np.isfinite(xf)
    normal = finite & (ref32 >= np.finfo(np.float32).tiny)
    ulps = np.abs(y - ref) / np.spacing(ref32).astype(np.float64)
    worst = np.argmax(np.where(normal, ulps, 0.0))
    assert ulps[normal].max() <= SIGMOID_MAX_ULP, f"{ulps[worst]:.2f} ulp at x = {xf[worst]!r}"
    sub = finite & ~normal
    assert np.abs(y - ref)[sub].max() <= 4 * SMALLEST_SUBNORMAL, "subnormal results off by > 4 steps"
    kept = sub & (ref >= 4 * SMALLEST_SUBNORMAL)
    assert kept.any() and (y[kept] > 0).all(), "subnormal sigmoid results were flushed to 0"
    got = y[len(sweep):len(sweep) + len(specials)]
    np.testing.assert_array_equal(got, expected, err_msg=f"sigmoid of {specials.tolist()}")


# ---- determinism ---------------------------------------------------------------------------------

DETERMINISM_CASES = [
    Case(2048, 2304, 36, "sigmoid", "bfloat16", GROUPS, 1.2, "float32", "indices"),
    Case(1024, MAX_EXPERTS, 22, "softmax_pre", "float32", map_format="bitmap"),
    Case(8992, 256, 8, "softmax_post", "float16", map_format="bytemap"),
]


@pytest.mark.parametrize("case", DETERMINISM_CASES, ids=str)
def test_router_runs_are_bitwise_equal(case, rng):
    # run_router_case already compares three runs; here two whole fresh cases on the same inputs.
    logits = random_logits(rng, case.T, case.E, case.dtype, case.score)
    bias = None if case.bias_dtype is None else random_bias(rng, case.E, case.bias_dtype)
    grad_probs = random_grad(rng, case.T, case.E, case.dtype)
    first = run_device(case, logits, bias, grad_probs)
    second = run_device(case, logits, bias, grad_probs)
    for name in ("probs", "selection", "intermediate", "grad_logits"):
        _assert_same_bits(case, name, getattr(first, name), getattr(second, name))


# ---- back-to-back calls ----------------------------------------------------------------------
#
# Each call reads what the call before it wrote and overwrites what that call read, with nothing
# between them on the stream: forward -> backward (grad_probs = the forward's probs, grad_logits
# written over the forward's logits) -> forward (on those gradients, into the first forward's output
# buffers) -> backward. With programmatic dependent launch a kernel starts while the one before it
# drains, so this fails if a kernel touches memory before its wait. The same chain with a
# synchronize after every call gives the expected bits.

CHAIN_CASES = [
    Case(65536, 128, 8, "softmax_post", "bfloat16"),
    Case(8192, 256, 8, "sigmoid", "float32", GROUPS, 2.5, "float32", "indices"),
    Case(4099, 2304, 36, "softmax_post", "float16", map_format="bitmap"),
    Case(37, 512, 22, "softmax_pre", "bfloat16", index_dtype="int64", map_format="indices"),
]


def _chain(case, logits, bias, sync_each):
    mk, torch = _moekit(), _torch()
    x = logits.clone()
    fwd = dict(case.forward_kwargs(), expert_bias=bias)
    first = mk.router_topk_forward(x, case.K, **fwd)
    if sync_each:
        _sync()
    mk.router_topk_backward(first[0], first[2], first[1], case.K, out=x, **case.backward_kwargs())
    if sync_each:
        _sync()
    second = mk.router_topk_forward(x, case.K, out=first, **fwd)
    if sync_each:
        _sync()
    grad = torch.empty_like(x)
    mk.router_topk_backward(second[0], second[2], second[1], case.K, out=grad, **case.backward_kwargs())
    _sync()
    return [t.clone() for t in (*first, x, grad)]


@pytest.mark.parametrize("case", CHAIN_CASES, ids=str)
def test_router_back_to_back_calls_see_each_others_writes(case, rng):
    logits = to_device(random_logits(rng, case.T, case.E, case.dtype, case.score), DEVICE)
    bias = None if case.bias_dtype is None else to_device(random_bias(rng, case.E, case.bias_dtype), DEVICE)
    expected = _chain(case, logits, bias, sync_each=True)
    for _ in range(3):
        got = _chain(case, logits, bias, sync_each=False)
        for name, e, g in zip(("probs", "selection", "intermediate", "grad_logits_over_logits", "grad_logits"),
                              expected, got):
            _assert_same_bits(case, name, e, g)


# ---- streams -------------------------------------------------------------------------------------
#
# The stream under test is kept busy by a spin kernel, and the inputs are overwritten behind the
# spin on that same stream. An op that really runs on that stream sees the new inputs; one that runs
# anywhere else runs before the overwrite and sees the old ones.

STREAM_CASE = Case(512, 256, 8, "sigmoid", "bfloat16", GROUPS, 1.2, "float32", "indices")


def _stream_inputs(rng, case):
    old = random_logits(rng, case.T, case.E, case.dtype, case.score)
    new = random_logits(rng, case.T, case.E, case.dtype, case.score)
    bias = random_bias(rng, case.E, case.bias_dtype) if case.bias_dtype else None
    grad_old = random_grad(rng, case.T, case.E, case.dtype)
    grad_new = random_grad(rng, case.T, case.E, case.dtype)
    return old, new, bias, grad_old, grad_new


def _default_stream_outputs(case, logits, bias, grad_probs):
    mk = _moekit()
    b = None if bias is None else to_device(bias, DEVICE)
    out = mk.router_topk_forward(to_device(logits, DEVICE), case.K, expert_bias=b,
                                 **case.forward_kwargs())
    grad = mk.router_topk_backward(to_device(grad_probs, DEVICE), out[2], out[1], case.K,
                                   **case.backward_kwargs())
    _sync()
    return (*out, grad)


def _run_behind_stall(handle, x, x_new, g, g_new, bias, call_forward, call_backward):
    """Overwrite x (then g) behind a spin on `handle`, call the op, return its outputs."""
    stall_then(handle, lambda: x.copy_(x_new))
    out = call_forward(x, bias)
    stall_then(handle, lambda: g.copy_(g_new))
    grad = call_backward(g, out[2], out[1])
    _torch().cuda.synchronize()
    return (*out, grad)


@pytest.mark.parametrize("kind", ["int", "torch_stream", "cuda_stream_protocol", "torch_context"])
def test_router_runs_on_the_given_stream(kind, rng):
    torch = _torch()
    mk = _moekit()
    case = STREAM_CASE
    old, new, bias, grad_old, grad_new = _stream_inputs(rng, case)
    expected = _default_stream_outputs(case, new, bias, grad_new)

    stream = torch.cuda.Stream()
    handle = stream.cuda_stream
    stream_arg = {"int": handle, "torch_stream": stream,
                  "cuda_stream_protocol": StreamProtocolObject(handle), "torch_context": None}[kind]
    b = to_device(bias, DEVICE)

    def forward(x, bias_tensor):
        if kind == "torch_context":
            with torch.cuda.stream(stream):
                return mk.router_topk_forward(x, case.K, expert_bias=bias_tensor,
                                              **case.forward_kwargs())
        return mk.router_topk_forward(x, case.K, expert_bias=bias_tensor, stream=stream_arg,
                                      **case.forward_kwargs())

    def backward(g, inter, selection):
        if kind == "torch_context":
            with torch.cuda.stream(stream):
                return mk.router_topk_backward(g, inter, selection, case.K,
                                               **case.backward_kwargs())
        return mk.router_topk_backward(g, inter, selection, case.K, stream=stream_arg,
                                       **case.backward_kwargs())

    got = _run_behind_stall(handle, to_device(old, DEVICE), to_device(new, DEVICE),
                            to_device(grad_old, DEVICE), to_device(grad_new, DEVICE), b,
                            forward, backward)
    for name, a, e in zip(("probs", "selection", "intermediate", "grad_logits"), got, expected):
        _assert_same_bits(case, f"{name} on stream via {kind}", a, e)


# ---- CUDA graphs ---------------------------------------------------------------------------------

GRAPH_CASES = [
    Case(2048, 256, 8, "sigmoid", "bfloat16", GROUPS, 1.2, "float32", "bytemap"),
    Case(300, 2304, 36, "softmax_post", "float32", map_format="indices"),
    Case(64, 8192, 22, "softmax_pre", "float16", map_format="bitmap"),
]


@pytest.mark.parametrize("case", GRAPH_CASES, ids=str)
def test_router_cuda_graph_capture_and_replay(case, rng):
    torch = _torch()
    mk = _moekit()
    T, E = case.T, case.E
    static_x = torch.zeros((T, E), dtype=torch_dtype(case.dtype), device=DEVICE)
    static_g = torch.zeros_like(static_x)
    bias = random_bias(rng, E, case.bias_dtype) if case.bias_dtype else None
    static_b = None if bias is None else to_device(bias, DEVICE)
    outs = poisoned_forward_outputs(case, "nan")
    grad_out = poisoned((T, E), case.dtype, "nan", DEVICE)

    def step():
        mk.router_topk_forward(static_x, case.K, expert_bias=static_b, out=outs,
                               **case.forward_kwargs())
        mk.router_topk_backward(static_g, outs[2], outs[1], case.K, out=grad_out,
                                **case.backward_kwargs())

    # Warm up on a side stream (first-call setup stays out of the capture), as torch advises.
    static_x.copy_(to_device(random_logits(rng, T, E, case.dtype, case.score), DEVICE))
    static_g.copy_(to_device(random_grad(rng, T, E, case.dtype), DEVICE))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for _ in range(3):
        logits = random_logits(rng, T, E, case.dtype, case.score)
        grad_probs = random_grad(rng, T, E, case.dtype)
        static_x.copy_(to_device(logits, DEVICE))
        static_g.copy_(to_device(grad_probs, DEVICE))
        for tensor in (*outs, grad_out):  # poison in place: the graph writes these addresses
            tensor.copy_(poisoned(tuple(tensor.shape), tensor.dtype, "nan", DEVICE))
        graph.replay()
        torch.cuda.synchronize()
        assert not torch.isnan(outs[0].float()).any(), f"{case}: replay left probs unwritten"
        assert not torch.isnan(grad_out.float()).any(), f"{case}: replay left grad_logits unwritten"
        mask = check_structure(case, static_x, *outs)
        result = DeviceResult(outs[0], outs[1], outs[2], grad_out, mask)
        check_against_reference(case, logits, bias, grad_probs, result,
                                reference_rows(T, E, rng))


# ---- interop: CuPy arrays and streams ------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("map_format", MAP_FORMATS)
def test_router_cupy_in_cupy_out(dtype, map_format, rng):
    cupy = pytest.importorskip("cupy")
    mk = _moekit()
    case = Case(300, 1000, 8, "sigmoid", dtype, GROUPS, 1.2, "float32", map_format)
    logits = random_logits(rng, case.T, case.E, dtype, case.score)
    bias = random_bias(rng, case.E, "float32")
    grad_probs = random_grad(rng, case.T, case.E, dtype)
    expected = _default_stream_outputs(case, logits, bias, grad_probs)

    x = cupy.asarray(logits)
    out = mk.router_topk_forward(x, case.K, expert_bias=cupy.asarray(bias), **case.forward_kwargs())
    grad = mk.router_topk_backward(cupy.asarray(grad_probs), out[2], out[1], case.K,
                                   **case.backward_kwargs())
    cupy.cuda.Device().synchronize()
    wanted_dtypes = (NUMPY_DTYPES[dtype],
                     {"bytemap": np.bool_, "bitmap": np.uint8, "indices": np.int32}[map_format],
                     np.float32, NUMPY_DTYPES[dtype])
    for name, array, want, ref in zip(("probs", "selection", "intermediate", "grad_logits"),
                                      (*out, grad), wanted_dtypes, expected):
        assert isinstance(array, cupy.ndarray), f"{name} came back as {type(array)}"
        assert array.dtype == np.dtype(want), f"{name}: dtype {array.dtype}"
        host = cupy.asnumpy(array)
        assert np.array_equal(host.view(np.uint8), to_host(ref).view(np.uint8)), (
            f"{name} from CuPy inputs differs from the torch result")


@pytest.mark.parametrize("kind", ["cupy_stream_argument", "cupy_current_stream",
                                  "torch_inputs_cupy_stream"])
def test_router_cupy_streams(kind, rng):
    cupy = pytest.importorskip("cupy")
    torch = _torch()
    mk = _moekit()
    case = STREAM_CASE.with_(dtype="float32")
    old, new, bias, grad_old, grad_new = _stream_inputs(rng, case)
    expected = _default_stream_outputs(case, new, bias, grad_new)
    stream = cupy.cuda.Stream(non_blocking=True)
    handle = stream.ptr

    if kind == "torch_inputs_cupy_stream":
        x, g, b = to_device(old, DEVICE), to_device(grad_old, DEVICE), to_device(bias, DEVICE)
        x_view, g_view = x, g
    else:
        x, g, b = cupy.asarray(old), cupy.asarray(grad_old), cupy.asarray(bias)
        x_view, g_view = torch.from_dlpack(x), torch.from_dlpack(g)  # same memory, for the copies
    cupy.cuda.Device().synchronize()

    def call(fn, *args, **kwargs):
        if kind == "cupy_current_stream":
            with stream:
                return fn(*args, **kwargs)
        return fn(*args, stream=stream, **kwargs)

    # Staged on the device first: a host-to-device copy behind the spin could block the host.
    x_new, g_new = to_device(new, DEVICE), to_device(grad_new, DEVICE)
    stall_then(handle, lambda: x_view.copy_(x_new))
    out = call(mk.router_topk_forward, x, case.K, expert_bias=b, **case.forward_kwargs())
    stall_then(handle, lambda: g_view.copy_(g_new))
    grad = call(mk.router_topk_backward, g, out[2], out[1], case.K, **case.backward_kwargs())
    torch.cuda.synchronize()
    for name, array, ref in zip(("probs", "selection", "intermediate", "grad_logits"),
                                (*out, grad), expected):
        host = cupy.asnumpy(array) if isinstance(array, cupy.ndarray) else to_host(array)
        assert np.array_equal(host.view(np.uint8), to_host(ref).view(np.uint8)), (
            f"{name} on a CuPy stream ({kind}) differs from the default-stream result")


# ---- moekit.torch: autograd and torch.compile ----------------------------------------------------

TORCH_CASES = [
    Case(512, 128, 8, "softmax_pre", "float32", GROUPS, 1.2),
    Case(512, 128, 4, "softmax_post", "bfloat16"),
    Case(512, 256, 8, "sigmoid", "bfloat16", GROUPS, 1.2, "float32"),
    Case(512, 256, 1, "sigmoid", "float32"),
    Case(300, 1000, 22, "sqrtsoftplus", "float16", None, 1.0, "float16"),
    Case(64, 8192, 36, "sqrtsoftplus", "float32", GROUPS, 1.2, "float32"),
]


def _fused_kwargs(case, bias_tensor):
    # TransformerEngine's keywords; None means "off" there (no groups, no scaling).
    num_groups, group_topk = case.groups or (None, None)
    return dict(topk=case.K, use_pre_softmax=case.use_pre_softmax, num_groups=num_groups,
                group_topk=group_topk, scaling_factor=None if case.scaling == 1.0 else case.scaling,
                score_function=case.score_function, expert_bias=bias_tensor)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_torch_autograd_matches_reference(case, rng):
    torch = _torch()
    mk = _moekit()
    from moekit.torch import fused_topk_with_score_function

    logits = random_logits(rng, case.T, case.E, case.dtype, case.score)
    bias = random_bias(rng, case.E, case.bias_dtype) if case.bias_dtype else None
    weight = random_grad(rng, case.T, case.E, case.dtype)
    x = to_device(logits, DEVICE).requires_grad_(True)
    b = None if bias is None else to_device(bias, DEVICE)
    w = to_device(weight, DEVICE)

    probs, routing_map = fused_topk_with_score_function(logits=x, **_fused_kwargs(case, b))
    assert probs.dtype == x.dtype and routing_map.dtype == torch.bool
    (probs * w).sum().backward()  # d loss / d probs = w

    # The same kernels as the functional API, so the same bits.
    functional = mk.router_topk_forward(x.detach(), case.K, expert_bias=b, **case.forward_kwargs())
    _assert_same_bits(case, "autograd probs vs functional", probs.detach(), functional[0])
    _assert_same_bits(case, "autograd routing_map vs functional", routing_map, functional[1])

    grad = x.grad
    assert grad is not None and grad.dtype == x.dtype
    result = DeviceResult(probs.detach(), routing_map, functional[2], grad,
                          check_structure(case, x.detach(), probs.detach(), routing_map,
                                          functional[2]))
    check_against_reference(case, logits, bias, weight, result, reference_rows(case.T, case.E, rng))


def test_torch_compile_fullgraph_matches_eager(rng):
    torch = _torch()
    from moekit.torch import fused_topk_with_score_function

    case = Case(256, 256, 8, "sigmoid", "bfloat16", GROUPS, 1.2, "float32")
    logits = random_logits(rng, case.T, case.E, case.dtype, case.score)
    bias = to_device(random_bias(rng, case.E, "float32"), DEVICE)
    weight = to_device(rng.standard_normal((case.T, case.E)).astype(np.float32), DEVICE)

    def route(x, w, b):
        probs, routing_map = fused_topk_with_score_function(logits=x, **_fused_kwargs(case, b))
        return (probs.float() * w).sum(), probs, routing_map

    torch._dynamo.reset()
    compiled = torch.compile(route, fullgraph=True)
    runs = []
    for fn in (route, compiled):
        x = to_device(logits, DEVICE).requires_grad_(True)
        loss, probs, routing_map = fn(x, weight, bias)
        loss.backward()
        runs.append((loss.detach(), probs.detach(), routing_map, x.grad))
    (loss_e, probs_e, map_e, grad_e), (loss_c, probs_c, map_c, grad_c) = runs
    _assert_same_bits(case, "compiled probs", probs_c, probs_e)
    _assert_same_bits(case, "compiled routing_map", map_c, map_e)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-3, atol=1e-5)
