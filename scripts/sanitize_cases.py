"""The cases compute-sanitizer runs (scripts/gpu-check.sh: memcheck, racecheck, synccheck,
initcheck): every kernel family and path of every op, odd sizes, every selection format, small T so
that the tools stay quick. The cases run with the default plans and again under each preset of
moekit._hooks.PRESETS (in this one process), so that every kernel path is reached. Exits non-zero on
a mismatch with the reference too, so that a silent wrong answer does not pass as 'no error'.
A new op family adds its cases here (docs/architecture.md).

    python scripts/sanitize_cases.py [--presets rounds,radix]   (default: none and every preset)
    python scripts/sanitize_cases.py --families quant,align     (a subset: router aux pair quant
                                                                 epilogue align topk; default all)
"""
import argparse
import sys

import numpy as np
import torch

import moekit
from moekit import reference
from moekit._hooks import PRESETS, tuning

CASES = [  # (T, E, K, score, pre, groups, bias, map_format, dtype[, "grid"])
    (37, 33, 3, "softmax", False, (0, 0), False, "bytemap", torch.float32),
    (64, 128, 8, "sigmoid", False, (8, 4), True, "bitmap", torch.bfloat16),
    (19, 100, 22, "softmax", True, (0, 0), False, "indices", torch.float16),
    (16, 257, 16, "sqrtsoftplus", False, (0, 0), True, "bitmap", torch.float32),
    (8, 2304, 36, "softmax", False, (0, 0), False, "indices", torch.bfloat16),
    (4, 3000, 5, "sigmoid", False, (0, 0), False, "bitmap", torch.float16),
    (3, 16384, 32, "softmax", True, (8, 4), False, "bytemap", torch.float32),
    (5, 1024, 8, "softmax", False, (0, 0), False, "indices", torch.float32),  # filtered top-k
    (6, 512, 22, "softmax", False, (0, 0), False, "indices", torch.bfloat16),  # packed keys, radix
    # team rows (forward_team_kernel): scalar path (odd E), f16, bitmap, partial warps, groups, any score
    (21, 100, 6, "softmax", False, (0, 0), False, "bitmap", torch.bfloat16),
    (13, 136, 8, "softmax", False, (0, 0), False, "bytemap", torch.float16),
    (9, 512, 16, "softmax", False, (0, 0), False, "indices", torch.bfloat16),
    (33, 24, 5, "softmax", False, (0, 0), False, "bytemap", torch.bfloat16),
    (29, 256, 8, "sigmoid", False, (8, 4), True, "bitmap", torch.float32),
    (11, 100, 7, "softmax", True, (0, 0), False, "indices", torch.float32),
    (17, 200, 4, "sqrtsoftplus", False, (0, 0), True, "bytemap", torch.bfloat16),
    # wide packed rows (forward_wide_packed_kernel): scalar path (odd E), f16, bitmap, largest chunk count
    (7, 1000, 9, "softmax", False, (0, 0), False, "bitmap", torch.bfloat16),
    (5, 2560, 64, "softmax", False, (0, 0), False, "bytemap", torch.float16),
    (9, 777, 33, "softmax", False, (0, 0), False, "indices", torch.bfloat16),
    # f32 wide rows: packed with a check (random logits), and the exact fallback (ties on a grid)
    (6, 2304, 36, "softmax", False, (0, 0), False, "indices", torch.float32),
    (5, 1001, 9, "softmax", False, (0, 0), False, "bitmap", torch.float32, "grid"),
    # backward bytemap rows with several chunks per lane (backward_bytemap_loads)
    (7, 512, 22, "softmax", False, (0, 0), False, "bytemap", torch.float32),
    (9, 256, 8, "sigmoid", False, (8, 4), True, "bytemap", torch.float32),
    (6, 512, 8, "softmax", True, (0, 0), False, "bytemap", torch.bfloat16),
]


def rel_err(got, ref):
    """||got - ref|| / ||ref|| over finite reference entries (NaN where got is NaN there)."""
    got = got.double().cpu().numpy()
    fin = np.isfinite(ref)
    if not np.array_equal(np.isfinite(got), fin):
        return float("inf")
    return float(np.linalg.norm(got[fin] - ref[fin]) / max(np.linalg.norm(ref[fin]), 1e-30))


def router_cases(label):
    failures = 0
    for T, E, K, score, pre, (G, Kg), bias, fmt, dt, *extra in CASES:
        x = (torch.randn(T, E, device="cuda") * 2).to(dt)
        if "grid" in extra:
            x = torch.round(x * 2) / 2  # many exact ties
        b = torch.randn(E, device="cuda") if bias else None
        probs, sel, inter = moekit.router_topk_forward(
            x, K, score_function=score, use_pre_softmax=pre, num_groups=G, group_topk=Kg,
            expert_bias=b, map_format=fmt, index_dtype="int64" if fmt == "indices" else "int32")
        g = torch.randn(T, E, device="cuda").to(dt)
        dx = moekit.router_topk_backward(g, inter, sel, K, score_function=score, use_pre_softmax=pre,
                                         map_format=fmt)
        torch.cuda.synchronize()
        rp, rsel, _ = reference.router_topk_forward(
            x.float().cpu().numpy(), K, score_function=score, use_pre_softmax=pre, num_groups=G,
            group_topk=Kg, expert_bias=None if b is None else b.cpu().numpy(), map_format=fmt)
        same = np.array_equal(sel.cpu().numpy(), rsel) if fmt != "bytemap" else np.array_equal(
            sel.cpu().numpy().astype(bool), rsel)
        rdx = reference.router_topk_backward(
            g.float().cpu().numpy(), inter.cpu().numpy(), sel.cpu().numpy(), K, score_function=score,
            use_pre_softmax=pre, map_format=fmt)
        tol = 1e-5 if dt == torch.float32 else 1e-2
        ep, edx = rel_err(probs, rp), rel_err(dx, rdx)
        ok = same and ep <= tol and edx <= tol
        print(f"[{label}] T={T} E={E} K={K} {score}{'-pre' if pre else ''} G={G}/{Kg} bias={bias} {fmt} {dt}: "
              f"{'ok' if ok else 'MISMATCH'} (probs {ep:.1e}, grad {edx:.1e})")
        failures += not ok
    return failures


AUX_SCORE_CASES = [  # (T, E, K, score, map_format, dtype): team rows (full, partial), warp and block rows
    (37, 128, 8, "softmax", "bytemap", torch.bfloat16),
    (21, 100, 6, "sigmoid", "bitmap", torch.float32),
    (9, 256, 32, "sqrtsoftplus", "bytemap", torch.float16),
    (5, 1000, 9, "sigmoid", "bitmap", torch.bfloat16),
    (3, 5000, 16, "softmax", "bytemap", torch.float32),
]
AUX_LOSS_CASES = [  # (R, C, E, probs dtype, tokens dtype): several chunks, odd sizes, wide C, R == 0
    (300, 256, 256, torch.bfloat16, torch.int64),
    (37, 7, 7, torch.float32, torch.int32),
    (5, 20000, 10000, torch.float16, torch.float32),
    (0, 64, 64, torch.float32, torch.bfloat16),
]


def aux_cases(label):
    failures = 0
    for T, E, K, score, fmt, dt in AUX_SCORE_CASES:
        x = (torch.randn(T, E, device="cuda") * 2).to(dt)
        scores, routing_map, inter = moekit.aux_scores_forward(x, K, score_function=score, map_format=fmt)
        g = torch.randn(T, E, device="cuda")
        dx = moekit.aux_scores_backward(g, inter, score_function=score, out_dtype=str(dt).split(".")[1])
        torch.cuda.synchronize()
        rs, rmap, _ = reference.aux_scores_forward(x.float().cpu().numpy(), K, score_function=score, map_format=fmt)
        rdx = reference.aux_scores_backward(g.cpu().numpy(), inter.cpu().numpy(), score_function=score)
        same = np.array_equal(routing_map.cpu().numpy().astype(rmap.dtype), rmap)
        tol = 1e-5 if dt == torch.float32 else 1e-2
        es, edx = rel_err(scores, rs), rel_err(dx, rdx)
        ok = same and es <= 1e-5 and edx <= tol
        print(f"[{label}] aux_scores T={T} E={E} K={K} {score} {fmt} {dt}: {'ok' if ok else 'MISMATCH'} "
              f"(scores {es:.1e}, grad {edx:.1e})")
        failures += not ok
    for R, C, E, dt, tdt in AUX_LOSS_CASES:
        probs = torch.rand(R, C, device="cuda").to(dt)
        tokens = torch.randint(0, 100, (C,), device="cuda").to(tdt)
        N = 100000  # keeps the f16 loss in range
        loss, const_buf = moekit.aux_loss_forward(probs, tokens, N, E, 1, 0.5)
        grad = moekit.aux_loss_backward(const_buf, tokens, torch.ones((), dtype=dt, device="cuda"), R)
        torch.cuda.synchronize()
        rl, rc = reference.aux_loss_forward(probs.float().cpu().numpy(), tokens.float().cpu().numpy(), N, E, 1, 0.5)
        rg = reference.aux_loss_backward(rc, tokens.float().cpu().numpy(), 1.0, R)
        el = abs(float(loss) - float(rl)) / max(abs(float(rl)), 1e-30)
        eg = rel_err(grad, rg) if R else 0.0
        ok = el <= (1e-5 if dt == torch.float32 else 1e-2) and eg <= 1e-2
        print(f"[{label}] aux_loss R={R} C={C} E={E} {dt} {tdt}: {'ok' if ok else 'MISMATCH'} "
              f"(loss {el:.1e}, grad {eg:.1e})")
        failures += not ok
    return failures


PAIR_CASES = [  # (T, E, K, score, pre, map_format, dtype): fused team, warp and block rows, two launches
    (37, 128, 8, "softmax", False, "bytemap", torch.bfloat16),
    (21, 100, 6, "sigmoid", False, "indices", torch.float32),
    (9, 1024, 8, "sqrtsoftplus", False, "bitmap", torch.float16),
    (3, 5000, 16, "softmax", True, "bytemap", torch.float32),
    (6, 512, 22, "softmax", False, "indices", torch.bfloat16),
]


def pair_cases(label):
    """The router + aux-scores pair: the single ops' bits forward, the oracle's sum backward."""
    failures = 0
    for T, E, K, score, pre, fmt, dt in PAIR_CASES:
        x = (torch.randn(T, E, device="cuda") * 2).to(dt)
        got = moekit.router_aux_forward(x, K, score_function=score, use_pre_softmax=pre, map_format=fmt)
        want = (*moekit.router_topk_forward(x, K, score_function=score, use_pre_softmax=pre, map_format=fmt),
                *moekit.aux_scores_forward(x, K, score_function=score))
        g, g_aux = torch.randn(T, E, device="cuda").to(dt), torch.randn(T, E, device="cuda")
        dx = moekit.router_aux_backward(g, got[2], got[1], g_aux, got[5], K, score_function=score,
                                        use_pre_softmax=pre, map_format=fmt)
        torch.cuda.synchronize()
        same = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want))
        rdx = reference.router_aux_backward(g.float().cpu().numpy(), got[2].cpu().numpy(), got[1].cpu().numpy(),
                                            g_aux.cpu().numpy(), got[5].cpu().numpy(), K, score_function=score,
                                            use_pre_softmax=pre, map_format=fmt)
        edx = rel_err(dx, rdx)
        ok = same and edx <= (1e-5 if dt == torch.float32 else 1e-2)
        print(f"[{label}] router_aux T={T} E={E} K={K} {score}{'-pre' if pre else ''} {fmt} {dt}: "
              f"{'ok' if ok else 'MISMATCH'} (forward {'same bits' if same else 'DIFFERS'}, grad {edx:.1e})")
        failures += not ok
    return failures


QUANT_CASES = [  # (T or (E, M), H, group, format, dtype, silu): odd T, G % 4 != 0, masked with empty experts
    (7, 640, 128, "packed_ue8m0", torch.bfloat16, True),
    (37, 160, 32, "col_f32_tma", torch.float32, True),
    (5, 192, 64, "row_f32", torch.float16, False),
    (9, 1536, 128, "col_f32_tma_ue8m0", torch.bfloat16, False),
    ((5, 11), 640, 128, "packed_ue8m0", torch.bfloat16, True),
    ((3, 6), 256, 64, "row_f32", torch.float32, True),
]
QUANT_ASYNC_CASES = [  # the cp.async and prefetch paths: contiguous, plain, masked
    (37, 640, 128, "packed_ue8m0", torch.bfloat16, True),
    (5, 256, 32, "col_f32_tma", torch.float32, False),
    ((5, 11), 640, 128, "col_f32_tma_ue8m0", torch.float16, True),
]


def quant_cases(label):
    failures = 0
    for T, H, g, fmt, dt, silu in QUANT_CASES:
        failures += quant_case(label, T, H, g, fmt, dt, silu)
    for knob in ("quant.async", "quant.prefetch"):  # the other load modes (the presets touch no quant knob)
        with tuning({knob: 1}):
            for T, H, g, fmt, dt, silu in QUANT_ASYNC_CASES:
                failures += quant_case(f"{label} {knob}", T, H, g, fmt, dt, silu)
    return failures


def quant_case(label, T, H, g, fmt, dt, silu):
    """One quantization case against the reference, bit for bit; 1 on a mismatch."""
    masked = isinstance(T, tuple)
    shape = (*T, 2 * H) if masked else ((T, 2 * H) if silu else (T, H))
    x = torch.randn(shape, device="cuda").to(dt)
    if masked:
        counts = torch.tensor([T[1], 0, 3, T[1] + 2, 1][: T[0]], dtype=torch.int32, device="cuda")
        q, scales = moekit.silu_mul_quant_fp8(x, group_size=g, scale_format=fmt, counts=counts)
        rows = [(e, n) for e, n in enumerate(counts.clamp(0, T[1]).tolist()) if n]
    elif silu:
        q, scales = moekit.silu_mul_quant_fp8(x, group_size=g, scale_format=fmt)
    else:
        q, scales = moekit.quant_fp8(x, group_size=g, scale_format=fmt)
    torch.cuda.synchronize()
    xs = x.float().cpu().numpy()
    ss = scales.cpu().numpy()
    if masked:  # rows past an expert's count are left untouched (SPEC): only written rows are read back
        ok = True
        for e, n in rows:
            rq, rs = reference.silu_mul_quant_fp8(xs[e, :n], group_size=g, scale_format=fmt)
            ok &= np.array_equal(q[e, :n].view(torch.uint8).cpu().numpy(), np.asarray(rq).view(np.uint8))
            ok &= np.array_equal(ss[e, :n].view(np.uint32), np.ascontiguousarray(rs).view(np.uint32))
    else:
        fn = reference.silu_mul_quant_fp8 if silu else reference.quant_fp8
        rq, rs = fn(xs, group_size=g, scale_format=fmt)
        ok = np.array_equal(q.view(torch.uint8).cpu().numpy(), np.asarray(rq).view(np.uint8))
        ok &= np.array_equal(ss.view(np.uint32), np.ascontiguousarray(rs).view(np.uint32))
    print(f"[{label}] quant T={T} H={H} g={g} {fmt} {dt} silu={silu}: {'ok (bit-exact)' if ok else 'MISMATCH'}")
    return int(not ok)


EPILOGUE_CASES = [  # (T, H, dtype, weight dtype): vector rows, odd H (scalar path), the widest rows
    (5, 7168, torch.bfloat16, torch.bfloat16),
    (3, 130, torch.float16, torch.float32),
    (2, 32768, torch.float32, torch.float32),
    (4, 1000, torch.bfloat16, torch.float32),
]


def epilogue_cases(label):
    failures = 0
    for T, H, dt, wdt in EPILOGUE_CASES:
        x, r, s = (torch.randn(T, H, device="cuda").to(dt) for _ in range(3))
        w = torch.randn(H, device="cuda").to(wdt)
        g1, gh = torch.randn(T, 1, device="cuda").to(dt), torch.randn(T, H, device="cuda").to(dt)
        xs, rs, ss, ws = (t.float().cpu().numpy() for t in (x, r, s, w))
        y = moekit.rmsnorm(x, w)
        h1, hh = x.clone(), x.clone()
        moekit.shared_expert_gate_(h1, s, g1)
        moekit.shared_expert_gate_(hh, s, gh)
        moekit.add_rmsnorm_(x, r, w)
        torch.cuda.synchronize()
        want_x, want_r = reference.add_rmsnorm_(xs, rs, ws)
        errs = [rel_err(y, reference.rmsnorm(xs, ws)), rel_err(x, want_x), rel_err(r, want_r),
                rel_err(h1, reference.shared_expert_gate_(xs, ss, g1.float().cpu().numpy())),
                rel_err(hh, reference.shared_expert_gate_(xs, ss, gh.float().cpu().numpy()))]
        ok = max(errs) <= (1e-5 if dt == torch.float32 else 1e-2)
        print(f"[{label}] epilogues T={T} H={H} {dt} weight {wdt}: {'ok' if ok else 'MISMATCH'} ({max(errs):.1e})")
        failures += not ok
    return failures


ALIGN_CASES = [  # (T, K, E, block, map?, multi?): one launch, three launches, skipped ids, an expert map
    (0, 8, 64, 16, False, False),
    (37, 8, 256, 64, False, False),
    (37, 8, 256, 64, False, True),
    (3000, 6, 1024, 128, False, False),
    (500, 8, 64, 32, True, False),
]


TOPK_CASES = [  # (T, E, G, Kg, K, S, score, dtype, bias): chunk groups, no groups, E = 1024, general groups
    (37, 256, 8, 4, 8, 1, "sigmoid", torch.bfloat16, True),
    (5, 1024, 1, 1, 16, 0, "softmax", torch.float32, False),
    (9, 96, 4, 2, 6, 2, "sigmoid", torch.float16, True),
    (9000, 384, 1, 1, 8, 0, "sigmoid", torch.bfloat16, True),  # two chunks per lane, rows per warp > 1
]


def topk_cases(label):
    failures = 0
    for T, E, G, Kg, K, S, score, dt, with_bias in TOPK_CASES:
        x = torch.randn(T, E, device="cuda").to(dt)
        b = torch.randn(E, device="cuda") if with_bias else None
        kw = dict(num_groups=G, topk_group=Kg, score_function=score, routed_scaling_factor=2.5, num_shared=S)
        w, ids = moekit.grouped_topk(x, b, K, **kw)
        torch.cuda.synchronize()
        xs, bs = x.float().cpu().numpy(), None if b is None else b.cpu().numpy()
        rw, rids = reference.grouped_topk(xs, bs, K, **kw)
        gi, gw = ids.cpu().numpy(), w.cpu().numpy()
        # fp32 keys within rounding of each other may pick another expert or group
        ties, explained = reference.grouped_topk_near_ties(xs, bs, K, gi, rids, num_groups=G, topk_group=Kg,
                                                           score_function=score)
        same = (gi == rids).all(axis=1)
        ok = explained.all() and np.allclose(gw[same], rw[same], rtol=1e-5, atol=0)
        print(f"[{label}] grouped_topk T={T} E={E} G={G}/{Kg} K={K} S={S} {score} {dt}: "
              f"{f'ok (ids exact but {ties.size} near-tie rows)' if ok else 'MISMATCH'}")
        failures += not ok
    return failures


def align_cases(label):
    failures = 0
    for T, K, E, BM, with_map, multi in ALIGN_CASES:
        e_global = 2 * E if with_map else E
        ids = torch.randint(-1, e_global + 1, (T, K), device="cuda", dtype=torch.int32)
        emap = torch.where(torch.rand(e_global, device="cuda") < 0.5,
                           torch.randint(0, E, (e_global,), device="cuda"), -1).to(torch.int32) if with_map else None
        with tuning({"align.force_multi": 1} if multi else None):
            got = moekit.moe_align(ids, E, BM, expert_map=emap)
        torch.cuda.synchronize()
        want = reference.moe_align(ids.cpu().numpy(), E, BM, expert_map=None if emap is None else emap.cpu().numpy())
        ok = all(np.array_equal(g.cpu().numpy(), w) for g, w in zip(got, want))
        print(f"[{label}] moe_align T={T} K={K} E={E} BM={BM} map={with_map} multi={multi}: {'ok (exact)' if ok else 'MISMATCH'}")
        failures += not ok
    return failures


# family -> (its cases, whether it runs under every router preset)
FAMILIES = {"router": (router_cases, True), "aux": (aux_cases, True), "pair": (pair_cases, True),
            "quant": (quant_cases, False), "epilogue": (epilogue_cases, False), "align": (align_cases, False),
            "topk": (topk_cases, False)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=None, help="comma-separated names (default: defaults and every preset)")
    ap.add_argument("--families", default=None, help="comma-separated subset of: " + ", ".join(FAMILIES))
    args = ap.parse_args()
    presets = [None, *PRESETS] if args.presets is None else [p or None for p in args.presets.split(",")]
    chosen = FAMILIES if args.families is None else args.families.split(",")
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    failures = 0
    for preset in presets:
        with tuning(preset):
            for name, (cases, every_preset) in FAMILIES.items():
                # the presets set router knobs only: the other families run once, with the defaults
                if name in chosen and (preset is None or every_preset):
                    failures += cases(preset or "defaults")
    print(f"sanitize_cases: {failures} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
