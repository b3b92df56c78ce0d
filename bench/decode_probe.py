#!/usr/bin/env python3
"""Where a decode-size call's microseconds go: each small `moekit bench` cell (and the harness's
launch floor, a 1-element add) timed under graph replay with one input set (L2-hot, the same
addresses every call) and with the cell's rotated sets, with and without PDL, and eagerly.

    python bench/decode_probe.py [--ops grouped_topk,moe_align,silu_mul_quant_fp8] [--max-bytes 4e6]

Read: graph(1 set) - floor is the kernel's own chain; rotated - 1 set is the cost of cold lines
(DRAM and TLB misses); pdl=0 - pdl=1 what the early launch of the next call hides.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="grouped_topk,moe_align,silu_mul_quant_fp8,rmsnorm")
    ap.add_argument("--max-bytes", type=float, default=8e6, help="cells moving at most this many bytes")
    args = ap.parse_args(argv)
    torch = C.import_torch()
    moekit = C.require_moekit()
    from moekit._hooks import tuning
    from moekit.bench import _timing as timing
    from moekit.bench.registry import families, selects

    names = [n for n in args.ops.split(",") if n]
    l2 = timing.l2_bytes(torch)
    cells = []
    for fam in families(names):
        for cell in fam.cells(torch, moekit, False):
            cell.family = fam.name
            if selects(names, fam.name, cell.op) and cell.bytes <= args.max_bytes:
                cells.append(cell)

    floor_inputs = [(torch.zeros(1, device="cuda"),) for _ in range(64)]
    rows = []

    def probe(name, fn, hot, rotated):
        r = [name]
        for inputs, mode in ((hot, "graph"), (rotated, "graph"), (hot, "eager")):
            r.append(timing.time_fn(fn, inputs, reps=50, mode=mode)["us"])
        return r

    rows.append(probe("floor: x.add_(1) [1 elem]", lambda x: x.add_(1.0), floor_inputs[:1], floor_inputs) + ["-"])
    for cell in cells:
        sets = timing.rotation_count(cell.bytes, l2)
        rotated = [cell.make_inputs() for _ in range(sets)]
        fn = cell.fns["moekit"]
        row = probe(f"{cell.op} {cell.label} [{sets} sets]", fn, rotated[:1], rotated)
        with tuning({"pdl": 0}):
            row.append(timing.time_fn(fn, rotated, reps=50, mode="graph")["us"])
        rows.append(row)
        del rotated
        torch.cuda.empty_cache()
    headers = ["cell", "graph 1 set us", "graph rotated us", "eager 1 set us", "graph rotated pdl=0 us"]
    table = [[r[0], *(x if isinstance(x, str) else f"{x:.2f}" for x in r[1:])] for r in rows]
    print(f"\ndecode probe, {C.device_info(torch, moekit).get('device', '?')}")
    print(C.format_table(headers, table))


if __name__ == "__main__":
    main()
