"""The picture of a `moekit bench` run: achieved GB/s per op and size for moekit and its torch peers,
one panel per family, the copy ceiling of the same run as a line; cells too small for bandwidth to
mean anything (a copy of their bytes would take under LATENCY_FLOOR_US) go to a last panel of
microseconds per call instead. matplotlib is optional
(`pip install 'moekit[bench]'`); it is drawn on a bare Figure, so no pyplot state or GUI backend.
"""

from __future__ import annotations

import textwrap

COLORS = {"moekit": "#1f77b4", "torch eager": "#ff7f0e", "torch.compile": "#2ca02c"}


LATENCY_FLOOR_US = 2.0
LATENCY = "latency (small sizes): us per call, lower is better"


def _labels(ax, rows):
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["op"].replace("_masked", "\n(masked)") + "\n" + textwrap.fill(r["size"], 22)
                        for r in rows], fontsize=7 if len(rows) <= 8 else 6)


def _latency_panel(ax, rows):
    impls = [i for i in COLORS if any(r["timings"].get(i, {}).get("us") for r in rows)]
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        xs = [j + (k - (len(impls) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r["timings"].get(impl, {}).get("us") or 0.0 for r in rows], width, label=impl,
               color=COLORS[impl])
    ax.set_yscale("log")
    _labels(ax, rows)
    ax.set_ylabel("us per call", fontsize=8)
    ax.set_title(LATENCY, loc="left", fontsize=10)
    ax.legend(fontsize=7, ncol=len(impls), loc="upper left")
    ax.grid(axis="y", alpha=0.3)


def draw(records, ceiling_gbs, title, path):
    """Write the PNG to path from the runner's records; returns path, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    small = [r for r in records if r["bytes"] / (ceiling_gbs * 1e3) < LATENCY_FLOOR_US]
    large = [r for r in records if r not in small]
    families = list(dict.fromkeys(r["family"] for r in large)) + ([LATENCY] if small else [])
    if not families:
        return None
    most = max(len(small), *(sum(r["family"] == f for r in large) for f in families))
    fig = Figure(figsize=(max(8.0, 1.3 * most + 1.5), 3.6 * len(families)))
    axes = fig.subplots(len(families), 1, squeeze=False)[:, 0]
    for ax, family in zip(axes, families):
        if family == LATENCY:
            _latency_panel(ax, small)
            continue
        rows = [r for r in large if r["family"] == family]
        impls = [i for i in COLORS if any(r["gbs"].get(i) for r in rows)]
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            xs = [j + (k - (len(impls) - 1) / 2) * width for j in range(len(rows))]
            ax.bar(xs, [r["gbs"].get(impl) or 0.0 for r in rows], width, label=impl, color=COLORS[impl])
        ax.axhline(ceiling_gbs, color="black", linestyle="--", linewidth=1,
                   label=f"copy ceiling {ceiling_gbs:.0f} GB/s")
        tallest = max([ceiling_gbs] + [v or 0.0 for r in rows for v in r["gbs"].values()])
        ax.set_ylim(0, 1.18 * tallest)
        _labels(ax, rows)
        ax.set_ylabel("GB/s (fewest bytes / time)", fontsize=8)
        ax.set_title(family, loc="left", fontsize=10)
        ax.legend(fontsize=7, ncol=len(impls) + 1, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
