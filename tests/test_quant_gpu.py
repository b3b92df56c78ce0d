"""GPU tests of the FP8 quantization family (SPEC section 6) against the NumPy oracle moekit.reference:
fp8 bytes and scale bytes must match bit for bit.

Every case runs the op three times, into fresh arrays and into out= buffers poisoned with two
patterns that differ in every byte: the three results must be bitwise equal (every element written,
padding included, and deterministic). Rows beyond a size are compared on a sample (the oracle is
per row); the poison check always covers every byte.
"""

from __future__ import annotations

import numpy as np
import pytest

from moekit._hooks import tuning

from _util import FLOAT_DTYPES, POISON_PATTERNS, first_difference, poisoned, rounded, same_bits, to_device, to_host

pytestmark = pytest.mark.gpu

FORMATS = ("row_f32", "col_f32_tma", "col_f32_tma_ue8m0", "packed_ue8m0")
REF_MAX_ELEMENTS = 1 << 21


def _inputs(shape, dtype, rng, spread=4.0):
    """Normal values times 2^u per row, u uniform in [-spread, spread]: groups of every magnitude."""
    scale = np.exp2(rng.uniform(-spread, spread, shape[:-1] + (1,)))
    return rounded(rng.standard_normal(shape) * scale, dtype)


def _sample_rows(T, width, rng):
    if T * width <= REF_MAX_ELEMENTS:
        return np.arange(T)
    count = max(8, REF_MAX_ELEMENTS // width)
    return np.unique(np.concatenate([[0, 1, T - 2, T - 1], rng.integers(0, T, count)]))


def _storage(scales, storage_shape, fmt=None):
    """The whole storage behind a scales result (the logical view of the column formats, whose
    strides are (.., 1, Ta) even where T == G makes the shapes coincide)."""
    import torch

    if fmt is not None and fmt != "row_f32":
        assert scales.stride()[-2:] == (1, storage_shape[-1]), f"{fmt}: strides {scales.stride()}"
    if tuple(scales.shape) == tuple(storage_shape) and scales.is_contiguous() and fmt in (None, "row_f32"):
        return scales
    strides, step = [], 1
    for extent in reversed(storage_shape):
        strides.insert(0, step)
        step *= extent
    return torch.as_strided(scales, storage_shape, strides, scales.storage_offset())


def _logical(storage, fmt, rows):
    return storage if fmt == "row_f32" else storage.transpose(-1, -2)[..., :rows, :]


def _bits(array):
    array = np.ascontiguousarray(array)
    return array.view(np.uint8 if array.dtype.itemsize == 1 else np.uint32)


def _run_three(call, q_shape, storage_shape, storage_dtype, fmt=None):
    """call(out) fresh and into both poisons -> (q as uint8, scale storage), all bitwise equal."""
    import torch

    results = []
    for pattern in (None, *POISON_PATTERNS):
        out = None if pattern is None else (poisoned(q_shape, "uint8", pattern),
                                            poisoned(storage_shape, storage_dtype, pattern))
        q, scales = call(out)
        q = q.view(torch.uint8) if q.dtype != torch.uint8 else q
        results.append((q, _storage(scales, storage_shape, fmt if pattern is None else None)))
    for q, s in results[1:]:
        assert same_bits(results[0][0], q), f"q differs at {first_difference(results[0][0], q)}"
        assert same_bits(results[0][1], s), f"scales differ at {first_difference(results[0][1], s)}"
    return results[0]


def _check_contiguous(T, H, dtype, fmt, g, rng, *, silu=True, gate_first=True, round_act=False, x_host=None):
    import moekit
    from moekit import reference as ref

    width = 2 * H if silu else H
    if x_host is None:
        x_host = _inputs((T, width), dtype, rng)
    x = to_device(x_host)
    storage_shape, storage_dtype, _ = moekit.quant.scale_storage_shape(T, H, g, fmt)
    if silu:
        call = lambda out: moekit.silu_mul_quant_fp8(  # noqa: E731
            x, group_size=g, scale_format=fmt, gate_first=gate_first, round_act=round_act, out=out)
    else:
        call = lambda out: moekit.quant_fp8(x, group_size=g, scale_format=fmt, out=out)  # noqa: E731
    q, storage = _run_three(call, (T, H), storage_shape, storage_dtype, fmt)
    if T == 0:
        return
    storage_host = to_host(storage)
    if fmt != "row_f32":  # padding rows [T, Ta) are zero
        assert not storage_host[:, T:].any(), "padding rows of the scales are not zero"
    rows = _sample_rows(T, width, rng)
    if silu:
        q_ref, s_ref = ref.silu_mul_quant_fp8(x_host[rows], group_size=g, scale_format=fmt, gate_first=gate_first,
                                              round_act=round_act)
    else:
        q_ref, s_ref = ref.quant_fp8(x_host[rows], group_size=g, scale_format=fmt)
    q_got = to_host(q)[rows]
    s_got = _logical(storage_host, fmt, T)[rows]
    bad_q = np.nonzero(_bits(q_got) != _bits(q_ref))
    assert bad_q[0].size == 0, f"{bad_q[0].size} q bytes differ, first at row {rows[bad_q[0][0]]} col {bad_q[1][0]}"
    bad_s = np.nonzero(_bits(s_got) != _bits(s_ref))
    assert bad_s[0].size == 0, f"{bad_s[0].size} scales differ, first at row {rows[bad_s[0][0]]} col {bad_s[1][0]}"


# ---- contiguous -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("round_act", [False, True])
@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matrix(dtype, gate_first, round_act, fmt, rng):
    _check_contiguous(37, 640, dtype, fmt, 128, rng, gate_first=gate_first, round_act=round_act)


@pytest.mark.parametrize("H", [128, 512, 640, 768, 1536, 2048, 7168])
@pytest.mark.parametrize("T", [0, 1, 3, 4, 7, 127, 128, 2050])
@pytest.mark.parametrize("fmt", ["col_f32_tma", "packed_ue8m0"])
def test_sizes(T, H, fmt, rng):
    _check_contiguous(T, H, "bfloat16", fmt, 128, rng)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("g,H", [(32, H) for H in (32, 96, 160, 224, 256, 1056)]
                         + [(64, H) for H in (64, 192, 256, 320, 1088)])  # G % 4 = 1, 3, 0, 1, 1
def test_group_sizes(g, H, fmt, rng):
    _check_contiguous(19, H, "bfloat16", fmt, g, rng)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("T,H", [(4, 512), (56, 7168), (4, 2048), (16, 2048)])
def test_storage_shape_equals_logical_shape(T, H, fmt, rng):
    """T == G (or T == ceil(G / 4)) with T % 4 == 0: the storage and the view have the same shape;
    the column formats must still come back as the transposed view."""
    _check_contiguous(T, H, "bfloat16", fmt, 128, rng)
    _check_contiguous(T, H, "bfloat16", fmt, 128, rng, silu=False)


@pytest.mark.parametrize("T,H", [(65537, 512), (70000, 640), (70000, 7168)])
def test_large(T, H, rng):
    _check_contiguous(T, H, "bfloat16", "packed_ue8m0", 128, rng)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quant_fp8(dtype, fmt, rng):
    _check_contiguous(41, 1536, dtype, fmt, 128, rng, silu=False)
    _check_contiguous(2050, 640, dtype, fmt, 64, rng, silu=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("silu", [True, False])
def test_special_values(silu, fmt, rng):
    """All-zero groups, magnitudes 2^+-19, scales a few ulps above a power of two, NaN and +-inf."""
    T, H = 12, 256
    width = 2 * H if silu else H
    x = rng.standard_normal((T, width)).astype(np.float32)
    x[0] = 0.0
    x[1] *= 2.0**19
    x[2] *= 2.0**-19
    x[3, :128] = 0.0
    x[3, 5] = 448.0 * (1 + 2.0**-22) if not silu else 30.0
    x[4, 7] = np.nan
    x[4, 70] = -np.float32(np.nan)  # a negative NaN too: q byte 0x7f whatever the sign
    x[5, 9] = np.inf
    x[6, 11] = -np.inf
    x[7, : width // 2] = -100.0  # silu saturates to -0
    x[8] = np.float32(2.0**-130)  # subnormal inputs
    for k in range(3):  # amax exactly 448 * 2^k (+ a few ulps): UE8M0's ceil must not overshoot or lag
        x[9 + k] = 0.0
        x[9 + k, 3] = np.float32(448.0 * 2.0**k) * np.float32(1 + k * 2.0**-23)
    _check_contiguous(T, H, "float32", fmt, 128, rng, silu=silu, x_host=x)


@pytest.mark.parametrize("mode", ["quant.async", "quant.prefetch"])
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_load_modes(dtype, silu, mode, rng):
    """The cp.async double-buffered path and the register prefetch (the A/B of bench/NOTES.md): the
    same bytes as the reference, contiguous and masked, with grids smaller than the work (each warp
    takes several items)."""
    for blocks in (0, 5):
        knobs = {mode: 1, **({"quant.blocks": blocks} if blocks else {})}
        with tuning(knobs):
            _check_contiguous(301, 640, dtype, "packed_ue8m0", 128, rng, silu=silu)
            if silu:
                _check_masked(4, 40, 1536, np.array([40, 0, 7, 33]), "col_f32_tma", rng, dtype=dtype)


def test_same_bits_over_grids(rng):
    import moekit

    x = to_device(_inputs((3001, 2 * 1536), "bfloat16", rng))
    base = moekit.silu_mul_quant_fp8(x, scale_format="packed_ue8m0")
    for blocks in (1, 3, 17, 1000):
        with tuning({"quant.blocks": blocks}):
            other = moekit.silu_mul_quant_fp8(x, scale_format="packed_ue8m0")
        assert same_bits(base[0], other[0]) and same_bits(base[1].contiguous(), other[1].contiguous()), blocks


# ---- masked -------------------------------------------------------------------------------------

def _check_masked(E, M, H, counts_host, fmt, rng, dtype="bfloat16", counts_dtype="int32", g=128, **options):
    import torch

    import moekit
    from moekit import reference as ref

    x_host = _inputs((E, M, 2 * H), dtype, rng)
    x = to_device(x_host)
    counts = to_device(np.asarray(counts_host, dtype=counts_dtype))
    storage_shape, storage_dtype, _ = moekit.quant.scale_storage_shape(M, H, g, fmt, num_experts=E)
    valid = np.clip(np.asarray(counts_host, dtype=np.int64), 0, M)
    # three runs (fresh, both poisons): the scales whole, q on the valid rows (the rest is left as it was)
    runs = []
    for pattern in (None, *POISON_PATTERNS):
        out = None if pattern is None else (poisoned((E, M, H), "uint8", pattern),
                                            poisoned(storage_shape, storage_dtype, pattern))
        q, scales = moekit.silu_mul_quant_fp8(x, group_size=g, scale_format=fmt, counts=counts, out=out, **options)
        runs.append((to_host(q.view(torch.uint8)), to_host(_storage(scales, storage_shape, fmt if pattern is None else None)),
                     pattern))
    q_host, s_host = runs[0][0], runs[0][1]
    for q_other, s_other, pattern in runs[1:]:
        assert np.array_equal(_bits(s_other), _bits(s_host)), "scales: unwritten elements or non-determinism"
        for e in range(E):
            n = int(valid[e])
            assert np.array_equal(q_other[e, :n], q_host[e, :n]), f"expert {e}: q differs between runs"
            poison = 0xAB if pattern == "nan" else 0xCD  # _util.poisoned's uint8 fillings
            assert (q_other[e, n:] == poison).all(), f"expert {e}: q rows past count {n} were written"
    logical = s_host if fmt == "row_f32" else np.swapaxes(s_host, -1, -2)
    for e in range(E):
        n = int(valid[e])
        assert not logical[e, n:].any(), f"expert {e}: scales of rows past count {n} are not zero"
        if n == 0:
            continue
        rows = _sample_rows(n, 2 * H, rng)
        q_ref, s_ref = ref.silu_mul_quant_fp8(x_host[e, rows], group_size=g, scale_format=fmt, **options)
        assert (_bits(q_host[e, rows]) == _bits(q_ref)).all(), f"expert {e}: q differs"
        assert (_bits(logical[e, rows]) == _bits(s_ref)).all(), f"expert {e}: scales differ"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["random", "empty", "skew", "beyond"])
def test_masked(kind, fmt, rng):
    E, M, H = 8, 67, 640
    counts = {
        "random": rng.integers(0, M + 1, E),
        "empty": np.zeros(E, dtype=np.int64),
        "skew": np.array([0] * (E - 1) + [M]),
        "beyond": np.array([M + 5, -3, 0, 1, 2, 3, M, 4]),
    }[kind]
    _check_masked(E, M, H, counts, fmt, rng, counts_dtype="int64" if kind == "beyond" else "int32")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("g", [32, 64])
def test_masked_options(g, fmt, rng):
    counts = np.array([5, 0, 31, 2, 31])
    _check_masked(5, 31, 320, counts, fmt, rng, dtype="float32", g=g, gate_first=False, round_act=True)
    with tuning({"quant.blocks": 3}):  # a grid smaller than the work: the same result
        _check_masked(5, 31, 320, counts, fmt, rng, dtype="float16", g=g)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_dtypes_and_large(dtype, rng):
    _check_masked(32, 1000, 2048, np.array([1000] + [0] * 30 + [7]), "packed_ue8m0", rng, dtype=dtype)


def test_masked_graph_replay(rng):
    """One captured graph, replayed with different device counts, gives each count's result."""
    import torch

    import moekit

    E, M, H = 4, 64, 512
    x = to_device(_inputs((E, M, 2 * H), "bfloat16", rng))
    counts = torch.zeros(E, dtype=torch.int32, device="cuda")
    q = torch.zeros((E, M, H), dtype=torch.uint8, device="cuda")
    s = torch.zeros((E, H // 128, M), dtype=torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        moekit.silu_mul_quant_fp8(x, scale_format="col_f32_tma", counts=counts, out=(q, s))  # warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            moekit.silu_mul_quant_fp8(x, scale_format="col_f32_tma", counts=counts, out=(q, s))
    for values in ([64, 0, 3, 10], [1, 64, 0, 0], [0, 0, 0, 0], [5, 5, 5, 64]):
        counts.copy_(torch.tensor(values, dtype=torch.int32))
        graph.replay()
        want = moekit.silu_mul_quant_fp8(x, scale_format="col_f32_tma", counts=counts)
        torch.cuda.synchronize()
        for e, n in enumerate(values):
            assert same_bits(q[e, :n], want[0].view(torch.uint8)[e, :n]), (values, e)
        assert same_bits(s, _storage(want[1], s.shape, "col_f32_tma")), values


# ---- frameworks and streams -----------------------------------------------------------------------

def test_cupy_and_jax_inputs(rng):
    import moekit
    from moekit import reference as ref

    x_host = _inputs((9, 2 * 256), "float32", rng)
    q_ref, s_ref = ref.silu_mul_quant_fp8(x_host, scale_format="row_f32")
    cupy = pytest.importorskip("cupy")
    q, s = moekit.silu_mul_quant_fp8(cupy.asarray(x_host), scale_format="row_f32")
    assert (cupy.asnumpy(q).view(np.uint8) == _bits(q_ref)).all()
    assert (cupy.asnumpy(s).view(np.uint32) == _bits(s_ref)).all()
    jax = pytest.importorskip("jax")
    q, s = moekit.silu_mul_quant_fp8(jax.numpy.asarray(x_host), scale_format="row_f32")
    assert (np.asarray(q).view(np.uint8) == _bits(q_ref)).all()
    assert (np.asarray(s).view(np.uint32) == _bits(s_ref)).all()


def test_torch_side_stream_and_deepgemm_layout(rng):
    """The column formats come back as the strided tensors DeepGEMM reads (strides (1, Ta))."""
    import torch

    import moekit

    T, H = 10, 7168
    x = to_device(_inputs((T, 2 * H), "bfloat16", rng))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        q, s = moekit.silu_mul_quant_fp8(x, scale_format="col_f32_tma_ue8m0")
        qp, sp = moekit.silu_mul_quant_fp8(x, scale_format="packed_ue8m0")
    stream.synchronize()
    assert q.dtype == torch.float8_e4m3fn and tuple(q.shape) == (T, H)
    assert tuple(s.shape) == (T, 56) and s.stride() == (1, 12) and s.dtype == torch.float32
    assert tuple(sp.shape) == (T, 14) and sp.stride() == (1, 12) and sp.dtype == torch.int32
    # the packed bytes are the exponents of the UE8M0 floats
    exps = (s.contiguous().view(torch.int32) >> 23).to(torch.int64)
    packed = sp.contiguous().to(torch.int64) & 0xFFFFFFFF
    for j in range(4):
        assert torch.equal((packed >> (8 * j)) & 0xFF, exps[:, j::4])


def test_torch_ops_compile_and_graph(rng):
    """moekit.torch's custom ops: the same bytes eager, under torch.compile(fullgraph=True) and replayed
    as a CUDA graph; the fake impl gives the real layout (DeepGEMM's strides)."""
    import torch

    import moekit.torch as mt

    x = to_device(_inputs((100, 2 * 1536), "bfloat16", rng))

    def f(x):
        return mt.silu_mul_quant_fp8(x, 128, "packed_ue8m0"), mt.quant_fp8(x[:, :1536].contiguous(), 64, "col_f32_tma")

    want = f(x)
    got = torch.compile(f, fullgraph=True)(x)
    for (a, b), (c, d) in zip(want, got):
        assert same_bits(a.view(torch.uint8), c.view(torch.uint8)) and a.stride() == c.stride()
        assert same_bits(b.contiguous(), d.contiguous()) and b.stride() == d.stride()
    assert want[0][1].stride() == (1, 100)  # [T, Gp] with strides (1, Ta)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        f(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = f(x)
    graph.replay()
    torch.cuda.synchronize()
    for (a, b), (c, d) in zip(out, want):  # every output of the replay
        assert same_bits(a.view(torch.uint8), c.view(torch.uint8)) and same_bits(b.contiguous(), d.contiguous())
    x37 = to_device(_inputs((37, 2 * 512), "bfloat16", rng))  # a padded storage: Ta = 40
    torch.library.opcheck(torch.ops.moekit.silu_mul_quant_fp8.default, (x37, 128, "col_f32_tma", True, False, None))
    x4 = to_device(_inputs((4, 2 * 512), "bfloat16", rng))  # shape == logical shape
    got = torch.compile(lambda x: mt.silu_mul_quant_fp8(x, 128, "col_f32_tma"), fullgraph=True)(x4)
    assert got[1].stride() == (1, 4) and same_bits(got[1].contiguous(), mt.silu_mul_quant_fp8(x4, 128, "col_f32_tma")[1].contiguous())
