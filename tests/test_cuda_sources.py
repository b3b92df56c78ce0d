"""Standalone CUDA programs in tests/cuda/, each checking one piece of device code on its own:

- order_key_check.cu   order_key against its definition for all 2^32 floats (host only);
- workspace_check.cpp  the workspace convention of kernels/common/checks.h (host only);
- topk_check.cu        the top-k engine of kernels/common/topk on every path against a host reference;
- async_loader_check.cu  include/moekit/async_loader.cuh (the public device header) as a consumer uses it;
- quant_math_check.cu  the quantizer's fast exp and division against the IEEE steps SPEC section 6
                       defines (every float for SiLU; 2^32 pairs for the scale division);
- sanitizer_canary.cu  one planted defect per compute-sanitizer tool (scripts/gpu-check.sh runs it).

Without a GPU the programs are compiled (so they cannot rot) and the host-only ones run; with one,
the device programs run too.
"""

import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CUDA = REPO / "tests" / "cuda"


def _nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (these programs are compiled from source)")
    return nvcc


def _arch():
    """The card's architecture where there is one (sm_90a on Hopper), else sm_90a (compile only)."""
    try:
        from cuda.bindings import runtime

        err, major = runtime.cudaDeviceGetAttribute(runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, 0)
        err2, minor = runtime.cudaDeviceGetAttribute(runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, 0)
        if err == runtime.cudaError_t.cudaSuccess and err2 == runtime.cudaError_t.cudaSuccess:
            return f"{major}{minor}a" if major >= 9 else f"{major}{minor}"
    except Exception:  # noqa: BLE001 - no driver: compile for Hopper
        pass
    return "90a"


def build(name, out_dir, extra=(), device=True):
    exe = out_dir / pathlib.Path(name).stem
    cmd = [_nvcc(), "-O2", "-std=c++17", f"-I{REPO / 'include'}", f"-I{REPO / 'kernels'}", "--expt-relaxed-constexpr"]
    if device:
        arch = _arch()
        cmd.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    cmd += [str(CUDA / name), *[str(REPO / e) for e in extra], "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return exe


def run(exe, *args):
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Device programs compiled once per session."""
    out = tmp_path_factory.mktemp("cuda")
    return {name: build(name, out) for name in ("topk_check.cu", "async_loader_check.cu", "quant_math_check.cu",
                                               "sanitizer_canary.cu")}


def test_order_key_matches_its_definition_for_every_float(tmp_path):
    exe = build("order_key_check.cu", tmp_path, device=False)
    code, out = run(exe)
    assert code == 0, out
    assert "all 2^32 inputs match" in out


def test_workspace_convention(tmp_path):
    exe = build("workspace_check.cpp", tmp_path, extra=("kernels/common/checks.cpp", "kernels/common/api.cpp"),
                device=False)
    code, out = run(exe)
    assert code == 0, out
    assert "all checks pass" in out


def test_device_programs_compile(built):
    for exe in built.values():
        assert exe.exists()


@pytest.mark.gpu
def test_topk_engine_every_path_matches_the_reference(built):
    code, out = run(built["topk_check.cu"])
    assert code == 0, out
    assert "all paths match the reference" in out
    for path in ("warp rounds", "warp rounds (packed keys)", "warp radix select", "warp filtered", "warp groups",
                 "block rounds", "block radix select", "lane list rounds (packed)", "lane min_below rounds (packed)",
                 "lane groups"):
        assert f"{path} E=" in out, f"path {path!r} did not run:\n{out}"


@pytest.mark.gpu
@pytest.mark.parametrize("seed", ["7", "31337"])
def test_topk_engine_other_seeds(built, seed):
    code, out = run(built["topk_check.cu"], seed)
    assert code == 0, out


@pytest.mark.gpu
def test_async_loader_header(built):
    code, out = run(built["async_loader_check.cu"])
    assert code == 0, out
    assert "all checks pass" in out


@pytest.mark.gpu
def test_quant_fast_math_matches_ieee_steps(built):
    code, out = run(built["quant_math_check.cu"])
    assert code == 0, out
    assert "all checks pass" in out
    assert "exp_m: 0 of 2^32" in out and "silu_fast: 0 of" in out and "div_fast: 0 of" in out, out
