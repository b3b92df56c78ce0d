"""An expert-parallel MoE layer with moekit over torch.distributed (NCCL): each rank holds E/N experts
and a slice of the tokens; DeepSeek-style grouped top-k on the local tokens; all-to-all dispatch to the
ranks owning the chosen experts; moe_align with an expert_map marking the local experts; SiLU-and-mul +
FP8 quantization of each expert's inputs (a bf16 matmul of the dequantized values stands in for the FP8
grouped GEMM); all-to-all combine; and the load-balancing aux loss with tokens_per_expert all-reduced
and the global token count passed as a device scalar.

    torchrun --nproc-per-node 2 examples/python/expert_parallel.py [--check]
    python examples/python/expert_parallel.py            # one process: the single-GPU layer
    torchrun --nproc-per-node 2 examples/python/expert_parallel.py --backend gloo --check
                                # ranks sharing GPUs (fewer GPUs than ranks): collectives over gloo

--check recomputes the whole batch on one GPU in every rank (same seed, same weights) and compares:
the same expert ids, the same per-expert token sets, outputs within bf16 tolerance, the aux loss
bitwise equal (it is computed on the all-gathered scores, so it is the single-GPU kernel on the same
input) and the logits' gradient of the aux loss within tolerance.
"""

import argparse
import os
import time

# NVLink multicast stays off: programs that use it can take a shared host's GPUs out of service.
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_name] = _value

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import moekit  # noqa: E402

E, G, KG, K, RSF = 32, 4, 2, 4, 2.5  # experts, groups, groups kept, experts per token, scaling
D, F, BLOCK, COEFF = 256, 512, 16, 1e-2  # hidden, expert width, moe_align block, aux-loss coefficient


def make_problem(tokens, seed=0):
    """The whole batch and every expert's weights, the same on every rank (one seed)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(torch.bfloat16)
    return dict(x=randn(tokens, D), router=randn(D, E, scale=D**-0.5), bias=randn(E, scale=0.1).float(),
                w1=randn(E, D, 2 * F, scale=D**-0.5), w2=randn(E, F, D, scale=F**-0.5))


def experts(rows, ids, w1, w2, expert_map, local_experts):
    """rows [n, D] each routed to its global expert id -> [n, D]: moe_align groups the rows by local
    expert (ids of other ranks' experts are -1 in expert_map and skipped), then per expert
    x @ w1 -> SiLU-and-mul + FP8 (per-token groups of 128) -> dequantized -> @ w2."""
    out = torch.zeros_like(rows)
    if rows.shape[0] == 0:
        return out, {}
    sorted_ids, _, _, counts, _ = moekit.moe_align(ids[:, None].int(), local_experts, BLOCK, expert_map=expert_map)
    counts = counts.tolist()
    start, token_sets = 0, {}
    for e, n in enumerate(counts):
        idx = sorted_ids[start:start + n].long()
        start += -(-n // BLOCK) * BLOCK
        if n == 0:
            continue
        token_sets[e] = idx
        h = rows[idx] @ w1[e]
        q, scales = moekit.silu_mul_quant_fp8(h, scale_format="row_f32")
        act = (q.float() * scales.repeat_interleave(128, dim=1)).to(torch.bfloat16)
        out[idx] = act @ w2[e]
    return out, token_sets


_COMM = {"backend": "nccl"}


def _collective(op, out, inp, *splits):
    """dist op on CUDA tensors; over gloo (ranks sharing a GPU, which NCCL refuses) through host copies."""
    gloo = _COMM["backend"] == "gloo"
    target = out.cpu() if gloo else out
    if inp is None:
        op(target)
    else:
        op(target, inp.cpu() if gloo else inp, *splits)
    if gloo:
        out.copy_(target)


def all_to_all(out, inp, *splits):
    _collective(dist.all_to_all_single, out, inp, *splits)


def all_reduce(t):
    _collective(dist.all_reduce, t, None)


def all_gather(parts, t):
    if _COMM["backend"] == "nccl":
        return dist.all_gather(parts, t)
    host = [part.cpu() for part in parts]
    dist.all_gather(host, t.cpu())
    for part, h in zip(parts, host):
        part.copy_(h)


def moe_layer(x, p, rank, world):
    """The layer on this rank's tokens x [T, D] -> (y [T, D], ids [T, K], the router logits, and
    {global expert id: the global token indices it served, in moe_align's order})."""
    local = E // world
    logits = x @ p["router"]
    weights, ids = moekit.grouped_topk(logits, p["bias"], K, num_groups=G, topk_group=KG,
                                       routed_scaling_factor=RSF)
    pair_ids = ids.reshape(-1).long()
    dest = pair_ids // local
    order = torch.argsort(dest, stable=True)  # pairs grouped by owning rank, in pair order
    send_rows, send_ids = x[order // K], pair_ids[order]
    send_pairs = rank * x.shape[0] * K + order  # global pair indices, to name the tokens each expert serves
    send_counts = torch.bincount(dest, minlength=world)
    if world > 1:
        recv_counts = torch.empty_like(send_counts)
        all_to_all(recv_counts, send_counts)
        splits_out, splits_in = send_counts.tolist(), recv_counts.tolist()
        recv_rows = x.new_empty(sum(splits_in), D)
        recv_ids = pair_ids.new_empty(sum(splits_in))
        all_to_all(recv_rows, send_rows, splits_in, splits_out)
        all_to_all(recv_ids, send_ids, splits_in, splits_out)
        recv_pairs = torch.empty_like(recv_ids)
        all_to_all(recv_pairs, send_pairs, splits_in, splits_out)
    else:
        recv_rows, recv_ids, recv_pairs = send_rows, send_ids, send_pairs
    expert_map = torch.full((E,), -1, dtype=torch.int32, device=x.device)
    expert_map[rank * local:(rank + 1) * local] = torch.arange(local, dtype=torch.int32, device=x.device)
    y_recv, token_sets = experts(recv_rows, recv_ids, p["w1"][rank * local:(rank + 1) * local],
                                 p["w2"][rank * local:(rank + 1) * local], expert_map, local)
    if world > 1:
        y_sent = torch.empty_like(send_rows)
        all_to_all(y_sent, y_recv, splits_out, splits_in)
    else:
        y_sent = y_recv
    y_pairs = torch.empty_like(y_sent)
    y_pairs[order] = y_sent
    y = (y_pairs.view(-1, K, D).float() * weights[..., None]).sum(1).to(torch.bfloat16)
    served = {rank * local + e: recv_pairs[idx] // K for e, idx in token_sets.items()}
    return y, ids, logits, served


def aux_loss(logits, world):
    """The load-balancing aux loss: tokens_per_expert all-reduced, the global token count a device
    scalar, the loss over the all-gathered scores (the single-GPU kernel on the whole batch)."""
    scores, routing_map, inter = moekit.aux_scores_forward(logits.float(), K, score_function="sigmoid")
    tokens_per_expert = routing_map.sum(0, dtype=torch.int64)
    total = torch.tensor([logits.shape[0]], dtype=torch.int64, device=logits.device)
    if world > 1:
        all_reduce(tokens_per_expert)
        all_reduce(total)
        gathered = [torch.empty_like(scores) for _ in range(world)]
        all_gather(gathered, scores)
        all_scores = torch.cat(gathered)
    else:
        all_scores = scores
    loss, const_buf = moekit.aux_loss_forward(all_scores, tokens_per_expert, total[0], E, K, COEFF)
    grad_probs = moekit.aux_loss_backward(const_buf, tokens_per_expert, torch.ones((), device=logits.device),
                                          logits.shape[0])
    grad_logits = moekit.aux_scores_backward(grad_probs, inter, score_function="sigmoid", out_dtype="float32")
    return loss, grad_logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096, help="the whole batch (split over the ranks)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--backend", choices=("nccl", "gloo"), default="nccl",
                    help="gloo: ranks may share a GPU (the collectives go through host copies)")
    args = ap.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    _COMM["backend"] = args.backend
    if world > 1:
        dist.init_process_group(args.backend)
    assert E % world == 0 and args.tokens % world == 0
    p = make_problem(args.tokens)
    T = args.tokens // world
    x = p["x"][rank * T:(rank + 1) * T]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    y, ids, logits, served = moe_layer(x, p, rank, world)
    loss, grad = aux_loss(logits, world)
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) * 1e3
    print(f"rank {rank}/{world}: {T} tokens, aux loss {loss.item():.8f}, step {step_ms:.2f} ms (first call)")
    if args.check:
        y1, ids1, logits1, served1 = moe_layer(p["x"], p, 0, 1)  # the whole batch on one GPU
        loss1, grad1 = aux_loss(logits1, 1)
        rows = slice(rank * T, (rank + 1) * T)
        assert torch.equal(ids, ids1[rows]), "expert ids differ from the single-GPU layer"
        for e, tokens in served.items():  # the same tokens reach each expert, in the same order
            assert torch.equal(tokens, served1[e]), f"expert {e} serves other tokens than on one GPU"
        err = ((y.float() - y1[rows].float()).norm() / y1[rows].float().norm()).item()
        assert err < 2e-2, f"outputs differ from the single-GPU layer: relative error {err:.3e}"
        assert torch.equal(loss, loss1), f"aux loss {loss.item()} vs single-GPU {loss1.item()}"
        gerr = ((grad - grad1[rows]).norm() / grad1[rows].norm().clamp_min(1e-30)).item()
        assert gerr < 1e-5, f"aux-loss gradient differs: relative error {gerr:.3e}"
        print(f"rank {rank}: check ok (ids and {len(served)} experts' token sets equal, output error {err:.2e}, "
              f"aux loss bitwise equal, "
              f"grad error {gerr:.1e})")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
