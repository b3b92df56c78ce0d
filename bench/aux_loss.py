#!/usr/bin/env python3
"""Aux-loss benchmark (SPEC sections 2, 3): moekit.aux_scores_forward / _backward and
moekit.aux_loss_forward / _backward against torch eager and torch.compile of the same math, timed in
one run on inputs rotated past L2 (CUDA-graph replay), with the copy ceiling of the same run.

Fewest bytes each op must move:
  aux scores forward   read logits T*E*d, write scores and intermediate (f32) and the bytemap: T*E*(d+9)
  aux scores backward  read grad_scores and intermediate (f32), write grad_logits: T*E*(8+d)
  aux loss forward     read probs R*C*d (and tokens_per_expert)
  aux loss backward    write grad_probs R*C*d
  router + aux pair    forward: read logits T*E*d; write probs (d), intermediate, aux scores, aux
                       intermediate (f32) and two bytemaps: T*E*(2d+14); backward: read grad_probs (d),
                       intermediate, grad_aux_scores, aux intermediate (f32) and the bytemap, write
                       grad_logits (d): T*E*(2d+13). Its peer is the two single calls (and an add of
                       the two gradients), what a Megatron router runs without the pair.

  python bench/aux_loss.py [--quick] [--no-compile] [--pairs-only] [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FAMILY = "aux_loss"
TOKENS = (8192, 65536)
ROWS = ((128, "softmax"), (256, "sigmoid"), (1024, "softmax"))  # (E, score), K = 8
PAIR_ROWS = ((128, "softmax"), (256, "sigmoid"))
K, COEFF = 8, 1e-2


def torch_aux_scores(torch, x, score):
    xf = x.float()
    if score == "softmax":
        scores = torch.softmax(xf, dim=-1)
    else:
        y = torch.sigmoid(xf) if score == "sigmoid" else torch.sqrt(torch.nn.functional.softplus(xf))
        scores = y / (y.sum(dim=-1, keepdim=True) + 1e-20)
    idx = torch.topk(scores, K, dim=-1).indices
    routing_map = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    return scores, routing_map


def torch_aux_loss(torch, probs, tokens, N, E):
    return (E * COEFF / (K * N * N)) * (probs.float().sum(dim=0) * tokens.float()).sum()


def cell(torch, moekit, name, bytes_, fns, make_inputs, ceiling, l2):
    """One cell named "<op> <pass> <case>": every peer timed on input sets rotated past L2."""
    inputs = [make_inputs() for _ in range(C.rotation_count(bytes_, l2))]
    row = {"cell": name, "bytes": bytes_, "timings": {}, "case": name.split(" ", 2)[2], "score": "",
           "pass": " ".join(name.split(" ", 2)[:2])}
    C.time_peers(row, name, fns, inputs)
    return C.summarize(row, name, bytes_, ceiling)


def pair_cells(torch, moekit, T, E, score, ceiling, l2):
    """The router + aux-scores pair (moekit.router_aux_forward / _backward) against the two single calls."""
    d = 2  # bf16 logits

    def new_logits():
        return (torch.randn(T, E, device="cuda") * 2).to(torch.bfloat16),

    def pair_fwd(x):
        return moekit.router_aux_forward(x, K, score_function=score)

    def two_fwd(x):
        return moekit.router_topk_forward(x, K, score_function=score), moekit.aux_scores_forward(
            x, K, score_function=score)

    fwd = cell(torch, moekit, f"pair fwd T={T} E={E} {score}", T * E * (2 * d + 14),
               {"moekit": pair_fwd, "two calls": two_fwd}, new_logits, ceiling, l2)

    def new_grads():
        x = (torch.randn(T, E, device="cuda") * 2).to(torch.bfloat16)
        _, routing_map, inter, _, _, aux_inter = moekit.router_aux_forward(x, K, score_function=score)
        return torch.randn_like(x), inter, routing_map, torch.randn(T, E, device="cuda"), aux_inter

    def pair_bwd(g, inter, routing_map, g_aux, aux_inter):
        return moekit.router_aux_backward(g, inter, routing_map, g_aux, aux_inter, K, score_function=score)

    def two_bwd(g, inter, routing_map, g_aux, aux_inter):  # what autograd runs for the two single ops
        return moekit.router_topk_backward(g, inter, routing_map, K, score_function=score) + \
            moekit.aux_scores_backward(g_aux, aux_inter, score_function=score, out_dtype="bfloat16")

    bwd = cell(torch, moekit, f"pair bwd T={T} E={E} {score}", T * E * (2 * d + 13),
               {"moekit": pair_bwd, "two calls": two_bwd}, new_grads, ceiling, l2)
    return [fwd, bwd]


def main(argv=None):
    parser = C.family_parser(__doc__)
    parser.add_argument("--pairs-only", action="store_true", help="only the router + aux-scores pair's cells")
    args = parser.parse_args(argv)
    torch = C.import_torch()
    moekit = C.require_moekit()

    l2 = C.l2_bytes(torch)
    ceiling = C.copy_ceiling(torch)
    C.log(f"copy ceiling {ceiling['gbs']:.0f} GB/s")
    compile_ = (lambda f: torch.compile(f)) if not args.no_compile else None
    records = []
    tokens = TOKENS[:1] if args.quick else TOKENS
    for T in tokens:
        for E, score in () if args.pairs_only else ROWS:
            d = 2  # bf16 logits

            def new_logits():
                return (torch.randn(T, E, device="cuda") * 2).to(torch.bfloat16),

            def mk_fwd(x):
                return moekit.aux_scores_forward(x, K, score_function=score)

            def eager_fwd(x):
                return torch_aux_scores(torch, x, score)

            fns = {"moekit": mk_fwd, "torch eager": eager_fwd}
            if compile_:
                fns["torch.compile"] = compile_(eager_fwd)
            records.append(cell(torch, moekit, f"scores fwd T={T} E={E} {score}", T * E * (d + 9), fns, new_logits,
                                ceiling["gbs"], l2))

            def new_grad():
                x = (torch.randn(T, E, device="cuda") * 2).to(torch.bfloat16)
                _, _, inter = moekit.aux_scores_forward(x, K, score_function=score)
                return torch.randn(T, E, device="cuda"), inter

            def mk_bwd(g, inter):
                return moekit.aux_scores_backward(g, inter, score_function=score, out_dtype="bfloat16")

            def eager_bwd(g, inter):  # autograd of the composition, from the saved scores
                if score == "softmax":
                    dx = inter * (g - (g * inter).sum(-1, keepdim=True))
                else:
                    s = inter.sum(-1, keepdim=True) + 1e-20
                    h = g / s - (g * inter).sum(-1, keepdim=True) / (s * s)
                    dx = h * inter * (1 - inter)
                return dx.to(torch.bfloat16)

            fns = {"moekit": mk_bwd, "torch eager": eager_bwd}
            if compile_:
                fns["torch.compile"] = compile_(eager_bwd)
            records.append(cell(torch, moekit, f"scores bwd T={T} E={E} {score}", T * E * (8 + d), fns, new_grad,
                                ceiling["gbs"], l2))

            C_ = E  # aux loss: probs are the f32 scores [T, E]

            def new_probs():
                return torch.rand(T, C_, device="cuda"), torch.randint(0, T, (C_,), device="cuda")

            ws = torch.zeros(moekit.aux_loss_workspace_size(T, C_), dtype=torch.uint8, device="cuda")

            def mk_loss(p, tok):
                return moekit.aux_loss_forward(p, tok, T * K, E, K, COEFF, workspace=ws)

            def eager_loss(p, tok):
                return torch_aux_loss(torch, p, tok, T * K, E)

            fns = {"moekit": mk_loss, "torch eager": eager_loss}
            if compile_:
                fns["torch.compile"] = compile_(eager_loss)
            records.append(cell(torch, moekit, f"loss fwd R={T} C={C_} f32", T * C_ * 4, fns, new_probs,
                                ceiling["gbs"], l2))

            const_buf = torch.full((1,), 1e-7, device="cuda")
            grad_loss = torch.ones((), device="cuda")

            def new_tokens():
                return (torch.randint(0, T, (C_,), device="cuda"),)

            def mk_loss_bwd(tok):
                return moekit.aux_loss_backward(const_buf, tok, grad_loss, T)

            def eager_loss_bwd(tok):
                return (const_buf * tok.float() * grad_loss).expand(T, C_).contiguous()

            fns = {"moekit": mk_loss_bwd, "torch eager": eager_loss_bwd}
            if compile_:
                fns["torch.compile"] = compile_(eager_loss_bwd)
            records.append(cell(torch, moekit, f"loss bwd R={T} C={C_} f32", T * C_ * 4, fns, new_tokens,
                                ceiling["gbs"], l2))

    for T in tokens:
        for E, score in PAIR_ROWS:
            records += pair_cells(torch, moekit, T, E, score, ceiling["gbs"], l2)

    headers = ["cell", "moekit us", "GB/s", "% copy", "eager us", "compile us", "two calls us", "x eager",
               "x compile", "x two calls"]
    table = []
    for r in records:
        t = r["timings"]
        mk = t.get("moekit", {}).get("us")
        peers = [t.get(p, {}).get("us") for p in ("torch eager", "torch.compile", "two calls")]
        table.append([r["cell"], C.fmt_num(mk, 2), C.fmt_num(r["gbs"], 0), C.fmt_num(r["pct_copy"]),
                      *(C.fmt_num(us, 2) for us in peers),
                      *(C.fmt_num(us / mk if mk and us else None, 2) + "x" for us in peers)])
    print(f"\naux loss family, {C.device_info(torch, moekit).get('name', '?')}, copy ceiling {ceiling['gbs']:.0f} GB/s")
    print(C.format_table(headers, table))
    C.write_json(args.out, FAMILY, {"device": C.device_info(torch, moekit), "copy_ceiling": ceiling,
                                    "records": records, "table": {"headers": headers, "rows": table}})


if __name__ == "__main__":
    main()
