"""GPU tests of the fused epilogues (SPEC section 7) against the NumPy float64 oracle moekit.reference:
the shared-expert gate, add + RMSNorm and RMSNorm, every dtype, in place, poisoned outputs, two runs
bitwise equal, T past the 65535 grid-axis limit.
"""

from __future__ import annotations

import numpy as np
import pytest

from _util import FLOAT_DTYPES, POISON_PATTERNS, as_float64, poisoned, rounded, same_bits, to_device, to_host

pytestmark = pytest.mark.gpu

# One rounding of an fp32 result to the dtype, and fp32 accumulation over H terms.
RTOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
SIZES_T = (0, 1, 7, 8192, 70000)
SIZES_H = (128, 2880, 4096, 7168, 16384)
REF_MAX_ELEMENTS = 1 << 22


def _rows(T, H, rng):
    if T * H <= REF_MAX_ELEMENTS:
        return np.arange(T)
    return np.unique(np.concatenate([[0, T - 1], rng.integers(0, T, max(4, REF_MAX_ELEMENTS // H))]))


def _close(got, want, dtype, what, terms=None):
    """|got - want| within RTOL of |want| (or of `terms`, the magnitudes summed into want, where
    cancellation leaves want small: the gate's h + sigmoid(g) s)."""
    got, want = as_float64(got), as_float64(want)
    scale = np.abs(want) if terms is None else np.maximum(np.abs(want), as_float64(terms))
    tol = RTOL[dtype] * (scale + 1e-3 * np.abs(want).max(initial=0.0) + 1e-30)
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"{what}: {bad.sum()} elements off, first at {np.argwhere(bad)[0]}: " \
                          f"{got[tuple(np.argwhere(bad)[0])]} vs {want[tuple(np.argwhere(bad)[0])]}"


def _data(shape, dtype, rng, scale=1.0):
    return rounded(rng.standard_normal(shape) * scale, dtype)


def _device_data(shape, dtype, rng, scale=1.0):
    """Random values made on the GPU (fast at 70000 x 16384), seeded from the test's rng."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(int(rng.integers(2**62)))
    return (torch.randn(shape, generator=gen, device="cuda") * scale).to(getattr(torch, dtype))


@pytest.mark.parametrize("H", SIZES_H)
@pytest.mark.parametrize("T", SIZES_T)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_add_rmsnorm(dtype, T, H, rng):
    import moekit
    from moekit import reference as ref

    x0, r0, w = _device_data((T, H), dtype, rng), _device_data((T, H), dtype, rng), _device_data((H,), dtype, rng)
    rows = _rows(T, H, rng)
    x_h, r_h, w_h = to_host(x0[rows]), to_host(r0[rows]), to_host(w)
    results = []
    for _ in range(2):  # two runs: the same bits
        x, r = x0.clone(), r0.clone()
        out = moekit.add_rmsnorm_(x, r, w, 1e-6)
        assert out[0] is x and out[1] is r
        results.append((x, r))
    del x0, r0
    assert same_bits(results[0][0], results[1][0]) and same_bits(results[0][1], results[1][1])
    if T == 0:
        return
    want_x, want_r = ref.add_rmsnorm_(x_h, r_h, w_h, 1e-6)
    _close(to_host(results[0][1])[rows], want_r, dtype, "residual")
    _close(to_host(results[0][0])[rows], want_x, dtype, "x")


@pytest.mark.parametrize("H", SIZES_H)
@pytest.mark.parametrize("T", SIZES_T)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rmsnorm(dtype, T, H, rng):
    import moekit
    from moekit import reference as ref

    x, w = _device_data((T, H), dtype, rng, 3.0), _device_data((H,), dtype, rng)
    ys = [moekit.rmsnorm(x, w)]
    for pattern in POISON_PATTERNS:
        y = moekit.rmsnorm(x, w, out=poisoned((T, H), dtype, pattern))
        assert same_bits(ys[0], y), "unwritten elements or non-determinism"
    if T == 0:
        return
    rows = _rows(T, H, rng)
    _close(to_host(ys[0][rows]), ref.rmsnorm(to_host(x[rows]), to_host(w)), dtype, "y")
    inplace = moekit.rmsnorm(x, w, out=x)  # y may be x
    assert same_bits(inplace, ys[0])


@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("H", SIZES_H)
@pytest.mark.parametrize("T", SIZES_T)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_shared_expert_gate(dtype, T, H, per_token, rng):
    import moekit
    from moekit import reference as ref

    h0, s = _device_data((T, H), dtype, rng), _device_data((T, H), dtype, rng)
    g = _device_data((T, 1) if per_token else (T, H), dtype, rng, 2.0)
    rows = _rows(T, H, rng)
    h_h, s_h, g_h = to_host(h0[rows]), to_host(s[rows]), to_host(g[rows])
    results = []
    for _ in range(2):
        h = h0.clone()
        assert moekit.shared_expert_gate_(h, s, g) is h
        results.append(h)
    assert same_bits(results[0], results[1])
    if T == 0:
        return
    terms = np.abs(as_float64(h_h)) + np.abs(as_float64(s_h))
    _close(to_host(results[0][rows]), ref.shared_expert_gate_(h_h, s_h, g_h), dtype, "hidden", terms)


@pytest.mark.parametrize("H", [100, 130, 4098, 20000, 32768])
def test_odd_hidden_and_f32_weight(H, rng):
    """H not a multiple of the vector width (the scalar path), a float32 weight with bf16 rows, and
    misaligned rows (a tensor starting one element into its storage)."""
    import torch

    import moekit
    from moekit import reference as ref

    T = 33
    x_h, r_h = _data((T, H), "bfloat16", rng), _data((T, H), "bfloat16", rng)
    w_h = _data((H,), "float32", rng)
    x, r = to_device(x_h), to_device(r_h)
    moekit.add_rmsnorm_(x, r, to_device(w_h), 1e-5)
    want_x, want_r = ref.add_rmsnorm_(x_h, r_h, w_h, 1e-5)
    _close(to_host(r), want_r, "bfloat16", "residual")
    _close(to_host(x), want_x, "bfloat16", "x")
    flat = torch.empty(T * H + 1, dtype=torch.bfloat16, device="cuda")
    shifted = flat[1:].view(T, H)  # 2 bytes past 16-byte alignment
    shifted.copy_(to_device(x_h))
    y = moekit.rmsnorm(shifted, to_device(w_h))
    _close(to_host(y), ref.rmsnorm(x_h, w_h), "bfloat16", "y (misaligned x)")
    for gate_shape in ((T, 1), (T, H)):  # the scalar paths (H % 8 != 0, or a misaligned hidden)
        g_h = _data(gate_shape, "bfloat16", rng)
        h = torch.empty(T * H + 1, dtype=torch.bfloat16, device="cuda")[1:].view(T, H)
        h.copy_(to_device(x_h))
        moekit.shared_expert_gate_(h, to_device(r_h), to_device(g_h))
        terms = np.abs(as_float64(x_h)) + np.abs(as_float64(r_h))
        _close(to_host(h), ref.shared_expert_gate_(x_h, r_h, g_h), "bfloat16", "gate (scalar path)", terms)


def test_graph_capture(rng):
    import torch

    import moekit

    T, H = 16, 7168
    x, r, w = (to_device(_data(s, "bfloat16", rng)) for s in ((T, H), (T, H), (H,)))
    want_x, want_r = x.clone(), r.clone()
    moekit.add_rmsnorm_(want_x, want_r, w)
    stream = torch.cuda.Stream()
    gx, gr = x.clone(), r.clone()
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            moekit.add_rmsnorm_(gx, gr, w)
    gx.copy_(x)
    gr.copy_(r)
    graph.replay()
    torch.cuda.synchronize()
    assert same_bits(gx, want_x) and same_bits(gr, want_r)


def test_torch_ops_compile(rng):
    """moekit.torch's in-place custom ops under torch.compile(fullgraph=True): the same bits as eager."""
    import torch

    import moekit.torch as mt

    T, H = 64, 4096
    x, r, s, w = (to_device(_data(shape, "bfloat16", rng)) for shape in ((T, H), (T, H), (T, H), (H,)))
    g = to_device(_data((T, 1), "bfloat16", rng))

    def f(x, r):
        mt.add_rmsnorm_(x, r, w, 1e-6)
        mt.shared_expert_gate_(x, s, g)
        return mt.rmsnorm(x, w, 1e-5)

    xe, re_ = x.clone(), r.clone()
    want = f(xe, re_)
    xc, rc = x.clone(), r.clone()
    got = torch.compile(f, fullgraph=True)(xc, rc)
    assert same_bits(got, want) and same_bits(xc, xe) and same_bits(rc, re_)
