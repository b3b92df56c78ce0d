"""Bit-for-bit comparison of this build of libmoekit with another (an earlier commit's), on the GPU:
every router case below runs through both libraries' C entry points on the same inputs, and every
output byte must agree. Run after a change that must not change results (a refactoring):

    python scripts/compare_builds.py /path/to/old/libmoekit.so.1
    python scripts/compare_builds.py OLD --presets rounds,radix

The installed moekit is the new build. Each plan preset (moekit._hooks.PRESETS, and the defaults)
runs in its own process: the new build takes the preset through its in-process hooks, the old one
through the environment variables older builds read (OLD_NAMES below). Exit status 1 on any difference.
"""

import argparse
import ctypes
import os
import subprocess
import sys

# The environment variables that builds before the in-process hooks read in place of each knob.
OLD_NAMES = {
    "router.radix_min_k": "MOEKIT_ROUTER_RADIX_MIN_K",
    "router.filter_min_keys_per_lane": "MOEKIT_ROUTER_FILTER_MIN_VPT",
    "router.warp_max_experts": "MOEKIT_ROUTER_WARP_MAX_E",
    "router.team_max_k": "MOEKIT_ROUTER_TEAM_MAX_K",
    "router.team_any_score": "MOEKIT_ROUTER_TEAM_ANY_SCORE",
    "router.team_chunks": "MOEKIT_ROUTER_TEAM_CHUNKS",
    "router.team_pack_f32_min_t": "MOEKIT_ROUTER_TEAM_PACK_F32_MIN_T",
    "router.wide_max_k": "MOEKIT_ROUTER_WIDE_MAX_K",
    "router.wide_f32": "MOEKIT_ROUTER_WIDE_F32",
    "router.wide_min_experts": "MOEKIT_ROUTER_WIDE_MIN_E",
    "pdl": "MOEKIT_PDL",
}


def old_env(preset):
    """The older build's environment for a preset (or "defaults")."""
    from moekit._hooks import PRESETS

    knobs = {} if preset == "defaults" else PRESETS[preset]
    return {OLD_NAMES[name]: str(value) for name, value in knobs.items()}


SCORES = {"softmax": 0, "sigmoid": 1, "sqrtsoftplus": 2}
MAPS = {"none": 0, "bytemap": 1, "bitmap": 2}


def cases():
    """(T, E, K, score, pre, G, Kg, bias, map, dtype): every family of shapes the plans tell apart."""
    out = []
    shapes = [(8, 1), (33, 3), (64, 8), (100, 6), (128, 8), (128, 48), (256, 8), (256, 40), (257, 16), (300, 9),
              (512, 22), (777, 33), (1000, 9), (1024, 8), (1024, 36), (2304, 36), (2560, 64), (3000, 5), (4096, 40),
              (16384, 32)]
    for i, (E, K) in enumerate(shapes):
        for dtype in ("float32", "bfloat16", "float16"):
            for score, pre in (("softmax", False), ("softmax", True), ("sigmoid", False), ("sqrtsoftplus", False)):
                T = min((37, 8192, 20000)[(i + len(out)) % 3], 2**24 // E)
                fmt = ("bytemap", "bitmap", "none")[(i + len(out)) % 3]
                out.append((T, E, K, score, pre, 0, 0, score != "softmax" and i % 2 == 0, fmt, dtype))
    for E, K, G, Kg in ((64, 8, 8, 4), (128, 4, 4, 2), (256, 8, 8, 4), (256, 8, 32, 4), (512, 16, 16, 8), (1024, 8, 8, 4)):
        for dtype in ("float32", "bfloat16"):
            for score in ("sigmoid", "softmax"):
                out.append((20000, E, K, score, False, G, Kg, score == "sigmoid", "bytemap", dtype))
    for E, K, score, G, Kg, bias in ((128, 8, "softmax", 0, 0, False), (256, 8, "sigmoid", 8, 4, True),
                                     (512, 22, "softmax", 0, 0, False), (2304, 36, "softmax", 0, 0, False)):
        for dtype in ("float32", "bfloat16"):  # the benchmark's rows
            out.append((65536, E, K, score, False, G, Kg, bias, "bytemap", dtype))
    return out


def run_child(old_path, preset):
    import torch

    import moekit
    from moekit import _hooks, _lib

    old = ctypes.CDLL(old_path)
    for name in ("moekit_router_topk_forward", "moekit_router_topk_backward", "moekit_last_error"):
        restype, argtypes = _lib.PROTOTYPES[name]
        getattr(old, name).restype, getattr(old, name).argtypes = restype, argtypes
    new = _lib.lib
    dtypes = {"float32": (torch.float32, 0), "float16": (torch.float16, 1), "bfloat16": (torch.bfloat16, 2)}
    differ = total = 0
    with _hooks.tuning(None if preset == "defaults" else preset):
        for n, (T, E, K, score, pre, G, Kg, bias, fmt, dtype) in enumerate(cases()):
            gen = torch.Generator(device="cuda").manual_seed(n)
            td, code = dtypes[dtype]
            x = (torch.randn(T, E, device="cuda", generator=gen) * 2).to(td)
            b = torch.randn(E, device="cuda", generator=gen) * 0.2 if bias else None
            g = torch.randn(T, E, device="cuda", generator=gen).to(td)
            results = []
            for lib in (old, new):
                probs = torch.full((T, E), float("nan"), device="cuda", dtype=td)
                inter = torch.full((T, E), float("nan"), device="cuda")
                shape = (T, E) if fmt == "bytemap" else (T, (E + 7) // 8) if fmt == "bitmap" else (T, K)
                sel = (torch.full(shape, -7, device="cuda", dtype=torch.int64) if fmt == "none"
                       else torch.full(shape, 0xAB, device="cuda", dtype=torch.uint8))
                grad = torch.full((T, E), float("nan"), device="cuda", dtype=td)
                st = lib.moekit_router_topk_forward(
                    x.data_ptr(), code, T, E, K, SCORES[score], int(pre), G, Kg, 1.5,
                    None if b is None else b.data_ptr(), 0, probs.data_ptr(),
                    None if fmt == "none" else sel.data_ptr(), MAPS[fmt], sel.data_ptr() if fmt == "none" else None, 4,
                    inter.data_ptr(), None)  # fmt: skip
                assert st == 0, lib.moekit_last_error()
                st = lib.moekit_router_topk_backward(
                    g.data_ptr(), code, T, E, inter.data_ptr(), None if fmt == "none" else sel.data_ptr(), MAPS[fmt],
                    sel.data_ptr() if fmt == "none" else None, 4, K, SCORES[score], int(pre), 1.5, grad.data_ptr(),
                    None)  # fmt: skip
                assert st == 0, lib.moekit_last_error()
                results.append([t.view(torch.uint8) if t.dtype != torch.uint8 else t for t in (probs, sel, inter, grad)])
            torch.cuda.synchronize()
            same = all(torch.equal(a, c) for a, c in zip(*results))
            total += 1
            if not same:
                differ += 1
                print(f"[{preset}] DIFFER: T={T} E={E} K={K} {score}{'-pre' if pre else ''} G={G}/{Kg} "
                      f"bias={bias} {fmt} {dtype}")
    print(f"[{preset}] {total - differ} of {total} cases bitwise equal (moekit {moekit.__version__} vs {old_path})")
    return 1 if differ else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="the other build's libmoekit.so.1")
    ap.add_argument("--presets", default=None, help="comma-separated (default: defaults and every preset)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return run_child(os.path.abspath(args.old), args.child)
    from moekit._hooks import PRESETS

    status = 0
    for preset in ["defaults", *PRESETS] if args.presets is None else args.presets.split(","):
        env = dict(os.environ, **old_env(preset))
        status |= subprocess.call([sys.executable, __file__, args.old, "--child", preset], env=env)
    return status


if __name__ == "__main__":
    sys.exit(main())
