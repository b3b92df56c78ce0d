"""The epilogues' argument validation through ctypes, with fake device pointers (no GPU: CI), and
the reference against its definition."""

import numpy as np
import pytest

from moekit import _lib
from moekit._lib import DType, Status

from test_abi import abi_caller, assert_invalid_op

H_, S_, G_, X_, R_, W_, Y_ = (0x1000000 * (i + 1) for i in range(7))

GATE = dict(hidden=H_, shared=S_, gate=G_, dtype=DType.BF16, num_tokens=4, hidden_size=256, gate_per_token=1,
            stream=None)
ADD = dict(x=X_, residual=R_, weight=W_, dtype=DType.F16, weight_dtype=DType.F32, num_tokens=4, hidden_size=512,
           eps=1e-6, stream=None)
NORM = dict(x=X_, weight=W_, y=Y_, dtype=DType.F32, weight_dtype=DType.F32, num_tokens=4, hidden_size=512, eps=1e-6,
            stream=None)
CALLS = {"shared_expert_gate": (GATE, "moekit_shared_expert_gate"), "add_rmsnorm": (ADD, "moekit_add_rmsnorm"),
         "rmsnorm": (NORM, "moekit_rmsnorm")}


call = abi_caller(CALLS)


INVALID = {
    "gate: null hidden": ("shared_expert_gate", dict(hidden=None), "hidden", None),
    "gate: null shared": ("shared_expert_gate", dict(shared=None), "shared", None),
    "gate: null gate": ("shared_expert_gate", dict(gate=None), "gate", None),
    "gate: misaligned hidden": ("shared_expert_gate", dict(hidden=H_ + 1), "hidden", None),
    "gate: T < 0": ("shared_expert_gate", dict(num_tokens=-1), "num_tokens", -1),
    "gate: H 0": ("shared_expert_gate", dict(hidden_size=0), "hidden_size", 0),
    "gate: i32": ("shared_expert_gate", dict(dtype=DType.I32), "dtype", "int32"),
    "gate: overflow": ("shared_expert_gate", dict(num_tokens=2**61), "num_tokens", None),
    "gate: hidden overlaps shared": ("shared_expert_gate", dict(shared=H_ + 64), ("overlap",), None),
    "add: null x": ("add_rmsnorm", dict(x=None), "x", None),
    "add: null residual": ("add_rmsnorm", dict(residual=None), "residual", None),
    "add: null weight": ("add_rmsnorm", dict(weight=None), "weight", None),
    "add: bf16 weight with f16 x": ("add_rmsnorm", dict(weight_dtype=DType.BF16), "weight_dtype", "bfloat16"),
    "add: H above max": ("add_rmsnorm", dict(hidden_size=32769), "hidden_size", 32769),
    "add: eps < 0": ("add_rmsnorm", dict(eps=-1.0), "eps", None),
    "add: eps nan": ("add_rmsnorm", dict(eps=float("nan")), "eps", None),
    "add: x overlaps residual": ("add_rmsnorm", dict(residual=X_ + 16), ("overlap",), None),
    "norm: null y": ("rmsnorm", dict(y=None), "y", None),
    "norm: y overlaps x": ("rmsnorm", dict(y=X_ + 16), ("overlap",), None),
    "norm: u8": ("rmsnorm", dict(dtype=DType.U8), "dtype", "uint8"),
    "norm: misaligned weight": ("rmsnorm", dict(weight=W_ + 2), "weight", None),
}  # fmt: skip


@pytest.mark.parametrize("op, changes, names, value", INVALID.values(), ids=INVALID.keys())
def test_invalid_argument(op, changes, names, value):
    assert_invalid_op(call(op, **changes), op, names, value)


def test_zero_tokens_and_in_place():
    assert call("shared_expert_gate", num_tokens=0, hidden=None) == Status.SUCCESS, _lib.last_error()
    assert call("add_rmsnorm", num_tokens=0, x=None, residual=None) == Status.SUCCESS, _lib.last_error()
    from moekit import _hooks

    with _hooks.plan_only():  # y == x is in place, not an overlap
        assert call("rmsnorm", y=X_) == Status.SUCCESS, _lib.last_error()


def test_reference_definitions():
    from moekit import reference as ref

    rng = np.random.default_rng(0)
    x, r, w = rng.standard_normal((5, 64)), rng.standard_normal((5, 64)), rng.standard_normal(64)
    s = x + r
    want = s / np.sqrt((s**2).sum(-1, keepdims=True) / 64 + 1e-6) * w
    got_x, got_r = ref.add_rmsnorm_(x, r, w, 1e-6)
    assert np.allclose(got_r, s, rtol=0, atol=0) and np.allclose(got_x, want, rtol=1e-14)
    assert np.allclose(ref.rmsnorm(s, w, 1e-6), want, rtol=1e-14)
    g = rng.standard_normal((5, 1))
    sig = np.array([[1 / (1 + np.exp(-v)) for v in row] for row in g])
    assert np.allclose(ref.shared_expert_gate_(x, r, g), x + sig * r, rtol=1e-14)
    assert np.allclose(ref.shared_expert_gate_(x, r, np.repeat(g, 64, 1)), x + sig * r, rtol=1e-14)
    with pytest.raises(ValueError, match="gate"):
        ref.shared_expert_gate_(x, r, g[:, :0])
    with pytest.raises(ValueError, match="weight"):
        ref.rmsnorm(x, w[:3])


def test_gate_below_hidden_is_not_an_overlap():
    # a [T, 1] gate just below hidden is disjoint from it (T * 2 bytes long, not T * H * 2)
    from moekit import _hooks

    with _hooks.plan_only():
        assert call("shared_expert_gate", gate=H_ - 64) == Status.SUCCESS, _lib.last_error()
