"""The bit-level facts the router forward relies on to pack expert indices into its selection keys.

kernels/common/topk/keys.cuh maps a float32 score to a uint32 key whose integer order is the SPEC
order (order_key), and the router (kernels/router/forward_rows.cuh, row_select) replaces the
low bits of the keys of bf16 / f16 softmax-post logits with (mask - expert index). That is only
correct if those low bits never carry information, if the packed key of a real expert is never 0
(the "absent" key of padding lanes), and if integer order of packed keys is exactly the SPEC order
with ties broken towards the lower index. These tests check all three on the CPU: exhaustively over
every bf16 and f16 bit pattern, and on rows full of ties, NaN, signed zeros and infinities against
moekit.reference.topk_order. They mirror the device formulas in NumPy; the GPU tests check the
kernels themselves.
"""

import ml_dtypes
import numpy as np
import pytest

from moekit import reference

ABSENT_KEY = 0  # padding lanes
NAN_KEY = 1
FREE_BITS = {"bfloat16": 16, "float16": 13}  # forward_rows.cuh kFreeBits
MAX_PACKED_E = {"bfloat16": 16384, "float16": (1 << 13) - 1}  # plan.h keys_packed (E < 2^13 for f16)


def order_key(values):
    """keys.cuh order_key on float32 values -> uint32 keys."""
    f = np.asarray(values, dtype=np.float32)
    u = f.view(np.uint32).copy()
    u[u == 0x80000000] = 0  # -0.0 ranks as +0.0
    negative = (u & 0x80000000) != 0
    key = np.where(negative, ~u, u | np.uint32(0x80000000)).astype(np.uint32)
    key[np.isnan(f)] = NAN_KEY
    return key


def packed_keys(values, dtype_name):
    """forward_row's packing: (key & ~mask) | (mask - index) for every real element of a row."""
    mask = np.uint32((1 << FREE_BITS[dtype_name]) - 1)
    key = order_key(values)
    index = np.arange(key.shape[-1], dtype=np.uint32)
    return (key & ~mask) | (mask - index)


def every_value(dtype_name):
    """All 2^16 bit patterns of the 16-bit type, as float32."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float16
    return bits.view(dtype).astype(np.float32)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_low_key_bits_carry_no_information(dtype_name):
    values = every_value(dtype_name)
    key = order_key(values)
    low = key & np.uint32((1 << FREE_BITS[dtype_name]) - 1)
    real = ~np.isnan(values)
    full = (1 << FREE_BITS[dtype_name]) - 1
    # non-negative values (and -0.0) have zero low bits, negative ones all-ones (the bits are flipped)
    assert set(np.unique(low[real]).tolist()) == {0, full}
    assert np.all(key[np.isnan(values)] == NAN_KEY)
    # so the high bits alone keep the SPEC order of every value
    high = key & ~np.uint32(full)
    ranked = values[real][np.argsort(high[real], kind="stable")]
    assert np.all(np.diff(ranked) >= 0)
    assert np.unique(high[real]).size == np.unique(values[real]).size  # only -0.0 and +0.0 share a key


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_packed_keys_are_real_and_nan_ranks_lowest(dtype_name):
    E = MAX_PACKED_E[dtype_name]
    row = np.full(E, np.nan, dtype=np.float32)
    nan_keys = packed_keys(row, dtype_name)
    assert nan_keys.min() > ABSENT_KEY  # even the last expert's NaN is not "absent"
    neg_inf = packed_keys(np.full(E, -np.inf, dtype=np.float32), dtype_name)
    assert nan_keys.max() < neg_inf.min()  # NaN below -inf, whatever the indices
    lowest_finite = np.float32(-ml_dtypes.finfo(ml_dtypes.bfloat16).max if dtype_name == "bfloat16"
                               else -np.finfo(np.float16).max)
    assert neg_inf.max() < packed_keys(np.full(E, lowest_finite), dtype_name).min()


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("E", [7, 128, 2304])
def test_packed_key_order_is_the_spec_order(dtype_name, E):
    rng = np.random.default_rng(E)
    dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float16
    specials = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1.0, -1.0, 1.0078125], dtype=np.float32)
    rows = []
    for _ in range(64):
        row = rng.choice(specials, size=E)  # heavy ties, NaN, signed zeros, infinities
        spread = rng.random(E) < 0.5
        row[spread] = rng.standard_normal(int(spread.sum())).astype(np.float32)
        rows.append(row.astype(dtype).astype(np.float32))  # exact in the 16-bit type
    rows = np.stack(rows)
    keys = packed_keys(rows, dtype_name)
    assert all(np.unique(k).size == E for k in keys)  # unique: no tie left to break
    for K in sorted({1, min(8, E), min(36, E), E}):
        by_packed_key = np.argsort(~keys, axis=1, kind="stable")[:, :K]
        assert np.array_equal(by_packed_key, reference.topk_order(rows.astype(np.float64), K))
