"""The inference-routing family: grouped_topk (DeepSeek-V3's gate) and moe_align. Same shape as
families.py, whose helpers it uses; importing this module imports neither torch nor the library.
"""

from __future__ import annotations

import numpy as np

from .families import BF16, _close, _dev, _need
from .registry import Cell, register

ROUTING_OPS = ("grouped_topk", "moe_align")
TOPK_SHAPES = {"deepseek-v3": (256, 8, 4, 8, 2.5, 1), "kimi-k2": (384, 1, 1, 8, 2.827, 0)}  # E, G, Kg, K, rsf, S
ALIGN_E, ALIGN_K, ALIGN_BLOCK = 256, 8, 64


def torch_grouped_topk(torch, logits, bias, E, G, Kg, K, rsf):
    """DeepSeek-V3's gate as a serving engine writes it in torch (no shared slots)."""
    scores = torch.sigmoid(logits.float())
    keys = scores + bias
    if G > 1:
        group = keys.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group).scatter_(1, group.topk(Kg, dim=-1).indices, 1.0)
        keys = keys.masked_fill(~keep.repeat_interleave(E // G, dim=1).bool(), float("-inf"))
    ids = keys.topk(K, dim=-1).indices
    weights = scores.gather(1, ids)
    return weights / (weights.sum(-1, keepdim=True) + 1e-20) * rsf, ids.int()


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


def routing_check(torch, moekit, reference, rng):
    _need(ROUTING_OPS, moekit, reference)
    results = []
    for name, (E, G, Kg, K, rsf, S) in TOPK_SHAPES.items():
        x, b = rng.standard_normal((100, E)).astype(np.float32), (rng.standard_normal(E) * 0.3).astype(np.float32)
        kw = dict(num_groups=G, topk_group=Kg, routed_scaling_factor=rsf, num_shared=S)
        w, ids = moekit.grouped_topk(_dev(torch, x), _dev(torch, b), K, **kw)
        rw, rids = reference.grouped_topk(x, b, K, **kw)
        same = np.array_equal(ids.cpu().numpy(), rids)
        op, ok, detail = _close(f"grouped_topk [{name}]", w.cpu().numpy(), rw, 1e-5, 0.0)
        results.append((op, ok and same, detail + ("" if same else "; ids differ")))
    for T in (7, 3000):
        ids = rng.integers(-1, ALIGN_E + 1, (T, ALIGN_K)).astype(np.int32)
        got = moekit.moe_align(_dev(torch, ids), ALIGN_E, ALIGN_BLOCK)
        want = reference.moe_align(ids, ALIGN_E, ALIGN_BLOCK)
        bad = [n for n, g, r in zip(("sorted", "expert_ids", "padded", "counts", "offsets"), got, want)
               if not np.array_equal(g.cpu().numpy(), r)]
        results.append((f"moe_align [T={T}]", not bad, "exact" if not bad else f"differs: {', '.join(bad)}"))
    return results


def routing_cells(torch, moekit, quick):
    _need(ROUTING_OPS, moekit)
    cells = []
    for T in (16, 65536) if quick else (16, 256, 4096, 65536):
        for name, (E, G, Kg, K, rsf, S) in TOPK_SHAPES.items():
            bias = torch.randn(E, device="cuda") * 0.3

            def make(T=T, E=E):
                return (torch.randn(T, E, device="cuda", dtype=torch.bfloat16),)
            kw = dict(num_groups=G, topk_group=Kg, routed_scaling_factor=rsf)
            # read the logits (and the bias); write K f32 weights and K int32 ids per row
            cells.append(Cell("grouped_topk", f"T={T} {name}", T * E * BF16 + E * 4 + T * K * 8, make,
                              {"moekit": lambda x, kw=kw, b=bias, K=K: moekit.grouped_topk(x, b, K, **kw),
                               "torch eager": lambda x, b=bias, a=(E, G, Kg, K, rsf): torch_grouped_topk(torch, x, b, *a)},
                              params=dict(T=T, shape=name)))
        max_pad, blocks = moekit.moe_align_buffer_sizes(T, ALIGN_K, ALIGN_E, ALIGN_BLOCK)

        def make_ids(T=T):
            return (torch.rand(T, ALIGN_E, device="cuda").topk(ALIGN_K, dim=1).indices.int(),)
        cells.append(Cell("moe_align", f"T={T} E={ALIGN_E} K={ALIGN_K} BM={ALIGN_BLOCK}",
                          T * ALIGN_K * 4 + (max_pad + blocks + 2 * ALIGN_E + 2) * 4, make_ids,
                          {"moekit": lambda ids: moekit.moe_align(ids, ALIGN_E, ALIGN_BLOCK),
                           "torch eager": lambda ids: torch_align(torch, ids, ALIGN_E, ALIGN_BLOCK)},
                          params=dict(T=T)))
    return cells


register("routing", ops=ROUTING_OPS, check=routing_check, cells=routing_cells,
         description="grouped top-k (DeepSeek-V3), moe_align")
