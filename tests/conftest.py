"""Shared pytest setup.

- Tests marked `gpu` (the marker is declared in pyproject.toml) are skipped, with the reason,
  when no CUDA device is usable. The probe runs once per session and needs no torch: CI has none.
  Set MOEKIT_REQUIRE_GPU=1 on a GPU machine to turn that skip into an error, so that a broken driver
  setup cannot pass as "all skipped".
- `rng`: a NumPy Generator seeded from the test's node id, so every test draws different data and a
  rerun of the same test draws the same data. MOEKIT_TEST_SEED=<int> mixes in another seed to
  explore. A failing test's report shows its seed.
"""

import hashlib
import importlib.util
import os
import sys

import numpy as np
import pytest

# The GPU tests share helpers in tests/_util.py; make them importable under any --import-mode.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# JAX takes 75% of the GPU's memory on first use unless told not to; the tests share one process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_device_status = None  # (usable: bool, reason: str), probed once


def _probe_with_cuda_bindings():
    """(usable, why not) from cuda-bindings' CUDA runtime; None if cuda-bindings is missing."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python before the cuda.bindings layout
        except ImportError:
            return None
    try:
        error, count = runtime.cudaGetDeviceCount()
    except Exception as exc:  # a runtime that cannot even load reads as "no device", with the cause
        return False, f"cudaGetDeviceCount raised {type(exc).__name__}: {exc}"
    if error != runtime.cudaError_t.cudaSuccess:
        name = runtime.cudaGetErrorName(error)[1]
        text = runtime.cudaGetErrorString(error)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        return False, f"cudaGetDeviceCount failed: {name} ({text})"
    if count < 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
        return False, f"cudaGetDeviceCount found 0 devices{hint}"
    return True, ""


def _probe_with_torch():
    """(usable, why not) from torch; None when torch is not installed (it is not, in CI)."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except Exception as exc:
        return False, f"importing torch failed: {type(exc).__name__}: {exc}"
    if torch.cuda.is_available():
        return True, ""
    return False, f"torch.cuda.is_available() is False (torch {torch.__version__})"


def cuda_device_status():
    """(usable, reason): reason reads 'no CUDA device: <why>' when no device is usable."""
    global _device_status
    if _device_status is None:
        reasons = []
        usable = False
        # cuda-bindings first: cheap, and always there (a moekit dependency). torch is asked only
        # when that says no, in case the two disagree about the driver.
        for probe in (_probe_with_cuda_bindings, _probe_with_torch):
            result = probe()
            if result is None:
                continue
            usable, why = result
            if usable:
                break
            reasons.append(why)
        if not usable and not reasons:
            reasons.append("neither cuda-bindings nor torch is importable to look for one")
        _device_status = (usable, "" if usable else "no CUDA device: " + "; ".join(reasons))
    return _device_status


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    usable, reason = cuda_device_status()
    if usable:
        return
    if os.environ.get("MOEKIT_REQUIRE_GPU", "") not in ("", "0"):
        raise pytest.UsageError(f"MOEKIT_REQUIRE_GPU is set but {reason}")
    skip = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(skip)


# ---- per-test random generator -------------------------------------------------------------------

_SEED_KEY = pytest.StashKey[int]()


def _seed_for(nodeid):
    seed = int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:8], "little")
    extra = os.environ.get("MOEKIT_TEST_SEED")
    if extra:
        seed ^= int(extra) & 0xFFFF_FFFF_FFFF_FFFF
    return seed


@pytest.fixture
def rng(request):
    """np.random.Generator seeded from this test's node id (reproducible, different per test)."""
    seed = _seed_for(request.node.nodeid)
    request.node.stash[_SEED_KEY] = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if report.failed and seed is not None:
        extra = os.environ.get("MOEKIT_TEST_SEED")
        mixed = f", MOEKIT_TEST_SEED={extra} mixed in" if extra else ""
        report.sections.append(
            ("rng seed", f"rng = np.random.default_rng({seed})  (from the node id{mixed})")
        )
