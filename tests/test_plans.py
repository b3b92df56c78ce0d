"""Which plan each call gets (kernels/router/plan.h), asked of the real entry points in plan-only
mode (kernels/common/hooks.h) for an H100's properties: no GPU needed, so this runs in CI.

The benchmark shapes' plans are pinned here: a change of a tuning table shows up as a failing test
and has to come with its measurement (bench/NOTES.md).
"""

import pytest

from moekit import _hooks, _lib
from moekit._lib import DType, MapFormat, ScoreFunction, Status

# Distinct, 256-byte aligned fake device addresses: plan-only mode never touches them.
LOGITS, PROBS, MAP, INTERMEDIATE, BIAS, GRAD, GRAD_LOGITS, INDICES = (0x100000 * (i + 1) for i in range(8))
AUX_SCORES, AUX_MAP, AUX_INTERMEDIATE, GRAD_AUX = (0x100000000 * (i + 1) for i in range(4))  # apart from the above
DTYPES = {"bf16": DType.BF16, "f16": DType.F16, "f32": DType.F32}
SCORES = {"softmax": ScoreFunction.SOFTMAX, "sigmoid": ScoreFunction.SIGMOID, "sqrtsoftplus": ScoreFunction.SQRTSOFTPLUS}


def forward_plan(T, E, K, dtype="bf16", score="softmax", pre=False, groups=(0, 0), bias=False, indices=False,
                 map_format=MapFormat.BYTEMAP, logits=LOGITS, device=_hooks.H100):
    with _hooks.plan_only(device):
        status = _lib.lib.moekit_router_topk_forward(
            logits, DTYPES[dtype], T, E, K, SCORES[score], int(pre), groups[0], groups[1], 1.0,
            BIAS if bias else None, DType.F32, PROBS, None if map_format == MapFormat.NONE else MAP, map_format,
            INDICES if indices else None, DType.I32, INTERMEDIATE, None)  # fmt: skip
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def backward_plan(T, E, K, dtype="bf16", score="softmax", pre=False, map_format=MapFormat.BYTEMAP):
    with _hooks.plan_only():
        status = _lib.lib.moekit_router_topk_backward(
            GRAD, DTYPES[dtype], T, E, INTERMEDIATE, MAP if map_format != MapFormat.NONE else None, map_format,
            INDICES if map_format == MapFormat.NONE else None, DType.I32, K, SCORES[score], int(pre), 1.0,
            GRAD_LOGITS, None)  # fmt: skip
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def subset(plan, **expected):
    """The entries of `plan` named in `expected`, as strings (plans are key=value text)."""
    return {key: plan.get(key) for key in expected}, {key: str(value) for key, value in expected.items()}


# bench/router.py's rows: (name, E, K, score, groups, bias)
ROWS = {
    "e128k8": (128, 8, "softmax", (0, 0), False),
    "e256k8g8": (256, 8, "sigmoid", (8, 4), True),
    "e512k22": (512, 22, "softmax", (0, 0), False),
    "e2304k36": (2304, 36, "softmax", (0, 0), False),
}
TEAM = "team_rows"
FORWARD_PLANS = {  # (row, dtype, T) -> the plan's deciding fields
    ("e128k8", "bf16", 8192): dict(path=TEAM, kernel="softmax_post_packed", lanes=8, chunks=2, full=1),
    ("e128k8", "bf16", 65536): dict(path=TEAM, kernel="softmax_post_packed", lanes=8, chunks=2, full=1),
    ("e128k8", "f32", 8192): dict(path=TEAM, kernel="softmax_post_f32_packed", lanes=16, chunks=1, full=1),
    ("e128k8", "f32", 65536): dict(path=TEAM, kernel="softmax_post_f32_packed", lanes=8, chunks=2, full=1),
    ("e256k8g8", "bf16", 8192): dict(path=TEAM, kernel="sigmoid", lanes=32, chunks=1, full=1),
    ("e256k8g8", "bf16", 65536): dict(path=TEAM, kernel="sigmoid", lanes=16, chunks=2, full=1),
    ("e256k8g8", "f32", 8192): dict(path=TEAM, kernel="sigmoid", lanes=32, chunks=1, full=1),
    ("e256k8g8", "f32", 65536): dict(path=TEAM, kernel="sigmoid", lanes=16, chunks=2, full=1),
    ("e512k22", "bf16", 8192): dict(path="wide_rows", chunks=2, packed=1),
    ("e512k22", "bf16", 65536): dict(path="wide_rows", chunks=2, packed=1),
    ("e512k22", "f32", 8192): dict(path="wide_rows", chunks=2, packed=0),
    ("e512k22", "f32", 65536): dict(path="wide_rows", chunks=2, packed=0),
    ("e2304k36", "bf16", 8192): dict(path="wide_rows", chunks=9, packed=1),
    ("e2304k36", "bf16", 65536): dict(path="wide_rows", chunks=9, packed=1),
    ("e2304k36", "f32", 8192): dict(path="wide_rows", chunks=9, packed=0),
    ("e2304k36", "f32", 65536): dict(path="wide_rows", chunks=9, packed=0),
}
BACKWARD_PLANS = {  # E -> plan (every dtype and T of the benchmark)
    128: dict(path="warp_rows", vpt=4, threads=128),
    256: dict(path="warp_rows", vpt=8, threads=128),
    512: dict(path="warp_rows", vpt=16, threads=128),
    2304: dict(path="block_rows", vpt=8, threads=288),
}


@pytest.mark.parametrize("row, dtype, T", FORWARD_PLANS, ids=[f"{r}-{d}-T{t}" for r, d, t in FORWARD_PLANS])
def test_benchmark_shapes_forward_plans(row, dtype, T):
    E, K, score, groups, bias = ROWS[row]
    plan = forward_plan(T, E, K, dtype, score, groups=groups, bias=bias)
    got, want = subset(plan, **FORWARD_PLANS[row, dtype, T])
    assert got == want, plan
    assert plan["pdl"] == "1" and plan["vec"] == "1"
    rows_per_block = 4 * (32 // int(plan["lanes"])) if plan["path"] == TEAM else 4
    assert int(plan["blocks"]) == -(-T // rows_per_block)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("T", [8192, 65536])
def test_benchmark_shapes_backward_plans(row, dtype, T):
    E, K, score, _, _ = ROWS[row]
    plan = backward_plan(T, E, K, dtype, score)
    got, want = subset(plan, **BACKWARD_PLANS[E])
    assert got == want, plan
    assert int(plan["blocks"]) == (T if plan["path"] == "block_rows" else T // 4)


def test_plans_of_other_shapes():
    # small T: 16-bit softmax-post at E = 512 takes team rows below 8192 tokens, wide rows from there
    assert forward_plan(4096, 512, 22)["path"] == TEAM
    assert forward_plan(8192, 512, 22)["path"] == "wide_rows"
    # unaligned logits: no vector access, and no bounds-test-free (FULL) team kernel
    plan = forward_plan(8192, 128, 8, logits=LOGITS + 2)
    assert plan["vec"] == "0" and plan["full"] == "0"
    # long rows: warp rows up to 1024 experts, block rows above; radix select from K = 4 above 1024
    assert forward_plan(8192, 1024, 8, score="sigmoid")["path"] == "warp_rows"
    plan = forward_plan(8192, 4096, 8, score="sigmoid")
    assert (plan["path"], plan["topk"]) == ("block_rows", "radix")
    # filtered top-k on warp rows of unpacked keys with many keys per lane
    assert forward_plan(8192, 1024, 8, score="sigmoid")["topk"] == "filtered"
    # the sorted-index list of radix select takes shared memory: 2 K words more per team
    words = int(forward_plan(64, 4096, 36, "f32", "sigmoid")["smem_words"])
    assert int(forward_plan(64, 4096, 36, "f32", "sigmoid", indices=True)["smem_words"]) == words + 72
    # no PDL on a device before sm_90
    ampere = dict(_hooks.H100, cc_major=8)
    assert forward_plan(8192, 128, 8, device=ampere)["pdl"] == "0"


PRESET_PATHS = {  # preset -> (T, E, K, dtype, score, the plan fields it must force)
    "rounds": (8192, 128, 8, "bf16", "softmax", dict(path="warp_rows", topk="rounds")),
    "radix": (8192, 128, 8, "bf16", "softmax", dict(path="warp_rows", topk="radix")),
    "filtered": (8192, 256, 8, "f32", "sigmoid", dict(path="warp_rows", topk="filtered")),
    "team16": (8192, 256, 8, "bf16", "sigmoid", dict(path=TEAM, chunks=2, lanes=16)),
    "team8_wide257": (65536, 256, 8, "bf16", "sigmoid", dict(path=TEAM, chunks=1, lanes=32)),
}


@pytest.mark.parametrize("preset", PRESET_PATHS)
def test_presets_force_their_paths(preset):
    T, E, K, dtype, score, fields = PRESET_PATHS[preset]
    default = forward_plan(T, E, K, dtype, score)
    with _hooks.tuning(preset):
        forced = forward_plan(T, E, K, dtype, score)
    got, want = subset(forced, **fields)
    assert got == want
    assert forced != default
    assert forward_plan(T, E, K, dtype, score) == default  # the block's end reset the knobs


def test_wide_rows_from_257_experts_with_the_preset():
    assert forward_plan(1024, 300, 8)["path"] == TEAM
    with _hooks.tuning("team8_wide257"):
        assert forward_plan(1024, 300, 8)["path"] == "wide_rows"


def test_tuning_knobs_reset_and_unknown_names():
    default = forward_plan(8192, 128, 8)
    _hooks.set_tuning("router.team_max_k", 0)
    try:
        assert forward_plan(8192, 128, 8)["path"] == "warp_rows"
    finally:
        _hooks.reset_tuning()
    assert forward_plan(8192, 128, 8) == default
    with pytest.raises(ValueError, match="unknown knob 'router.no_such_knob'"):
        _hooks.set_tuning("router.no_such_knob", 1)
    assert set(_hooks.tuning_names()) >= {"pdl", "router.radix_min_k", "router.team_max_k", "router.wide_max_k"}
    for preset in _hooks.PRESETS.values():
        assert set(preset) <= set(_hooks.tuning_names())


def test_plan_only_still_validates():
    with _hooks.plan_only():
        status = _lib.lib.moekit_router_topk_forward(
            LOGITS, DType.BF16, 8, 128, 0, ScoreFunction.SOFTMAX, 0, 0, 0, 1.0, None, DType.F32, PROBS, MAP,
            MapFormat.BYTEMAP, None, DType.I32, INTERMEDIATE, None)  # fmt: skip
    assert status == Status.INVALID_ARGUMENT and "topk" in _lib.last_error()


def test_plan_only_is_per_thread():
    import threading

    mine = forward_plan(8192, 128, 8)  # recorded in this thread (H100: pdl=1)
    seen = {}

    def other():
        seen["before"] = _hooks.last_plan()  # this thread has recorded nothing
        seen["plan"] = forward_plan(8192, 128, 8, device=dict(_hooks.H100, cc_major=8))  # pdl=0
        seen["after"] = _hooks.last_plan()

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert _hooks.last_plan() == mine  # the other thread's plan did not replace this thread's
    assert seen["before"] == {}
    assert seen["plan"] == seen["after"] and seen["plan"]["pdl"] == "0" and mine["pdl"] == "1"


# Each knob, a value and a call whose plan it changes: every knob the hooks accept is read by a
# tuning function (a name misspelt there would leave its knob without effect, and fail here).
KNOB_EFFECTS = {
    "pdl": (0, dict(T=8192, E=128, K=8), "pdl"),
    "router.radix_min_k": (1, dict(T=64, E=4096, K=2, score="sigmoid"), "topk"),
    "router.filter_min_keys_per_lane": (0, dict(T=8192, E=1024, K=8, score="sigmoid"), "topk"),
    "router.warp_max_experts": (512, dict(T=8192, E=1024, K=8, score="sigmoid"), "path"),
    "router.team_max_k": (0, dict(T=8192, E=128, K=8), "path"),
    "router.team_any_score": (0, dict(T=8192, E=256, K=8, score="sigmoid"), "path"),
    "router.team_chunks": (2, dict(T=8192, E=256, K=8, score="sigmoid"), "chunks"),
    "router.team_pack_f32_min_t": (1, dict(T=4096, E=128, K=8, dtype="f32"), "kernel"),
    "router.wide_max_k": (0, dict(T=8192, E=512, K=22), "path"),
    "router.wide_f32": (0, dict(T=8192, E=512, K=22, dtype="f32"), "path"),
    "router.wide_min_experts": (600, dict(T=8192, E=512, K=22), "path"),
}
PAIR_KNOB_EFFECTS = {"router.pair_fused": (0, dict(T=8192, E=128, K=8), "fused")}


# The aux loss's knobs: a value and the call (R, C) whose plan it changes.
AUX_LOSS_KNOB_EFFECTS = {
    "aux_loss.blocks_per_sm": (2, dict(R=65536, C=256), "blocks"),
    "aux_loss.blocks": (7, dict(R=65536, C=256), "blocks"),
}


# The quantization's knobs: a value and the call whose plan it changes.
QUANT_KNOB_EFFECTS = {
    "quant.blocks_per_sm": (2, dict(T=65536, H=7168), "blocks"),
    "quant.blocks": (7, dict(T=65536, H=7168), "blocks"),
    "quant.async": (1, dict(T=65536, H=7168), "path"),
    "quant.prefetch": (1, dict(T=65536, H=7168), "path"),
}


# The epilogues' knobs.
EPILOGUE_KNOB_EFFECTS = {
    "epilogue.gate_blocks_per_sm": (2, dict(op="gate", T=65536, H=7168), "blocks"),
    "epilogue.norm_min_vpt": (32, dict(op="rmsnorm", T=8192, H=7168), "vpt"),
    "epilogue.norm_max_threads": (1024, dict(op="rmsnorm", T=8192, H=7168), "vpt"),
    "epilogue.norm_waves": (1, dict(op="rmsnorm", T=65536, H=7168), "blocks"),
}


ALIGN_KNOB_EFFECTS = {"align.force_multi": (1, dict(T=16, K=8, E=256), "path")}
TOPK_KNOB_EFFECTS = {"grouped_topk.blocks_per_sm": (2, dict(T=65536), "blocks")}


def test_every_knob_changes_a_plan():
    knobs = set(KNOB_EFFECTS) | set(AUX_LOSS_KNOB_EFFECTS) | set(QUANT_KNOB_EFFECTS) | set(EPILOGUE_KNOB_EFFECTS) \
        | set(ALIGN_KNOB_EFFECTS) | set(TOPK_KNOB_EFFECTS) | set(PAIR_KNOB_EFFECTS)
    assert knobs == set(_hooks.tuning_names())
    for effects, planner in ((KNOB_EFFECTS, forward_plan), (AUX_LOSS_KNOB_EFFECTS, aux_loss_plan),
                             (QUANT_KNOB_EFFECTS, quant_plan), (EPILOGUE_KNOB_EFFECTS, epilogue_plan),
                             (ALIGN_KNOB_EFFECTS, align_plan), (TOPK_KNOB_EFFECTS, topk_plan),
                             (PAIR_KNOB_EFFECTS, lambda **call: pair_plan(**call))):
        for knob, (value, call, field) in effects.items():
            default = planner(**call)
            with _hooks.tuning({knob: value}):
                forced = planner(**call)
            assert forced[field] != default[field], (knob, default, forced)


# ---- aux-loss scores and aux loss -----------------------------------------------------------------

WORKSPACE = 0x7000000


def aux_scores_plan(T, E, K, dtype="bf16", score="softmax", backward=False):
    with _hooks.plan_only():
        if backward:
            status = _lib.lib.moekit_aux_scores_backward(GRAD, INTERMEDIATE, T, E, SCORES[score], GRAD_LOGITS,
                                                         DTYPES[dtype], None)
        else:
            status = _lib.lib.moekit_aux_scores_forward(LOGITS, DTYPES[dtype], T, E, K, SCORES[score], PROBS, MAP,
                                                        MapFormat.BYTEMAP, INTERMEDIATE, None)
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def aux_loss_plan(R, C, backward=False):
    with _hooks.plan_only():
        if backward:
            status = _lib.lib.moekit_aux_loss_backward(INTERMEDIATE, MAP, DType.I32, R, C, GRAD, DType.F32, PROBS, None)
        else:
            status = _lib.lib.moekit_aux_loss_forward(PROBS, DType.BF16, R, C, MAP, DType.I64, 1000, None, C, 1, 1.0,
                                                      GRAD, INTERMEDIATE, WORKSPACE, 1 << 30, None)
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


# bench/aux_loss.py's aux-scores shapes (K = 8): team rows up to E = 256, warp rows at E = 1024
AUX_SCORES_PLANS = {
    (128, "softmax"): dict(path=TEAM, kernel="aux_softmax_pre", lanes=8, chunks=2, full=1),
    (256, "sigmoid"): dict(path=TEAM, kernel="aux_sigmoid", lanes=16, chunks=2, full=1),
    (1024, "sqrtsoftplus"): dict(path="warp_rows", vpt=32),
}


@pytest.mark.parametrize("E, score", AUX_SCORES_PLANS)
def test_aux_scores_plans(E, score):
    got, want = subset(aux_scores_plan(65536, E, 8, score=score), **AUX_SCORES_PLANS[(E, score)])
    assert got == want
    assert aux_scores_plan(65536, E, 8, score=score, backward=True)["path"] in ("warp_rows", "block_rows")


def test_aux_scores_large_k_and_e_leave_team_rows():
    assert aux_scores_plan(65536, 256, 32)["path"] == "warp_rows"
    assert aux_scores_plan(1024, 16384, 8)["path"] == "block_rows"


def pair_plan(T, E, K, dtype="bf16", score="softmax", pre=False, groups=(0, 0), aux_scores=AUX_SCORES):
    with _hooks.plan_only():
        status = _lib.lib.moekit_router_aux_forward(
            LOGITS, DTYPES[dtype], T, E, K, SCORES[score], int(pre), groups[0], groups[1], 1.0, None, DType.F32,
            PROBS, MAP, MapFormat.BYTEMAP, None, DType.I32, INTERMEDIATE,
            aux_scores, AUX_MAP, MapFormat.BITMAP, AUX_INTERMEDIATE, None)  # fmt: skip
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


# The router + aux-scores pair: one kernel where both plans share a row layout (the Megatron shapes),
# the router's own plan for its pass, two launches where the layouts differ.
PAIR_PLANS = {
    (128, 8, "softmax", "bf16"): dict(fused="1", path=TEAM, kernel="softmax_post_packed", aux_path=TEAM),
    (256, 8, "sigmoid", "f32"): dict(fused="1", path=TEAM, kernel="sigmoid", aux_path=TEAM),
    (64, 6, "softmax", "f16"): dict(fused="1", path=TEAM, aux_path=TEAM),
    (1024, 8, "sqrtsoftplus", "bf16"): dict(fused="1", path="warp_rows", aux_path="warp_rows"),
    (4096, 8, "softmax", "f32"): dict(fused="1", path="block_rows", aux_path="block_rows"),
    (512, 22, "softmax", "bf16"): dict(fused="0", path="wide_rows"),
}


@pytest.mark.parametrize("E, K, score, dtype", PAIR_PLANS)
def test_pair_plans(E, K, score, dtype):
    plan = pair_plan(8192, E, K, dtype, score)
    got, want = subset(plan, **PAIR_PLANS[(E, K, score, dtype)])
    assert got == want
    router = forward_plan(8192, E, K, dtype, score)  # the router's pass is planned as the single op
    assert {k: v for k, v in plan.items() if k in router and k not in ("blocks", "smem_bytes", "smem_words")} == \
        {k: v for k, v in router.items() if k not in ("blocks", "smem_bytes", "smem_words")}
    if plan["fused"] == "1" and plan["path"] == TEAM:
        assert plan["aux_lanes"] == plan["lanes"] and plan["aux_chunks"] == plan["chunks"]


def test_pair_falls_back_to_two_launches():
    with _hooks.tuning({"router.pair_fused": 0}):
        assert pair_plan(8192, 128, 8)["fused"] == "0"
    # FULL team rows need vector access on the aux buffers too
    assert pair_plan(8192, 128, 8, aux_scores=AUX_SCORES + 4)["fused"] == "0"
    # a router on team rows, the aux scores (K = 32 > their team limit) on warp rows
    assert pair_plan(8192, 128, 32)["fused"] == "0"


def test_aux_loss_plans():
    plan = aux_loss_plan(65536, 256)
    assert plan["path"] == "chunk_sums" and plan["chunks"] == str(65536 * 256 // 16384)
    assert plan["blocks"] == "1024" and plan["staged"] == "1"  # one block per chunk: 1024 < 132 * 8
    assert aux_loss_plan(4 * 65536, 256)["blocks"] == str(132 * 8)  # a persistent grid past that
    assert aux_loss_plan(0, 256)["blocks"] == "1"  # R == 0 still writes the loss and const_buf
    assert aux_loss_plan(4, 20000)["staged"] == "0"
    assert aux_loss_plan(65536, 256, backward=True)["path"] == "stream_store"


# ---- FP8 quantization -----------------------------------------------------------------------------

def quant_plan(T, H, masked_experts=0, silu=True):
    x, q, scales, counts = 0x1000000, 0x9000000000, 0xA000000000, 0xB000000
    with _hooks.plan_only():
        if masked_experts:
            status = _lib.lib.moekit_silu_mul_quant_fp8_masked(x, DType.BF16, masked_experts, T, H, counts, DType.I32,
                                                               128, 3, 1, 0, q, scales, None)
        elif silu:
            status = _lib.lib.moekit_silu_mul_quant_fp8(x, DType.BF16, T, H, 128, 3, 1, 0, q, scales, None)
        else:
            status = _lib.lib.moekit_quant_fp8(x, DType.BF16, T, H, 128, 2, q, scales, None)
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def test_quant_plans():
    # bench/quant.py's shapes: a persistent grid of 132 * 4 blocks once there is work for it
    assert quant_plan(65536, 7168) == dict(path="silu_mul_quant", threads="256", blocks=str(132 * 4),
                                           smem_bytes="0", pdl="1")
    assert quant_plan(128, 2048)["blocks"] == "64"  # 128 rows x 4 warp units / 8 warps a block
    assert quant_plan(8192, 2048, silu=False)["path"] == "quant"
    masked = quant_plan(8192, 2048, masked_experts=32)
    assert masked["path"] == "silu_mul_quant_masked" and masked["smem_bytes"] == str(34 * 8)  # B + 1, even
    with _hooks.tuning({"quant.async": 1}):  # the cp.async A/B path: 2 buffers x 8 warps x 2 KB (bf16)
        assert quant_plan(8192, 2048)["smem_bytes"] == str(32 * 1024)
        assert quant_plan(8192, 2048, masked_experts=32)["smem_bytes"] == str(34 * 8 + 32 * 1024)


# ---- epilogues ------------------------------------------------------------------------------------

def epilogue_plan(op, T, H, dtype=DType.BF16):
    a, b, c = 0x1000000, 0x90000000000, 0xA0000000000
    with _hooks.plan_only():
        if op == "gate":
            status = _lib.lib.moekit_shared_expert_gate(a, b, c, dtype, T, H, 1, None)
        elif op == "add_rmsnorm":
            status = _lib.lib.moekit_add_rmsnorm(a, b, c, dtype, dtype, T, H, 1e-6, None)
        else:
            status = _lib.lib.moekit_rmsnorm(a, c, b, dtype, dtype, T, H, 1e-6, None)
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def test_epilogue_plans():
    # a block per row, the width doubled from 16 bytes until a row fits 512 threads; 8 waves of
    # resident blocks (2048 / 448 = 4 per SM), then blocks stride over rows
    got, want = subset(epilogue_plan("add_rmsnorm", 8192, 7168), vpt=16, threads=448, blocks=132 * 4 * 8)
    assert got == want
    assert epilogue_plan("add_rmsnorm", 7, 7168)["blocks"] == "7"
    assert epilogue_plan("rmsnorm", 1, 128) == dict(path="rmsnorm", vpt="8", weight_first="1", threads="32",
                                                    blocks="1", pdl="1")
    # decode (a row per SM at most): the weight loaded with the row; not at VPT 32 (it would spill)
    assert epilogue_plan("add_rmsnorm", 16, 7168)["weight_first"] == "1"
    assert epilogue_plan("add_rmsnorm", 133, 7168)["weight_first"] == "0"
    assert epilogue_plan("rmsnorm", 16, 16384)["weight_first"] == "0"
    assert epilogue_plan("rmsnorm", 70000, 16384)["vpt"] == "32"
    assert epilogue_plan("rmsnorm", 1, 16384, DType.F32)["vpt"] == "32"
    assert epilogue_plan("rmsnorm", 1, 32768, DType.F32) == dict(path="rmsnorm", vpt="32", weight_first="0",
                                                                  threads="1024", blocks="1", pdl="1")
    assert epilogue_plan("gate", 16, 7168)["blocks"] == "56"  # 114688 / 8 / 256
    assert epilogue_plan("gate", 65536, 7168)["blocks"] == str(132 * 32)


# ---- moe_align -------------------------------------------------------------------------------------

def align_plan(T, K, E, BM=64):
    with _hooks.plan_only():
        status = _lib.lib.moekit_moe_align(0x1000000, DType.I32, T, K, E, BM, None, 0, 0x2000000, 0x3000000, 0x4000000,
                                           0x5000000, 0x6000000, 0x7000000, 1 << 30, None)
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def test_align_plans():
    assert align_plan(16, 8, 256)["path"] == "single"  # one launch for small T
    assert align_plan(256, 8, 256) == dict(path="single", chunks="1", threads="256", blocks="1",
                                           smem_bytes=str(10 * 256 * 4), pdl="1")
    multi = align_plan(65536, 8, 256)
    assert multi["path"] == "multi" and multi["chunks"] == str(65536 * 8 // 2048)


def topk_plan(T, E=256, G=8):
    with _hooks.plan_only():
        status = _lib.lib.moekit_grouped_topk(0x1000000, DType.BF16, T, E, None, DType.F32, 8, G, min(G, 4), 1, 1, 2.5,
                                              1, 0, 0x2000000, 0x3000000, DType.I32, None)
        assert status == Status.SUCCESS, _lib.last_error()
        return _hooks.last_plan()


def test_grouped_topk_plan_grid():
    decode = topk_plan(16)  # decode: a warp per row, one row per SM (blocks of one warp)
    assert (decode["blocks"], decode["threads"]) == ("16", "32")
    assert decode["smem_bytes"] == str((64 + 256) * 4)  # group keys, winners, then a score row per warp
    assert topk_plan(256)["threads"] == "64" and topk_plan(256)["blocks"] == "128"
    assert topk_plan(1, E=384, G=1)["smem_bytes"] == str((64 + 384) * 4)
    assert topk_plan(65536)["blocks"] == str(132 * 8) and topk_plan(65536)["threads"] == "256"
    assert topk_plan(65536)["vec_elems"] == "8" and topk_plan(65536)["vec"] == "1"
    assert topk_plan(16)["chunk_groups"] == "1"  # groups of 32 = 4 lanes of 8: the stage in registers
    assert topk_plan(16, E=96, G=4)["chunk_groups"] == "0"  # groups of 24 = 6 chunks of 4: not a power of 2
    assert topk_plan(16, E=384, G=1)["chunk_groups"] == "0"
