"""Loads libmoekit with ctypes and declares the whole C ABI of include/moekit/moekit.h.

Every prototype is declared once here, at import: without argtypes ctypes would truncate 64-bit
pointers and sizes to int, and declaring them per call would cost time on every op.
Loading needs no GPU: the library links cudart statically and touches the driver only when an op runs.
"""

import ctypes
import enum
import os

from . import __version__, get_library_path

# What this Python package was written against (include/moekit/moekit.h).
EXPECTED_ABI_VERSION = 1
_major, _minor, _patch = (int(part) for part in __version__.split("."))
EXPECTED_VERSION = _major * 10000 + _minor * 100 + _patch


class Status(enum.IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    NOT_SUPPORTED = 2
    CUDA_ERROR = 3
    INTERNAL = 4


class DType(enum.IntEnum):
    F32 = 0
    F16 = 1
    BF16 = 2
    I32 = 3
    I64 = 4
    U8 = 5
    F8_E4M3 = 6


class ScoreFunction(enum.IntEnum):
    SOFTMAX = 0
    SIGMOID = 1
    SQRTSOFTPLUS = 2


class MapFormat(enum.IntEnum):
    NONE = 0
    BYTEMAP = 1
    BITMAP = 2


class ScaleFormat(enum.IntEnum):
    ROW_F32 = 0
    COL_F32_TMA = 1
    COL_F32_TMA_UE8M0 = 2
    PACKED_UE8M0 = 3


_ptr = ctypes.c_void_p
_i64 = ctypes.c_int64
_int = ctypes.c_int
_enum = ctypes.c_int
_float = ctypes.c_float
_stream = ctypes.c_void_p

# name -> (restype, argtypes), in the header's order. tests/test_abi.py checks this table against
# the header, so a function added there and forgotten here fails CI.
PROTOTYPES = {
    "moekit_version": (_int, ()),
    "moekit_abi_version": (_int, ()),
    "moekit_status_string": (ctypes.c_char_p, (_enum,)),
    "moekit_last_error": (ctypes.c_char_p, ()),
    "moekit_build_info": (ctypes.c_char_p, ()),
    "moekit_router_topk_forward": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # logits, logits_dtype, num_tokens, num_experts
            _i64, _enum, _int,  # topk, score_function, use_pre_softmax
            _i64, _i64, _float,  # num_groups, group_topk, scaling_factor
            _ptr, _enum,  # expert_bias, bias_dtype
            _ptr, _ptr, _enum,  # probs, routing_map, map_format
            _ptr, _enum,  # topk_indices, index_dtype
            _ptr, _stream,  # intermediate, stream
        ),
    ),
    "moekit_router_topk_backward": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # grad_probs, grad_dtype, num_tokens, num_experts
            _ptr,  # intermediate
            _ptr, _enum,  # routing_map, map_format
            _ptr, _enum,  # topk_indices, index_dtype
            _i64, _enum, _int,  # topk, score_function, use_pre_softmax
            _float, _ptr, _stream,  # scaling_factor, grad_logits, stream
        ),
    ),
    "moekit_router_aux_forward": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # logits, logits_dtype, num_tokens, num_experts
            _i64, _enum, _int,  # topk, score_function, use_pre_softmax
            _i64, _i64, _float,  # num_groups, group_topk, scaling_factor
            _ptr, _enum,  # expert_bias, bias_dtype
            _ptr, _ptr, _enum,  # probs, routing_map, map_format
            _ptr, _enum,  # topk_indices, index_dtype
            _ptr,  # intermediate
            _ptr, _ptr, _enum,  # aux_scores, aux_routing_map, aux_map_format
            _ptr, _stream,  # aux_intermediate, stream
        ),
    ),
    "moekit_router_aux_backward": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # grad_probs, grad_dtype, num_tokens, num_experts
            _ptr,  # intermediate
            _ptr, _enum,  # routing_map, map_format
            _ptr, _enum,  # topk_indices, index_dtype
            _i64, _enum, _int,  # topk, score_function, use_pre_softmax
            _float, _ptr, _ptr,  # scaling_factor, grad_aux_scores, aux_intermediate
            _ptr, _stream,  # grad_logits, stream
        ),
    ),
    "moekit_aux_scores_forward": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # logits, logits_dtype, num_tokens, num_experts
            _i64, _enum,  # topk, score_function
            _ptr, _ptr, _enum,  # scores, routing_map, map_format
            _ptr, _stream,  # intermediate, stream
        ),
    ),
    "moekit_aux_scores_backward": (
        _enum,
        (
            _ptr, _ptr, _i64, _i64,  # grad_scores, intermediate, num_tokens, num_experts
            _enum, _ptr, _enum, _stream,  # score_function, grad_logits, grad_logits_dtype, stream
        ),
    ),
    "moekit_aux_loss_workspace_size": (_enum, (_i64, _i64, _ptr)),  # num_rows, num_cols, bytes
    "moekit_aux_loss_forward": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # probs, probs_dtype, num_rows, num_cols
            _ptr, _enum,  # tokens_per_expert, tokens_dtype
            _i64, _ptr,  # total_num_tokens, total_num_tokens_device
            _i64, _i64, _float,  # num_experts, topk, coeff
            _ptr, _ptr, _ptr, ctypes.c_size_t, _stream,  # loss, const_buf, workspace, workspace_bytes, stream
        ),
    ),
    "moekit_aux_loss_backward": (
        _enum,
        (
            _ptr, _ptr, _enum, _i64, _i64,  # const_buf, tokens_per_expert, tokens_dtype, num_rows, num_cols
            _ptr, _enum, _ptr, _stream,  # grad_loss, grad_dtype, grad_probs, stream
        ),
    ),
    "moekit_silu_mul_quant_fp8": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # x, x_dtype, num_tokens, hidden
            _i64, _enum, _int, _int,  # group_size, scale_format, gate_first, round_act
            _ptr, _ptr, _stream,  # q, scales, stream
        ),
    ),
    "moekit_silu_mul_quant_fp8_masked": (
        _enum,
        (
            _ptr, _enum, _i64, _i64, _i64,  # x, x_dtype, num_experts, max_tokens, hidden
            _ptr, _enum,  # counts, counts_dtype
            _i64, _enum, _int, _int,  # group_size, scale_format, gate_first, round_act
            _ptr, _ptr, _stream,  # q, scales, stream
        ),
    ),
    "moekit_quant_fp8": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # x, x_dtype, num_tokens, hidden
            _i64, _enum, _ptr, _ptr, _stream,  # group_size, scale_format, q, scales, stream
        ),
    ),
    "moekit_shared_expert_gate": (
        _enum,
        (
            _ptr, _ptr, _ptr, _enum,  # hidden, shared, gate, dtype
            _i64, _i64, _int, _stream,  # num_tokens, hidden_size, gate_per_token, stream
        ),
    ),
    "moekit_add_rmsnorm": (
        _enum,
        (
            _ptr, _ptr, _ptr, _enum, _enum,  # x, residual, weight, dtype, weight_dtype
            _i64, _i64, _float, _stream,  # num_tokens, hidden_size, eps, stream
        ),
    ),
    "moekit_rmsnorm": (
        _enum,
        (
            _ptr, _ptr, _ptr, _enum, _enum,  # x, weight, y, dtype, weight_dtype
            _i64, _i64, _float, _stream,  # num_tokens, hidden_size, eps, stream
        ),
    ),
    "moekit_moe_align_buffer_sizes": (_enum, (_i64, _i64, _i64, _i64, _ptr, _ptr)),
    "moekit_moe_align_workspace_size": (_enum, (_i64, _i64, _i64, _ptr)),
    "moekit_moe_align": (
        _enum,
        (
            _ptr, _enum, _i64, _i64, _i64, _i64,  # topk_ids, ids_dtype, num_tokens, topk, num_experts, block_size
            _ptr, _i64,  # expert_map, expert_map_size
            _ptr, _ptr, _ptr, _ptr, _ptr,  # sorted_token_ids, expert_ids, num_tokens_post_padded, counts, offsets
            _ptr, ctypes.c_size_t, _stream,  # workspace, workspace_bytes, stream
        ),
    ),
    "moekit_grouped_topk": (
        _enum,
        (
            _ptr, _enum, _i64, _i64,  # logits, logits_dtype, num_tokens, num_experts
            _ptr, _enum, _i64, _i64, _i64,  # bias, bias_dtype, topk, num_groups, topk_group
            _enum, _int, _float, _int, _i64,  # score_function, renormalize, rsf, apply_scale, num_shared
            _ptr, _ptr, _enum, _stream,  # weights, ids, ids_dtype, stream
        ),
    ),
}


# The in-process hooks of kernels/common/hooks.h (tests and benchmarks; no ABI promise), declared
# the same way. tests/test_abi.py checks this table against that header.
INTERNAL_PROTOTYPES = {
    "moekit_internal_set_tuning": (_enum, (ctypes.c_char_p, _i64)),
    "moekit_internal_reset_tuning": (None, ()),
    "moekit_internal_tuning_names": (ctypes.c_char_p, ()),
    "moekit_internal_plan_only": (None, (_int, _int, _int, _int, _int, _int)),
    "moekit_internal_last_plan": (ctypes.c_char_p, ()),
}


def _load():
    path = get_library_path()
    if not os.path.exists(path):
        where = "MOEKIT_LIBRARY" if os.environ.get("MOEKIT_LIBRARY") else "the moekit package"
        raise ImportError(
            f"moekit: shared library not found at {path} (from {where}); build and install the "
            f"package (pip install .) or set MOEKIT_LIBRARY=/path/to/libmoekit.so.1"
        )
    try:
        dll = ctypes.CDLL(path)
    except OSError as error:
        raise ImportError(f"moekit: cannot load {path}: {error}") from error
    for name, (restype, argtypes) in {**PROTOTYPES, **INTERNAL_PROTOTYPES}.items():
        try:
            function = getattr(dll, name)
        except AttributeError:
            raise ImportError(
                f"moekit: {path} does not export {name}; the library is older or newer than "
                f"this Python package ({__version__})"
            ) from None
        function.restype = restype
        function.argtypes = argtypes
    abi, version = dll.moekit_abi_version(), dll.moekit_version()
    if abi != EXPECTED_ABI_VERSION or version != EXPECTED_VERSION:
        raise ImportError(
            f"moekit: {path} has ABI {abi}, version {version}; this Python package "
            f"{__version__} needs ABI {EXPECTED_ABI_VERSION}, version {EXPECTED_VERSION}"
        )
    return dll, path


lib, library_path = _load()

# Op modules call the C functions as lib.moekit_<op> (a plain attribute of the CDLL once declared).
_last_error = lib.moekit_last_error
_status_string = lib.moekit_status_string

_EXCEPTIONS = {
    Status.INVALID_ARGUMENT: ValueError,
    Status.NOT_SUPPORTED: NotImplementedError,
    Status.CUDA_ERROR: RuntimeError,
    Status.INTERNAL: RuntimeError,
}


def last_error():
    """The calling thread's message for its last failed call ("" if none)."""
    message = _last_error()
    return message.decode("utf-8", "replace") if message else ""


def status_string(status):
    text = _status_string(status)
    return text.decode("utf-8", "replace") if text else ""


def check(status):
    """Raise the Python exception for a non-success moekit_status_t, with the library's message."""
    if status == 0:
        return
    message = last_error() or status_string(status)
    raise _EXCEPTIONS.get(status, RuntimeError)(message)
