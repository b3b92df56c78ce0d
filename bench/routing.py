#!/usr/bin/env python3
"""Inference-routing benchmark (SPEC section 5): moekit.moe_align against torch eager and torch.compile
of a sort-based composition, timed in one run on inputs rotated past L2 (CUDA-graph replay), with the
copy ceiling of the same run. (grouped_topk, section 4, joins when it is built.)

Fewest bytes moe_align must move: read topk_ids T*K*4; write sorted_token_ids max_padded*4,
expert_ids num_blocks*4, counts and offsets (2E+2)*4.

  python bench/routing.py [--quick] [--no-compile] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from aux_loss import cell  # noqa: E402 - the same cell runner and record fields

FAMILY = "routing"
ALIGN_TOKENS, ALIGN_TOKENS_QUICK = (16, 256, 4096, 65536), (16, 4096)
E, K, BM = 256, 8, 64


def torch_align(torch, ids, num_experts, block):
    """moe_align as a user writes it in torch: a stable sort by expert, then the padded layout (its
    boolean indexing syncs, so its timing falls back from graph replay to eager calls)."""
    T, topk = ids.shape
    flat = ids.reshape(-1).long()
    valid = (flat >= 0) & (flat < num_experts)
    key = torch.where(valid, flat, num_experts)
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(flat[valid], minlength=num_experts)
    padded = (counts + block - 1) // block * block
    starts = torch.cumsum(padded, 0) - padded
    offsets = torch.cumsum(counts, 0) - counts
    sorted_keys = key[order]
    keep = sorted_keys < num_experts
    e = sorted_keys[keep]
    rank = torch.arange(e.numel(), device=ids.device) - offsets[e]
    max_pad = T * topk + min(T * topk, num_experts) * (block - 1)
    out = torch.full((max_pad,), T * topk, dtype=torch.int32, device=ids.device)
    out[starts[e] + rank] = order[keep].to(torch.int32)
    blocks = torch.repeat_interleave(torch.arange(num_experts, device=ids.device, dtype=torch.int32), padded // block)
    expert_ids = torch.full(((max_pad + block - 1) // block,), -1, dtype=torch.int32, device=ids.device)
    expert_ids[: blocks.numel()] = blocks
    return out, expert_ids, padded.sum().reshape(1).int(), counts.int(), offsets.int()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default="bench/results")
    args, _ = ap.parse_known_args(argv)
    torch = C.import_torch()
    moekit, why = C.import_moekit()
    if moekit is None:
        raise SystemExit(f"bench: moekit not importable ({why})")
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
