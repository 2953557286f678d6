"""The engines of bort.distributed under a real `torchrun` with two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
