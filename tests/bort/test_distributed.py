"""The engines of bort.distributed under a real `torchrun` with two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bort.distributed import DistributedError, check_one_gpu_per_process

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_wait_worker.py")
TIMEOUT, WAIT = 2, 6  # seconds: rank 0 works alone three times as long as a training collective may wait


def _torchrun(free_port, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(WORKER), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_other_ranks_wait_for_rank_zero_longer_than_the_collective_timeout(free_port):
    # the sync-halving barrier, test predictions or Agora's new examples keep rank 0 busy alone between runs
    proc = _torchrun(free_port, "message", TIMEOUT, WAIT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: ['from 0', 'from 1'] 2.0" in proc.stdout


def test_a_training_collective_still_fails_after_its_timeout(free_port):
    # the control for the test above: the same wait inside a training collective is an error
    proc = _torchrun(free_port, "sum", TIMEOUT, WAIT)
    assert proc.returncode != 0
    assert "rank 1:" not in proc.stdout
    assert f"Timed out waiting {TIMEOUT * 1000}ms" in proc.stderr, proc.stderr[-3000:]  # gloo's, on rank 1


def test_more_processes_on_a_node_than_gpus_is_refused_with_the_counts():
    # on a one-GPU H100 machine, `torchrun --nproc_per_node 2` stopped on CUDA's "invalid device ordinal" in rank 1
    with pytest.raises(DistributedError, match=r"torchrun started 2 processes on this node, which has 1 visible CUDA "
                                               r"GPU\(s\).*at most 1 per node.*CUDA_VISIBLE_DEVICES="):
        check_one_gpu_per_process("torchrun", 2, 1)
    check_one_gpu_per_process("torchrun", 2, 2)
    check_one_gpu_per_process("horovodrun", 1, 8)
