"""examples/python/expert_parallel.py against the same batch on one GPU (its --check): identical expert
ids and per-expert token sets, outputs within bf16 tolerance, the aux loss bitwise equal, the aux-loss
gradient within tolerance. One process on one GPU (gpu), and N = 2, 4, 8 processes through torchrun
over NCCL where that many GPUs exist (multigpu); NVLink multicast stays off in both.
"""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "python" / "expert_parallel.py"
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _run(cmd):
    env = {**os.environ, **NO_MULTICAST}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.gpu
def test_single_gpu_layer():
    out = _run([sys.executable, str(EXAMPLE), "--check", "--tokens", "1024"])
    assert "rank 0: check ok" in out, out


@pytest.mark.gpu
def test_two_ranks_sharing_one_gpu_over_gloo():
    # what one GPU allows of the multi-process path: two ranks, the collectives over gloo
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(EXAMPLE),
                "--backend", "gloo", "--check", "--tokens", "2048"])
    for rank in range(2):
        assert f"rank {rank}: check ok" in out, out


def _gpus():
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch (CI)
        return 0


@pytest.mark.multigpu
@pytest.mark.parametrize("n", [2, 4, 8])
def test_expert_parallel(n):
    if _gpus() < n:
        pytest.skip(f"needs {n} GPUs, {_gpus()} visible")
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(EXAMPLE),
                "--check", "--tokens", "4096"])
    for rank in range(n):
        assert f"rank {rank}: check ok" in out, out
