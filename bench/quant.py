#!/usr/bin/env python3
"""FP8 quantization benchmark (SPEC section 6): moekit.silu_mul_quant_fp8 (contiguous and masked) and
moekit.quant_fp8 against torch eager and torch.compile of the composition a user writes without moekit,
timed in one run on inputs rotated past L2 (CUDA-graph replay), with the copy ceiling of the same run,
and the share of q bytes and scale bytes equal to moekit.reference's on the first rows.

Fewest bytes each op must move (bf16 x, group 128; scale storage = the format's storage, padding included):
  silu_mul_quant_fp8   read x T*2H*2, write q T*H and the scale storage
  masked [E, M, 2H]    the same for the valid rows only (sum of counts), plus the whole scale storage
  quant_fp8            read x T*H*2, write q T*H and the scale storage

  python bench/quant.py [--quick] [--no-compile] [--no-plot] [--out DIR]
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FAMILY = "quant"
GROUP, FP8_MAX, CHECK_ROWS = 128, 448.0, 512
TOKENS, TOKENS_QUICK = (128, 1024, 8192, 32768, 65536), (128, 8192)
HIDDEN = (2048, 7168)
FORMATS = ("row_f32", "col_f32_tma", "col_f32_tma_ue8m0", "packed_ue8m0")
FORMATS_QUICK = ("col_f32_tma_ue8m0", "packed_ue8m0")
UE8M0 = ("col_f32_tma_ue8m0", "packed_ue8m0")
E = 32  # masked layout: E experts of capacity M = T (one expert can take every token)
MASKED_TOKENS, MASKED_TOKENS_QUICK = (8192, 16384), (8192,)  # x is E*M*2H: 15 GB at M = 16384, H = 7168
MASKED_FORMATS, MASKED_FORMATS_QUICK = ("packed_ue8m0", "col_f32_tma_ue8m0"), ("packed_ue8m0",)
QUANT_T, QUANT_FORMAT = 8192, "col_f32_tma_ue8m0"


def torch_quant(torch, y, fmt):
    """Per-token-group FP8 quantization of y [..., R, H] in torch -> (q, scales as fmt's logical view)."""
    *lead, R, H = y.shape
    G = H // GROUP
    yg = y.float().reshape(*lead, R, G, GROUP)
    scale = yg.abs().amax(dim=-1).clamp(min=1e-10) / FP8_MAX
    if fmt in UE8M0:  # round up to a power of two by the bits: exponent + 1 when the mantissa is not 0
        bits = scale.view(torch.int32)
        exp = (bits >> 23) & 0xFF
        up = (exp + ((bits & 0x7FFFFF) != 0).to(torch.int32)) << 23
        scale = torch.where(exp == 0xFF, bits, up).view(torch.float32)
    q = (yg / scale.unsqueeze(-1)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(*lead, R, H)
    if fmt == "row_f32":
        return q, scale
    if fmt == "packed_ue8m0":  # exponent bytes, 4 per int32 word, byte j = group 4p + j
        exps = (scale.view(torch.int32) >> 23) & 0xFF
        Gp = -(-G // 4)
        if 4 * Gp != G:
            exps = torch.nn.functional.pad(exps, (0, 4 * Gp - G))
        exps = exps.reshape(*lead, R, Gp, 4)
        vals = exps[..., 0] | (exps[..., 1] << 8) | (exps[..., 2] << 16) | (exps[..., 3] << 24)  # wraps
    else:
        vals = scale
    Ta = -(-R // 4) * 4  # storage [G, Ta] zero-padded, the logical [R, G] view has strides (1, Ta)
    storage = torch.zeros(*lead, vals.shape[-1], Ta, dtype=vals.dtype, device=y.device)
    storage[..., :R] = vals.transpose(-1, -2)
    return q, storage.transpose(-1, -2)[..., :R, :]


def torch_silu_mul_quant(torch, x, fmt):
    H = x.shape[-1] // 2
    return torch_quant(torch, torch.nn.functional.silu(x[..., :H]) * x[..., H:], fmt)  # bf16 ops


def compiled(torch, fn):
    import torch._dynamo as dynamo
    dynamo.reset()  # one compile per cell, static shapes (no silent fall-back past the recompile limit)
    for attr in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo.config, attr):
            setattr(dynamo.config, attr, 64)
    return torch.compile(fn, dynamic=False)


def raw(torch, t):
    """A tensor's bits as NumPy: q as uint8, 4-byte scales as uint32."""
    if t.element_size() == 1:
        return t.view(torch.uint8).contiguous().cpu().numpy()
    return t.view(torch.int32).contiguous().cpu().numpy().view(np.uint32)


def equal_shares(torch, moekit, op, fmt, fns, inputs, slices):
    """{impl: (% q bytes, % scale words)} equal to moekit.reference's on slices [(expert or None, rows)]."""
    import ml_dtypes
    first = inputs[0]  # the first input set: (x,) or (x, counts)
    x, refs = first[0], []
    for e, n in slices:
        xe = (x if e is None else x[e])[:n].contiguous().cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        rq, rs = getattr(moekit.reference, op)(xe, group_size=GROUP, scale_format=fmt)
        refs.append((rq.view(np.uint8), np.ascontiguousarray(rs).view(np.uint32)))
    shares = {}
    for peer, fn in fns.items():
        try:
            q, s = fn(*first)
            hits = [0, 0, 0, 0]
            for (e, n), (rq, rs) in zip(slices, refs):
                pq, ps = raw(torch, (q if e is None else q[e])[:n]), raw(torch, (s if e is None else s[e])[:n])
                if pq.shape != rq.shape or ps.shape != rs.shape:
                    raise ValueError(f"shapes q {pq.shape} scales {ps.shape}, reference {rq.shape} {rs.shape}")
                hits = [hits[0] + int((pq == rq).sum()), hits[1] + rq.size, hits[2] + int((ps == rs).sum()),
                        hits[3] + rs.size]
            shares[peer] = (100.0 * hits[0] / hits[1], 100.0 * hits[2] / hits[3])
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            C.log(f"  check {peer}: {type(exc).__name__}: {str(exc)[:200]}")
            shares[peer] = (None, None)
    return shares


def cell(torch, moekit, params, bytes_, fns, make_inputs, ceiling, l2, slices, footprint):
    case = (f"E={E} " if params["masked"] else "") + f"T={params['T']} H={params['H']} " + \
        (f"{params['pattern']} " if params["masked"] else "") + params["format"]
    name = f"{params['pass']} {case}"
    # rotation by the bytes the op touches; never more sets than MAX_ROTATION_BYTES of allocation
    sets = min(C.rotation_count(bytes_, l2), max(1, C.MAX_ROTATION_BYTES // footprint))
    row = {"cell": name, "case": case, "score": "", "bytes": bytes_, "timings": {}, "check": None, **params}
    try:
        inputs = [make_inputs() for _ in range(sets)]
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the cell is reported empty
        C.log(f"  {name}: inputs: {type(exc).__name__}: {str(exc)[:200]}")
        inputs, fns = [], {}
    C.time_peers(row, name, fns, inputs, on_error=torch.cuda.empty_cache)
    if inputs:
        try:
            shares = equal_shares(torch, moekit, params["op"], params["format"], fns, inputs, slices)
            mk_q, mk_s = shares.get("moekit", (None, None))
            row["check"] = {"ok": mk_q == 100.0 and mk_s == 100.0, "rows": slices,
                            "q_eq_pct": {p: v[0] for p, v in shares.items()},
                            "scales_eq_pct": {p: v[1] for p, v in shares.items()}}
        except Exception as exc:  # noqa: BLE001 - e.g. the reference not importable: reported
            C.log(f"  {name} check: {type(exc).__name__}: {str(exc)[:200]}")
            row["check"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return C.summarize(row, name, bytes_, ceiling)


def run_cell(torch, moekit, storage_shape, args, ceiling, l2, *, op, T, H, fmt, pattern=None):
    """Builds the inputs, moekit's call (into preallocated outputs) and the peers of one cell; times it."""
    masked = pattern is not None
    counts = ([T // E] * E if pattern == "balanced" else [T] + [0] * (E - 1)) if masked else None
    width = 2 * H if op == "silu_mul_quant_fp8" else H
    x_shape = (E, T, width) if masked else (T, width)  # masked: capacity M = T
    st_shape, st_dtype, lg_shape = storage_shape(T, H, GROUP, fmt, E if masked else None)
    q_out = torch.empty(*x_shape[:-1], H, dtype=torch.float8_e4m3fn, device="cuda")
    s_out = torch.zeros(st_shape, dtype=getattr(torch, st_dtype), device="cuda")
    s_view = s_out if tuple(st_shape) == tuple(lg_shape) else s_out.transpose(-1, -2)[..., :T, :]
    scale_bytes = int(np.prod(st_shape)) * 4
    rows = sum(counts) if masked else T  # only valid rows are read and written; all scales are written
    bytes_ = rows * width * 2 + rows * H + scale_bytes

    def make_inputs():
        x = torch.randn(*x_shape, dtype=torch.bfloat16, device="cuda")
        return (x, torch.tensor(counts, dtype=torch.int32, device="cuda")) if masked else (x,)

    def mk(x, c=None):
        getattr(moekit, op)(x, group_size=GROUP, scale_format=fmt, out=(q_out, s_out),
                            **({"counts": c} if masked else {}))
        return q_out, s_view

    def eager(x, c=None):  # masked: the torch peers cannot skip rows, they process all E*M rows
        return torch_silu_mul_quant(torch, x, fmt) if op == "silu_mul_quant_fp8" else torch_quant(torch, x, fmt)

    fns = {"moekit": mk, "torch eager": eager}
    if not args.no_compile:
        cfn = compiled(torch, lambda x: eager(x))
        fns["torch.compile"] = lambda x, c=None: cfn(x)
    if masked:
        last = max(e for e in range(E) if counts[e] > 0)
        slices = [(e, min(counts[e], CHECK_ROWS)) for e in sorted({0, last}) if counts[e] > 0]
    else:
        slices = [(None, min(T, CHECK_ROWS))]
    params = {"op": op, "pass": "quant" if op == "quant_fp8" else "silu_mul masked" if masked else "silu_mul",
              "masked": masked, "T": T, "H": H, "format": fmt, "pattern": pattern, "E": E if masked else None}
    footprint = int(np.prod(x_shape)) * 2  # per input set (outputs are shared)
    return cell(torch, moekit, params, bytes_, fns, make_inputs, ceiling, l2, slices, footprint)


def targets(records):
    def us(r):
        return (r["timings"].get("moekit") or {}).get("us")
    plain = [r for r in records if r["pass"] == "silu_mul" and us(r)]
    lines = []

    def say(label, value, ok, unit=""):
        verdict = "n/a" if value is None else ("met" if ok(value) else "MISSED")
        lines.append(f"  {label}: {C.fmt_num(value, 2)}{unit} -> {verdict}")
    say("<= 29 us at T=8192 H=2048 (slowest format)", max((us(r) for r in plain if r["T"] == 8192 and r["H"] == 2048),
                                                         default=None), lambda v: v <= 29, " us")
    say(">= 3100 GB/s at T >= 32768 (lowest)", min((r["gbs"] for r in plain if r["T"] >= 32768), default=None),
        lambda v: v >= 3100, " GB/s")
    say("<= 2.2 us at T=128 (slowest)", max((us(r) for r in plain if r["T"] == 128), default=None),
        lambda v: v <= 2.2, " us")
    bal = {(r["T"], r["H"], r["format"]): r["gbs"] for r in records if r["pattern"] == "balanced" and r["gbs"]}
    ratios = [100 * r["gbs"] / bal[(r["T"], r["H"], r["format"])] for r in records
              if r["pattern"] == "skew" and r["gbs"] and (r["T"], r["H"], r["format"]) in bal]
    say("masked skew >= 80% of balanced GB/s (lowest)", min(ratios, default=None), lambda v: v >= 80, "%")
    say(">= 2x torch.compile (lowest)", min((r["speedup_vs_compile"] for r in records if r["speedup_vs_compile"]),
                                            default=None), lambda v: v >= 2, "x")
    return lines


def plot(records, out_dir, ceiling, device):
    panels = {}
    for r in records:
        labels, series = panels.setdefault(r["pass"], ([], {}))
        labels.append(r["case"])
        for peer in ("moekit", "torch eager", "torch.compile"):
            t = (r["timings"].get(peer) or {}).get("us")
            series.setdefault(peer, []).append(100 * r["bytes"] / t / 1e3 / ceiling if t else None)
    for _, series in panels.values():  # e.g. torch.compile under --no-compile
        for peer in [p for p, v in series.items() if all(x is None for x in v)]:
            del series[peer]
    return C.plot_bars(out_dir, FAMILY, panels, title=f"FP8 quantization, {device}")


def main(argv=None):
    ap = C.family_parser(__doc__)
    ap.add_argument("--tune", action="append", default=[], metavar="KNOB=VALUE",
                    help="a tuning override for the whole run, e.g. quant.async=1 (the cp.async A/B)")
    args, extra = ap.parse_known_args(argv)  # bench/run.py passes options it does not know to every family
    if extra:
        C.log(f"quant: ignoring {' '.join(extra)}")
    torch = C.import_torch()
    moekit = C.require_moekit()
    from moekit.quant import scale_storage_shape

    if args.tune:
        from moekit import _hooks

        _hooks.apply({k: int(v) for k, v in (t.split("=", 1) for t in args.tune)})

    info = C.device_info(torch, moekit)
    l2 = C.l2_bytes(torch)
    ceiling = C.copy_ceiling(torch)
    C.log(f"copy ceiling {ceiling['gbs']:.0f} GB/s")
    q = args.quick

    records = []

    def run(**kw):  # the cell's tensors are freed on return; give their memory back before the next
        try:
            records.append(run_cell(torch, moekit, scale_storage_shape, args, ceiling["gbs"], l2, **kw))
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the outputs: reported, not fatal
            C.log(f"  cell {kw}: {type(exc).__name__}: {str(exc)[:200]}")
            traceback.print_exc()
        torch.cuda.empty_cache()
    for T in TOKENS_QUICK if q else TOKENS:
        for H in HIDDEN:
            for fmt in FORMATS_QUICK if q else FORMATS:
                run(op="silu_mul_quant_fp8", T=T, H=H, fmt=fmt)
    for T in MASKED_TOKENS_QUICK if q else MASKED_TOKENS:
        for H in HIDDEN:
            for fmt in MASKED_FORMATS_QUICK if q else MASKED_FORMATS:
                for pattern in ("balanced", "skew"):
                    run(op="silu_mul_quant_fp8", T=T, H=H, fmt=fmt, pattern=pattern)
    for H in HIDDEN:
        run(op="quant_fp8", T=QUANT_T, H=H, fmt=QUANT_FORMAT)

    headers = ["cell", "moekit us", "GB/s", "% copy", "eager us", "compile us", "x eager", "x compile",
               "q eq % (moekit/eager/compile)", "scales eq %"]
    table = []

    def times(v):
        return "n/a" if v is None else f"{v:.2f}x"
    for r in records:
        t, chk = r["timings"], r["check"] or {}

        def eq(key):
            return "/".join(C.fmt_num((chk.get(key) or {}).get(p)) for p in ("moekit", "torch eager", "torch.compile"))
        mk = t.get("moekit", {}).get("us")
        eg = t.get("torch eager", {}).get("us")
        cp = t.get("torch.compile", {}).get("us")
        table.append([r["cell"], C.fmt_num(mk, 2), C.fmt_num(r["gbs"], 0), C.fmt_num(r["pct_copy"]),
                      C.fmt_num(eg, 2), C.fmt_num(cp, 2), times(r["speedup_vs_eager"]),
                      times(r["speedup_vs_compile"]), eq("q_eq_pct"), eq("scales_eq_pct")])
    print(f"\nquant family, {info['device']}, copy ceiling {ceiling['gbs']:.0f} GB/s")
    print(C.format_table(headers, table))
    print("targets (not asserted):")
    print("\n".join(targets(records)))
    path = C.write_json(args.out, FAMILY, {"family": FAMILY, "info": info, "device": info, "copy_ceiling": ceiling,
                                           "args": vars(args), "records": records,
                                           "table": {"headers": headers, "rows": table}})
    png = None if args.no_plot else plot(records, args.out, ceiling["gbs"], info["device"])
    C.log(f"wrote {path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
