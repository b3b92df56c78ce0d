"""moekit: CUDA kernels around the grouped GEMMs of a Mixture-of-Experts layer.

Importing the package loads nothing heavy: the shared library is loaded on first use of an op
(so `moekit.reference` and `python -m moekit info` work without a build), and torch / CuPy / JAX
are imported only when an array of theirs is passed in.
"""

import glob as _glob
import os as _os

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "router_topk_forward",
    "router_topk_backward",
    "aux_scores_forward",
    "aux_scores_backward",
    "aux_loss_forward",
    "aux_loss_backward",
    "aux_loss_workspace_size",
    "router_aux_forward",
    "router_aux_backward",
    "silu_mul_quant_fp8",
    "quant_fp8",
    "shared_expert_gate_",
    "add_rmsnorm_",
    "rmsnorm",
    "grouped_topk",
    "moe_align",
    "moe_align_buffer_sizes",
    "moe_align_workspace_size",
    "reference",
    "get_library_path",
    "get_include_dir",
    "get_cmake_dir",
]

_PACKAGE_DIR = _os.path.dirname(_os.path.abspath(__file__))
_LIBRARY_SONAME = "libmoekit.so.1"


def get_library_path():
    """Path of the libmoekit the package loads: $MOEKIT_LIBRARY, else the copy inside the package.

    Returns the expected in-package path even when the file is missing (the loader reports that).
    """
    override = _os.environ.get("MOEKIT_LIBRARY")
    if override:
        return override
    lib_dir = _os.path.join(_PACKAGE_DIR, "lib")
    preferred = _os.path.join(lib_dir, _LIBRARY_SONAME)
    if _os.path.exists(preferred):
        return preferred
    # A development install may carry another spelling (libmoekit.so, libmoekit.so.1.x).
    candidates = sorted(_glob.glob(_os.path.join(lib_dir, "libmoekit.so*")))
    return candidates[0] if candidates else preferred


def get_include_dir():
    """Directory to put on the include path for `#include <moekit/moekit.h>`."""
    return _os.path.join(_PACKAGE_DIR, "include")


def get_cmake_dir():
    """Directory holding moekitConfig.cmake (pass as moekit_DIR to find_package(moekit))."""
    return _os.path.join(_PACKAGE_DIR, "lib", "cmake", "moekit")


_LAZY_OPS = {
    "router_topk_forward": "router",
    "router_topk_backward": "router",
    "aux_scores_forward": "aux",
    "aux_scores_backward": "aux",
    "aux_loss_forward": "aux",
    "aux_loss_backward": "aux",
    "aux_loss_workspace_size": "aux",
    "router_aux_forward": "router_aux",
    "router_aux_backward": "router_aux",
    "silu_mul_quant_fp8": "quant",
    "quant_fp8": "quant",
    "shared_expert_gate_": "epilogue",
    "add_rmsnorm_": "epilogue",
    "rmsnorm": "epilogue",
    "grouped_topk": "routing",
    "moe_align": "routing",
    "moe_align_buffer_sizes": "routing",
    "moe_align_workspace_size": "routing",
}


_SUBMODULES = ("reference", "router", "aux", "router_aux", "quant", "epilogue", "routing")


def __getattr__(name):
    # Lazy so that a missing or mismatched library surfaces when an op is first used.
    module_name = _LAZY_OPS.get(name)
    if module_name is not None:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # moekit.quant.scale_storage_shape and friends before any op is used
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
