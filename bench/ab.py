"""A/B timing of moekit under different environment settings (tuning knobs are read once per
process, so each setting runs bench/router.py in its own process). Prints moekit's time per
benchmark row for each setting side by side, with the ratio to the first setting.

    python bench/ab.py MOEKIT_ROUTER_PIPELINE=1 MOEKIT_ROUTER_PIPELINE=0 -- --quick
    python bench/ab.py "" "MOEKIT_ROUTER_RADIX_MIN_K=1 MOEKIT_ROUTER_PIPELINE=0"

Each setting is a space-separated list of NAME=VALUE ("" = the defaults). Arguments after `--` go to
bench/router.py (peers are switched off: only moekit is timed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

ROUTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "router.py")


def parse_setting(text: str) -> dict:
    env = {}
    for item in text.split():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"ab.py: setting {item!r} is not NAME=VALUE")
        env[name] = value
    return env


def run_setting(env_changes: dict, router_args: list) -> dict:
    """moekit us per (case, pass) for one setting."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, **env_changes)
        cmd = [sys.executable, ROUTER, "--out", out, "--no-eager", "--no-compile", "--no-te", "--no-plot",
               *router_args]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "router.json")) as f:
            records = json.load(f)["records"]
    return {(r["case"], r["pass"]): (r["timings"]["moekit"] or {}).get("us") for r in records}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        cut = argv.index("--")
        settings, router_args = argv[:cut], argv[cut + 1:]
    else:
        settings, router_args = argv, []
    if len(settings) < 2:
        print(__doc__)
        return 2
    envs = [parse_setting(s) for s in settings]
    results = [run_setting(env, router_args) for env in envs]
    labels = [s or "defaults" for s in settings]
    headers = ["case", "pass"] + [f"{label} us" for label in labels] + [f"/{labels[0]}" for _ in labels[1:]]
    rows = []
    for key in results[0]:
        times = [r.get(key) for r in results]
        base = times[0]
        ratios = [f"{t / base:.2f}" if t and base else "n/a" for t in times[1:]]
        rows.append([*key, *[_common.fmt_num(t) for t in times], *ratios])
    print(_common.format_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
