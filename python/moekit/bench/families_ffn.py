"""The families around the expert GEMMs: quant (SiLU-and-mul + FP8 quantization, FP8 quantization) and
epilogue (shared-expert gate, add + RMSNorm, RMSNorm). Same shape as families.py, whose helpers these
use; importing this module imports neither torch nor the library.
"""

from __future__ import annotations

import numpy as np

from .families import BF16, EPS_NORM, FP8_MAX, GROUP, _close, _dev, _host, _lazy, _need
from .registry import Cell, register

SCALE_FORMATS = ("row_f32", "col_f32_tma", "col_f32_tma_ue8m0", "packed_ue8m0")
MASKED_EXPERTS = 32
EPILOGUE_OPS = ("shared_expert_gate_", "add_rmsnorm_", "rmsnorm")


# ---- quant -------------------------------------------------------------------------------------------


def torch_quant(torch, y, fmt):
    """FP8 e4m3 per group of 128 columns of y [..., R, H] with power-of-two (ue8m0) scales -> (q, scales
    as the [..., R, cols] view of a zero-padded [..., cols, ceil4(R)] storage, as the GEMM reads them)."""
    groups = y.float().unflatten(-1, (y.shape[-1] // GROUP, GROUP))
    exponent = torch.ceil(torch.log2(groups.abs().amax(dim=-1).clamp_min(1e-10) / FP8_MAX))
    q = (groups * torch.exp2(-exponent)[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    if fmt == "packed_ue8m0":  # biased exponent bytes, four groups to an int32 word
        b = (exponent.to(torch.int32) + 127).unflatten(-1, (-1, 4))
        scales = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)
    else:
        scales = torch.exp2(exponent)
    rows = y.shape[-2]
    storage = scales.new_zeros(*scales.shape[:-2], scales.shape[-1], -(-rows // 4) * 4)
    storage[..., :rows] = scales.transpose(-1, -2)
    return q.flatten(-2), storage.transpose(-1, -2)[..., :rows, :]


def torch_silu_mul_quant(torch, x, fmt):
    half = x.shape[-1] // 2
    return torch_quant(torch, torch.nn.functional.silu(x[..., :half].float()) * x[..., half:].float(), fmt)


def _bytes_equal(torch, op, got, want, valid_rows=None):
    """(op, ok, detail): q bytes and scale words of the device equal the reference's."""
    q, rq = got[0].view(torch.uint8).cpu().numpy(), np.asarray(want[0]).view(np.uint8)
    s = got[1].contiguous().view(torch.int32).cpu().numpy()
    rs = np.ascontiguousarray(want[1]).view(np.int32)
    if q.shape != rq.shape or s.shape != rs.shape:
        return op, False, f"shapes q {q.shape} scales {s.shape}, reference {rq.shape} {rs.shape}"
    if valid_rows is not None:  # masked: rows past counts[e] are not written
        q, rq = q[valid_rows], rq[valid_rows]
    bad_q, bad_s = int((q != rq).sum()), int((s != rs).sum())
    return op, bad_q == 0 and bad_s == 0, f"{bad_q} of {q.size} q bytes, {bad_s} of {s.size} scale words differ"


def quant_check(torch, moekit, reference, rng):
    _need(("silu_mul_quant_fp8", "quant_fp8"), moekit, reference)
    T, H, results = 50, 512, []  # T not a multiple of 4: the column formats' padding

    def new_x(*shape):
        x = _dev(torch, 2 * rng.standard_normal(shape).astype(np.float32), torch.bfloat16)
        return x, x.float().cpu().numpy()  # the reference gets the bf16 values exactly
    x, xh = new_x(T, 2 * H)
    for fmt in SCALE_FORMATS:
        results.append(_bytes_equal(torch, f"silu_mul_quant_fp8 [{fmt}]", moekit.silu_mul_quant_fp8(x, scale_format=fmt),
                                    reference.silu_mul_quant_fp8(xh, scale_format=fmt)))
    E, M = 4, 40
    counts = rng.integers(0, M + 1, E)
    counts[:2] = (M, 0)
    x, xh = new_x(E, M, 2 * H)
    got = moekit.silu_mul_quant_fp8(x, scale_format="packed_ue8m0", counts=_dev(torch, counts.astype(np.int32)))
    want = reference.silu_mul_quant_fp8(xh, scale_format="packed_ue8m0", counts=counts)
    results.append(_bytes_equal(torch, "silu_mul_quant_fp8_masked [packed_ue8m0]", got, want,
                                np.arange(M)[None, :] < counts[:, None]))
    x, xh = new_x(T, H)
    results.append(_bytes_equal(torch, "quant_fp8 [col_f32_tma_ue8m0]", moekit.quant_fp8(x),
                                reference.quant_fp8(xh)))
    return results


def quant_cells(torch, moekit, quick):
    _need(("silu_mul_quant_fp8", "quant_fp8"), moekit)
    if quick:
        return [_quant_cell(torch, moekit, T, 7168, "packed_ue8m0") for T in (128, 8192, 65536)]
    cells = [_quant_cell(torch, moekit, T, H, fmt) for T in (128, 8192, 65536) for H in (2048, 7168)
             for fmt in ("packed_ue8m0", "col_f32_tma_ue8m0")]
    cells += [_quant_cell(torch, moekit, 8192, H, "packed_ue8m0", masked=True) for H in (2048, 7168)]
    cells += [_quant_cell(torch, moekit, 8192, 7168, "col_f32_tma_ue8m0", op="quant_fp8")]
    return cells


def _skewed_counts(total, experts):
    """Tokens per expert falling off as 1/(e + 1) (a few hot experts), summing to total."""
    share = 1.0 / np.arange(1, experts + 1)
    counts = np.floor(total * share / share.sum()).astype(np.int64)
    counts[0] += total - counts.sum()
    return counts


def _quant_cell(torch, moekit, T, H, fmt, masked=False, op="silu_mul_quant_fp8"):
    from moekit.quant import scale_storage_shape

    width = 2 * H if op == "silu_mul_quant_fp8" else H
    E, counts = (MASKED_EXPERTS, _skewed_counts(T, MASKED_EXPERTS)) if masked else (None, None)
    rows = -(-int(counts.max()) // 64) * 64 if masked else T  # masked: capacity M per expert
    lead = (E,) if masked else ()
    storage_shape, storage_dtype, _ = scale_storage_shape(rows, H, GROUP, fmt, E)
    outputs = _lazy(lambda: (torch.empty(*lead, rows, H, dtype=torch.float8_e4m3fn, device="cuda"),
                             torch.zeros(storage_shape, dtype=getattr(torch, storage_dtype), device="cuda")))

    def make_inputs():
        x = torch.randn(*lead, rows, width, device="cuda", dtype=torch.bfloat16)
        return (x, _dev(torch, counts.astype(np.int32))) if masked else (x,)

    def ours(x, c=None):
        if op == "quant_fp8":
            return moekit.quant_fp8(x, scale_format=fmt, out=outputs())
        return moekit.silu_mul_quant_fp8(x, scale_format=fmt, counts=c, out=outputs())

    def eager(x, c=None):  # the torch composition cannot skip rows: masked, it processes all E*M
        return torch_silu_mul_quant(torch, x, fmt) if op == "silu_mul_quant_fp8" else torch_quant(torch, x, fmt)
    # read the valid rows of x; write their q and the whole scale storage
    nbytes = T * (width * BF16 + H) + int(np.prod(storage_shape)) * 4
    label = (f"E={E} M={rows} T={T} skew " if masked else f"T={T} ") + f"H={H} {fmt}"
    return Cell(op + ("_masked" if masked else ""), label, nbytes, make_inputs, {"moekit": ours, "torch eager": eager},
                footprint=int(np.prod((*lead, rows, width))) * BF16,
                params=dict(T=T, H=H, format=fmt, masked=masked, experts=E))


# ---- epilogue ----------------------------------------------------------------------------------------


def torch_rmsnorm(torch, x, weight):
    if hasattr(torch.nn.functional, "rms_norm"):
        return torch.nn.functional.rms_norm(x, x.shape[-1:], weight, EPS_NORM)
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + EPS_NORM) * weight.float()).to(x.dtype)


def epilogue_check(torch, moekit, reference, rng):
    _need(EPILOGUE_OPS, moekit, reference)
    T, H, results = 64, 1024, []
    for dtype, name, tol in ((torch.bfloat16, "bf16", 1e-2), (torch.float32, "f32", 1e-5)):
        def new(*shape, mean=0.0, std=1.0):
            return _dev(torch, (mean + std * rng.standard_normal(shape)).astype(np.float32), dtype)
        hidden, shared, gate = new(T, H), new(T, H), new(T, 1) if name == "bf16" else new(T, H)
        want = reference.shared_expert_gate_(_host(hidden), _host(shared), _host(gate))
        moekit.shared_expert_gate_(hidden, shared, gate)
        results.append(_close(f"shared_expert_gate_ [{name}, gate {list(gate.shape)}]", _host(hidden), want, tol, tol))
        x, residual, weight = new(T, H), new(T, H), new(H, mean=1.0, std=0.1)
        want_x, want_residual = reference.add_rmsnorm_(_host(x), _host(residual), _host(weight), EPS_NORM)
        moekit.add_rmsnorm_(x, residual, weight, eps=EPS_NORM)
        op, ok_x, detail_x = _close(f"add_rmsnorm_ [{name}]", _host(x), want_x, tol, tol)
        _, ok_r, detail_r = _close(op, _host(residual), want_residual, tol, tol)
        results.append((op, ok_x and ok_r, f"x: {detail_x}; residual: {detail_r}"))
        x = new(T, H)
        results.append(_close(f"rmsnorm [{name}]", _host(moekit.rmsnorm(x, weight, eps=EPS_NORM)),
                              reference.rmsnorm(_host(x), _host(weight), EPS_NORM), tol, tol))
    return results


def epilogue_cells(torch, moekit, quick):
    _need(EPILOGUE_OPS, moekit)
    H, cells = 7168, []
    for T in (8192,) if quick else (16, 8192):
        def tensors(*shapes):
            return tuple(torch.randn(*s, device="cuda", dtype=torch.bfloat16) for s in shapes)

        def add_rmsnorm_eager(x, residual, weight):
            residual.add_(x)
            x.copy_(torch_rmsnorm(torch, residual, weight))
            return x, residual
        cells += [
            # read hidden, shared and the per-token gate; write hidden
            Cell("shared_expert_gate_", f"T={T} H={H} gate [T,1] bf16", 3 * T * H * BF16 + T * BF16,
                 lambda T=T: tensors((T, H), (T, H), (T, 1)),
                 {"moekit": moekit.shared_expert_gate_,
                  "torch eager": lambda h, s, g: h.addcmul_(torch.sigmoid(g), s)}, params=dict(T=T, H=H)),
            # read x, residual and the weight; write both
            Cell("add_rmsnorm_", f"T={T} H={H} bf16", 4 * T * H * BF16 + H * BF16,
                 lambda T=T: tensors((T, H), (T, H), (H,)),
                 {"moekit": lambda x, r, w: moekit.add_rmsnorm_(x, r, w, eps=EPS_NORM),
                  "torch eager": add_rmsnorm_eager}, params=dict(T=T, H=H)),
            # read x and the weight; write y
            Cell("rmsnorm", f"T={T} H={H} bf16", 2 * T * H * BF16 + H * BF16, lambda T=T: tensors((T, H), (H,)),
                 {"moekit": lambda x, w: moekit.rmsnorm(x, w, eps=EPS_NORM),
                  "torch eager": lambda x, w: torch_rmsnorm(torch, x, w)}, params=dict(T=T, H=H)),
        ]
    return cells


register("quant", ops=("silu_mul_quant_fp8", "silu_mul_quant_fp8_masked", "quant_fp8"), check=quant_check,
         cells=quant_cells, description="SiLU-and-mul + FP8 quantization, FP8 quantization")
register("epilogue", ops=EPILOGUE_OPS, check=epilogue_check, cells=epilogue_cells,
         description="shared-expert gate, add + RMSNorm, RMSNorm")
