#!/usr/bin/env python3
"""How much of the copy ceiling a plain copy reaches at the router benchmark's sizes.

The ceiling (bench/_common.copy_ceiling) is a 2 GiB device-to-device copy. A benchmark row moves
9-300 MB, a few waves of blocks or less at T = 8192, where launch, ramp-up and tail take a share
of the time that no kernel avoids. This times torch's device copy of the same number of bytes as
each row's forward and backward (bytes_moved / 2 read + as many written), the way bench/router.py
times moekit (CUDA graphs, inputs rotated beyond L2), so that a row's share of the ceiling can be
read against what a copy of its bytes gets.

  python bench/copy_at_size.py [--tokens 8192,65536] [--dtypes bf16,f32] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import router as R  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="8192,65536")
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--out", default=None, help="folder for copy_at_size.json")
    args = ap.parse_args(argv)
    torch = C.import_torch()
    ceiling = C.copy_ceiling(torch)
    l2 = C.l2_bytes(torch)
    rows, results = [], []
    for T in (int(t) for t in args.tokens.split(",")):
        for row in R.ROWS:
            for dtype in args.dtypes.split(","):
                for pass_ in ("fwd", "bwd"):
                    moved = R.bytes_moved(row, T, dtype, pass_)
                    # whole 4 KiB pages: at e256k8g8 fwd (+1 KiB of bias) an odd size took torch's
                    # copy 1.5x longer than the same size rounded (a first run of this script)
                    half = moved // 2 // 4096 * 4096
                    sets = [(torch.empty(half, dtype=torch.uint8, device="cuda"),
                             torch.empty(half, dtype=torch.uint8, device="cuda"))
                            for _ in range(C.rotation_count(moved, l2))]
                    timing = C.time_fn(lambda dst, src: dst.copy_(src), sets)
                    del sets
                    gbs = 2 * half / (timing["us"] * 1e-6) / 1e9
                    pct = 100.0 * gbs / ceiling["gbs"]
                    results.append(dict(T=T, row=row.name, dtype=dtype, pass_=pass_, bytes=2 * half,
                                        copy_us=timing["us"], gbs=gbs, pct=pct))
                    rows.append([f"T{T} {row.name} {dtype}", pass_, f"{2 * half / 1e6:.1f}",
                                 C.fmt_num(timing["us"]), f"{gbs:.0f}", f"{pct:.1f}"])
    if args.out:
        C.write_json(args.out, "copy_at_size", {"ceiling": ceiling, "results": results})
    print(f"copy ceiling (2 GiB copy): {ceiling['gbs']:.0f} GB/s")
    print(C.format_table(["case", "pass", "MB moved", "copy us", "copy GB/s", "% of ceiling"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
