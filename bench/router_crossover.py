"""Which top-k path wins where in the router forward: iterative rounds, radix select, filtered, team
and wide rows, timed over the same grid of (E, K), softmax-post, T = 65536, in one process: each path
forced in turn through the in-process tuning hooks (moekit._hooks):
  iterative  preset "rounds" (router.radix_min_k=99999, filter off)
  radix      preset "radix" (router.radix_min_k=1, filter off)
  filtered   preset "filtered" (router.filter_min_keys_per_lane=1: warp rows, K <= 32; rounds behind it)
  team       router.team_max_k=9999 (team rows, E <= 512 only)
  wide       router.wide_max_k=9999 (wide rows, 512 < E <= 2560 only)
The first three turn the team and wide rows off. Prints the times per (E, K) and the winner: the
tuning table in kernels/router/plan.h comes from this table (bench/NOTES.md). bf16 softmax-post keys
are index-packed (unique); f32 keys are not.

    python bench/router_crossover.py [--dtype bf16] [--tokens 65536] [--experts 128,256] [--topk 8,22] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

EXPERTS = (128, 256, 512, 1024, 2304)
TOPKS = (2, 4, 6, 8, 12, 16, 22, 32)
MODES = {  # mode -> what a moekit._hooks.tuning block gets: a preset name or knobs
    "iterative": "rounds",
    "radix": "radix",
    "filtered": "filtered",
    "team": {"router.team_max_k": 9999, "router.wide_max_k": 0},
    "wide": {"router.team_max_k": 0, "router.wide_max_k": 9999},
}


def mode_covers(mode: str, E: int) -> bool:
    """Team rows exist for E <= 512; wide rows for 512 < E <= 2560."""
    if mode == "team":
        return E <= 512
    if mode == "wide":
        return 512 < E <= 2560
    return True


def time_paths(dtype_name: str, tokens: int, experts, topks):
    """{mode: {"E,K": us}} with every mode forced in turn."""
    torch = _common.import_torch()
    import moekit
    from moekit import _hooks

    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype_name]
    l2 = _common.l2_bytes(torch)
    times = {mode: {} for mode in MODES}
    for E in experts:
        per_set = tokens * E * (2 * torch.finfo(dtype).bits // 8 + 5)
        sets = _common.rotation_count(per_set, l2)
        xs = [(torch.randn(tokens, E, device="cuda") * 2).to(dtype) for _ in range(sets)]
        probs = torch.empty(tokens, E, device="cuda", dtype=dtype)
        rmap = torch.empty(tokens, E, device="cuda", dtype=torch.bool)
        inter = torch.empty(tokens, E, device="cuda", dtype=torch.float32)
        for K in topks:
            if K > E:
                continue

            def fwd(x, K=K):
                moekit.router_topk_forward(x, K, score_function="softmax", out=(probs, rmap, inter))

            for mode, knobs in MODES.items():
                if mode_covers(mode, E):
                    with _hooks.tuning(knobs):
                        times[mode][f"{E},{K}"] = _common.time_fn(fwd, [(x,) for x in xs], reps=30)["us"]
        del xs
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f32"))
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--experts", default=",".join(map(str, EXPERTS)), help="comma-separated E values")
    ap.add_argument("--topk", default=",".join(map(str, TOPKS)), help="comma-separated K values")
    ap.add_argument("--out", default=_common.DEFAULT_OUT_DIR)
    args = ap.parse_args(argv)
    times = time_paths(args.dtype, args.tokens, [int(e) for e in args.experts.split(",")],
                       [int(k) for k in args.topk.split(",")])

    headers = ["E", "K"] + [f"{m} us" for m in MODES] + ["winner"]
    rows, first_radix = [], {}
    for key in times["radix"]:
        E, K = (int(v) for v in key.split(","))
        us = {m: times[m][key] for m in MODES if key in times[m]}
        winner = min(us, key=us.get)
        rows.append([E, K] + [f"{us[m]:.1f}" if m in us else "-" for m in MODES] + [winner])
        if us["radix"] < us["iterative"] and E not in first_radix:
            first_radix[E] = K
    _common.write_json(args.out, f"router_crossover_{args.dtype}", {"dtype": args.dtype, "tokens": args.tokens,
                                                       "times_us": times, "first_radix_k": first_radix})
    print(f"router top-k paths, softmax-post forward, T={args.tokens}, {args.dtype}")
    print(_common.format_table(headers, rows))
    print("first K where radix beats iterative, per E: " + ", ".join(f"E={e}: K={k}" for e, k in first_radix.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
