"""The Python layer's own errors (no GPU needed): what the C side cannot see — where an array
lives, its shape, dtype and layout, the option strings, out= buffers.

Device arrays are faked with a class exposing only __cuda_array_interface__ around a fake pointer:
moekit reads its metadata without a driver. Every call here is refused before anything is
launched (by Python, or by the library's host-side checks), so the fake pointer is never read,
also on a GPU machine.
"""

import sys

import ml_dtypes
import numpy as np
import pytest

import moekit
from moekit import _array

T, E, K = 4, 8, 2


class FakeDeviceArray:
    """A device array as far as metadata goes: CUDA Array Interface v3 with a fake pointer."""

    def __init__(self, shape, typestr="<f4", strides=None, ptr=0x10000):
        self.shape = tuple(shape)
        self.__cuda_array_interface__ = {
            "shape": self.shape,
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "version": 3,
            "stream": None,
        }


def f32(*shape):
    return FakeDeviceArray(shape, "<f4")


def fake_outputs(map_typestr="|b1", map_shape=(T, E), t=T):
    return (
        FakeDeviceArray((t, E), "<f4", ptr=0x20000),
        FakeDeviceArray(map_shape if t == T else (t,) + map_shape[1:], map_typestr, ptr=0x30000),
        FakeDeviceArray((t, E), "<f4", ptr=0x40000),
    )


def backward_args(**changes):
    args = dict(
        grad_probs=f32(T, E),
        intermediate=FakeDeviceArray((T, E), "<f4", ptr=0x20000),
        routing_map_or_indices=FakeDeviceArray((T, E), "|b1", ptr=0x30000),
        topk=K,
        score_function="softmax",
        out=FakeDeviceArray((T, E), "<f4", ptr=0x40000),
    )
    args.update(changes)
    return args


def raises(exception, *words):
    """pytest.raises that also checks the message names every word (argument, dtype, ...)."""

    class _Check:
        def __enter__(self):
            self._context = pytest.raises(exception)
            self._info = self._context.__enter__()
            return self._info

        def __exit__(self, *exc):
            suppressed = self._context.__exit__(*exc)
            message = str(self._info.value)
            for word in words:
                assert word in message, f"{exception.__name__} message {message!r} lacks {word!r}"
            return suppressed

    return _Check()


def test_fake_array_metadata_is_read_without_driver():
    array = _array.as_device_array(FakeDeviceArray((3, 5), "<f2", ptr=0x1230), "x")
    assert (array.ptr, array.dtype, array.shape, array.is_c_contiguous) == (0x1230, "float16", (3, 5), True)
    column_major = _array.as_device_array(FakeDeviceArray((3, 5), "<f4", strides=(4, 12)), "x")
    assert column_major.strides == (1, 3) and not column_major.is_c_contiguous


# ---- where the array lives ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_forward_host_numpy_logits(dtype):
    with raises(ValueError, "logits", "CUDA device array", "numpy"):
        moekit.router_topk_forward(np.zeros((T, E), dtype), K)


def test_forward_host_numpy_expert_bias():
    with raises(ValueError, "expert_bias", "CUDA device array"):
        moekit.router_topk_forward(f32(T, E), K, score_function="sigmoid", expert_bias=np.zeros(E, np.float32))


def test_backward_host_numpy_grad_probs():
    with raises(ValueError, "grad_probs", "CUDA device array"):
        moekit.router_topk_backward(**backward_args(grad_probs=np.zeros((T, E), np.float32)))


def test_backward_host_numpy_routing_map():
    with raises(ValueError, "routing_map_or_indices", "CUDA device array"):
        moekit.router_topk_backward(**backward_args(routing_map_or_indices=np.zeros((T, E), bool)))


@pytest.mark.parametrize("not_an_array", [[[1.0] * E] * T, 3.5, "logits"])
def test_forward_not_an_array(not_an_array):
    with pytest.raises((TypeError, ValueError)) as info:
        moekit.router_topk_forward(not_an_array, K)
    assert "logits" in str(info.value)


def test_forward_torch_cpu_tensor():
    torch = pytest.importorskip("torch")
    with raises(ValueError, "logits", "CUDA device array", "cpu"):
        moekit.router_topk_forward(torch.zeros(T, E), K)


def test_torch_op_cpu_tensor():
    pytest.importorskip("torch")
    import torch

    import moekit.torch as moekit_torch

    with raises(ValueError, "logits", "CUDA"):
        moekit_torch.fused_topk_with_score_function(torch.zeros(T, E), K)


def test_arrays_on_different_devices():
    logits = _array.DeviceArray(None, 0x10000, "float32", (T, E), None, 0, "other")
    bias = _array.DeviceArray(None, 0x20000, "float32", (E,), None, 1, "other")
    with raises(ValueError, "expert_bias", "device 1", "device 0"):
        _array.require_same_device(logits, "logits", bias, "expert_bias")


# ---- dtype, shape, layout ----------------------------------------------------------------------


@pytest.mark.parametrize("typestr, name", [("<i4", "int32"), ("<f8", "float64"), ("|u1", "uint8")])
def test_forward_logits_dtype(typestr, name):
    with raises(ValueError, "logits", name):
        moekit.router_topk_forward(FakeDeviceArray((T, E), typestr), K)


@pytest.mark.parametrize("shape", [(E,), (2, T, E), ()])
def test_forward_logits_not_2d(shape):
    with raises(ValueError, "logits", "shape"):
        moekit.router_topk_forward(f32(*shape), K)


def test_forward_logits_not_contiguous():
    column_major = FakeDeviceArray((T, E), "<f4", strides=(4, 4 * T))
    with raises(ValueError, "logits", "contiguous"):
        moekit.router_topk_forward(column_major, K)


def test_forward_logits_row_padding_not_contiguous():
    padded_rows = FakeDeviceArray((T, E), "<f4", strides=(4 * (E + 8), 4))
    with raises(ValueError, "logits", "contiguous"):
        moekit.router_topk_forward(padded_rows, K)


@pytest.mark.parametrize(
    "bias, word",
    [(f32(E + 1), "shape"), (f32(1, E), "shape"), (FakeDeviceArray((E,), "<i4"), "int32")],
)
def test_forward_expert_bias_shape_and_dtype(bias, word):
    with raises(ValueError, "expert_bias", word):
        moekit.router_topk_forward(f32(T, E), K, score_function="sigmoid", expert_bias=bias)


def test_backward_grad_probs_dtype_and_rank():
    with raises(ValueError, "grad_probs", "int32"):
        moekit.router_topk_backward(**backward_args(grad_probs=FakeDeviceArray((T, E), "<i4")))
    with raises(ValueError, "grad_probs", "shape"):
        moekit.router_topk_backward(**backward_args(grad_probs=f32(T, E, 1)))


def test_backward_intermediate_shape():
    with raises(ValueError, "intermediate", "shape", str([T, E])):
        moekit.router_topk_backward(**backward_args(intermediate=f32(T, E + 1)))


def test_backward_intermediate_dtype():
    with raises(ValueError, "intermediate", "float32", "float16"):
        moekit.router_topk_backward(**backward_args(intermediate=FakeDeviceArray((T, E), "<f2")))


def test_backward_routing_map_shape():
    with raises(ValueError, "routing_map_or_indices", "shape"):
        moekit.router_topk_backward(**backward_args(routing_map_or_indices=FakeDeviceArray((T, E - 1), "|b1")))


def test_backward_routing_map_dtype():
    with raises(ValueError, "routing_map_or_indices", "int32"):
        moekit.router_topk_backward(**backward_args(routing_map_or_indices=FakeDeviceArray((T, E), "<i4")))


def test_backward_bitmap_width():
    # A bitmap of E=8 experts is one byte a row, not E.
    with raises(ValueError, "routing_map_or_indices", "shape", str([T, 1])):
        moekit.router_topk_backward(
            **backward_args(routing_map_or_indices=FakeDeviceArray((T, E), "|u1"), map_format="bitmap")
        )


def test_backward_indices_count_differs_from_topk():
    indices = FakeDeviceArray((T, K + 1), "<i4")
    with raises(ValueError, "routing_map_or_indices", "topk", str(K)):
        moekit.router_topk_backward(**backward_args(routing_map_or_indices=indices, map_format="indices"))


def test_backward_indices_dtype():
    indices = FakeDeviceArray((T, K), "<f4")
    with raises(ValueError, "routing_map_or_indices", "float32"):
        moekit.router_topk_backward(**backward_args(routing_map_or_indices=indices, map_format="indices"))


def test_backward_not_contiguous():
    column_major = FakeDeviceArray((T, E), "<f4", strides=(4, 4 * T), ptr=0x20000)
    with raises(ValueError, "intermediate", "contiguous"):
        moekit.router_topk_backward(**backward_args(intermediate=column_major))


# ---- option strings and scalars ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, value",
    [
        ("score_function", "relu"),
        ("score_function", "Softmax "),
        ("score_function", None),
        ("map_format", "dense"),
        ("index_dtype", "int16"),
        ("index_dtype", np.int32),
    ],
)
def test_forward_bad_option_string(argument, value):
    with raises(ValueError, argument, repr(value)):
        moekit.router_topk_forward(f32(T, E), K, **{argument: value})


@pytest.mark.parametrize("argument, value", [("score_function", "tanh"), ("map_format", "bitmask")])
def test_backward_bad_option_string(argument, value):
    with raises(ValueError, argument, repr(value)):
        moekit.router_topk_backward(**backward_args(**{argument: value}))


def test_topk_not_an_integer():
    with raises(TypeError, "topk"):
        moekit.router_topk_forward(f32(T, E), 2.5)


@pytest.mark.parametrize("argument", ["topk", "num_groups", "group_topk"])
def test_integer_beyond_int64(argument):
    # ctypes would wrap 2**64 + 2 to 2 silently.
    changes = {"topk": K, argument: 2**64 + 2}
    with raises(ValueError, argument, "int64"):
        moekit.router_topk_forward(f32(T, E), **changes)


def test_bad_stream_object():
    with raises(TypeError, "stream"):
        moekit.router_topk_forward(f32(T, E), K, stream=object(), out=fake_outputs())


# ---- out= --------------------------------------------------------------------------------------


@pytest.mark.parametrize("out", [f32(T, E), fake_outputs()[:2], list(fake_outputs()) + [None]])
def test_forward_out_not_a_triple(out):
    with raises(ValueError, "out"):
        moekit.router_topk_forward(f32(T, E), K, out=out)


@pytest.mark.parametrize(
    "position, replacement, words",
    [
        (0, FakeDeviceArray((T, E + 1), "<f4"), ("out[0]", "shape")),
        (0, FakeDeviceArray((T, E), "<f2"), ("out[0]", "float16", "float32")),
        (0, FakeDeviceArray((T, E), "<f4", strides=(4, 4 * T)), ("out[0]", "contiguous")),
        (1, FakeDeviceArray((T, E), "<i4"), ("out[1]", "int32")),
        (1, FakeDeviceArray((T + 1, E), "|b1"), ("out[1]", "shape")),
        (2, FakeDeviceArray((T, E), "<f2"), ("out[2]", "float16")),
        (2, FakeDeviceArray((T, E - 1), "<f4"), ("out[2]", "shape")),
        (2, np.zeros((T, E), np.float32), ("out[2]", "CUDA device array")),
    ],
)
def test_forward_out_wrong(position, replacement, words):
    out = list(fake_outputs())
    out[position] = replacement
    with raises(ValueError, *words):
        moekit.router_topk_forward(f32(T, E), K, out=tuple(out))


def test_forward_out_indices_wrong():
    indices = FakeDeviceArray((T, K + 1), "<i4")
    out = fake_outputs()
    with raises(ValueError, "out[1]", "shape"):
        moekit.router_topk_forward(f32(T, E), K, map_format="indices", out=(out[0], indices, out[2]))
    indices = FakeDeviceArray((T, K), "<i4")
    with raises(ValueError, "out[1]", "int64", "int32"):
        moekit.router_topk_forward(
            f32(T, E), K, map_format="indices", index_dtype="int64", out=(out[0], indices, out[2])
        )


def test_forward_out_bitmap_wrong():
    out = fake_outputs()
    with raises(ValueError, "out[1]", "shape", str([T, 1])):
        moekit.router_topk_forward(f32(T, E), K, map_format="bitmap", out=out)


@pytest.mark.parametrize(
    "out, words",
    [
        (FakeDeviceArray((T, E + 1), "<f4"), ("out", "shape")),
        (FakeDeviceArray((T, E), "<f2"), ("out", "float16", "float32")),
        ((f32(T, E),), ("out",)),
    ],
)
def test_backward_out_wrong(out, words):
    with pytest.raises((ValueError, TypeError)) as info:
        moekit.router_topk_backward(**backward_args(out=out))
    for word in words:
        assert word in str(info.value)


def test_no_framework_to_allocate_with():
    if "torch" in sys.modules or "cupy" in sys.modules:
        pytest.skip("torch or cupy is imported: outputs would be allocated with it")
    with raises(TypeError, "out="):
        moekit.router_topk_forward(f32(T, E), K)


# ---- the library's checks come back as ValueError with its message ------------------------------


@pytest.mark.parametrize(
    "changes, word",
    [
        (dict(topk=0), "topk"),
        (dict(topk=E + 1), "topk"),
        (dict(score_function="sigmoid", use_pre_softmax=True), "use_pre_softmax"),
        (dict(expert_bias=FakeDeviceArray((E,), "<f4", ptr=0x50000)), "expert_bias"),
        (dict(num_groups=3, group_topk=1), "num_groups"),
    ],
)
def test_forward_library_validation_is_value_error(changes, word):
    with raises(ValueError, word, "router_topk_forward"):
        moekit.router_topk_forward(f32(T, E), **{"topk": K, **changes}, out=fake_outputs())


def test_backward_library_validation_is_value_error():
    with raises(ValueError, "use_pre_softmax", "router_topk_backward"):
        moekit.router_topk_backward(**backward_args(score_function="sigmoid", use_pre_softmax=True))


def test_zero_tokens_returns_out_arrays():
    # T == 0 passes every check and launches nothing: the out= arrays come back as they are.
    out = fake_outputs(t=0)
    result = moekit.router_topk_forward(f32(0, E), K, out=out, stream=0)
    assert all(got is given for got, given in zip(result, out))
    grad_logits = FakeDeviceArray((0, E), "<f4", ptr=0x40000)
    args = backward_args(
        grad_probs=f32(0, E),
        intermediate=FakeDeviceArray((0, E), "<f4", ptr=0x20000),
        routing_map_or_indices=FakeDeviceArray((0, E), "|b1", ptr=0x30000),
        out=grad_logits,
    )
    assert moekit.router_topk_backward(**args, stream=0) is grad_logits
