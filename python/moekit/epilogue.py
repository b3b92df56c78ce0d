"""Fused MoE epilogues (SPEC.md section 7): the shared-expert gate and (add +) RMSNorm.

Tensors are [..., H], C-contiguous (the leading dimensions are flattened into rows). The in-place
ops (trailing underscore) write into their first arguments and return them.
"""

from . import _lib
from ._array import (
    FLOAT_DTYPES,
    MOEKIT_DTYPES,
    as_device_array,
    float_arg,
    input_like,
    launch,
    output,
    require,
    stream_handle,
)
from ._lib import lib

__all__ = ["shared_expert_gate_", "add_rmsnorm_", "rmsnorm"]


def _rows(array, name):
    if len(array.shape) < 1:
        raise ValueError(f"{name} must have at least one dimension ([..., H]), got a scalar")
    require(array, name, tuple(array.shape), FLOAT_DTYPES)
    hidden = array.shape[-1]
    rows = 1
    for extent in array.shape[:-1]:
        rows *= extent
    return rows, hidden


def _weight(weight, x, hidden):
    return input_like(weight, "weight", x, "x", (hidden,), (x.dtype, "float32"))


def shared_expert_gate_(hidden, shared, gate, *, stream=None):
    """hidden += sigmoid(gate) * shared, in place (fp32 math). gate: [..., 1] (one per token) or
    the shape of hidden. Returns hidden."""
    h = as_device_array(hidden, "hidden")
    rows, size = _rows(h, "hidden")
    stream = stream_handle(stream, h)
    s = input_like(shared, "shared", h, "hidden", tuple(h.shape), (h.dtype,))
    g = as_device_array(gate, "gate")
    per_token = tuple(g.shape) == (*h.shape[:-1], 1) and size != 1
    if not per_token and tuple(g.shape) != tuple(h.shape):
        raise ValueError(f"gate must have shape {[*h.shape[:-1], 1]} or {list(h.shape)}, got {list(g.shape)}")
    g = input_like(gate, "gate", h, "hidden", tuple(g.shape), (h.dtype,))
    status = launch(
        h.framework, h.device_id, stream, lib.moekit_shared_expert_gate,
        h.ptr, s.ptr, g.ptr, MOEKIT_DTYPES[h.dtype], rows, size, int(per_token), stream,
    )  # fmt: skip
    _lib.check(status)
    return hidden


def add_rmsnorm_(x, residual, weight, eps=1e-6, *, stream=None):
    """residual = x + residual; x = rmsnorm(residual) * weight, both in place (the fp32 sum is
    normalized). weight: [H] in x's dtype or float32. Returns (x, residual)."""
    a = as_device_array(x, "x")
    rows, size = _rows(a, "x")
    stream = stream_handle(stream, a)
    r = input_like(residual, "residual", a, "x", tuple(a.shape), (a.dtype,))
    w = _weight(weight, a, size)
    status = launch(
        a.framework, a.device_id, stream, lib.moekit_add_rmsnorm,
        a.ptr, r.ptr, w.ptr, MOEKIT_DTYPES[a.dtype], MOEKIT_DTYPES[w.dtype], rows, size,
        float_arg(eps, "eps"), stream,
    )  # fmt: skip
    _lib.check(status)
    return x, residual


def rmsnorm(x, weight, eps=1e-6, *, out=None, stream=None):
    """y = x * rsqrt(mean(x^2) + eps) * weight (fp32 math) -> y in x's dtype. out may be x."""
    a = as_device_array(x, "x")
    rows, size = _rows(a, "x")
    stream = stream_handle(stream, a)
    w = _weight(weight, a, size)
    y, y_array = output(out, "out", a, "x", tuple(a.shape), a.dtype)
    status = launch(
        a.framework, a.device_id, stream, lib.moekit_rmsnorm,
        a.ptr, w.ptr, y_array.ptr, MOEKIT_DTYPES[a.dtype], MOEKIT_DTYPES[w.dtype], rows, size,
        float_arg(eps, "eps"), stream,
    )  # fmt: skip
    _lib.check(status)
    return y
