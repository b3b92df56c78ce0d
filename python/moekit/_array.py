"""The one interop layer: any framework's array -> (pointer, dtype, shape, strides, device).

Arrays come in through DLPack or the CUDA Array Interface, read with cuda.core's
StridedMemoryView (never hand-written DLPack parsing). torch tensors and CuPy arrays are read
through their own attributes instead: no DLPack capsule per argument (a few microseconds each
for CuPy; measured on an H100 host, the generic path's Python overhead is ~10-20 us a call over
the bare ctypes call), and no dependence on how cuda.core names bfloat16. Outputs are allocated in
the caller's framework. torch / CuPy / JAX are never imported here: a tensor of theirs can only
exist if they were imported already, so they are looked up in sys.modules.

Everything the C side cannot see (placement on a device, shapes, dtypes, contiguity) is checked
here, with messages that name the argument.
"""

import contextlib
import operator
import sys

import numpy as np

from ._lib import DType

# Canonical dtype names (NumPy / ml_dtypes / torch spellings agree on these) -> moekit dtype.
MOEKIT_DTYPES = {
    "float32": DType.F32,
    "float16": DType.F16,
    "bfloat16": DType.BF16,
    "int32": DType.I32,
    "int64": DType.I64,
    "uint8": DType.U8,
    "bool": DType.U8,
    "float8_e4m3fn": DType.F8_E4M3,
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_StridedMemoryView = None


def _strided_memory_view():
    global _StridedMemoryView
    if _StridedMemoryView is None:
        from cuda.core.utils import StridedMemoryView

        _StridedMemoryView = StridedMemoryView
    return _StridedMemoryView


class DeviceArray:
    """What the C call needs to know about one array. strides are in elements (None: C-contiguous);
    device_id is None when it could not be queried (no driver)."""

    __slots__ = ("obj", "ptr", "dtype", "shape", "strides", "device_id", "framework")

    def __init__(self, obj, ptr, dtype, shape, strides, device_id, framework):
        self.obj = obj
        self.ptr = ptr
        self.dtype = dtype  # canonical name, e.g. "bfloat16"; moekit code: MOEKIT_DTYPES[dtype]
        self.shape = shape
        self.strides = strides
        self.device_id = device_id
        self.framework = framework

    @property
    def is_c_contiguous(self):
        if self.strides is None:
            return True
        expected = 1
        for extent, stride in zip(reversed(self.shape), reversed(self.strides)):
            if extent == 0:
                return True
            if extent != 1 and stride != expected:
                return False
            expected *= extent
        return True


_FRAMEWORKS = {"torch": "torch", "cupy": "cupy", "cupy_backends": "cupy", "jax": "jax", "jaxlib": "jax"}


def _framework_of(obj):
    return _FRAMEWORKS.get(type(obj).__module__.partition(".")[0], "other")


def _describe(obj):
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _dtype_name(dtype, obj):
    name = dtype.name
    # Without ml_dtypes' registration a bfloat16 can surface as a bare 2-byte void ('V2').
    if dtype.kind == "V" and dtype.itemsize == 2 and "bfloat16" in str(getattr(obj, "dtype", "")):
        return "bfloat16"
    return name


_NARROW_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def _narrow_dtype_name(dtype):
    text = str(dtype)
    return next((name for name in _NARROW_DTYPES if text == name or text.endswith("." + name)), "unknown")


def _from_cuda_array_interface(obj, interface):
    """Read the CUDA Array Interface by hand: the fallback when StridedMemoryView cannot query the
    driver for the pointer's device (no driver on this machine). Device id stays unknown."""
    dtype = np.dtype(interface["typestr"])
    shape = tuple(interface["shape"])
    strides = interface.get("strides")
    if strides is not None:
        strides = tuple(stride // dtype.itemsize for stride in strides)
    return DeviceArray(
        obj, interface["data"][0], _dtype_name(dtype, obj), shape, strides, None, _framework_of(obj)
    )


_TORCH_DTYPE_NAMES = {}  # torch.dtype -> canonical name, filled on first sight


def _torch_device_array(obj, name):
    if not obj.is_cuda:
        raise ValueError(f"{name} must be a CUDA device array, got a torch tensor on {obj.device}")
    dtype = obj.dtype
    dtype_name = _TORCH_DTYPE_NAMES.get(dtype)
    if dtype_name is None:
        dtype_name = _TORCH_DTYPE_NAMES[dtype] = str(dtype).rpartition(".")[2]
    strides = None if obj.is_contiguous() else obj.stride()
    # torch.Size is a tuple: no copy needed.
    return DeviceArray(obj, obj.data_ptr(), dtype_name, obj.shape, strides, obj.get_device(), "torch")


def _cupy_device_array(obj):
    # CuPy arrays always live on a device; their attributes are cheaper than a DLPack export.
    strides = None if obj.flags.c_contiguous else tuple(s // obj.itemsize for s in obj.strides)
    return DeviceArray(obj, obj.data.ptr, _dtype_name(obj.dtype, obj), obj.shape, strides, obj.device.id, "cupy")


def as_device_array(obj, name):
    """Describe `obj` (argument `name`) for a C call. It must live in CUDA device memory."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return _torch_device_array(obj, name)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(obj, cupy.ndarray):
        return _cupy_device_array(obj)
    if isinstance(obj, np.ndarray) or np.isscalar(obj):
        raise ValueError(f"{name} must be a CUDA device array, got {_describe(obj)} in host memory")
    framework = _framework_of(obj)
    consumer_stream = -1  # no ordering: the caller's stream choice orders the launch
    if framework == "jax":
        # JAX arrays carry no stream we could order against: wait for the producer instead.
        # JAX's DLPack export fails on stream -1 (invalid handle), so name the legacy default
        # stream (DLPack's 1), which the wait has already satisfied.
        obj.block_until_ready()
        consumer_stream = 1
    try:
        view = _strided_memory_view().from_any_interface(obj, stream_ptr=consumer_stream)
    except Exception as error:
        # The CUDA Array Interface path asks the driver which device owns the pointer; without a
        # driver (or for a pointer the driver does not know) read the interface ourselves.
        interface = getattr(obj, "__cuda_array_interface__", None)
        if interface is not None:
            return _from_cuda_array_interface(obj, interface)
        raise TypeError(
            f"{name} must be an array exposing __dlpack__ or __cuda_array_interface__, "
            f"got {_describe(obj)} ({error})"
        ) from None
    if not view.is_device_accessible:
        raise ValueError(f"{name} must be a CUDA device array, got {_describe(obj)} in host memory")
    try:
        dtype = _dtype_name(view.dtype, obj)
    except (NotImplementedError, TypeError):
        # A narrow dtype the view cannot name (bfloat16 without ml_dtypes; float8, whose DLPack
        # code cuda.core does not map): the array's own dtype names it.
        dtype = _narrow_dtype_name(getattr(obj, "dtype", None))
    return DeviceArray(obj, view.ptr, dtype, tuple(view.shape), view.strides, view.device_id, framework)


def require(array, name, shape, dtypes):
    """Check shape (ints, None = any extent), dtype (a tuple of canonical names) and C-contiguity."""
    if array.shape != shape and (
        len(array.shape) != len(shape)
        or any(want is not None and want != got for want, got in zip(shape, array.shape))
    ):
        wanted = "[" + ", ".join("*" if extent is None else str(extent) for extent in shape) + "]"
        raise ValueError(f"{name} must have shape {wanted}, got {list(array.shape)}")
    if array.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype {' or '.join(dtypes)}, got {array.dtype}")
    if array.strides is not None and not array.is_c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (row-major), got strides {list(array.strides)} "
            f"(in elements) for shape {list(array.shape)}"
        )


def require_same_device(reference, reference_name, array, name):
    if (
        reference.device_id is not None
        and array.device_id is not None
        and reference.device_id != array.device_id
    ):
        raise ValueError(
            f"{name} is on CUDA device {array.device_id} but {reference_name} is on device "
            f"{reference.device_id}; all arrays must be on the same device"
        )


def input_like(obj, name, reference, reference_name, shape, dtypes):
    """A further input of an op: a device array of `shape` and one of `dtypes`, on the device of
    `reference` (the op's first input)."""
    array = as_device_array(obj, name)
    require(array, name, shape, dtypes)
    require_same_device(reference, reference_name, array, name)
    return array


def int64_arg(value, name):
    """An integer argument as int; ctypes would silently wrap values beyond int64."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_describe(value)}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} ({value}) does not fit in int64")
    return value


def float_arg(value, name):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def choice(value, name, options):
    """Map a string option to its enum value; anything else is a ValueError naming the argument."""
    try:
        return options[value]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(option) for option in options)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def torch_current_stream(device_index):
    """torch's current stream of a device as an int handle. The raw query skips building a
    torch.cuda.Stream object (several microseconds a call)."""
    torch = sys.modules["torch"]
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def stream_handle(stream, reference):
    """The cudaStream_t to launch on, as an int.

    stream=None: the current stream of the reference array's framework (legacy default stream 0
    for frameworks without a notion of one). Otherwise an int handle, an object with
    __cuda_stream__ (returns (version, handle)), a torch.cuda.Stream or a CuPy stream.
    """
    if stream is None:
        framework = reference.framework
        if framework == "torch":
            return torch_current_stream(reference.device_id)
        if framework == "cupy":
            return sys.modules["cupy"].cuda.get_current_stream(reference.device_id).ptr
        return 0
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        return int(protocol()[1])
    for attribute in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(stream, attribute, None)
        if isinstance(handle, int):
            return handle
    raise TypeError(
        f"stream must be an int handle, an object with __cuda_stream__, a torch.cuda.Stream or "
        f"a CuPy stream, got {_describe(stream)}"
    )


def launch(framework, device_id, stream, function, *args):
    """Calls the C `function(*args)` with the arrays' device current (the library never switches
    devices) and returns its status. JAX cannot order its work after ours, so for JAX arrays wait
    for `stream` to finish (best effort; inputs were waited for when viewed)."""
    if framework == "torch":
        cuda = sys.modules["torch"].cuda
        if cuda.current_device() == device_id:
            return function(*args)
        with cuda.device(device_id):
            return function(*args)
    if framework == "cupy":
        cuda = sys.modules["cupy"].cuda
        if cuda.runtime.getDevice() == device_id:
            return function(*args)
        with cuda.Device(device_id):
            return function(*args)
    status = function(*args)
    if framework == "jax" and status == 0:
        from cuda.bindings import driver

        (error,) = driver.cuStreamSynchronize(stream)
        if error != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"moekit: cuStreamSynchronize failed: {error!r}")
    return status


def _numpy_dtype(name):
    if name in ("bfloat16", "float8_e4m3fn"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def empty(reference, shape, dtype):
    """A new C-contiguous array of `shape` and canonical `dtype` in the reference's framework, on
    its device. Arrays of other origin get a torch or CuPy array, whichever is imported already."""
    framework, device_id = reference.framework, reference.device_id
    if framework == "other":
        framework = next((name for name in ("torch", "cupy") if name in sys.modules), None)
        if framework is None:
            raise TypeError(
                f"cannot allocate outputs for {_describe(reference.obj)} arrays: pass out=, or "
                f"import torch or cupy first"
            )
    if framework == "torch":
        torch = sys.modules["torch"]
        if reference.framework == "torch":
            device = reference.obj.device
        else:
            device = torch.device("cuda", torch.cuda.current_device() if device_id is None else device_id)
        return torch.empty(shape, dtype=getattr(torch, dtype), device=device)
    if framework == "cupy":
        cupy = sys.modules["cupy"]
        if dtype == "float8_e4m3fn":  # CuPy has no fp8 dtype: its bytes
            dtype = "uint8"
        with contextlib.nullcontext() if device_id is None else cupy.cuda.Device(device_id):
            return cupy.empty(shape, dtype=_numpy_dtype(dtype))
    jnp = sys.modules["jax"].numpy
    device = next(iter(reference.obj.devices()))
    return jnp.empty(shape, dtype=_numpy_dtype(dtype), device=device)


def zeros(reference, shape, dtype):
    """A new zero-filled array, as empty() (workspaces that must start at zero)."""
    array = empty(reference, shape, dtype)
    framework = type(array).__module__.split(".")[0]
    if framework == "torch":
        return array.zero_()
    if framework == "cupy":
        array.fill(0)
        return array
    jnp = sys.modules["jax"].numpy
    return jnp.zeros(shape, dtype=_numpy_dtype(dtype), device=next(iter(array.devices())))


def output(out, name, reference, reference_name, shape, dtype, accepted_dtypes=None):
    """The output array: `out` after checking it, or a new one. Returns (array object, DeviceArray)."""
    if out is None:
        out = empty(reference, shape, dtype)
        return out, as_device_array(out, name)
    array = as_device_array(out, name)
    require(array, name, shape, accepted_dtypes or (dtype,))
    require_same_device(reference, reference_name, array, name)
    return out, array
