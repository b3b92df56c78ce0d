#!/usr/bin/env python3
"""Run every family benchmark (each in its own process), then print one combined table.

  python bench/run.py [--quick] [--no-compile] [--out DIR] [--families router] [family options...]

Options this runner does not know (e.g. --dtypes bf16, --timing eager) are passed to every family.

Each family script writes <out>/<family>.json; this runner reads them back, so a family that
crashes leaves the others' numbers intact. The combined table shows, per case and pass, moekit's
time, the best peer's, effective GB/s and % of the copy ceiling measured in that family's run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ("router", "aux_loss", "quant", "routing")  # one script per family: bench/<family>.py


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=C.DEFAULT_OUT_DIR)
    ap.add_argument("--families", default=",".join(FAMILIES))
    return ap.parse_known_args(argv)


def run_family(name, args, extra):
    script = os.path.join(BENCH_DIR, f"{name}.py")
    cmd = [sys.executable, script, "--out", args.out]
    for flag in ("quick", "no_compile", "no_plot"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    cmd += extra
    try:  # a stale result must not pass for this run's
        os.remove(os.path.join(args.out, f"{name}.json"))
    except FileNotFoundError:
        pass
    C.log(f"== {name}: {' '.join(cmd)}")
    return subprocess.call(cmd)


def combined_rows(payloads):
    rows = []
    for fam, data in payloads:
        for r in data.get("records", []):
            mk = (r["timings"].get("moekit") or {}).get("us")
            best = r.get("best_peer")
            best_us = (r["timings"].get(best) or {}).get("us") if best else None
            speed = r.get("speedup_vs_best_peer")
            chk = r.get("check")
            rows.append([fam, r["case"], r.get("score", ""), r["pass"], C.fmt_num(mk),
                         f"{best} {C.fmt_num(best_us)}" if best else "n/a",
                         C.fmt_num(r.get("moekit_gbs"), 0), C.fmt_num(r.get("pct_of_copy")),
                         "n/a" if speed is None else f"{speed:.2f}x",
                         C.fmt_num(r.get("floor_us_at_copy")),
                         "-" if chk is None else ("ok" if chk.get("ok") else "WARN")])
    return rows


def main(argv=None):
    args, extra = parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    status = {}
    for fam in families:
        status[fam] = run_family(fam, args, extra)

    payloads = []
    for fam in families:
        path = os.path.join(args.out, f"{fam}.json")
        if status[fam] != 0:
            C.log(f"{fam}: exited with {status[fam]}")
        try:
            with open(path) as fh:
                payloads.append((fam, json.load(fh)))
        except (OSError, ValueError) as exc:
            C.log(f"{fam}: no results ({exc})")

    combined = {"families": {fam: data for fam, data in payloads}, "exit_codes": status}
    path = C.write_json(args.out, "all", combined)
    C.log(f"wrote {path}")

    print("\n== all families ==")
    for fam, data in payloads:
        info, ceil = data.get("info", {}), data.get("copy_ceiling", {})
        print(f"{fam}: {info.get('device', '?')}, copy ceiling {C.fmt_num(ceil.get('gbs'), 0)} GB/s")
    headers = ["family", "case", "score", "pass", "moekit us", "best peer us", "moekit GB/s",
               "% copy", "vs best", "floor us @copy", "check"]
    print(C.format_table(headers, combined_rows(payloads)))
    return 0 if all(v == 0 for v in status.values()) and payloads else 1


if __name__ == "__main__":
    sys.exit(main())
