"""torch.library custom ops for the FP8 quantization (SPEC.md section 6) and the epilogues (section 7),
with fake impls, so that they run under torch.compile(fullgraph=True) and CUDA-graph capture.
Re-exported by moekit.torch. Each op calls the generic moekit function (the interop layer checks the
arguments) on the current torch stream."""

from typing import Optional, Tuple

import torch

from . import epilogue, quant


def _scales_like(x: torch.Tensor, rows: int, hidden: int, group_size: int, scale_format: str, lead=()):
    storage, dtype, logical = quant.scale_storage_shape(rows, hidden, group_size, scale_format,
                                                        lead[0] if lead else None)
    buf = x.new_empty(storage, dtype=getattr(torch, dtype))
    return buf if scale_format == "row_f32" else buf.transpose(-1, -2)[..., :rows, :]


@torch.library.custom_op("moekit::silu_mul_quant_fp8", mutates_args=())
def silu_mul_quant_fp8(x: torch.Tensor, group_size: int = 128, scale_format: str = "col_f32_tma_ue8m0",
                       gate_first: bool = True, round_act: bool = False,
                       counts: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """moekit.silu_mul_quant_fp8 as a torch op -> (q float8_e4m3fn, scales in the format's layout)."""
    q, scales = quant.silu_mul_quant_fp8(x, group_size=group_size, scale_format=scale_format,
                                         gate_first=gate_first, round_act=round_act, counts=counts)
    return q, scales


@silu_mul_quant_fp8.register_fake
def _(x, group_size=128, scale_format="col_f32_tma_ue8m0", gate_first=True, round_act=False, counts=None):
    hidden = x.shape[-1] // 2
    lead = tuple(x.shape[:-2]) if counts is not None else ()
    q = x.new_empty((*x.shape[:-1], hidden), dtype=torch.float8_e4m3fn)
    return q, _scales_like(x, x.shape[-2], hidden, group_size, scale_format, lead)


@torch.library.custom_op("moekit::quant_fp8", mutates_args=())
def quant_fp8(x: torch.Tensor, group_size: int = 128,
              scale_format: str = "col_f32_tma_ue8m0") -> Tuple[torch.Tensor, torch.Tensor]:
    """moekit.quant_fp8 as a torch op -> (q float8_e4m3fn, scales)."""
    q, scales = quant.quant_fp8(x, group_size=group_size, scale_format=scale_format)
    return q, scales


@quant_fp8.register_fake
def _(x, group_size=128, scale_format="col_f32_tma_ue8m0"):
    q = x.new_empty(x.shape, dtype=torch.float8_e4m3fn)
    return q, _scales_like(x, x.shape[0], x.shape[1], group_size, scale_format)


@torch.library.custom_op("moekit::shared_expert_gate_", mutates_args=("hidden",))
def shared_expert_gate_(hidden: torch.Tensor, shared: torch.Tensor, gate: torch.Tensor) -> None:
    """hidden += sigmoid(gate) * shared, in place."""
    epilogue.shared_expert_gate_(hidden, shared, gate)


@torch.library.custom_op("moekit::add_rmsnorm_", mutates_args=("x", "residual"))
def add_rmsnorm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> None:
    """residual = x + residual; x = rmsnorm(residual) * weight, in place."""
    epilogue.add_rmsnorm_(x, residual, weight, eps)


@torch.library.custom_op("moekit::rmsnorm", mutates_args=())
def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight."""
    return epilogue.rmsnorm(x, weight, eps)


@rmsnorm.register_fake
def _(x, weight, eps=1e-6):
    return torch.empty_like(x)
