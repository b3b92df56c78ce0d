"""A small MoE block in PyTorch whose router is moekit's (TransformerEngine's signature, autograd,
torch.compile-able). The experts are plain loops over linear layers: the point is the router.

    python examples/python/moe_block_torch.py
"""
import torch

import moekit.torch as mt


class MoEBlock(torch.nn.Module):
    def __init__(self, hidden, experts, topk, groups=8, group_topk=4):
        super().__init__()
        self.gate = torch.nn.Linear(hidden, experts, bias=False)
        self.expert_bias = torch.nn.Parameter(torch.zeros(experts), requires_grad=False)  # aux-loss-free balancing
        self.experts = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(experts))
        self.topk, self.groups, self.group_topk = topk, groups, group_topk

    def forward(self, x):  # x [T, hidden]
        probs, routing_map = mt.fused_topk_with_score_function(
            self.gate(x), self.topk, num_groups=self.groups, group_topk=self.group_topk,
            scaling_factor=2.5, score_function="sigmoid", expert_bias=self.expert_bias)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tokens = routing_map[:, e].nonzero(as_tuple=True)[0]
            if tokens.numel():
                out.index_add_(0, tokens, expert(x[tokens]) * probs[tokens, e, None].to(x.dtype))
        return out


if __name__ == "__main__":
    torch.manual_seed(0)
    block = MoEBlock(hidden=256, experts=64, topk=8).cuda().to(torch.bfloat16)
    x = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = block(x)
    y.float().square().mean().backward()
    print("out", tuple(y.shape), "grad norm of the gate:", block.gate.weight.grad.float().norm().item())
