"""NumPy float64 oracle of the fused epilogues (SPEC.md section 7). Inputs of any float dtype
(ml_dtypes.bfloat16 included) are upcast to float64; results are float64 (the GPU rounds once)."""

import numpy as np

__all__ = ["shared_expert_gate_", "add_rmsnorm_", "rmsnorm"]


def _f64(a, name):
    a = np.asarray(a)
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension ([..., H])")
    return a.astype(np.float64)


def shared_expert_gate_(hidden, shared, gate):
    """hidden + sigmoid(gate) * shared (gate [..., 1] broadcasts over H). Returns the new hidden."""
    h, s, g = _f64(hidden, "hidden"), _f64(shared, "shared"), _f64(gate, "gate")
    if s.shape != h.shape:
        raise ValueError(f"shared must have shape {list(h.shape)}, got {list(s.shape)}")
    if g.shape not in (h.shape, (*h.shape[:-1], 1)):
        raise ValueError(f"gate must have shape {[*h.shape[:-1], 1]} or {list(h.shape)}, got {list(g.shape)}")
    return h + s / (1.0 + np.exp(-g))


def rmsnorm(x, weight, eps=1e-6):
    """x / sqrt(mean(x^2, last axis) + eps) * weight."""
    v, w = _f64(x, "x"), _f64(weight, "weight")
    if w.shape != v.shape[-1:]:
        raise ValueError(f"weight must have shape {list(v.shape[-1:])}, got {list(w.shape)}")
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w


def add_rmsnorm_(x, residual, weight, eps=1e-6):
    """(rmsnorm(x + residual) * weight, x + residual): the new x and the new residual."""
    v, r = _f64(x, "x"), _f64(residual, "residual")
    if r.shape != v.shape:
        raise ValueError(f"residual must have shape {list(v.shape)}, got {list(r.shape)}")
    total = v + r
    return rmsnorm(total, weight, eps), total
