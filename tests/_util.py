"""Helpers shared by the GPU tests (imported as `_util`; tests/conftest.py puts tests/ on sys.path).

NumPy-only at import: torch is imported inside the functions that need it, so test modules that use
these helpers still import and collect on machines without torch (CI).
"""

import ml_dtypes
import numpy as np

FLOAT_DTYPES = ("float32", "bfloat16", "float16")

NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float64": np.dtype(np.float64),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}

# What the tests feed a kernel: the values the kernel sees are these, rounded to the dtype once.
SHORT_NAMES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def load_reference():
    """moekit.reference, or the oracle loaded from the source tree on its own when the package cannot
    be imported (its __init__ may need the compiled library; the oracle never does)."""
    try:
        from moekit import reference

        return reference
    except Exception:
        import importlib.util
        import pathlib
        import sys

        path = pathlib.Path(__file__).resolve().parents[1] / "python" / "moekit" / "reference"
        spec = importlib.util.spec_from_file_location(
            "moekit_reference_standalone", path / "__init__.py", submodule_search_locations=[str(path)])
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # relative imports
        spec.loader.exec_module(module)
        return module


def torch_dtype(name):
    import torch

    return getattr(torch, name)


def rounded(values, dtype):
    """float64 values -> NumPy array of `dtype` (round to nearest even, as the GPU would)."""
    return np.asarray(values, dtype=np.float64).astype(NUMPY_DTYPES[dtype])


def to_device(array, device="cuda"):
    """NumPy array (ml_dtypes.bfloat16 included) -> torch tensor on `device`, bit for bit."""
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == NUMPY_DTYPES["bfloat16"]:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(array).to(device)


def to_host(tensor):
    """torch tensor (any device) -> NumPy array, bit for bit (bfloat16 -> ml_dtypes.bfloat16)."""
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
    return tensor.cpu().numpy()


def as_float64(array):
    return np.asarray(array).astype(np.float64)


# ---- poisoned outputs ----------------------------------------------------------------------------

# Two fillings that differ in every byte: an output element the op forgot to write keeps its poison,
# so it differs between a run into pattern "nan" buffers and a run into pattern "bytes" buffers,
# even where a single poison value could pass for a legitimate result.
POISON_PATTERNS = ("nan", "bytes")


def poisoned(shape, dtype, pattern, device="cuda"):
    """A new torch tensor whose every element is poison.

    "nan":   floats NaN, integers -7, bool/uint8 0xAB bytes (neither 0 nor 1).
    "bytes": every byte 0xAB for floats and integers, 0xCD for bool/uint8.
    """
    import torch

    dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    tensor = torch.empty(shape, dtype=dtype, device=device)
    if tensor.numel() == 0:
        return tensor
    if dtype in (torch.bool, torch.uint8):
        tensor.view(torch.uint8).fill_(0xAB if pattern == "nan" else 0xCD)
    elif pattern == "bytes":
        tensor.reshape(-1).view(torch.uint8).fill_(0xAB)  # reshape: a 0-d tensor cannot change its view
    elif dtype.is_floating_point:
        tensor.fill_(float("nan"))
    else:
        tensor.fill_(-7)
    return tensor


def raw_bytes(tensor):
    """The bytes of a contiguous tensor as a uint8 tensor (for bitwise comparisons)."""
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=tensor.device)
    return tensor.reshape(-1).view(torch.uint8)


def same_bits(a, b):
    """True when a and b have the same shape, element size and bytes (NaN payloads included)."""
    if tuple(a.shape) != tuple(b.shape) or a.element_size() != b.element_size():
        return False
    import torch

    return bool(torch.equal(raw_bytes(a), raw_bytes(b)))


def first_difference(a, b):
    """Index (tuple) of the first element whose bytes differ, for failure messages; None if none."""
    import torch

    if a.numel() == 0:
        return None
    size = a.element_size()
    x = raw_bytes(a).reshape(-1, size)
    y = raw_bytes(b).reshape(-1, size)
    differs = (x != y).any(dim=1)
    if not bool(differs.any()):
        return None
    flat = int(torch.nonzero(differs)[0, 0])
    return tuple(int(i) for i in np.unravel_index(flat, tuple(a.shape)))


# ---- error measures ------------------------------------------------------------------------------


def relative_norm_error(out, ref):
    """||out - ref|| / ||ref|| in float64 (||out|| when ref is all zeros)."""
    out = as_float64(out)
    ref = as_float64(ref)
    diff = np.linalg.norm((out - ref).ravel())
    scale = np.linalg.norm(ref.ravel())
    return diff / scale if scale > 0 else diff


def row_relative_errors(out, ref, floor):
    """Per-row ||out - ref|| / max(||ref||, floor) (floor: per-row array or scalar)."""
    out = as_float64(out)
    ref = as_float64(ref)
    diff = np.linalg.norm(out - ref, axis=1)
    scale = np.maximum(np.linalg.norm(ref, axis=1), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, diff / scale, diff)


# ---- streams -------------------------------------------------------------------------------------

# ~50-100 ms of spinning on an H100: work issued on another stream would finish long before.
STALL_CYCLES = 100_000_000


class StreamProtocolObject:
    """Any object that exposes a stream through the CUDA stream protocol (`__cuda_stream__`)."""

    def __init__(self, handle):
        self._handle = int(handle)

    def __cuda_stream__(self):
        return (0, self._handle)


def stall_then(handle, action, cycles=STALL_CYCLES):
    """Occupy stream `handle` (an int cudaStream_t) with a spin kernel, then enqueue `action()`
    (torch work) behind it on the same stream.

    An op that really runs on `handle` sees what `action` wrote; one that runs on any other stream
    runs before it. `handle` first waits for torch's current stream, so inputs made there are ready.
    """
    import torch

    stream = torch.cuda.ExternalStream(handle)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(cycles)
        action()
    return stream
