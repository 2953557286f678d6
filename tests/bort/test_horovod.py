"""Horovod (`horovodrun --gloo`, 2 processes) averages gradients exactly like one process on the whole batch.

Horovod is built by scripts/build_horovod.sh (run_tests.sh calls it before pytest); without it this module is
skipped with the reason printed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import horovod.torch as hvd
except ImportError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"HOROVOD NOT INSTALLED ({exc}): run scripts/build_horovod.sh to test the Horovod path",
                allow_module_level=True)

WORKER = Path(__file__).with_name("horovod_grad_worker.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("horovod_grad_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grads(worker, input_ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    model = worker.build_model(seed=0)
    worker.loss_fn(model, input_ids, mask).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gloo_is_built():
    assert hvd.gloo_built(), "this Horovod build has no Gloo controller: horovodrun --gloo cannot work"


def test_two_process_average_equals_one_process_full_batch(tmp_path: Path, horovodrun: str):
    worker = _worker_module()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"horovodrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert sorted(res["rank"] for res in results) == [0, 1]
    assert all(res["size"] == 2 for res in results)

    input_ids, mask = worker.global_batch()
    full = _grads(worker, input_ids, mask)
    half = worker.GLOBAL_BATCH // 2
    shard0 = _grads(worker, input_ids[:half], mask[:half])
    shard1 = _grads(worker, input_ids[half:], mask[half:])
    assert set(full) == set(results[0]["grads"]) == set(results[1]["grads"])
    # The comparison is only meaningful if the shards' own gradients differ from the average.
    spread = max((shard0[n] - shard1[n]).abs().max().item() for n in full)
    assert spread > 1e-3, f"shards give nearly identical gradients (max diff {spread:.2e}): test data too uniform"
    for res in results:
        for name, ref in full.items():
            torch.testing.assert_close(res["grads"][name], ref, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, name=name: f"{name} (rank {res['rank']}): {m}")
