"""Shared helpers of the benchmark scripts in bench/: the timing and reporting core is
moekit.bench._timing (also behind `moekit bench`), re-exported here under the names the scripts use;
this file adds what only the scripts need (finding torch and moekit from a source tree, plot_bars).

Timing rules: see moekit/bench/_timing.py (CUDA-graph replay of N back-to-back calls over input sets
rotated past L2, median, the copy ceiling measured in the same run).
"""

from __future__ import annotations

import importlib
import math
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "bench", "results")
SOURCE_DIR = os.path.join(REPO_ROOT, "python")


def _use_source_tree() -> bool:
    """Put the source tree's python/ first on sys.path and forget any moekit imported from elsewhere.

    False when it already was there (nothing left to try)."""
    if SOURCE_DIR in sys.path:
        return False
    sys.path.insert(0, SOURCE_DIR)
    for name in [m for m in sys.modules if m == "moekit" or m.startswith("moekit.")]:
        del sys.modules[name]
    return True


try:  # the installed moekit if it has the timing core, else the one of this source tree
    importlib.import_module("moekit.bench._timing")
except ImportError:
    if not _use_source_tree():
        raise

from moekit.bench._timing import (  # noqa: E402,F401 - re-exported for the bench scripts
    FLOOR_BANDWIDTH_BYTES_PER_S,
    GRAPH_TARGET_US,
    L2_FALLBACK_BYTES,
    MAX_GRAPH_CALLS,
    MAX_ROTATION_BYTES,
    MAX_ROTATION_SETS,
    ROTATION_FACTOR,
    copy_ceiling,
    device_info,
    floor_us,
    fmt_num,
    format_table,
    l2_bytes,
    log,
    module_version,
    rotation_count,
    time_fn,
    write_json,
)

__all__ = [
    "REPO_ROOT", "DEFAULT_OUT_DIR", "import_torch", "import_moekit", "plot_bars",
    "FLOOR_BANDWIDTH_BYTES_PER_S", "GRAPH_TARGET_US", "L2_FALLBACK_BYTES", "MAX_GRAPH_CALLS",
    "MAX_ROTATION_BYTES", "MAX_ROTATION_SETS", "ROTATION_FACTOR", "copy_ceiling", "device_info",
    "floor_us", "fmt_num", "format_table", "l2_bytes", "log", "module_version", "rotation_count",
    "time_fn", "write_json",
]


def import_torch():
    try:
        import torch
    except ImportError as exc:  # the benchmarks need a CUDA build of torch
        raise SystemExit(f"bench: torch is required ({exc})")
    if not torch.cuda.is_available():
        raise SystemExit("bench: no CUDA device visible to torch; nothing to time")
    return torch


def import_moekit():
    """moekit from the installed package, else from the source tree (python/ + MOEKIT_LIBRARY).

    Returns (module, None) or (None, reason) so that peers can still be timed without it.
    """
    try:
        import moekit
        return moekit, None
    except Exception as first:  # noqa: BLE001 - any load failure means "not available"
        if _use_source_tree():
            try:
                import moekit
                return moekit, None
            except Exception as second:  # noqa: BLE001
                return None, f"{type(second).__name__}: {second}"
        return None, f"{type(first).__name__}: {first}"


def require_moekit():
    """moekit, or exit with the reason (a family benchmark has nothing to time without it)."""
    moekit, why = import_moekit()
    if moekit is None:
        raise SystemExit(f"bench: moekit not importable ({why})")
    return moekit


def family_parser(doc: str):
    """The options every family script takes (bench/run.py passes them on)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default="bench/results")
    return ap


def time_peers(row: dict, name: str, fns: dict, inputs: list, on_error=None) -> None:
    """row["timings"][peer] for each peer; a peer that fails is logged, not fatal."""
    import traceback

    for peer, fn in fns.items():
        try:
            row["timings"][peer] = time_fn(fn, inputs, reps=60)
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            log(f"  {name} {peer}: {type(exc).__name__}: {str(exc)[:200]}")
            traceback.print_exc()
            if on_error is not None:
                on_error()


def summarize(row: dict, name: str, bytes_: int, ceiling: float) -> dict:
    """GB/s and % of the copy ceiling of moekit's timing, the fields bench/run.py's combined table
    reads (best peer, floor, speed-ups), and the cell's log line."""
    mk = row["timings"].get("moekit", {}).get("us")
    row["gbs"] = bytes_ / mk / 1e3 if mk else None
    row["pct_copy"] = 100 * row["gbs"] / ceiling if mk else None
    peers = {p: t["us"] for p, t in row["timings"].items() if p != "moekit" and t.get("us")}
    best = min(peers, key=peers.get) if peers else None
    row.update(best_peer=best, moekit_gbs=row["gbs"], pct_of_copy=row["pct_copy"],
               floor_us_at_copy=bytes_ / ceiling / 1e3,
               speedup_vs_best_peer=peers[best] / mk if best and mk else None,
               speedup_vs_eager=peers["torch eager"] / mk if mk and "torch eager" in peers else None,
               speedup_vs_compile=peers["torch.compile"] / mk if mk and "torch.compile" in peers else None)
    log(f"  {name}: moekit {fmt_num(mk, 2)} us, {fmt_num(row['gbs'])} GB/s ({fmt_num(row['pct_copy'])}% of copy)")
    return row


def plot_bars(out_dir: str, name: str, panels: dict, *, title: str,
              ylabel: str = "% of copy ceiling") -> str | None:
    """Grouped bar charts, one panel per entry of panels {panel title: (labels, {series: values})}.

    Values are percentages of the copy ceiling (None = not measured). Returns the PNG path, or None
    when matplotlib is not importable.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        log("  plot: matplotlib not importable; no PNG")
        return None
    most = max((len(labels) for labels, _ in panels.values()), default=1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.7 * most + 2), 3.6 * len(panels)),
                             squeeze=False)
    for ax, (panel, (labels, series)) in zip(axes[:, 0], panels.items()):
        names = list(series)
        width = 0.8 / max(len(names), 1)
        for i, key in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(labels))]
            ys = [v if (v is not None and math.isfinite(v)) else 0.0 for v in series[key]]
            ax.bar(xs, ys, width=width, label=key)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.axhline(100.0, color="gray", linewidth=0.8, linestyle="--")
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
