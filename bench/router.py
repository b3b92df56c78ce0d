#!/usr/bin/env python3
"""Router (training) benchmark: moekit.router_topk_forward / _backward against its peers.

Peers, timed in the same run on the same rotated inputs:
  torch eager    the composition a user writes (SPEC section 1, step by step, fp32 math);
                 its backward is torch autograd through that composition;
  torch.compile  the same composition compiled (mode "default"), backward through AOTAutograd;
  TE             transformer_engine.pytorch.router.fused_topk_with_score_function, if it imports.
Effective bandwidth counts the fewest bytes the op must move (see bytes_moved()).

  python bench/router.py [--quick] [--rows e128k8,e2304k36] [--dtypes bf16] [--no-compile] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FAMILY = "router"
TOKENS = (8192, 65536)
DTYPES = ("bf16", "f32")
EPS = 1e-20  # SPEC section 1: sigmoid/sqrtsoftplus normalization epsilon


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    E: int
    K: int
    score: str
    use_pre_softmax: bool = False
    G: int = 0
    Kg: int = 0
    scale: float = 1.0
    bias: bool = False

    @property
    def label(self) -> str:
        text = self.score + ("-pre" if self.use_pre_softmax else "")
        if self.bias:
            text += "+bias"
        if self.Kg:
            text += f" g{self.G}/{self.Kg}"
        return text


# Mixtral/Qwen-like, DeepSeek-V3-like (sigmoid, bias, 8 groups keep 4, rsf 2.5), E=512 K=22, E=2304 K=36.
ROWS = (
    Row("e128k8", 128, 8, "softmax"),
    Row("e256k8g8", 256, 8, "sigmoid", G=8, Kg=4, scale=2.5, bias=True),
    Row("e512k22", 512, 22, "softmax"),
    Row("e2304k36", 2304, 36, "softmax"),
)


def dtype_size(name: str) -> int:
    return {"bf16": 2, "f16": 2, "f32": 4}[name]


def bytes_moved(row: Row, T: int, dtype: str, pass_: str) -> int:
    """Fewest bytes the op must move through device memory (each tensor touched once, and only
    where the result depends on it).

    forward : read logits [T,E] (+ expert_bias [E] f32), write probs [T,E] (logits dtype),
              bytemap [T,E] u8 and intermediate [T,E] f32.
    backward: read the bytemap [T,E] u8, and grad_probs and the f32 intermediate at the T*K selected
              positions only (the gradient is 0 elsewhere); softmax-pre reads the intermediate
              everywhere (every element's gradient needs p); write grad_logits [T,E] (grad dtype).
    """
    ds = dtype_size(dtype)
    elems = T * row.E
    if pass_ == "fwd":
        return elems * (ds + ds + 1 + 4) + (row.E * 4 if row.bias else 0)
    if row.score == "softmax" and row.use_pre_softmax:
        return elems * (1 + 4 + ds) + T * row.K * ds
    return elems * (1 + ds) + T * row.K * (ds + 4)


# ---- the torch composition (SPEC section 1, read step by step) --------------------------------

def torch_router(x, bias, *, topk, score, use_pre_softmax, G, Kg, scale, with_keys=False):
    """probs, routing_map (bool), intermediate (f32) as SPEC section 1 defines them, in fp32 math."""
    import torch
    import torch.nn.functional as F

    T, E = x.shape
    xf = x if x.dtype == torch.float64 else x.float()  # float64 only in the CPU formula check
    p = y = None
    # 1. scores and selection keys (the bias moves selection only)
    if score == "softmax":
        if use_pre_softmax:
            p = torch.softmax(xf, dim=-1)
            keys = p
        else:
            keys = xf
    elif score == "sigmoid":
        y = torch.sigmoid(xf)
        keys = y
    elif score == "sqrtsoftplus":
        y = torch.sqrt(F.softplus(xf))  # torch's softplus returns x for x > 20 (threshold=20)
        keys = y
    else:
        raise ValueError(score)
    if bias is not None:
        keys = keys + bias.float()
    # 2. groups: group score = sum of its top K/Kg keys; keep the Kg best groups, others -inf
    group_scores = None
    if Kg > 0:
        grouped = keys.reshape(T, G, E // G)
        group_scores = grouped.topk(topk // Kg, dim=-1).values.sum(dim=-1)
        kept = group_scores.topk(Kg, dim=-1).indices
        keep = torch.zeros(T, G, dtype=torch.bool, device=x.device).scatter(1, kept, True)
        keys = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).reshape(T, E)
    # 3. the K best keys
    idx = keys.topk(topk, dim=-1).indices
    # 4. weights (unscaled), from unbiased scores
    if score == "softmax":
        w = p.gather(1, idx) if use_pre_softmax else torch.softmax(xf.gather(1, idx), dim=-1)
    else:
        w = y.gather(1, idx)
        if topk > 1:
            w = w / (w.sum(dim=-1, keepdim=True) + EPS)
    # 5. dense outputs
    probs = torch.zeros_like(xf).scatter(1, idx, w * scale).to(x.dtype)
    routing_map = torch.zeros(T, E, dtype=torch.bool, device=x.device).scatter(1, idx, True)
    if score == "softmax":
        if use_pre_softmax:
            intermediate = p
        else:
            intermediate = torch.full_like(xf, float("-inf")).scatter(1, idx, w)
    elif score == "sigmoid":
        intermediate = y
    else:
        intermediate = xf
    intermediate = intermediate.detach()
    if with_keys:
        return probs, routing_map, intermediate, keys.detach(), (
            None if group_scores is None else group_scores.detach())
    return probs, routing_map, intermediate


def make_torch_fn(row: Row):
    def fn(x, bias):
        return torch_router(x, bias, topk=row.K, score=row.score, use_pre_softmax=row.use_pre_softmax,
                            G=row.G, Kg=row.Kg, scale=row.scale)
    return fn


def make_compiled_fn(torch, row: Row):
    import torch._dynamo as dynamo
    dynamo.reset()
    for attr in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo.config, attr):
            setattr(dynamo.config, attr, 64)
    return torch.compile(make_torch_fn(row), mode="default", dynamic=False)


def make_te_fn(row: Row):
    from transformer_engine.pytorch.router import fused_topk_with_score_function as te_router

    def fn(x, bias):
        return te_router(x, row.K, row.use_pre_softmax, row.G or None, row.Kg or None,
                         row.scale, row.score, bias)
    return fn


# ---- moekit calls -------------------------------------------------------------------------------

def make_moekit_fns(moekit, row: Row):
    def fwd(x, bias, outs):
        return moekit.router_topk_forward(
            x, row.K, score_function=row.score, use_pre_softmax=row.use_pre_softmax,
            num_groups=row.G, group_topk=row.Kg, scaling_factor=row.scale, expert_bias=bias,
            map_format="bytemap", out=outs)

    def bwd(grad_probs, intermediate, routing_map, grad_out):
        return moekit.router_topk_backward(
            grad_probs, intermediate, routing_map, row.K, score_function=row.score,
            use_pre_softmax=row.use_pre_softmax, scaling_factor=row.scale,
            map_format="bytemap", out=grad_out)
    return fwd, bwd


def plans_of(moekit, row: Row, x, bias, outs, grad_out):
    """The plans moekit runs for this configuration (its plan-only hook), or None for a build
    without one."""
    try:
        from moekit import _hooks
    except ImportError:
        return None
    fwd, bwd = make_moekit_fns(moekit, row)
    device = None  # this device's properties
    return {"fwd": _hooks.plan_of(fwd, x, bias, outs, device=device),
            "bwd": _hooks.plan_of(bwd, outs[0], outs[2], outs[1], grad_out, device=device)}


def apply_tuning(items):
    """--tune KEY=VALUE (preset=NAME for a moekit._hooks.PRESETS entry): in-process overrides."""
    from moekit import _hooks

    for item in items:
        name, _, value = item.partition("=")
        _hooks.apply(value if name == "preset" else {name: int(value)})


# ---- correctness check (once per configuration, before timing) -----------------------------------

def rel_err(torch, got, ref):
    """||got - ref|| / ||ref|| over finite reference entries; inf if non-finite patterns differ."""
    got = got.double()
    ref = ref.double()
    if torch.isnan(got).any():
        return math.inf
    fin = torch.isfinite(ref)
    if not torch.equal(fin, torch.isfinite(got)) or not torch.equal(got[~fin], ref[~fin]):
        return math.inf
    denom = ref[fin].norm().item()
    num = (got[fin] - ref[fin]).norm().item()
    return num / denom if denom > 0 else num


def near_tie_rows(torch, keys, group_scores, K, Kg, rel=1e-5):
    """Rows whose K-th and (K+1)-th key (or Kg-th and (Kg+1)-th group score) nearly tie."""
    T, E = keys.shape
    tie = torch.zeros(T, dtype=torch.bool, device=keys.device)
    if K < E:
        top = keys.topk(K + 1, dim=-1).values
        kth, nxt = top[:, K - 1], top[:, K]
        gap = torch.nan_to_num(kth - nxt, nan=math.inf)
        tie |= gap <= rel * kth.abs() + 1e-12
    if group_scores is not None and Kg < group_scores.shape[1]:
        top = group_scores.topk(Kg + 1, dim=-1).values
        kth, nxt = top[:, Kg - 1], top[:, Kg]
        gap = torch.nan_to_num(kth - nxt, nan=math.inf)
        tie |= gap <= rel * kth.abs() + 1e-12
    return tie


def check_config(torch, row, dtype, x, bias, grad_probs, mk_fwd, mk_bwd, outs, grad_out):
    """moekit vs the torch composition on one input set. Returns a summary dict; never raises."""
    tol = 1e-5 if dtype == "f32" else 1e-2   # ||d|| / ||ref|| (METHOD.md: fp32 far under 1e-3)
    summary = {"ok": False}
    try:
        probs_o, map_o, inter_o = outs
        probs_o.fill_(float("nan"))
        map_o.fill_(True)
        inter_o.fill_(float("nan"))
        grad_out.fill_(float("nan"))
        mk_fwd(x, bias, outs)
        mk_bwd(grad_probs, inter_o, map_o, grad_out)
        torch.cuda.synchronize()

        xr = x.detach().clone().requires_grad_(True)
        tp, tmap, tinter, keys, gscores = torch_router(
            xr, bias, topk=row.K, score=row.score, use_pre_softmax=row.use_pre_softmax,
            G=row.G, Kg=row.Kg, scale=row.scale, with_keys=True)
        (tgrad,) = torch.autograd.grad(tp, xr, grad_probs)

        counts = map_o.sum(dim=1)
        bad_count = int((counts != row.K).sum().item())
        differ = (map_o != tmap).any(dim=1)
        ties = near_tie_rows(torch, keys, gscores, row.K, row.Kg)
        unexplained = int((differ & ~ties).sum().item())
        same = ~differ
        summary.update({
            "rows": int(x.shape[0]),
            "map_rows_differ": int(differ.sum().item()),
            "map_rows_differ_not_near_tie": unexplained,
            "map_rows_wrong_count": bad_count,
            "rows_compared": int(same.sum().item()),
            "tol_rel": tol,
        })
        if same.any():
            summary["probs_rel_err"] = rel_err(torch, probs_o[same], tp.detach()[same])
            summary["intermediate_rel_err"] = rel_err(torch, inter_o[same], tinter[same])
            summary["grad_rel_err"] = rel_err(torch, grad_out[same], tgrad[same])
        errs = [summary.get(k, math.inf) for k in ("probs_rel_err", "intermediate_rel_err", "grad_rel_err")]
        # intermediate is f32 whatever the logits dtype; the backward's cancellation
        # (g - D) costs fp32 a few more ulps than the forward
        limits = [tol, 1e-5, max(tol, 1e-4)]
        summary["ok"] = (unexplained == 0 and bad_count == 0 and bool(same.any())
                         and all(e <= lim for e, lim in zip(errs, limits)))
        if not summary["ok"]:
            C.log(f"  WARNING: moekit disagrees with torch eager: {summary}")
        elif summary["map_rows_differ"]:
            C.log(f"  check: {summary['map_rows_differ']} rows differ only at near-ties (excluded)")
        del xr, tp, tmap, tinter, keys, gscores, tgrad
    except Exception as exc:  # noqa: BLE001 - a broken check must not stop the benchmark
        summary["error"] = f"{type(exc).__name__}: {exc}"
        C.log(f"  WARNING: check failed to run: {summary['error']}")
    return summary


# ---- one configuration ------------------------------------------------------------------------------

def torch_dtype(torch, name):
    return {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[name]


def run_config(torch, moekit, row, T, dtype, *, peers, reps, timing, l2, check=True):
    """Check, then time every implementation, both passes. Returns two records (fwd, bwd)."""
    td = torch_dtype(torch, dtype)
    dev = "cuda"
    # Each timed pass touches about this much of one set (fwd and bwd move the same bytes).
    per_set = max(bytes_moved(row, T, dtype, "fwd"), bytes_moved(row, T, dtype, "bwd"))
    n_sets = C.rotation_count(per_set, l2)
    C.log(f"[{row.name} T={T} {dtype}] {n_sets} input set(s) of {per_set / 2**20:.1f} MiB")

    sets = []
    for _ in range(n_sets):
        x = torch.randn(T, row.E, device=dev, dtype=torch.float32).to(td)
        bias = (0.1 * torch.randn(row.E, device=dev, dtype=torch.float32)) if row.bias else None
        gp = torch.randn(T, row.E, device=dev, dtype=torch.float32).to(td)
        sets.append((x, bias, gp))

    results = {"fwd": {}, "bwd": {}}
    notes = {}
    checked = None
    plans = None

    def record(pass_, impl, fn, inputs):
        try:
            results[pass_][impl] = C.time_fn(fn, inputs, reps=reps, mode=timing)
            r = results[pass_][impl]
            C.log(f"  {pass_} {impl:<14} {r['us']:10.1f} us  ({r['mode']}, {r['calls_per_sample']} calls,"
                  f" p10-p90 {r['p10_us']:.1f}-{r['p90_us']:.1f})")
        except Exception as exc:  # noqa: BLE001
            results[pass_][impl] = None
            notes[f"{impl}/{pass_}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            C.log(f"  {pass_} {impl}: n/a ({notes[f'{impl}/{pass_}']})")

    # moekit: preallocated outputs per set, so allocation is not timed
    if moekit is not None:
        mk_fwd, mk_bwd = make_moekit_fns(moekit, row)
        mk_sets = []
        for x, bias, gp in sets:
            outs = (torch.empty(T, row.E, device=dev, dtype=td),
                    torch.empty(T, row.E, device=dev, dtype=torch.bool),
                    torch.empty(T, row.E, device=dev, dtype=torch.float32))
            mk_sets.append((x, bias, gp, outs, torch.empty(T, row.E, device=dev, dtype=td)))
        x0, b0, g0, o0, go0 = mk_sets[0]
        plans = plans_of(moekit, row, x0, b0, o0, go0)
        if check:
            checked = check_config(torch, row, dtype, x0, b0, g0, mk_fwd, mk_bwd, o0, go0)
        record("fwd", "moekit", mk_fwd, [(x, b, o) for x, b, _, o, _ in mk_sets])
        try:  # the backward consumes each set's own forward outputs
            for x, b, _, o, _ in mk_sets:
                mk_fwd(x, b, o)
            torch.cuda.synchronize()
            record("bwd", "moekit", mk_bwd, [(g, o[2], o[1], go) for _, _, g, o, go in mk_sets])
        except Exception as exc:  # noqa: BLE001
            results["bwd"]["moekit"] = None
            notes["moekit/bwd"] = f"{type(exc).__name__}: {exc}"
        del mk_sets, x0, b0, g0, o0, go0
    else:
        results["fwd"]["moekit"] = results["bwd"]["moekit"] = None

    for impl, maker in peers.items():
        fn = maker.get("fn")
        if fn is None:
            results["fwd"][impl] = results["bwd"][impl] = None
            notes[impl] = maker.get("reason", "n/a")
            continue
        record("fwd", impl, fn, [(x, b) for x, b, _ in sets])
        # Backward: autograd through each set's own retained forward graph.
        try:
            prepared = []
            for x, b, gp in sets:
                xr = x.detach().requires_grad_(True)
                prepared.append((fn(xr, b)[0], xr, gp))
            torch.cuda.synchronize()

            def backward(probs, xr, gp):
                return torch.autograd.grad(probs, xr, gp, retain_graph=True)
            record("bwd", impl, backward, prepared)
            del prepared
        except Exception as exc:  # noqa: BLE001
            results["bwd"][impl] = None
            notes[f"{impl}/bwd"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            C.log(f"  bwd {impl}: n/a ({notes[f'{impl}/bwd']})")

    del sets
    torch.cuda.synchronize()
    torch.cuda.empty_cache()

    records = []
    for pass_ in ("fwd", "bwd"):
        nbytes = bytes_moved(row, T, dtype, pass_)
        records.append({
            "family": FAMILY,
            "case": f"T{T} {row.name} {dtype}",
            "row": row.name, "T": T, "E": row.E, "K": row.K, "score": row.label,
            "score_function": row.score, "use_pre_softmax": row.use_pre_softmax,
            "num_groups": row.G, "group_topk": row.Kg, "scaling_factor": row.scale,
            "expert_bias": row.bias, "dtype": dtype, "pass": pass_,
            "bytes": nbytes, "floor_us_at_3TBs": C.floor_us(nbytes),
            "rotation_sets": n_sets,
            "plan": None if plans is None else plans[pass_],
            "timings": results[pass_],
            "check": checked,
            "notes": notes,
        })
    return records


# ---- reporting ------------------------------------------------------------------------------------

PEER_COLUMNS = (("torch eager", "eager us"), ("torch.compile", "compile us"), ("TE", "TE us"))


def us_of(rec, impl):
    t = rec["timings"].get(impl)
    return None if t is None else t["us"]


def summarize(rec, ceiling_gbs):
    """Adds moekit GB/s, % of copy ceiling and speedup vs the best peer to a record."""
    mk = us_of(rec, "moekit")
    peers = {name: us_of(rec, name) for name, _ in PEER_COLUMNS}
    peers = {k: v for k, v in peers.items() if v is not None}
    rec["moekit_gbs"] = rec["bytes"] / (mk * 1e3) if mk else None
    rec["pct_of_copy"] = 100.0 * rec["moekit_gbs"] / ceiling_gbs if mk else None
    rec["floor_us_at_copy"] = rec["bytes"] / (ceiling_gbs * 1e3) if ceiling_gbs else None
    if peers:
        best = min(peers, key=peers.get)
        rec["best_peer"] = best
        rec["speedup_vs_best_peer"] = peers[best] / mk if mk else None
    else:
        rec["best_peer"] = None
        rec["speedup_vs_best_peer"] = None
    return rec


def plan_label(plan):
    """A short name for a recorded plan: team<lanes>x<chunks>, wide<chunks>, warp<vpt>/<top-k>, block<vpt>/..."""
    if not plan:
        return "n/a"
    path = plan.get("path", "?")
    if path == "team_rows":
        return f"team{plan['lanes']}x{plan['chunks']}"
    if path == "wide_rows":
        return f"wide{plan['chunks']}"
    kind = path.split("_")[0]
    return f"{kind}{plan.get('vpt', '')}" + (f"/{plan['topk']}" if "topk" in plan else "")


def table(records):
    headers = ["T", "E", "K", "score", "dtype", "pass", "plan", "moekit us"] + [h for _, h in PEER_COLUMNS] + [
        "moekit GB/s", "% copy", "vs best", "check"]
    rows = []
    for r in records:
        chk = r.get("check")
        chk_txt = "-" if chk is None else ("ok" if chk.get("ok") else "WARN")
        speed = r.get("speedup_vs_best_peer")
        rows.append([r["T"], r["E"], r["K"], r["score"], r["dtype"], r["pass"], plan_label(r.get("plan")),
                     C.fmt_num(us_of(r, "moekit"))] +
                    [C.fmt_num(us_of(r, impl)) for impl, _ in PEER_COLUMNS] +
                    [C.fmt_num(r.get("moekit_gbs"), 0), C.fmt_num(r.get("pct_of_copy")),
                     "n/a" if speed is None else f"{speed:.2f}x", chk_txt])
    return C.format_table(headers, rows)


def plot(records, out_dir, ceiling_gbs, device):
    """One panel per pass; bars = % of the copy ceiling per implementation (missing = 0)."""
    panels = {}
    for pass_, panel in (("fwd", "forward"), ("bwd", "backward")):
        recs = [r for r in records if r["pass"] == pass_]
        if not recs:
            continue
        series = {}
        for impl in ("moekit",) + tuple(name for name, _ in PEER_COLUMNS):
            vals = []
            for r in recs:
                us = us_of(r, impl)
                vals.append(None if us is None else 100.0 * r["bytes"] / (us * 1e3) / ceiling_gbs)
            if any(v is not None for v in vals):
                series[impl] = vals
        panels[panel] = ([r["case"] for r in recs], series)
    return C.plot_bars(out_dir, FAMILY, panels,
                       title=f"router on {device}: effective bandwidth as % of the copy ceiling "
                             f"({ceiling_gbs:.0f} GB/s, same run)")


# ---- main ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T=8192 only, fewer repetitions")
    ap.add_argument("--rows", default="", help="comma-separated substrings of row names "
                    f"({', '.join(r.name for r in ROWS)})")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: bf16,f32 (f16 also works)")
    ap.add_argument("--tokens", default="", help="comma-separated T values (default 8192,65536)")
    ap.add_argument("--out", default=C.DEFAULT_OUT_DIR, help="directory for router.json / router.png")
    ap.add_argument("--no-eager", action="store_true", help="skip the torch eager peer")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--no-te", action="store_true", help="skip TransformerEngine even if it imports")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--timing", choices=("auto", "graph", "eager"), default="auto",
                    help="auto/graph: N calls in a CUDA graph (eager if capture fails); "
                         "eager: back-to-back calls between events (launch-bound for small T)")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions (default 100, quick 30)")
    ap.add_argument("--no-check", action="store_true", help="skip the check against the torch composition")
    ap.add_argument("--tune", action="append", default=[], metavar="KEY=VALUE",
                    help="override a tuning knob in-process (router.radix_min_k=1, pdl=0, preset=radix); repeatable")
    return ap.parse_args(argv)


def select_rows(spec: str):
    if not spec:
        return list(ROWS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    rows = [r for r in ROWS if any(w in r.name for w in wanted)]
    if not rows:
        raise SystemExit(f"--rows {spec!r} matches none of {[r.name for r in ROWS]}")
    return rows


def main(argv=None):
    args = parse_args(argv)
    rows = select_rows(args.rows)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if args.tokens:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    else:
        tokens = [TOKENS[0]] if args.quick else list(TOKENS)
    reps = args.reps or (30 if args.quick else 100)

    torch = C.import_torch()
    moekit, why = C.import_moekit()
    if moekit is not None:
        try:  # the package may import while its library is missing: find out before the first row
            moekit.router_topk_forward(torch.randn(2, 8, device="cuda"), 2)
            torch.cuda.synchronize()
        except (ImportError, OSError) as exc:
            moekit, why = None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a wrong result or error shows in each row's check
            C.log(f"moekit probe call failed: {type(exc).__name__}: {exc}")
    if moekit is None:
        C.log(f"moekit not available ({why}); timing the peers only")
    elif args.tune:
        apply_tuning(args.tune)

    info = C.device_info(torch, moekit)
    l2 = info["l2_bytes"]
    C.log(f"device: {info['device']}  torch {info['torch']}  triton {info['triton']}  L2 {l2 / 2**20:.0f} MiB")

    all_records = []
    peer_status = {}
    with torch.cuda.stream(torch.cuda.Stream()):  # non-default stream: graph capture of autograd too
        ceiling = C.copy_ceiling(torch)
        C.log(f"copy ceiling: {ceiling['gbs']:.0f} GB/s (2 GiB device-to-device copy, read+write)")

        te_reason = "--no-te"
        if not args.no_te:
            try:
                import transformer_engine.pytorch.router  # noqa: F401
                te_reason = None
            except Exception as exc:  # noqa: BLE001
                te_reason = f"transformer_engine not importable ({type(exc).__name__})"
        t_start = time.time()
        for row in rows:
            for dtype in dtypes:
                peers = {"torch eager": {"reason": "--no-eager"} if args.no_eager else {"fn": make_torch_fn(row)}}
                if args.no_compile:
                    peers["torch.compile"] = {"reason": "--no-compile"}
                else:
                    try:
                        peers["torch.compile"] = {"fn": make_compiled_fn(torch, row)}
                    except Exception as exc:  # noqa: BLE001
                        peers["torch.compile"] = {"reason": f"{type(exc).__name__}: {exc}"}
                if te_reason is None:
                    try:
                        peers["TE"] = {"fn": make_te_fn(row)}
                    except Exception as exc:  # noqa: BLE001
                        peers["TE"] = {"reason": f"{type(exc).__name__}: {exc}"}
                else:
                    peers["TE"] = {"reason": te_reason}
                for name, p in peers.items():
                    peer_status.setdefault(name, p.get("reason", "ok"))
                for T in tokens:
                    try:
                        recs = run_config(torch, moekit, row, T, dtype, peers=peers, reps=reps,
                                          timing=args.timing, l2=l2, check=not args.no_check)
                    except Exception as exc:  # noqa: BLE001 - keep going with other configurations
                        C.log(f"[{row.name} T={T} {dtype}] failed: {exc}\n{traceback.format_exc()}")
                        continue
                    all_records.extend(summarize(r, ceiling["gbs"]) for r in recs)
        ceiling_end = C.copy_ceiling(torch)
    C.log(f"total {time.time() - t_start:.0f} s")

    payload = {
        "family": FAMILY,
        "info": info,
        "copy_ceiling": ceiling,
        "copy_ceiling_end": ceiling_end,
        "floor_bandwidth_bytes_per_s": C.FLOOR_BANDWIDTH_BYTES_PER_S,
        "peers": peer_status,
        "moekit_unavailable": why,
        "args": vars(args),
        "records": all_records,
    }
    path = C.write_json(args.out, FAMILY, payload)
    png = None if args.no_plot else plot(all_records, args.out, ceiling["gbs"], info["device"])
    C.log(f"wrote {path}" + (f" and {png}" if png else ""))

    sys.stderr.flush()
    print(f"device: {info['device']} | torch {info['torch']} | triton {info['triton']} | "
          f"moekit {info.get('moekit', 'n/a')} | peers: " +
          ", ".join(f"{k}={v}" for k, v in peer_status.items()))
    print(f"copy ceiling: {ceiling['gbs']:.0f} GB/s at start, {ceiling_end['gbs']:.0f} GB/s at end "
          f"(2 GiB D2D copy, bytes read + written / median time)")
    print(table(all_records))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
