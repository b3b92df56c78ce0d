"""The op families of `moekit check` and `moekit bench`: router and aux_loss here, quant and epilogue in
families_ffn.py (which shares this module's helpers).

Each family has a check (small random inputs on the GPU against moekit.reference) and its benchmark
cells (the fewest bytes each op must move, the inputs, moekit's call and the torch composition a user
writes without moekit; the runner adds torch.compile of that composition). torch and moekit are
handed in: importing this module imports neither torch nor the library.
"""

from __future__ import annotations

import numpy as np

from .registry import Cell, Unavailable, register

K = 8  # experts per token in every router / aux-loss cell
COEFF = 1e-2
EPS_NORM = 1e-6
GROUP = 128
FP8_MAX = 448.0
BF16 = 2  # bytes


# ---- helpers ---------------------------------------------------------------------------------------


def _dev(torch, array, dtype=None):
    """NumPy -> CUDA tensor (rounded to dtype on the device, if given)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
    return tensor if dtype is None else tensor.to(dtype)


def _host(tensor):
    """CUDA tensor -> float64 NumPy (bf16 and f32 values are exact in float64)."""
    return tensor.detach().double().cpu().numpy()


def _lazy(make):
    """make() on first use, then the same object: device buffers a cell allocates only when it runs."""
    box = []

    def get():
        if not box:
            box.append(make())
        return box[0]
    return get


def _need(names, *modules):
    """Raise Unavailable unless every module (moekit, moekit.reference) has every name."""
    missing = [n for n in names if not all(hasattr(module, n) for module in modules)]
    if missing:
        raise Unavailable(f"{', '.join(missing)}: not in this moekit build")


def _close(op, got, want, rtol, atol):
    """(op, ok, detail): every |got - want| <= atol + rtol |want| (NaN and inf only where want has them)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return op, False, f"shape {got.shape}, reference {want.shape}"
    with np.errstate(invalid="ignore"):
        same = (got == want) | (np.isnan(got) & np.isnan(want))  # equal infinities, NaN in both
        err = np.where(same, 0.0, np.abs(got - want))  # NaN where only one is NaN
        bound = np.where(np.isfinite(want), atol + rtol * np.abs(want), 0.0)
        ok = bool(np.all(err <= bound))
        ratio = np.divide(err, bound, out=np.where(err == 0, 0.0, np.inf), where=bound > 0)
    worst = float(np.max(np.nan_to_num(ratio, nan=np.inf, posinf=np.inf), initial=0.0))
    nans = int(np.isnan(err).sum())
    return op, ok, (f"max err {float(np.nanmax(err, initial=0.0)):.2e} ({worst:.2f} of tolerance)"
                    + (f", {nans} NaN in one but not the other" if nans else ""))


def _near_ties(keys, k, rtol=1e-5):
    """Rows whose k-th and (k+1)-th best keys are within rtol: fp32 may pick either."""
    ordered = -np.sort(-keys, axis=1)
    if k >= ordered.shape[1]:
        return np.zeros(len(keys), dtype=bool)
    kth, nxt = ordered[:, k - 1], ordered[:, k]
    with np.errstate(invalid="ignore"):
        return np.isfinite(nxt) & (kth - nxt <= rtol * np.maximum(np.abs(kth), 1e-30))


def _selection(op, device_map, reference_map, ties):
    """(rows where both pick the same experts, a failed result or None): only near-ties may differ."""
    same = ~(_host(device_map) != reference_map).any(axis=1)
    bad = int((~same & ~ties).sum())
    return same, (op, False, f"{bad} rows select other experts than the reference") if bad else None


# ---- router ----------------------------------------------------------------------------------------

ROUTER_CASES = (("softmax", 128, 0, 0, False), ("sigmoid", 256, 8, 4, True))  # score, E, groups, Kg, bias


def _router_label(score, E, G, Kg, biased):
    return f"E={E} K={K} {score}" + (f" groups {G}/{Kg}" if G else "") + (" bias" if biased else "")


def torch_router(torch, logits, score, G=0, Kg=0, bias=None):
    """(probs in the logits' dtype, bool routing map) of top-K routing, in fp32 math."""
    x = logits.float()
    values = x if score == "softmax" else torch.sigmoid(x)
    keys = values if bias is None else values + bias
    T, E = x.shape
    if Kg:  # keep the Kg groups whose top K/Kg keys sum highest
        per_group = keys.view(T, G, E // G)
        best = per_group.topk(K // Kg, dim=2).values.sum(dim=2).topk(Kg, dim=1).indices
        dropped = torch.ones(T, G, dtype=torch.bool, device=x.device).scatter(1, best, False)
        keys = per_group.masked_fill(dropped[:, :, None], float("-inf")).view(T, E)
    picked = keys.topk(K, dim=1).indices
    chosen = values.gather(1, picked)
    weights = chosen.softmax(dim=1) if score == "softmax" else chosen / (chosen.sum(1, keepdim=True) + 1e-20)
    selected = torch.zeros(T, E, dtype=torch.bool, device=x.device).scatter(1, picked, True)
    return torch.zeros_like(x).scatter(1, picked, weights).to(logits.dtype), selected


def router_check(torch, moekit, reference, rng):
    _need(("router_topk_forward", "router_topk_backward"), moekit, reference)
    results, T = [], 96
    for score, E, G, Kg, biased in ROUTER_CASES:
        label = _router_label(score, E, G, Kg, biased)
        logits = rng.standard_normal((T, E)).astype(np.float32)
        bias = (0.05 * rng.standard_normal(E)).astype(np.float32) if biased else None
        opts = dict(score_function=score, num_groups=G, group_topk=Kg, expert_bias=bias)
        ref_probs, ref_map, _ = reference.router_topk_forward(logits, K, **opts)
        ties = _near_ties(reference.router_keys(logits, K, **opts), K)
        if Kg:
            ties |= _near_ties(reference.router_group_scores(logits, K, **opts), Kg)
        opts["expert_bias"] = None if bias is None else _dev(torch, bias)
        probs, routing_map, intermediate = moekit.router_topk_forward(_dev(torch, logits), K, **opts)
        op = f"router_topk_forward [{label}]"
        same, failure = _selection(op, routing_map, ref_map, ties)
        results.append(failure or _close(op, _host(probs)[same], ref_probs[same], 1e-5, 1e-7))
        grad = rng.standard_normal((T, E)).astype(np.float32)
        got = moekit.router_topk_backward(_dev(torch, grad), intermediate, routing_map, K, score_function=score)
        want = reference.router_topk_backward(grad, _host(intermediate), _host(routing_map) != 0, K,
                                              score_function=score)
        results.append(_close(f"router_topk_backward [{label}]", _host(got), want, 1e-5, 1e-6))
    return results


def router_cells(torch, moekit, quick):
    cells = []
    for T in (65536,) if quick else (8192, 65536):
        for score, E, G, Kg, biased in ROUTER_CASES:
            cells.append(_router_forward_cell(torch, moekit, T, score, E, G, Kg, biased))
    if not quick:
        cells.append(_router_backward_cell(torch, moekit, 65536, 128))
    return cells


def _router_forward_cell(torch, moekit, T, score, E, G, Kg, biased):
    def make_inputs():
        logits = torch.randn(T, E, device="cuda").mul_(2).to(torch.bfloat16)
        return (logits, 0.05 * torch.randn(E, device="cuda")) if biased else (logits,)

    def ours(x, bias=None):
        return moekit.router_topk_forward(x, K, score_function=score, num_groups=G, group_topk=Kg,
                                          expert_bias=bias)

    def eager(x, bias=None):
        return torch_router(torch, x, score, G, Kg, bias)
    # read logits (and the bias); write probs, the bytemap and the f32 intermediate
    nbytes = T * E * (2 * BF16 + 1 + 4) + (E * 4 if biased else 0)
    return Cell("router_topk_forward", f"T={T} {_router_label(score, E, G, Kg, biased)}", nbytes, make_inputs,
                {"moekit": ours, "torch eager": eager}, params=dict(T=T, E=E, score=score, groups=G, group_topk=Kg))


def _router_backward_cell(torch, moekit, T, E):
    def make_inputs():
        _, routing_map, intermediate = moekit.router_topk_forward(
            torch.randn(T, E, device="cuda").to(torch.bfloat16), K)
        return torch.randn(T, E, device="cuda").to(torch.bfloat16), intermediate, routing_map

    def ours(grad, intermediate, routing_map):
        return moekit.router_topk_backward(grad, intermediate, routing_map, K, score_function="softmax")

    def eager(grad, intermediate, routing_map):  # softmax over the K selected logits, differentiated
        w = torch.where(routing_map, intermediate, 0.0)
        g = grad.float()
        return (w * (g - (g * w).sum(1, keepdim=True))).to(grad.dtype)
    # read the bytemap, and grad and the f32 intermediate at the T*K selected positions only (the
    # gradient is 0 elsewhere); write grad_logits
    return Cell("router_topk_backward", f"T={T} E={E} K={K} softmax", T * E * (1 + BF16) + T * K * (BF16 + 4),
                make_inputs, {"moekit": ours, "torch eager": eager}, params=dict(T=T, E=E, score="softmax"))


# ---- aux loss ----------------------------------------------------------------------------------------


def torch_aux_scores(torch, logits):
    """Sigmoid aux-loss scores (normalized over all experts) and the bool map of the top K."""
    y = logits.float().sigmoid()
    scores = y / y.sum(dim=1, keepdim=True).add(1e-20)
    top = scores.topk(K, dim=1).indices
    return scores, torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter(1, top, True)


def aux_check(torch, moekit, reference, rng):
    ops = ("aux_scores_forward", "aux_scores_backward", "aux_loss_forward", "aux_loss_backward")
    _need(ops, moekit, reference)
    T, E, results = 96, 256, []
    logits = rng.standard_normal((T, E)).astype(np.float32)
    ref_scores, ref_map, _ = reference.aux_scores_forward(logits, K, score_function="sigmoid")
    scores, routing_map, intermediate = moekit.aux_scores_forward(_dev(torch, logits), K, score_function="sigmoid")
    _, failure = _selection("aux_scores_forward", routing_map, ref_map, _near_ties(ref_scores, K))
    results.append(failure or _close("aux_scores_forward", _host(scores), ref_scores, 1e-5, 1e-9))
    grad = rng.standard_normal((T, E)).astype(np.float32)
    got = moekit.aux_scores_backward(_dev(torch, grad), intermediate, score_function="sigmoid")
    want = reference.aux_scores_backward(grad, _host(intermediate), score_function="sigmoid")
    results.append(_close("aux_scores_backward", _host(got), want, 1e-5, 1e-8))
    probs = rng.random((T, E)).astype(np.float32)
    tokens = rng.integers(0, 2 * T, E).astype(np.int32)
    loss, const_buf = moekit.aux_loss_forward(_dev(torch, probs), _dev(torch, tokens), T * K, E, K, COEFF)
    ref_loss, _ = reference.aux_loss_forward(probs, tokens, T * K, E, K, COEFF)
    results.append(_close("aux_loss_forward", _host(loss), ref_loss, 1e-5, 0.0))
    grad_loss = np.float32(rng.standard_normal())
    got = moekit.aux_loss_backward(const_buf, _dev(torch, tokens), _dev(torch, np.array(grad_loss)), T)
    want = reference.aux_loss_backward(_host(const_buf), tokens, grad_loss, T)
    results.append(_close("aux_loss_backward", _host(got), want, 1e-5, 0.0))
    return results


def aux_cells(torch, moekit, quick):
    E, cells = 256, []
    for T in (65536,) if quick else (8192, 65536):
        def new_logits(T=T):
            return (torch.randn(T, E, device="cuda").mul_(2).to(torch.bfloat16),)

        def ours(x):
            return moekit.aux_scores_forward(x, K, score_function="sigmoid")
        # read logits; write the f32 scores and intermediate and the bytemap
        cells.append(Cell("aux_scores_forward", f"T={T} E={E} K={K} sigmoid", T * E * (BF16 + 9), new_logits,
                          {"moekit": ours, "torch eager": lambda x: torch_aux_scores(torch, x)},
                          params=dict(T=T, E=E)))
        cells.append(_aux_loss_cell(torch, moekit, T, E))
    if not quick:
        cells.append(_aux_backward_cell(torch, moekit, 65536, E))
    return cells


def _aux_loss_cell(torch, moekit, T, E):
    workspace = _lazy(lambda: torch.zeros(moekit.aux_loss_workspace_size(T, E), dtype=torch.uint8, device="cuda"))
    scale = E * COEFF / (K * (T * K) ** 2)

    def make_inputs():
        return torch.rand(T, E, device="cuda"), torch.randint(0, 2 * T, (E,), device="cuda", dtype=torch.int32)

    def ours(probs, tokens):
        return moekit.aux_loss_forward(probs, tokens, T * K, E, K, COEFF, workspace=workspace())

    def eager(probs, tokens):
        return torch.dot(probs.sum(dim=0), tokens.float()) * scale
    return Cell("aux_loss_forward", f"R={T} C={E} f32", T * E * 4 + E * 4, make_inputs,
                {"moekit": ours, "torch eager": eager}, params=dict(T=T, E=E))


def _aux_backward_cell(torch, moekit, T, E):
    def make_inputs():
        _, _, y = moekit.aux_scores_forward(torch.randn(T, E, device="cuda").to(torch.bfloat16), K,
                                            score_function="sigmoid")
        return torch.randn(T, E, device="cuda"), y

    def ours(grad, y):
        return moekit.aux_scores_backward(grad, y, score_function="sigmoid", out_dtype="bfloat16")

    def eager(grad, y):  # d/dx of y / sum(y), y = sigmoid(x)
        total = y.sum(dim=1, keepdim=True) + 1e-20
        inner = (grad - (grad * y).sum(dim=1, keepdim=True) / total) / total
        return (inner * y * (1 - y)).to(torch.bfloat16)
    # read grad and the intermediate (f32); write grad_logits
    return Cell("aux_scores_backward", f"T={T} E={E} sigmoid", T * E * (4 + 4 + BF16), make_inputs,
                {"moekit": ours, "torch eager": eager}, params=dict(T=T, E=E))


register("router", ops=("router_topk_forward", "router_topk_backward"), check=router_check, cells=router_cells,
         description="top-k routing with a score function, forward and backward")
register("aux_loss", ops=("aux_scores_forward", "aux_scores_backward", "aux_loss_forward", "aux_loss_backward"),
         check=aux_check, cells=aux_cells, description="aux-loss scores and the aux loss")
