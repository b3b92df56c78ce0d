"""Fused SiLU-and-mul + FP8 quantization and plain FP8 quantization (SPEC.md section 6).

q is float8_e4m3fn; the scales come back in the layout the FP8 GEMM reads. The column formats
("col_f32_tma", "col_f32_tma_ue8m0", "packed_ue8m0") are returned as the logical [T, G] (or [T, Gp])
view with strides (1, Ta) of a [G, Ta] storage, the tensor DeepGEMM takes as is (JAX, which has
no strided views, gets the storage itself). out= takes either form.
"""

from . import _lib
from ._array import (
    FLOAT_DTYPES,
    MOEKIT_DTYPES,
    as_device_array,
    choice,
    empty,
    input_like,
    int64_arg,
    launch,
    require,
    require_same_device,
    stream_handle,
)
from ._lib import ScaleFormat, lib

__all__ = ["silu_mul_quant_fp8", "quant_fp8", "scale_storage_shape"]

SCALE_FORMATS = {
    "row_f32": ScaleFormat.ROW_F32,
    "col_f32_tma": ScaleFormat.COL_F32_TMA,
    "col_f32_tma_ue8m0": ScaleFormat.COL_F32_TMA_UE8M0,
    "packed_ue8m0": ScaleFormat.PACKED_UE8M0,
}
GROUP_SIZES = (32, 64, 128)


def scale_storage_shape(rows, hidden, group_size=128, scale_format="col_f32_tma_ue8m0", num_experts=None):
    """(storage shape, dtype, logical shape) of the scales of `rows` rows (per expert when
    num_experts is given: the masked layout)."""
    fmt = choice(scale_format, "scale_format", SCALE_FORMATS)
    groups = hidden // group_size
    lead = () if num_experts is None else (num_experts,)
    if fmt == ScaleFormat.ROW_F32:
        shape = (*lead, rows, groups)
        return shape, "float32", shape
    aligned = (rows + 3) // 4 * 4
    cols = (groups + 3) // 4 if fmt == ScaleFormat.PACKED_UE8M0 else groups
    dtype = "int32" if fmt == ScaleFormat.PACKED_UE8M0 else "float32"
    return (*lead, cols, aligned), dtype, (*lead, rows, cols)


def _logical(storage, rows):
    """The [.., rows, cols] view with strides (.., 1, Ta) of a [.., cols, Ta] storage."""
    module = type(storage).__module__.split(".")[0]
    if module == "torch":  # as_strided: an empty storage's own strides are not (.., Ta, 1)
        *lead, cols, ta = storage.shape
        strides, step = [1, ta], cols * ta
        for extent in reversed(lead):
            strides.insert(0, step)
            step *= extent
        return storage.as_strided((*lead, rows, cols), strides, storage.storage_offset())
    if module == "cupy":
        return storage.swapaxes(-1, -2)[..., :rows, :]
    return storage  # JAX: no strided views


def _scales_out(out, x, storage_shape, dtype, logical_shape, row_major):
    """The caller's scales buffer: the storage array (C-contiguous) or, for the column formats, its
    logical view with strides (.., 1, Ta) (told apart by strides where the shapes coincide)."""
    array = as_device_array(out, "out[1] (scales)")
    require_same_device(x, "x", array, "out[1] (scales)")
    if array.dtype != dtype:
        raise ValueError(f"out[1] (scales) must have dtype {dtype}, got {array.dtype}")
    aligned, cols = storage_shape[-1], storage_shape[-2]
    view_strides = (1, aligned) if len(storage_shape) == 2 else (cols * aligned, 1, aligned)
    strides = None if array.strides is None else tuple(array.strides)
    if not row_major and tuple(array.shape) == tuple(logical_shape) and strides == view_strides:
        return array
    if tuple(array.shape) == tuple(storage_shape) and array.is_c_contiguous:
        return array
    raise ValueError(
        f"out[1] (scales) must be the storage {list(storage_shape)} (C-contiguous) or its view "
        f"{list(logical_shape)} with the format's strides, got shape {list(array.shape)} "
        f"strides {None if array.strides is None else list(array.strides)}"
    )


def _outputs(out, x, q_shape, rows, hidden, group_size, scale_format, num_experts):
    fmt = SCALE_FORMATS[scale_format]
    if out is None:
        out = (None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError("out must be a tuple (q, scales)")
    if out[0] is None:
        q = empty(x, q_shape, "float8_e4m3fn")
        q_array = as_device_array(q, "out[0] (q)")
    else:
        q = out[0]
        q_array = as_device_array(q, "out[0] (q)")
        require(q_array, "out[0] (q)", q_shape, ("float8_e4m3fn", "uint8"))
        require_same_device(x, "x", q_array, "out[0] (q)")
    storage_shape, dtype, logical_shape = scale_storage_shape(rows, hidden, group_size, scale_format, num_experts)
    if out[1] is None:
        storage = empty(x, storage_shape, dtype)
        # by format, not by shape: a column format's storage can have its logical shape (T == G)
        scales = storage if fmt == ScaleFormat.ROW_F32 else _logical(storage, rows)
        scales_array = as_device_array(storage, "out[1] (scales)")
    else:
        scales = out[1]
        scales_array = _scales_out(scales, x, storage_shape, dtype, logical_shape, fmt == ScaleFormat.ROW_F32)
    return q, q_array, scales, scales_array


def _common(group_size, scale_format):
    group_size = int64_arg(group_size, "group_size")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be 32, 64 or 128, got {group_size}")
    return group_size, choice(scale_format, "scale_format", SCALE_FORMATS)


def _hidden(width, group_size, name, halves):
    if width % halves:
        raise ValueError(f"{name} must have an even last dimension ([gate | up]), got {width}")
    hidden = width // halves
    if hidden % group_size:
        raise ValueError(f"{name}: hidden size {hidden} must be a multiple of group_size ({group_size})")
    return hidden


def silu_mul_quant_fp8(x, *, group_size=128, scale_format="col_f32_tma_ue8m0", gate_first=True, round_act=False,
                       counts=None, out=None, stream=None):
    """silu(gate) * up of x [T, 2H], quantized to FP8 per group of group_size columns -> (q [T, H]
    float8_e4m3fn, scales). With counts [E] (int32/int64, on the device): the masked layout,
    x [E, M, 2H] -> q [E, M, H], rows past counts[e] not read (q left as it was, scales 0).
    out: an optional (q, scales) tuple to write into."""
    group_size, fmt = _common(group_size, scale_format)
    a = as_device_array(x, "x")
    masked = counts is not None
    require(a, "x", (None, None, None) if masked else (None, None), FLOAT_DTYPES)
    hidden = _hidden(a.shape[-1], group_size, "x", 2)
    stream = stream_handle(stream, a)
    if masked:
        num_experts, rows = a.shape[0], a.shape[1]
        c = input_like(counts, "counts", a, "x", (num_experts,), ("int32", "int64"))
        q, q_array, scales, s_array = _outputs(out, a, (num_experts, rows, hidden), rows, hidden, group_size,
                                               scale_format, num_experts)
        status = launch(
            a.framework, a.device_id, stream, lib.moekit_silu_mul_quant_fp8_masked,
            a.ptr, MOEKIT_DTYPES[a.dtype], num_experts, rows, hidden, c.ptr, MOEKIT_DTYPES[c.dtype],
            group_size, fmt, int(bool(gate_first)), int(bool(round_act)), q_array.ptr, s_array.ptr, stream,
        )  # fmt: skip
    else:
        rows = a.shape[0]
        q, q_array, scales, s_array = _outputs(out, a, (rows, hidden), rows, hidden, group_size, scale_format, None)
        status = launch(
            a.framework, a.device_id, stream, lib.moekit_silu_mul_quant_fp8,
            a.ptr, MOEKIT_DTYPES[a.dtype], rows, hidden, group_size, fmt,
            int(bool(gate_first)), int(bool(round_act)), q_array.ptr, s_array.ptr, stream,
        )  # fmt: skip
    _lib.check(status)
    return q, scales


def quant_fp8(x, *, group_size=128, scale_format="col_f32_tma_ue8m0", out=None, stream=None):
    """x [T, H] quantized to FP8 per group of group_size columns -> (q [T, H] float8_e4m3fn, scales)."""
    group_size, fmt = _common(group_size, scale_format)
    a = as_device_array(x, "x")
    require(a, "x", (None, None), FLOAT_DTYPES)
    hidden = _hidden(a.shape[-1], group_size, "x", 1)
    stream = stream_handle(stream, a)
    rows = a.shape[0]
    q, q_array, scales, s_array = _outputs(out, a, (rows, hidden), rows, hidden, group_size, scale_format, None)
    status = launch(
        a.framework, a.device_id, stream, lib.moekit_quant_fp8,
        a.ptr, MOEKIT_DTYPES[a.dtype], rows, hidden, group_size, fmt, q_array.ptr, s_array.ptr, stream,
    )  # fmt: skip
    _lib.check(status)
    return q, scales
