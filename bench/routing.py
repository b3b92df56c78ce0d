#!/usr/bin/env python3
"""Inference-routing benchmark (SPEC section 5): moekit.moe_align against torch eager and torch.compile
of a sort-based composition, timed in one run on inputs rotated past L2 (CUDA-graph replay), with the
copy ceiling of the same run. (grouped_topk, section 4, joins when it is built.)

Fewest bytes moe_align must move: read topk_ids T*K*4; write sorted_token_ids max_padded*4,
expert_ids num_blocks*4, counts and offsets (2E+2)*4.

  python bench/routing.py [--quick] [--no-compile] [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from aux_loss import cell  # noqa: E402 - the same cell runner and record fields
from moekit.bench.families_routing import torch_align  # noqa: E402 - the torch peer `moekit bench` times too

FAMILY = "routing"
ALIGN_TOKENS, ALIGN_TOKENS_QUICK = (16, 256, 4096, 65536), (16, 4096)
E, K, BM = 256, 8, 64


def main(argv=None):
    args, _ = C.family_parser(__doc__).parse_known_args(argv)
    torch = C.import_torch()
    moekit = C.require_moekit()
    l2 = C.l2_bytes(torch)
    ceiling = C.copy_ceiling(torch)
    records = []
    for T in ALIGN_TOKENS_QUICK if args.quick else ALIGN_TOKENS:
        max_pad, blocks = moekit.moe_align_buffer_sizes(T, K, E, BM)
        ws = torch.empty(max(moekit.moe_align_workspace_size(T, K, E), 1), dtype=torch.uint8, device="cuda")
        outs = tuple(torch.empty(s, dtype=torch.int32, device="cuda")
                     for s in ((max_pad,), (blocks,), (1,), (E,), (E + 1,)))

        def new_ids():
            return (torch.rand(T, E, device="cuda").topk(K, dim=1).indices.int(),)

        def mk(ids):
            return moekit.moe_align(ids, E, BM, out=outs, workspace=ws)

        def eager(ids):
            return torch_align(torch, ids, E, BM)

        fns = {"moekit": mk, "torch eager": eager}
        if not args.no_compile:
            fns["torch.compile"] = torch.compile(eager)
        bytes_ = T * K * 4 + (max_pad + blocks + 2 * E + 2) * 4
        records.append(cell(torch, moekit, f"align fwd T={T} E={E} K={K} BM={BM}", bytes_, fns, new_ids,
                            ceiling["gbs"], l2))
    headers = ["cell", "moekit us", "GB/s", "% copy", "eager us", "compile us"]
    table = [[r["cell"], C.fmt_num(r["timings"].get("moekit", {}).get("us"), 2), C.fmt_num(r["gbs"], 0),
              C.fmt_num(r["pct_copy"]), C.fmt_num(r["timings"].get("torch eager", {}).get("us"), 2),
              C.fmt_num(r["timings"].get("torch.compile", {}).get("us"), 2)] for r in records]
    info = C.device_info(torch, moekit)
    print(f"\nrouting family, {info.get('device', '?')}, copy ceiling {ceiling['gbs']:.0f} GB/s")
    print(C.format_table(headers, table))
    print("targets (not asserted): moe_align <= 2.2 us at T=16, <= 2.5 us at T=256, <= 8 us at T=4096, "
          "<= 40 us at T=65536")
    C.write_json(args.out, FAMILY, {"family": FAMILY, "info": info, "copy_ceiling": ceiling, "records": records,
                                    "table": {"headers": headers, "rows": table}})


if __name__ == "__main__":
    main()
