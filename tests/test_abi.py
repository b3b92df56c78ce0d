"""The C ABI through ctypes, with fake device pointers: no GPU needed (this runs in CI).

Every invalid call must be refused on the host, before any CUDA call, with INVALID_ARGUMENT and a
message naming the argument (and its value). Fake pointers are never dereferenced by a refused
call; the one VALID call with fake pointers runs in a child process that sees no CUDA device, so
it holds on a GPU machine too.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

import moekit
from moekit import _lib
from moekit._lib import DType, MapFormat, ScoreFunction, Status

INVALID = Status.INVALID_ARGUMENT
MAX_EXPERTS = 16384

# Distinct, 256-byte aligned fake device addresses.
LOGITS, PROBS, MAP, INDICES, INTERMEDIATE, BIAS, GRAD, GRAD_LOGITS = (
    0x10000 * (i + 1) for i in range(8)
)

FORWARD = dict(
    logits=LOGITS, logits_dtype=DType.F32, num_tokens=4, num_experts=8, topk=2,
    score_function=ScoreFunction.SOFTMAX, use_pre_softmax=0, num_groups=0, group_topk=0,
    scaling_factor=1.0, expert_bias=None, bias_dtype=DType.F32, probs=PROBS, routing_map=MAP,
    map_format=MapFormat.BYTEMAP, topk_indices=None, index_dtype=DType.I32,
    intermediate=INTERMEDIATE, stream=None,
)  # fmt: skip
BACKWARD = dict(
    grad_probs=GRAD, grad_dtype=DType.F32, num_tokens=4, num_experts=8, intermediate=INTERMEDIATE,
    routing_map=MAP, map_format=MapFormat.BYTEMAP, topk_indices=None, index_dtype=DType.I32,
    topk=2, score_function=ScoreFunction.SOFTMAX, use_pre_softmax=0, scaling_factor=1.0,
    grad_logits=GRAD_LOGITS, stream=None,
)  # fmt: skip


def forward(**changes):
    unknown = set(changes) - set(FORWARD)
    assert not unknown, unknown
    return _lib.lib.moekit_router_topk_forward(*{**FORWARD, **changes}.values())


def backward(**changes):
    unknown = set(changes) - set(BACKWARD)
    assert not unknown, unknown
    return _lib.lib.moekit_router_topk_backward(*{**BACKWARD, **changes}.values())


def abi_caller(calls):
    """call(op, **changes) for a family's ABI tests: calls[op] = (the base arguments of a valid call,
    the C function's name); `changes` replace some of them."""

    def call(op, **changes):
        base, name = calls[op]
        assert not set(changes) - set(base)
        return getattr(_lib.lib, name)(*{**base, **changes}.values())

    return call


def assert_invalid_op(status, op, names, value=None):
    """assert_invalid, and the message starts with the op's name."""
    message = assert_invalid(status, names, value)
    assert message.startswith(op), f"message {message!r} does not start with the op name {op}"


def assert_invalid(status, names, value=None):
    """INVALID_ARGUMENT, and the message names one of `names` (and shows `value` if given)."""
    message = _lib.last_error()
    assert status == INVALID, (
        f"expected INVALID_ARGUMENT (1), got {status} ({_lib.status_string(status)}): {message!r}"
    )
    names = (names,) if isinstance(names, str) else names
    assert any(name in message for name in names), f"message {message!r} names none of {names}"
    if value is not None:
        assert str(value) in message, f"message {message!r} does not show the value {value}"
    return message


# ---- forward: each invalid-argument class of SPEC "Errors" -------------------------------------

FORWARD_INVALID = {
    "null logits": (dict(logits=None), "logits", None),
    "null probs": (dict(probs=None), "probs", None),
    "null intermediate": (dict(intermediate=None), "intermediate", None),
    "negative num_tokens": (dict(num_tokens=-1), "num_tokens", -1),
    "zero num_experts": (dict(num_experts=0, topk=1), "num_experts", 0),
    "negative num_experts": (dict(num_experts=-8), "num_experts", -8),
    "num_experts above max": (dict(num_experts=MAX_EXPERTS + 1), "num_experts", MAX_EXPERTS + 1),
    "topk zero": (dict(topk=0), "topk", 0),
    "topk negative": (dict(topk=-3), "topk", -3),
    "topk above num_experts": (dict(topk=9), "topk", 9),
    "num_experts not divisible by num_groups": (
        dict(num_groups=3, group_topk=1, topk=3), "num_groups", 3),
    "topk not divisible by group_topk": (
        dict(num_groups=4, group_topk=2, topk=3), ("topk", "group_topk"), 3),
    "group_topk above num_groups": (
        dict(num_groups=2, group_topk=3, topk=3), "group_topk", 3),
    "topk / group_topk above experts per group": (
        dict(num_groups=4, group_topk=1, topk=3), ("topk", "group_topk", "num_groups"), 3),
    "num_groups without group_topk": (
        dict(num_groups=2, group_topk=0), ("num_groups", "group_topk"), None),
    "group_topk without num_groups": (
        dict(num_groups=0, group_topk=1), ("num_groups", "group_topk"), None),
    "negative num_groups": (
        dict(num_groups=-2, group_topk=-1), ("num_groups", "group_topk"), -2),
    "expert_bias with softmax": (dict(expert_bias=BIAS), "expert_bias", None),
    "use_pre_softmax with sigmoid": (
        dict(use_pre_softmax=1, score_function=ScoreFunction.SIGMOID), "use_pre_softmax", None),
    "use_pre_softmax with sqrtsoftplus": (
        dict(use_pre_softmax=1, score_function=ScoreFunction.SQRTSOFTPLUS), "use_pre_softmax", None),
    "int32 logits": (dict(logits_dtype=DType.I32), "logits", "int32"),
    "uint8 logits": (dict(logits_dtype=DType.U8), "logits", "uint8"),
    "fp8 logits": (dict(logits_dtype=DType.F8_E4M3), "logits", None),
    "logits dtype out of range": (dict(logits_dtype=99), "logits", 99),
    "int32 expert_bias": (
        dict(expert_bias=BIAS, bias_dtype=DType.I32, score_function=ScoreFunction.SIGMOID),
        ("bias_dtype", "expert_bias"), "int32"),
    "float32 index_dtype": (
        dict(routing_map=None, map_format=MapFormat.NONE, topk_indices=INDICES, index_dtype=DType.F32),
        "index_dtype", "float32"),
    "map_format none and no indices": (
        dict(routing_map=None, map_format=MapFormat.NONE), ("routing_map", "topk_indices"), None),
    "routing_map with map_format none": (
        dict(map_format=MapFormat.NONE, topk_indices=INDICES), "routing_map", None),
    "null routing_map with bytemap": (
        dict(routing_map=None, map_format=MapFormat.BYTEMAP), "routing_map", None),
    "null routing_map with bitmap": (
        dict(routing_map=None, map_format=MapFormat.BITMAP), "routing_map", None),
    "score_function 7": (dict(score_function=7), "score_function", 7),
    "score_function -1": (dict(score_function=-1), "score_function", -1),
    "map_format 9": (dict(map_format=9), "map_format", 9),
    "num_tokens * num_experts overflows": (
        dict(num_tokens=2**62, num_experts=8), ("num_tokens", "num_experts"), None),
    "misaligned float32 logits": (dict(logits=LOGITS + 2), "logits", None),
}  # fmt: skip


@pytest.mark.parametrize("changes, names, value", FORWARD_INVALID.values(), ids=FORWARD_INVALID.keys())
def test_forward_invalid_argument(changes, names, value):
    message = assert_invalid(forward(**changes), names, value)
    assert "router_topk_forward" in message, f"message {message!r} does not name the op"


# ---- backward ----------------------------------------------------------------------------------

BACKWARD_INVALID = {
    "null grad_probs": (dict(grad_probs=None), "grad_probs", None),
    "null intermediate": (dict(intermediate=None), "intermediate", None),
    "null grad_logits": (dict(grad_logits=None), "grad_logits", None),
    "negative num_tokens": (dict(num_tokens=-5), "num_tokens", -5),
    "zero num_experts": (dict(num_experts=0, topk=1), "num_experts", 0),
    "num_experts above max": (dict(num_experts=MAX_EXPERTS + 1), "num_experts", MAX_EXPERTS + 1),
    "topk zero": (dict(topk=0), "topk", 0),
    "topk above num_experts": (dict(topk=9), "topk", 9),
    "use_pre_softmax with sigmoid": (
        dict(use_pre_softmax=1, score_function=ScoreFunction.SIGMOID), "use_pre_softmax", None),
    "int32 grad": (dict(grad_dtype=DType.I32), ("grad_dtype", "grad_probs"), "int32"),
    "int64 grad": (dict(grad_dtype=DType.I64), ("grad_dtype", "grad_probs"), "int64"),
    "float32 index_dtype": (
        dict(routing_map=None, map_format=MapFormat.NONE, topk_indices=INDICES, index_dtype=DType.F32),
        "index_dtype", "float32"),
    "both routing_map and topk_indices": (
        dict(topk_indices=INDICES), ("routing_map", "topk_indices"), None),
    "neither routing_map nor topk_indices": (
        dict(routing_map=None, map_format=MapFormat.NONE), ("routing_map", "topk_indices"), None),
    "routing_map with map_format none": (
        dict(map_format=MapFormat.NONE, topk_indices=INDICES), "routing_map", None),
    "null routing_map with bytemap": (
        dict(routing_map=None, map_format=MapFormat.BYTEMAP), "routing_map", None),
    "score_function 7": (dict(score_function=7), "score_function", 7),
    "map_format 9": (dict(map_format=9), "map_format", 9),
    "num_tokens * num_experts overflows": (
        dict(num_tokens=2**62, num_experts=8), ("num_tokens", "num_experts"), None),
    "misaligned float32 grad_probs": (dict(grad_probs=GRAD + 2), "grad_probs", None),
}  # fmt: skip


@pytest.mark.parametrize("changes, names, value", BACKWARD_INVALID.values(), ids=BACKWARD_INVALID.keys())
def test_backward_invalid_argument(changes, names, value):
    message = assert_invalid(backward(**changes), names, value)
    assert "router_topk_backward" in message, f"message {message!r} does not name the op"


# ---- library entry points ----------------------------------------------------------------------


def test_status_string_names_each_status():
    expected = {
        Status.SUCCESS: "SUCCESS",
        Status.INVALID_ARGUMENT: "INVALID_ARGUMENT",
        Status.NOT_SUPPORTED: "NOT_SUPPORTED",
        Status.CUDA_ERROR: "CUDA_ERROR",
        Status.INTERNAL: "INTERNAL",
    }
    for status, word in expected.items():
        text = _lib.status_string(status)
        assert word in text.upper().replace(" ", "_"), f"status {int(status)} named {text!r}"
    texts = [_lib.status_string(status) for status in expected]
    assert len(set(texts)) == len(texts)
    assert _lib.status_string(12345), "an unknown status must still get a (non-empty) name"


def test_last_error_survives_a_later_success():
    # moekit.h: the message of the thread's last FAILED call, not cleared by a success.
    assert forward(topk=0) == INVALID
    message = _lib.last_error()
    assert "topk" in message
    assert forward(num_tokens=0) == Status.SUCCESS
    assert _lib.last_error() == message


def test_last_error_is_per_thread():
    assert forward(topk=0) == INVALID
    mine = _lib.last_error()
    assert "topk" in mine

    seen = {}

    def other_thread():
        seen["fresh"] = _lib.last_error()  # this thread has made no call yet
        seen["status"] = backward(num_tokens=-7)
        seen["message"] = _lib.last_error()

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()

    assert seen["fresh"] == ""
    assert seen["status"] == INVALID and "num_tokens" in seen["message"]
    assert _lib.last_error() == mine, "a failure in another thread changed this thread's message"


def _header_path():
    installed = os.path.join(moekit.get_include_dir(), "moekit", "moekit.h")
    if os.path.exists(installed):
        return installed
    # A development run (MOEKIT_LIBRARY pointing at a build tree): the repository's header.
    return os.path.join(os.path.dirname(__file__), os.pardir, "include", "moekit", "moekit.h")


def _header():
    with open(_header_path()) as header:
        return header.read()


def test_versions_match_header():
    text = _header()
    macros = {name: int(value) for name, value in re.findall(r"#define (MOEKIT_\w+) (\d+)\b", text)}
    version = (
        macros["MOEKIT_VERSION_MAJOR"] * 10000
        + macros["MOEKIT_VERSION_MINOR"] * 100
        + macros["MOEKIT_VERSION_PATCH"]
    )
    assert _lib.lib.moekit_version() == version
    assert _lib.lib.moekit_abi_version() == macros["MOEKIT_ABI_VERSION"]
    assert _lib.EXPECTED_VERSION == version and _lib.EXPECTED_ABI_VERSION == macros["MOEKIT_ABI_VERSION"]
    major, minor, patch = (int(part) for part in moekit.__version__.split("."))
    assert (major, minor, patch) == (
        macros["MOEKIT_VERSION_MAJOR"], macros["MOEKIT_VERSION_MINOR"], macros["MOEKIT_VERSION_PATCH"]
    )
    assert macros["MOEKIT_ROUTER_MAX_EXPERTS"] == MAX_EXPERTS


def _ctype_for(declared_type):
    """The ctypes type that _lib must declare for a C type of the header."""
    import ctypes

    if "*" in declared_type:
        return ctypes.c_char_p if declared_type.replace(" ", "") == "constchar*" else ctypes.c_void_p
    base = declared_type.split()[-1]
    if base == "void":
        return None
    if base == "moekit_stream_t":
        return ctypes.c_void_p
    if base.startswith("moekit_") and base.endswith("_t"):
        return ctypes.c_int  # an enum
    return {"int64_t": ctypes.c_int64, "int": ctypes.c_int, "float": ctypes.c_float, "size_t": ctypes.c_size_t}[base]


def _check_prototypes(header_text, prototypes, what):
    text = re.sub(r"/\*.*?\*/", "", header_text, flags=re.S)
    declarations = re.findall(r"MOEKIT_API\s+([^;(]+?)\s*\b(moekit_\w+)\s*\(([^)]*)\)\s*;", text)
    assert declarations, f"no MOEKIT_API declaration found in {what}"
    names = [name for _, name, _ in declarations]
    assert sorted(names) == sorted(prototypes), f"{what} and the prototype table list different functions"
    for return_type, name, parameters in declarations:
        restype, argtypes = prototypes[name]
        parameters = [p.strip() for p in parameters.split(",") if p.strip() not in ("", "void")]
        # Drop each parameter's name: "const float* intermediate" -> "const float*".
        types = [re.match(r"(.*?)\s*\w+$", p).group(1) for p in parameters]
        expected = [_ctype_for(t) for t in types]
        assert list(argtypes) == expected, f"{name}: argtypes {argtypes} but the header says {parameters}"
        assert restype == _ctype_for(return_type.strip()), f"{name}: restype {restype}"


def test_every_header_function_has_a_prototype():
    _check_prototypes(_header(), _lib.PROTOTYPES, "moekit.h")


def test_every_internal_hook_has_a_prototype():
    # kernels/common/hooks.h is not installed: the repository's copy (tests run from the repository)
    hooks = os.path.join(os.path.dirname(__file__), os.pardir, "kernels", "common", "hooks.h")
    with open(hooks) as header:
        _check_prototypes(header.read(), _lib.INTERNAL_PROTOTYPES, "kernels/common/hooks.h")


# ---- valid calls: no GPU => CUDA_ERROR; T == 0 => SUCCESS, nothing launched ---------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = json.loads(sys.argv[1])
    import test_abi as t
    results = {}
    for name, (entry, changes) in json.loads(sys.argv[2]).items():
        status = getattr(t, entry)(**changes)
        results[name] = [int(status), t._lib.last_error()]
    print(json.dumps(results))
    """
)

VALID_CALLS = {
    "forward": ("forward", {}),
    "forward sigmoid bias groups indices": ("forward", dict(
        score_function=int(ScoreFunction.SIGMOID), expert_bias=BIAS, bias_dtype=int(DType.BF16),
        num_groups=4, group_topk=2, topk=4, routing_map=None, map_format=int(MapFormat.NONE),
        topk_indices=INDICES, index_dtype=int(DType.I64))),
    "backward": ("backward", {}),
    "backward indices": ("backward", dict(
        routing_map=None, map_format=int(MapFormat.NONE), topk_indices=INDICES)),
    "forward T=0": ("forward", dict(num_tokens=0)),
    "forward T=0 bitmap sqrtsoftplus": ("forward", dict(
        num_tokens=0, map_format=int(MapFormat.BITMAP), score_function=int(ScoreFunction.SQRTSOFTPLUS))),
    "backward T=0": ("backward", dict(num_tokens=0)),
    # An empty [0, E] buffer is commonly NULL (torch, CuPy): no data is needed, so none is required.
    "forward T=0 null buffers": ("forward", dict(
        num_tokens=0, logits=None, probs=None, routing_map=None, map_format=int(MapFormat.NONE),
        topk_indices=None, intermediate=None)),
    "backward T=0 null buffers": ("backward", dict(
        num_tokens=0, grad_probs=None, intermediate=None, grad_logits=None)),
}  # fmt: skip


@pytest.fixture(scope="module")
def valid_call_results():
    """Runs every VALID_CALLS entry in one child process that sees no CUDA device."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    paths = [os.path.dirname(os.path.abspath(__file__))] + sys.path
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(paths), json.dumps(VALID_CALLS)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [n for n in VALID_CALLS if "T=0" not in n])
def test_valid_call_without_device_is_cuda_error(valid_call_results, name):
    status, message = valid_call_results[name]
    assert status == Status.CUDA_ERROR, f"{name}: expected CUDA_ERROR (3), got {status}: {message!r}"
    assert message.strip(), f"{name}: CUDA_ERROR with an empty message"


@pytest.mark.parametrize("name", [n for n in VALID_CALLS if "T=0" in n])
def test_zero_tokens_is_success_without_device(valid_call_results, name):
    status, message = valid_call_results[name]
    assert status == Status.SUCCESS, f"{name}: expected SUCCESS (0), got {status}: {message!r}"


def test_zero_tokens_is_success_in_process():
    # Launches nothing, so it is safe (and must succeed) whether or not this process has a GPU.
    assert forward(num_tokens=0) == Status.SUCCESS, _lib.last_error()
    assert backward(num_tokens=0) == Status.SUCCESS, _lib.last_error()


def test_check_maps_status_to_exception():
    assert forward(topk=0) == INVALID
    with pytest.raises(ValueError, match="topk"):
        _lib.check(Status.INVALID_ARGUMENT)
    for status, exception in (
        (Status.NOT_SUPPORTED, NotImplementedError),
        (Status.CUDA_ERROR, RuntimeError),
        (Status.INTERNAL, RuntimeError),
    ):
        with pytest.raises(exception):
            _lib.check(status)
    _lib.check(Status.SUCCESS)
