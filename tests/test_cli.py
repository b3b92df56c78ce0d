"""The `moekit` command (python -m moekit): info, check, bench.

The CPU tests run everywhere (CI has no GPU and no torch): what each command says without a GPU, the
help, and that moekit.bench imports without torch. The tests marked gpu run `moekit check` and a quick
`moekit bench` on the device. Every command runs in a subprocess with this process's environment
(MOEKIT_LIBRARY passes through) and the moekit this process imported first on PYTHONPATH.
"""

import importlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

import moekit
from moekit.__main__ import _cuda_devices

REPO = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = ["router", "aux_loss", "quant", "epilogue", "routing"]
NO_GPU = _cuda_devices()[0].startswith("no CUDA device")
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="a CUDA device is present: this checks the no-GPU message")


def _env():
    env = dict(os.environ)
    package_root = str(pathlib.Path(moekit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run(*args, timeout=120, cwd=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=cwd)


def _moekit(*args, timeout=120):
    return _run("-m", "moekit", *args, timeout=timeout)


def _library_loads():
    try:
        importlib.import_module("moekit._lib")
    except ImportError:
        return False
    return True


def test_info():
    result = _moekit("info")
    assert result.returncode == (0 if _library_loads() else 1), result.stdout + result.stderr
    out = result.stdout
    assert f"moekit {moekit.__version__}" in out
    assert "CUDA:" in out
    if NO_GPU:
        assert "no CUDA device" in out
    frameworks = [line for line in out.splitlines() if line.startswith("frameworks:")]
    assert len(frameworks) == 1 and all(name in frameworks[0] for name in ("torch", "cupy", "jax")), out
    if _library_loads():
        assert "ABI 1" in out and "CUDA architectures:" in out


@needs_no_gpu
@pytest.mark.parametrize("command", [["check"], ["bench", "--quick"]])
def test_gpu_commands_without_gpu(command):
    result = _moekit(*command)
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.startswith(f"moekit {command[0]}: no CUDA device") and len(message.splitlines()) == 1, message
    assert "Traceback" not in result.stderr


def test_bench_help():
    result = _moekit("bench", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--ops", "--out", "--no-compile", "moekit[bench]"):
        assert option in result.stdout, option


def test_unknown_op_is_a_usage_error():
    result = _moekit("bench", "--ops", "quant,no_such_op")
    assert result.returncode == 2
    assert "unknown op or family no_such_op" in result.stderr


def test_bench_package_imports_without_torch():
    code = ("import sys, moekit.bench, moekit.bench.runner, moekit.bench.plot; "
            "print(','.join(moekit.bench.family_names())); "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'imported a framework'")
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ",".join(FAMILIES)


def test_registry():
    from moekit.bench import families, family_names, op_names

    assert family_names() == FAMILIES
    for family in families():
        assert family.ops and callable(family.check) and callable(family.cells), family.name
    assert {"router_topk_forward", "silu_mul_quant_fp8", "rmsnorm"} <= set(op_names())
    assert [f.name for f in families(["quant", "rmsnorm"])] == ["quant", "epilogue"]
    with pytest.raises(ValueError, match="unknown op or family"):
        families(["nope"])


def test_timing_helpers():
    from moekit.bench import _timing

    assert _timing.rotation_count(10 * 2**20, 50 * 2**20) == 20  # 4 x L2 / bytes per set
    assert _timing.rotation_count(2**40, 50 * 2**20) == 1
    assert _timing.fmt_num(None) == "n/a" and _timing.fmt_num(1.234, 2) == "1.23"
    table = _timing.format_table(["op", "us"], [["a", "1.00"], ["bb", "10.50"]]).splitlines()
    assert table[0].split() == ["op", "us"] and table[-1].endswith("10.50") and table[2].endswith(" 1.00")


def test_check_comparisons():
    """`moekit check`'s tolerance test: exact zeros, NaN and infinities only where the reference has them."""
    import numpy as np

    from moekit.bench.families import _close, _near_ties

    nan, inf = float("nan"), float("inf")
    assert _close("op", [0.0, 1.0], [0.0, 1.000001], 1e-5, 0.0)[1]
    assert not _close("op", [1e-12, 1.0], [0.0, 1.0], 1e-5, 0.0)[1]
    assert _close("op", [nan, -inf], [nan, -inf], 1e-5, 0.0)[1]
    for got, want in (([nan], [0.0]), ([1.0], [nan]), ([inf], [-inf]), ([5.0], [inf]), ([1.0, 2.0], [1.0])):
        assert not _close("op", got, want, 1e-5, 0.0)[1], (got, want)
    keys = np.array([[3.0, 2.0, 2.0 + 1e-9, 0.0], [3.0, 2.0, 1.0, 0.0]])
    assert _near_ties(keys, 2).tolist() == [True, False]


def test_bench_scripts_share_the_timing_core():
    """bench/_common.py re-exports the package's timing core (from the source tree if need be)."""
    code = ("import sys; sys.path.insert(0, 'bench'); import _common as C; from moekit.bench import _timing; "
            "assert C.time_fn is _timing.time_fn and C.copy_ceiling is _timing.copy_ceiling; "
            "assert callable(C.import_moekit) and callable(C.plot_bars) and C.DEFAULT_OUT_DIR; "
            "assert 'torch' not in sys.modules")
    result = _run("-c", code, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
def test_check_on_gpu():
    pytest.importorskip("torch")
    result = _moekit("check", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert lines and not [line for line in lines if line.startswith("FAIL")], result.stdout
    reported = {line.split()[2] for line in lines}
    from moekit.bench import op_names

    assert set(op_names()) <= reported, f"no line for {set(op_names()) - reported}"
    assert "passed" in result.stdout.splitlines()[-1]


@pytest.mark.gpu
def test_bench_quick_on_gpu(tmp_path):
    pytest.importorskip("torch")
    result = _moekit("bench", "--quick", "--ops", "quant", "--out", str(tmp_path), "--no-compile", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "moekit-bench.json").read_text())
    assert data["records"] and all(r["family"] == "quant" for r in data["records"])
    for record in data["records"]:
        assert record["timings"]["moekit"]["us"] > 0 and record["gbs"]["moekit"] > 0, record
        assert "torch.compile" not in record["timings"]
    assert data["copy_ceiling"]["gbs"] > 0
    if importlib.util.find_spec("matplotlib") is None:
        assert "pip install 'moekit[bench]'" in result.stdout
    else:
        assert (tmp_path / "moekit-bench.png").stat().st_size > 0
