"""A Megatron-style MoE router written with moekit: the router's top-k probs, the aux-loss scores,
the load-balancing aux loss and the backward through all three, run eagerly, under
torch.compile(fullgraph=True) and replayed as a CUDA graph.

The three calls have TransformerEngine's names and signatures (transformer_engine.pytorch.router),
so a Megatron user switches by changing the import. The last step does the same with the router and
the aux-loss scores in one op (fused_topk_and_score_for_moe_aux_loss: one read of the logits, one
backward pass for both gradients). Run: python examples/python/megatron_router.py
"""

import torch

from moekit.torch import (fused_compute_score_for_moe_aux_loss, fused_moe_aux_loss,
                          fused_topk_and_score_for_moe_aux_loss, fused_topk_with_score_function)


def megatron_router_step(logits, weight, topk, coeff, pair=False):
    """-> (a scalar to differentiate, probs, routing_map, the aux loss's map, the aux loss)."""
    if pair:
        probs, routing_map, scores, aux_map = fused_topk_and_score_for_moe_aux_loss(logits, topk)
    else:
        probs, routing_map = fused_topk_with_score_function(logits, topk, score_function="softmax")
        aux_map, scores = fused_compute_score_for_moe_aux_loss(logits, topk, "softmax")
    tokens_per_expert = aux_map.sum(dim=0)
    aux = fused_moe_aux_loss(scores, tokens_per_expert, logits.shape[0], logits.shape[1], topk, coeff)
    # stands in for the rest of the layer: the expert outputs weighted by probs
    total = (probs * weight).sum() + aux
    return total, probs, routing_map, aux_map, aux


def main():
    torch.manual_seed(0)
    T, E, K, coeff = 4096, 128, 8, 1e-2
    logits = torch.randn(T, E, device="cuda", requires_grad=True)
    weight = torch.randn(T, E, device="cuda")

    total, _, _, _, aux = megatron_router_step(logits, weight, K, coeff)
    total.backward()
    eager_grad = logits.grad.clone()
    print(f"eager:    aux loss {aux.item():.6f}, |grad| {eager_grad.norm():.6f}")

    logits.grad = None
    compiled = torch.compile(megatron_router_step, fullgraph=True)
    total, _, _, _, aux = compiled(logits, weight, K, coeff)
    total.backward()
    print(f"compiled: aux loss {aux.item():.6f}, same grad: {torch.equal(logits.grad, eager_grad)}")

    static_logits = logits.detach().clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up before capture
        megatron_router_step(static_logits, weight, K, coeff)[0].backward()
    torch.cuda.current_stream().wait_stream(side)
    static_logits.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total, _, _, _, aux = megatron_router_step(static_logits, weight, K, coeff)
        total.backward()
    graph.replay()
    torch.cuda.synchronize()
    print(f"graph:    aux loss {aux.item():.6f}, same grad: {torch.equal(static_logits.grad, eager_grad)}")

    logits.grad = None
    total, _, _, _, aux = megatron_router_step(logits, weight, K, coeff, pair=True)
    total.backward()
    diff = (logits.grad - eager_grad).abs().max().item() / eager_grad.abs().max().item()
    print(f"pair:     aux loss {aux.item():.6f}, grad within {diff:.1e} of the two calls' (one rounding fewer)")


if __name__ == "__main__":
    main()
