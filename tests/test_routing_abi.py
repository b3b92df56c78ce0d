"""moe_align's argument validation through ctypes, with fake device pointers (no GPU: CI)."""

import ctypes

import pytest

from moekit import _lib
from moekit._lib import DType, Status

from test_abi import abi_caller, assert_invalid, assert_invalid_op

IDS, MAP, SORTED, EIDS, NPP, COUNTS, OFFS, WS = (0x1000000 * (i + 1) for i in range(8))

ALIGN = dict(
    topk_ids=IDS, ids_dtype=DType.I32, num_tokens=16, topk=8, num_experts=256, block_size=64, expert_map=None,
    expert_map_size=0, sorted_token_ids=SORTED, expert_ids=EIDS, num_tokens_post_padded=NPP, expert_counts=COUNTS,
    expert_offsets=OFFS, workspace=WS, workspace_bytes=1 << 20, stream=None,
)  # fmt: skip
CALLS = {"moe_align": (ALIGN, "moekit_moe_align")}
call = abi_caller(CALLS)

INVALID = {
    "null ids": dict(topk_ids=None),
    "f32 ids": dict(ids_dtype=DType.F32),
    "T < 0": dict(num_tokens=-1),
    "K 0": dict(topk=0),
    "K 65": dict(topk=65),
    "E 0": dict(num_experts=0),
    "E 1025": dict(num_experts=1025),
    "block 48": dict(block_size=48),
    "block 512": dict(block_size=512),
    "T*K overflows int32": dict(num_tokens=2**28, topk=16),
    "map size 0": dict(expert_map=MAP, expert_map_size=0),
    "misaligned map": dict(expert_map=MAP + 2, expert_map_size=256),
    "null sorted": dict(sorted_token_ids=None),
    "null expert_ids": dict(expert_ids=None),
    "null post padded": dict(num_tokens_post_padded=None),
    "null counts": dict(expert_counts=None),
    "null offsets": dict(expert_offsets=None),
    "small workspace": dict(workspace_bytes=4),
    "null workspace": dict(workspace=None),
}
NAMES = {"null ids": "topk_ids", "f32 ids": "ids_dtype", "T < 0": "num_tokens", "K 0": "topk", "K 65": "topk",
         "E 0": "num_experts", "E 1025": "num_experts", "block 48": "block_size", "block 512": "block_size",
         "T*K overflows int32": "num_tokens", "map size 0": "expert_map_size", "misaligned map": "expert_map",
         "null sorted": "sorted_token_ids", "null expert_ids": "expert_ids",
         "null post padded": "num_tokens_post_padded", "null counts": "expert_counts",
         "null offsets": "expert_offsets", "small workspace": "workspace_bytes", "null workspace": "workspace"}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_argument(case):
    assert_invalid_op(call("moe_align", **INVALID[case]), "moe_align", NAMES[case])


def test_sizes():
    pad, blocks = ctypes.c_int64(0), ctypes.c_int64(0)
    assert _lib.lib.moekit_moe_align_buffer_sizes(16, 8, 256, 64, ctypes.addressof(pad),
                                                  ctypes.addressof(blocks)) == Status.SUCCESS
    assert (pad.value, blocks.value) == (128 + 128 * 63, (128 + 128 * 63 + 63) // 64)
    size = ctypes.c_size_t(0)
    assert _lib.lib.moekit_moe_align_workspace_size(65536, 8, 256, ctypes.addressof(size)) == Status.SUCCESS
    assert size.value >= 256 * 256 * 4 + 256 * 4
    assert_invalid(_lib.lib.moekit_moe_align_workspace_size(4, 8, 256, None), "bytes")
    from moekit import reference as ref

    assert ref.moe_align_buffer_sizes(16, 8, 256, 64) == (pad.value, blocks.value)


def test_zero_tokens_launch():
    from moekit import _hooks

    with _hooks.plan_only():  # T == 0 still runs the one-block kernel (it writes the zero counts)
        assert call("moe_align", num_tokens=0, topk_ids=None, sorted_token_ids=None,
                    expert_ids=None) == Status.SUCCESS, _lib.last_error()
        assert _hooks.last_plan()["path"] == "single"


TOPK = dict(
    logits=IDS, logits_dtype=DType.BF16, num_tokens=4, num_experts=256, bias=MAP, bias_dtype=DType.F32, topk=8,
    num_groups=8, topk_group=4, score_function=1, renormalize=1, routed_scaling_factor=2.5, apply_scale=1,
    num_shared=1, weights=SORTED, ids=EIDS, ids_dtype=DType.I32, stream=None,
)  # fmt: skip
topk_call = abi_caller({"grouped_topk": (TOPK, "moekit_grouped_topk")})
TOPK_INVALID = {
    "G 3": (dict(num_groups=3), "num_groups"),
    "E % G": (dict(num_experts=100, num_groups=8), "num_experts"),
    "E above max": (dict(num_experts=1025, num_groups=1, topk_group=1), "num_experts"),
    "E above max with groups": (dict(num_experts=1024), "num_experts"),
    "Kg 0": (dict(topk_group=0), "topk_group"),
    "Kg > G": (dict(topk_group=9), "topk_group"),
    "K 0": (dict(topk=0), "topk"),
    "K beyond kept groups": (dict(topk=129), "topk"),
    "K + S > 32": (dict(num_shared=25), "num_shared"),
    "S < 0": (dict(num_shared=-1), "num_shared"),
    "score sqrtsoftplus": (dict(score_function=2), "score_function"),
    "rsf 0": (dict(routed_scaling_factor=0.0), "routed_scaling_factor"),
    "i8 ids": (dict(ids_dtype=DType.U8), "ids_dtype"),
    "null logits": (dict(logits=None), "logits"),
    "null weights": (dict(weights=None), "weights"),
    "i32 bias": (dict(bias_dtype=DType.I32), "bias_dtype"),
    "T < 0": (dict(num_tokens=-1), "num_tokens"),
    "null ids": (dict(ids=None), "ids"),
    "misaligned ids": (dict(ids=EIDS + 2), "ids"),
    "misaligned weights": (dict(weights=SORTED + 2), "weights"),
    "misaligned bias": (dict(bias=MAP + 2), "bias"),
    "T*E overflow": (dict(num_tokens=2**60), "num_tokens"),
}


@pytest.mark.parametrize("case", TOPK_INVALID)
def test_grouped_topk_invalid(case):
    changes, name = TOPK_INVALID[case]
    assert_invalid_op(topk_call("grouped_topk", **changes), "grouped_topk", name)


def test_grouped_topk_plans():
    from moekit import _hooks

    with _hooks.plan_only():
        assert topk_call("grouped_topk", num_tokens=65536) == Status.SUCCESS, _lib.last_error()
        plan = _hooks.last_plan()
        assert plan["vpt"] == "8" and plan["smem_bytes"] == str(8 * (64 + 256) * 4)  # a score row per warp
        assert topk_call("grouped_topk", num_tokens=1, num_experts=896, num_groups=1, topk_group=1, topk=16,
                         bias=None) == Status.SUCCESS, _lib.last_error()
        assert _hooks.last_plan()["vpt"] == "32" and _hooks.last_plan()["smem_bytes"] == str((64 + 896) * 4)
