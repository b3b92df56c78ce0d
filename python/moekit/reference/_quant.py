"""NumPy oracle of SPEC.md section 6: fused SiLU-and-mul + FP8 (e4m3fn) quantization, and the
quantization alone.

Unlike the other families this one is not a float64 transcription: the SPEC fixes every step as one
IEEE fp32 operation (including exp_m, its own exp), so that the kernels' q bytes and scale bytes can
be matched bit for bit. NumPy's float32 ufuncs are correctly rounded; the fp32 fused multiply-add is
emulated exactly (fma32). NumPy and ml_dtypes only; never imports the rest of the package.

Outputs: q is ml_dtypes.float8_e4m3fn. scales is a view with the SPEC's strides into a zero-filled
storage array (scale_storage(scales) returns it): row_f32 [T, G] is its own storage; the column
formats are storage[G, Ta].T[:T] and packed_ue8m0 is storage[Gp, Ta] (int32).T[:T]. The masked
layout adds a leading expert axis: storage [E, G, Ta_M], scales = storage.transpose(0, 2, 1)[:, :M]
(row_f32: [E, M, G] itself).
Rows past counts[e] get q bytes 0 (the GPU leaves them untouched) and scales 0.
"""

import operator

import ml_dtypes
import numpy as np

__all__ = [
    "silu_mul_quant_fp8",
    "quant_fp8",
    "exp_m",
    "fma32",
    "ue8m0_round_up",
    "scale_storage",
    "SCALE_FORMATS",
    "QUANT_GROUP_SIZES",
    "QUANT_MAX_EXPERTS",
]

SCALE_FORMATS = ("row_f32", "col_f32_tma", "col_f32_tma_ue8m0", "packed_ue8m0")
QUANT_GROUP_SIZES = (32, 64, 128)
QUANT_MAX_EXPERTS = 4096  # the masked layout's E limit
FP8_MAX = np.float32(448.0)
AMAX_FLOOR = np.float32(1e-10)
NAN_BYTE = 0x7F

_F32 = np.float32
_BITS = lambda h: np.uint32(h).view(np.float32)  # noqa: E731
# exp_m's constants (SPEC section 6), by their fp32 bits.
_LOG2E = _BITS(0x3FB8AA3B)  # 1.44269502
_LN2_HI = -_BITS(0x3F317200)  # -0.693145752
_LN2_LO = -_BITS(0x35BFBE8E)  # -1.42860677e-6
_POLY = tuple(_BITS(h) for h in (0x3AB57344, 0x3C093419, 0x3D2AAC13, 0x3E2AAA0C, 0x3EFFFFFE,
                                 0x3F800000, 0x3F800000))
_CHUNK = 1 << 18  # elements per pass of the elementwise pipeline (keeps temporaries in cache)
_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


# ---- exact fp32 arithmetic -----------------------------------------------------------------------


def fma32(a, b, c):
    """IEEE fp32 fused multiply-add round(a * b + c), rounded once to nearest even.

    a * b is exact in float64 (48 significant bits); s = a*b + c is rounded to float64 and its error
    e recovered exactly by two-sum. s is then moved to its odd float64 neighbour towards s + e when
    e != 0 and s is even (round-to-odd): with 53 >= 24 + 2 bits, rounding that to fp32 is the
    correctly rounded result (Boldo and Melquiond), in particular when s alone lands on an fp32
    midpoint. Infinities and NaN follow float64 (= IEEE fma) semantics; no float64 overflow occurs.
    """
    a = np.asarray(a, dtype=np.float32).astype(np.float64)
    b = np.asarray(b, dtype=np.float32).astype(np.float64)
    c = np.asarray(c, dtype=np.float32).astype(np.float64)
    with np.errstate(all="ignore"):
        p = a * b
        s = p + c
        bv = s - p
        err = (p - (s - bv)) + (c - bv)  # NaN when s is not finite: then nothing is adjusted
        s = np.atleast_1d(s)
        bits = s.view(np.int64)
        fix = ((err > 0) | (err < 0)) & ((bits & 1) == 0)
        step = np.where((s > 0) == (err > 0), 1, -1)  # sign-magnitude bits: +1 = away from zero
        bits += np.where(fix, step, 0)
        out = s.astype(np.float32)
    return out.reshape(np.shape(p))


def exp_m(v):
    """SPEC section 6 exp_m of a float32 array, step for step: float32 array, same shape."""
    v = np.asarray(v, dtype=np.float32)
    with np.errstate(all="ignore"):
        z = np.minimum(np.maximum(v, _F32(-20.0)), _F32(88.0))
        k = np.rint(z * _LOG2E)
        r = fma32(k, _LN2_HI, z)
        r = fma32(k, _LN2_LO, r)
        p = np.full(r.shape, _POLY[0], dtype=np.float32)
        for coefficient in _POLY[1:]:
            p = fma32(p, r, coefficient)
        ki = np.nan_to_num(k, nan=0.0).astype(np.int32)
        two_k = ((ki + 127) << 23).astype(np.uint32).view(np.float32)  # k in [-29, 127]: normal
        out = p * two_k
    out = np.where(v > 88, np.float32(np.inf), out)
    out = np.where(v < -20, np.float32(0.0), out)
    return np.where(np.isnan(v), np.float32(np.nan), out).astype(np.float32)


def ue8m0_round_up(scale_f32):
    """Round fp32 values up to a power of two by their bits: exponent + 1, mantissa 0, when the
    mantissa is not zero (subnormals go to 2^-126). Non-finite values are returned unchanged."""
    s = np.asarray(scale_f32, dtype=np.float32)
    bits = s.view(np.uint32)
    exponent = (bits >> np.uint32(23)) & np.uint32(0xFF)
    rounded = (bits & np.uint32(0x8000_0000)) | (
        (exponent + ((bits & np.uint32(0x7F_FFFF)) != 0).astype(np.uint32)) << np.uint32(23))
    return np.where(exponent == 0xFF, bits, rounded).astype(np.uint32).view(np.float32)


# ---- arguments -----------------------------------------------------------------------------------


def _check_options(group_size, scale_format, width, op):
    if isinstance(group_size, (bool, np.bool_)):
        raise ValueError(f"{op}: group_size must be one of {QUANT_GROUP_SIZES}, got {group_size!r}")
    try:
        group_size = operator.index(group_size)
    except TypeError:
        raise ValueError(
            f"{op}: group_size must be one of {QUANT_GROUP_SIZES}, got {group_size!r}") from None
    if group_size not in QUANT_GROUP_SIZES:
        raise ValueError(f"{op}: group_size must be one of {QUANT_GROUP_SIZES}, got {group_size}")
    if not isinstance(scale_format, str) or scale_format not in SCALE_FORMATS:
        raise ValueError(f"{op}: scale_format must be one of {SCALE_FORMATS}, got {scale_format!r}")
    if width % group_size:
        raise ValueError(f"{op}: H ({width}) must be a multiple of group_size ({group_size})")
    return group_size


def _check_x(x, ndim, op):
    x = np.asarray(x)
    if x.dtype not in _DTYPES:
        raise ValueError(f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{op}: x must be {ndim}-D, got shape {x.shape}")
    return x


# ---- the pipeline --------------------------------------------------------------------------------


def _round_to(values, dtype):
    return values.astype(dtype).astype(np.float32)


def _silu_mul(a, b, dtype, round_act):
    """y = silu(a) * b in fp32 (a, b float32, same shape), chunked over the flattened elements."""
    a, b = a.reshape(-1), b.reshape(-1)
    y = np.empty(a.shape, dtype=np.float32)
    with np.errstate(all="ignore"):
        for start in range(0, a.size, _CHUNK):
            part = slice(start, start + _CHUNK)
            gate = a[part]
            silu = gate / (np.float32(1.0) + exp_m(-gate))
            if round_act:
                y[part] = _round_to(_round_to(silu, dtype) * b[part], dtype)
            else:
                y[part] = silu * b[part]
    return y


def _quantize_rows(y, group_size, ue8m0):
    """(q uint8 [N, H], scale float32 [N, G]) of y float32 [N, H]: the SPEC's group steps."""
    n, width = y.shape
    groups = y.reshape(n, width // group_size, group_size)
    with np.errstate(all="ignore"):
        amax = np.fmax(np.fmax.reduce(np.abs(groups), axis=2, initial=np.float32(0.0)), AMAX_FLOOR)
        scale = (amax / FP8_MAX).astype(np.float32)
        if ue8m0:
            scale = ue8m0_round_up(scale)
        scaled = np.clip(groups / scale[:, :, None], -FP8_MAX, FP8_MAX)
    q = scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    q[np.isnan(scaled)] = NAN_BYTE
    return q.reshape(n, width), scale


def _layout(scale, scale_format, rows):
    """scales of the format from the float32 [B, N, G] group scales (rows [N, Ta) are padding)."""
    lead, (n, num_groups) = scale.shape[:-2], scale.shape[-2:]
    padded = -(-rows // 4) * 4
    if scale_format == "row_f32":
        storage = np.zeros(scale.shape, dtype=np.float32)
        storage[...] = scale
        return storage
    if scale_format == "packed_ue8m0":
        words = -(-num_groups // 4)
        exps = np.zeros(lead + (n, 4 * words), dtype=np.uint8)
        exps[..., :num_groups] = (scale.view(np.uint32) >> np.uint32(23)).astype(np.uint8)
        values = exps.view("<i4").astype(np.int32)
        storage = np.zeros(lead + (words, padded), dtype=np.int32)
    else:
        values = scale
        storage = np.zeros(lead + (num_groups, padded), dtype=np.float32)
    storage[..., :n] = np.swapaxes(values, -1, -2)
    return np.swapaxes(storage, -1, -2)[..., :n, :]


def scale_storage(scales):
    """The array behind a scales result of this module: [G, Ta] / [Gp, Ta] (masked: [E, G, Ta_M]
    / [E, Gp, Ta_M]) for the column and packed formats, the array itself for row_f32."""
    array = np.asarray(scales)
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _run(y_rows, x_shape, group_size, scale_format, counts):
    """Quantize y_rows float32 [n, H] (all rows, or the rows under counts) into (q, scales)."""
    ue8m0 = scale_format in ("col_f32_tma_ue8m0", "packed_ue8m0")
    q_rows, scale_rows = _quantize_rows(y_rows, group_size, ue8m0)
    if counts is None:
        return q_rows.view(ml_dtypes.float8_e4m3fn), _layout(scale_rows, scale_format, len(q_rows))
    num_experts, m = x_shape[:2]
    valid = np.arange(m)[None, :] < counts[:, None]
    q = np.zeros((num_experts, m, q_rows.shape[1]), dtype=np.uint8)
    q[valid] = q_rows
    scale = np.zeros((num_experts, m, scale_rows.shape[1]), dtype=np.float32)
    scale[valid] = scale_rows
    return q.view(ml_dtypes.float8_e4m3fn), _layout(scale, scale_format, m)


def _check_counts(counts, x, op):
    if x.ndim != 3:
        raise ValueError(f"{op}: x must be 3-D [E, M, 2H] when counts is given, got shape "
                         f"{x.shape}")
    counts = np.asarray(counts)
    if counts.dtype.kind not in "iu" or counts.shape != (x.shape[0],):
        raise ValueError(f"{op}: counts must be an integer array of shape ({x.shape[0]},), got "
                         f"{counts.dtype} {counts.shape}")
    if x.shape[0] > QUANT_MAX_EXPERTS:
        raise ValueError(f"{op}: counts: E ({x.shape[0]}) must be <= {QUANT_MAX_EXPERTS}")
    return np.clip(counts.astype(np.int64), 0, x.shape[1])


def silu_mul_quant_fp8(x, *, group_size=128, scale_format="col_f32_tma_ue8m0", gate_first=True,
                       round_act=False, counts=None):
    """SPEC section 6: (q float8_e4m3fn [T, H], scales) of y = silu(gate) * up, x [T, 2H]; with
    counts [E], x is [E, M, 2H] and only rows [0, counts[e]) of expert e are read."""
    op = "silu_mul_quant_fp8"
    x = _check_x(x, 2 if counts is None else np.ndim(x), op)
    if counts is not None:
        counts = _check_counts(counts, x, op)
    if x.shape[-1] % 2:
        raise ValueError(f"{op}: x's last dimension ({x.shape[-1]}) must be even (2H)")
    width = x.shape[-1] // 2
    group_size = _check_options(group_size, scale_format, width, op)
    rows = x.reshape(-1, 2 * width)
    if counts is not None:
        rows = x[np.arange(x.shape[1])[None, :] < counts[:, None]]
    rows = rows.astype(np.float32)
    gate, up = rows[:, :width], rows[:, width:]
    if not gate_first:
        gate, up = up, gate
    y = _silu_mul(np.ascontiguousarray(gate), np.ascontiguousarray(up), x.dtype, bool(round_act))
    return _run(y.reshape(-1, width), x.shape, group_size, scale_format, counts)


def quant_fp8(x, *, group_size=128, scale_format="col_f32_tma_ue8m0"):
    """SPEC section 6, the quantization alone: (q float8_e4m3fn [T, H], scales) of x [T, H]."""
    op = "quant_fp8"
    x = _check_x(x, 2, op)
    group_size = _check_options(group_size, scale_format, x.shape[1], op)
    return _run(x.astype(np.float32), x.shape, group_size, scale_format, None)
