#!/usr/bin/env python3
"""A/B of tuning knobs over `moekit bench` cells in one process: each setting times the selected cells
(moekit only, no peers' compile), settings interleaved over --rounds rounds, best round per cell kept;
prints moekit's µs per cell for each setting side by side, with the ratio to the first.

    python bench/knobs.py --ops rmsnorm,add_rmsnorm_ "" "epilogue.norm_max_threads=256"
    python bench/knobs.py --ops silu_mul_quant_fp8 --quick "" "quant.async=1"

A setting is a space-separated list of knob=value items of moekit._hooks ("" = the defaults).
"""

from __future__ import annotations

import argparse
import json
import contextlib
import io
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def parse(text):
    knobs = {}
    for item in text.split():
        name, _, value = item.partition("=")
        knobs[name] = int(value)
    return knobs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--ops", required=True, help="comma-separated op or family names of `moekit bench`")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    from moekit._hooks import tuning
    from moekit.bench.runner import run_bench

    names = [n.strip() for n in args.ops.split(",") if n.strip()]
    best = {}  # (setting, cell label) -> µs
    order = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.rounds):
            for setting in args.settings:
                sink = io.StringIO()
                with tuning(parse(setting)), contextlib.redirect_stdout(sink):
                    run_bench(names, quick=args.quick, out_dir=out, compile_=False, draw=False)

                records = json.load(open(os.path.join(out, "moekit-bench.json")))["records"]
                for r in records:
                    key = f"{r['op']} {r['size']}"
                    if key not in order:
                        order.append(key)
                    us = r["timings"].get("moekit", {}).get("us")
                    if us is not None:
                        best[setting, key] = min(best.get((setting, key), float("inf")), us)
    headers = ["cell"] + [s or "defaults" for s in args.settings]
    rows = []
    for key in order:
        base = best.get((args.settings[0], key))
        row = [key]
        for s in args.settings:
            us = best.get((s, key))
            row.append("-" if us is None else f"{us:.2f}" + ("" if base is None or s == args.settings[0]
                                                             else f" ({us / base:.2f}x)"))
        rows.append(row)
    print(C.format_table(headers, rows))


if __name__ == "__main__":
    main()
