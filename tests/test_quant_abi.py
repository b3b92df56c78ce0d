"""The FP8 quantization entry points' argument validation through ctypes, with fake device pointers:
no GPU needed (CI). Every invalid call is refused with INVALID_ARGUMENT before any CUDA call, with a
message naming the op, the argument and its value. Also the Python layer's errors and the scale
layouts' shapes."""

import numpy as np
import pytest

from moekit import _lib
from moekit._lib import DType, ScaleFormat, Status

from test_abi import abi_caller, assert_invalid_op

X, Q, S, COUNTS = (0x100000 * (i + 1) for i in range(4))

SILU = dict(
    x=X, x_dtype=DType.BF16, num_tokens=5, hidden=256, group_size=128, scale_format=ScaleFormat.PACKED_UE8M0,
    gate_first=1, round_act=0, q=Q, scales=S, stream=None,
)  # fmt: skip
MASKED = dict(
    x=X, x_dtype=DType.F16, num_experts=4, max_tokens=6, hidden=512, counts=COUNTS, counts_dtype=DType.I32,
    group_size=64, scale_format=ScaleFormat.COL_F32_TMA, gate_first=0, round_act=1, q=Q, scales=S, stream=None,
)  # fmt: skip
PLAIN = dict(
    x=X, x_dtype=DType.F32, num_tokens=3, hidden=128, group_size=32, scale_format=ScaleFormat.ROW_F32,
    q=Q, scales=S, stream=None,
)  # fmt: skip

CALLS = {
    "silu_mul_quant_fp8": (SILU, "moekit_silu_mul_quant_fp8"),
    "silu_mul_quant_fp8_masked": (MASKED, "moekit_silu_mul_quant_fp8_masked"),
    "quant_fp8": (PLAIN, "moekit_quant_fp8"),
}


call = abi_caller(CALLS)


INVALID = {
    "null x": ("silu_mul_quant_fp8", dict(x=None), "x", None),
    "null q": ("silu_mul_quant_fp8", dict(q=None), "q", None),
    "null scales": ("silu_mul_quant_fp8", dict(scales=None), "scales", None),
    "misaligned x": ("silu_mul_quant_fp8", dict(x=X + 8), "x", None),
    "misaligned q": ("silu_mul_quant_fp8", dict(q=Q + 4), "q", None),
    "misaligned scales": ("silu_mul_quant_fp8", dict(scales=S + 2), "scales", None),
    "T < 0": ("silu_mul_quant_fp8", dict(num_tokens=-1), "num_tokens", -1),
    "H % group": ("silu_mul_quant_fp8", dict(hidden=192), "hidden", 192),
    "H 0": ("silu_mul_quant_fp8", dict(hidden=0), "hidden", 0),
    "H too large": ("silu_mul_quant_fp8", dict(hidden=2**31), "hidden", 2**31),
    "group 16": ("silu_mul_quant_fp8", dict(group_size=16, hidden=256), "group_size", 16),
    "group 256": ("silu_mul_quant_fp8", dict(group_size=256), "group_size", 256),
    "format 4": ("silu_mul_quant_fp8", dict(scale_format=4), "scale_format", 4),
    "format -1": ("silu_mul_quant_fp8", dict(scale_format=-1), "scale_format", -1),
    "int32 x": ("silu_mul_quant_fp8", dict(x_dtype=DType.I32), "x_dtype", "int32"),
    "fp8 x": ("silu_mul_quant_fp8", dict(x_dtype=DType.F8_E4M3), "x_dtype", None),
    "T overflow": ("silu_mul_quant_fp8", dict(num_tokens=2**60), "num_tokens", None),
    "x overlaps q": ("silu_mul_quant_fp8", dict(q=X + 1024), ("overlap",), None),
    "q overlaps scales": ("silu_mul_quant_fp8", dict(scales=Q + 256), ("overlap",), None),
    "masked: null counts": ("silu_mul_quant_fp8_masked", dict(counts=None), "counts", None),
    "masked: f32 counts": ("silu_mul_quant_fp8_masked", dict(counts_dtype=DType.F32), "counts_dtype", "float32"),
    "masked: misaligned counts": ("silu_mul_quant_fp8_masked", dict(counts=COUNTS + 2), "counts", None),
    "masked: E < 0": ("silu_mul_quant_fp8_masked", dict(num_experts=-1), "num_experts", -1),
    "masked: E above max": ("silu_mul_quant_fp8_masked", dict(num_experts=4097), "num_experts", 4097),
    "masked: M < 0": ("silu_mul_quant_fp8_masked", dict(max_tokens=-2), "max_tokens", -2),
    "masked: H % group": ("silu_mul_quant_fp8_masked", dict(hidden=96), "hidden", 96),
    "plain: null x": ("quant_fp8", dict(x=None), "x", None),
    "plain: H % group": ("quant_fp8", dict(hidden=48), "hidden", 48),
    "plain: u8 x": ("quant_fp8", dict(x_dtype=DType.U8), "x_dtype", "uint8"),
    "plain: format 7": ("quant_fp8", dict(scale_format=7), "scale_format", 7),
}  # fmt: skip


@pytest.mark.parametrize("op, changes, names, value", INVALID.values(), ids=INVALID.keys())
def test_invalid_argument(op, changes, names, value):
    assert_invalid_op(call(op, **changes), op, names, value)


def test_zero_sizes_launch_nothing():
    # T == 0 (any buffers null), E == 0, M == 0: success, nothing launched (no GPU here)
    assert call("silu_mul_quant_fp8", num_tokens=0, x=None, q=None, scales=None) == Status.SUCCESS, _lib.last_error()
    assert call("quant_fp8", num_tokens=0) == Status.SUCCESS, _lib.last_error()
    assert call("silu_mul_quant_fp8_masked", num_experts=0, counts=None) == Status.SUCCESS, _lib.last_error()
    assert call("silu_mul_quant_fp8_masked", max_tokens=0) == Status.SUCCESS, _lib.last_error()


@pytest.mark.parametrize("fmt, rows, storage, dtype, logical", [
    ("row_f32", 5, (5, 56), "float32", (5, 56)),
    ("col_f32_tma", 5, (56, 8), "float32", (5, 56)),
    ("col_f32_tma_ue8m0", 8, (56, 8), "float32", (8, 56)),
    ("packed_ue8m0", 5, (14, 8), "int32", (5, 14)),
])  # fmt: skip
def test_scale_storage_shape(fmt, rows, storage, dtype, logical):
    from moekit.quant import scale_storage_shape

    assert scale_storage_shape(rows, 7168, 128, fmt) == (storage, dtype, logical)
    masked = scale_storage_shape(rows, 7168, 128, fmt, num_experts=3)
    assert masked == ((3, *storage), dtype, (3, *logical))
    assert scale_storage_shape(3, 640, 128, "packed_ue8m0")[0] == (2, 4)  # G = 5: ceil(5 / 4) words


def test_python_errors_name_the_argument():
    import moekit

    host = np.zeros((4, 512), np.float32)
    with pytest.raises((ValueError, TypeError), match="x"):
        moekit.silu_mul_quant_fp8(host)  # host memory
    with pytest.raises(ValueError, match="scale_format"):
        moekit.silu_mul_quant_fp8(host, scale_format="col_f32")
    with pytest.raises(ValueError, match="group_size"):
        moekit.silu_mul_quant_fp8(host, group_size=96)
    with pytest.raises(ValueError, match="scale_format"):
        moekit.quant_fp8(host, scale_format="ue8m0")
