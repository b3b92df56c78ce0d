"""order_key (kernels/common/device.cuh), the map from float scores to selection keys whose integer
order is SPEC's total order, is branch-free for speed. dev/order_key_check.cu compiles it as host
code and compares it with the plain definition for all 2^32 float bit patterns (about 10 s)."""

import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_order_key_matches_its_definition_for_every_float(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed (the check is compiled as host code)")
    exe = tmp_path / "order_key_check"
    build = subprocess.run([nvcc, "-O2", "-std=c++17", f"-I{REPO / 'include'}", f"-I{REPO / 'kernels'}",
                            str(REPO / "dev" / "order_key_check.cu"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 2^32 inputs match" in run.stdout
