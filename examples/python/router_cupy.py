"""The router on CuPy arrays: outputs come back as CuPy arrays, work runs on CuPy's current stream.

    python examples/python/router_cupy.py
"""
import cupy as cp

import moekit

T, E, K = 4096, 512, 22
logits = cp.random.standard_normal((T, E), dtype=cp.float32)
stream = cp.cuda.Stream(non_blocking=True)
with stream:  # default stream of a call = the current stream of the inputs' framework
    probs, indices, intermediate = moekit.router_topk_forward(
        logits, K, score_function="softmax", map_format="indices", index_dtype="int64")
    grad_logits = moekit.router_topk_backward(
        cp.ones_like(probs), intermediate, indices, K, score_function="softmax", map_format="indices")
stream.synchronize()
print("experts of token 0:", indices[0].get(), "weights sum:", float(probs[0].sum()))
print("grad_logits", grad_logits.shape, grad_logits.dtype)
