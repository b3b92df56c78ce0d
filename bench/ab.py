"""A/B timing of moekit builds and tuning settings in one run: each setting runs bench/router.py
(moekit only, no peers) in its own process, the settings interleaved over --rounds rounds (a b a b),
and each cell keeps its best round. Prints moekit's time per benchmark cell for each setting side by
side, with the ratio to the first setting.

    python bench/ab.py "" "pdl=0" -- --tokens 8192
    python bench/ab.py "@/path/to/old" "" --rounds 2 -- --no-check     # another build against this one
    python bench/ab.py "@/path/to/old MOEKIT_ROUTER_RADIX_MIN_K=1 MOEKIT_ROUTER_FILTER_MIN_VPT=0 \
        MOEKIT_ROUTER_TEAM_MAX_K=0 MOEKIT_ROUTER_WIDE_MAX_K=0" "preset=radix"   # a build before the hooks

A setting is a space-separated list of items ("" = the installed build with its defaults):
  @DIR        a build directory DIR holding python/ (the package's sources, first on PYTHONPATH) and
              libmoekit.so.1 (as MOEKIT_LIBRARY)
  NAME=VALUE  an environment variable of the run where NAME is upper case (MOEKIT_PDL, or an older
              build's tuning variables); otherwise an in-process tuning knob of moekit._hooks
              (router.radix_min_k=1, pdl=0) or preset=NAME (a moekit._hooks.PRESETS entry)
Arguments after `--` go to bench/router.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

ROUTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "router.py")


def parse_setting(text: str):
    """(environment changes, --tune arguments) of one setting."""
    env, tune = {}, []
    for item in text.split():
        if item.startswith("@"):
            root = os.path.abspath(item[1:])
            env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "python"), os.environ.get("PYTHONPATH", "")])
            env["MOEKIT_LIBRARY"] = os.path.join(root, "libmoekit.so.1")
            continue
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"ab.py: setting item {item!r} is not @DIR or NAME=VALUE")
        if name.isupper():
            env[name] = value
        else:
            tune += ["--tune", item]
    return env, tune


def run_setting(setting, router_args):
    """moekit us and plan per (case, pass) for one setting."""
    env_changes, tune = setting
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, **env_changes)
        cmd = [sys.executable, ROUTER, "--out", out, "--no-eager", "--no-compile", "--no-te", "--no-plot",
               *tune, *router_args]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "router.json")) as f:
            records = json.load(f)["records"]
    return {(r["case"], r["pass"]): ((r["timings"]["moekit"] or {}).get("us"), r.get("plan")) for r in records}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    router_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, router_args = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; each cell keeps its best")
    args = ap.parse_args(argv)
    if len(args.settings) < 2:
        print(__doc__)
        return 2
    settings = [parse_setting(s) for s in args.settings]
    best = [dict() for _ in settings]
    plans = [dict() for _ in settings]
    for round_ in range(args.rounds):
        for i, setting in enumerate(settings):
            _common.log(f"round {round_ + 1}/{args.rounds}: {args.settings[i] or 'defaults'}")
            for key, (us, plan) in run_setting(setting, router_args).items():
                if us is not None and (best[i].get(key) is None or us < best[i][key]):
                    best[i][key] = us
                plans[i][key] = plan
    labels = [s or "defaults" for s in args.settings]
    headers = ["case", "pass"] + [f"{label} us" for label in labels] + [f"/{labels[0]}" for _ in labels[1:]]
    rows = []
    for key in best[0]:
        times = [b.get(key) for b in best]
        base = times[0]
        ratios = [f"{t / base:.3f}" if t and base else "n/a" for t in times[1:]]
        rows.append([*key, *[_common.fmt_num(t, 2) for t in times], *ratios])
    print(_common.format_table(headers, rows))
    differ = [key for key in best[0] if len({json.dumps(p.get(key), sort_keys=True) for p in plans}) > 1]
    if differ and all(p.get(k) is not None for p in plans for k in differ):
        print(f"plans differ between settings in {len(differ)} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
