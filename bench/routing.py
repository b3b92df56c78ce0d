#!/usr/bin/env python3
"""Inference-routing benchmark (SPEC sections 4, 5): moekit.grouped_topk (DeepSeek-V3 and Kimi-K2 shapes),
moekit.moe_align and the route -> align pipeline against torch eager and torch.compile of the
compositions a serving engine writes, timed in one run on inputs rotated past L2 (CUDA-graph replay),
with the copy ceiling of the same run.

Fewest bytes: grouped_topk reads the logits (bf16) and the bias and writes K f32 weights and K int32
ids per row; moe_align reads topk_ids T*K*4 and writes sorted_token_ids max_padded*4, expert_ids
num_blocks*4, counts and offsets (2E+2)*4; the pipeline row adds the two (its ids stay on the device).

  python bench/routing.py [--quick] [--no-compile] [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from aux_loss import cell  # noqa: E402 - the same cell runner and record fields
from moekit.bench.families_routing import TOPK_SHAPES, torch_align, torch_grouped_topk  # noqa: E402 - the peers `moekit bench` times too

FAMILY = "routing"
ALIGN_TOKENS, ALIGN_TOKENS_QUICK = (16, 256, 4096, 65536), (16, 4096)
TOPK_TOKENS, TOPK_TOKENS_QUICK = (1, 8, 32, 64, 256, 4096, 16384, 65536), (8, 4096, 65536)
E, K, BM = 256, 8, 64


def topk_records(torch, moekit, args, ceiling, l2):
    """grouped_topk per model shape and T; then the route -> align pipeline (DeepSeek-V3) at the align sizes."""
    records = []
    for name, (e, g, kg, k, rsf, _) in TOPK_SHAPES.items():
        bias = torch.randn(e, device="cuda") * 0.3
        kw = dict(num_groups=g, topk_group=kg, routed_scaling_factor=rsf)
        for T in TOPK_TOKENS_QUICK if args.quick else TOPK_TOKENS:
            def new_logits(T=T, e=e):
                return (torch.randn(T, e, device="cuda", dtype=torch.bfloat16),)

            def mk(x, b=bias, k=k, kw=kw):
                return moekit.grouped_topk(x, b, k, **kw)

            def eager(x, b=bias, a=(e, g, kg, k, rsf)):
                return torch_grouped_topk(torch, x, b, *a)

            fns = {"moekit": mk, "torch eager": eager}
            if not args.no_compile:
                fns["torch.compile"] = torch.compile(eager)
            records.append(cell(torch, moekit, f"grouped_topk fwd T={T} {name}", T * e * 2 + e * 4 + T * k * 8, fns,
                                new_logits, ceiling["gbs"], l2))
    e, g, kg, k, rsf, _ = TOPK_SHAPES["deepseek-v3"]
    bias = torch.randn(e, device="cuda") * 0.3
    for T in ALIGN_TOKENS_QUICK if args.quick else ALIGN_TOKENS:
        max_pad, blocks = moekit.moe_align_buffer_sizes(T, k, e, BM)

        def new_logits(T=T):
            return (torch.randn(T, e, device="cuda", dtype=torch.bfloat16),)

        def mk(x):
            _, ids = moekit.grouped_topk(x, bias, k, num_groups=g, topk_group=kg, routed_scaling_factor=rsf)
            return moekit.moe_align(ids, e, BM)

        def eager(x):
            _, ids = torch_grouped_topk(torch, x, bias, e, g, kg, k, rsf)
            return torch_align(torch, ids, e, BM)

        bytes_ = T * e * 2 + e * 4 + T * k * 8 + T * k * 4 + (max_pad + blocks + 2 * e + 2) * 4
        records.append(cell(torch, moekit, f"route+align fwd T={T} deepseek-v3 BM={BM}", bytes_,
                            {"moekit": mk, "torch eager": eager}, new_logits, ceiling["gbs"], l2))
    return records


def main(argv=None):
    args, _ = C.family_parser(__doc__).parse_known_args(argv)
    torch = C.import_torch()
    moekit = C.require_moekit()
    l2 = C.l2_bytes(torch)
    ceiling = C.copy_ceiling(torch)
    records = []
    records += topk_records(torch, moekit, args, ceiling, l2)
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
    print("targets (not asserted): grouped_topk <= 1.8 us at T <= 256, <= 8 us at T=4096, >= 70% of the copy "
          "at T=65536; moe_align <= 2.2 us at T=16, <= 2.5 us at T=256, <= 8 us at T=4096, <= 40 us at T=65536")
    C.write_json(args.out, FAMILY, {"family": FAMILY, "info": info, "copy_ceiling": ceiling, "records": records,
                                    "table": {"headers": headers, "rows": table}})


if __name__ == "__main__":
    main()
