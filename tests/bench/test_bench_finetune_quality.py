"""bench/bench_finetune_quality.py: the per-replicate training seeds of --replicate-space-seeds, and the refusals that
come before any training."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.sweep import balanced_grid, load_space

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_finetune_quality.py"
SPACE = ROOT / "bench" / "finetune_space.yaml"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_finetune_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_replicates_get_disjoint_training_seeds_and_keep_their_grid_order():
    bench, space = load_bench(), load_space(str(SPACE))
    seen = set()
    for replicate in range(4):
        shifted = bench.replicate_space_seeds(space, replicate)
        assert {k: v for k, v in shifted.items() if k != "seed"} == {k: v for k, v in space.items() if k != "seed"}
        assert len(shifted["seed"]) == len(space["seed"])
        assert seen.isdisjoint(shifted["seed"])
        seen.update(shifted["seed"])
        # the same points in the same order, each with its seed moved by replicate * n
        n = len(space["seed"])
        expected = [{**p, "seed": p["seed"] + replicate * n} for p in balanced_grid(space, replicate)]
        assert balanced_grid(shifted, replicate) == expected
    assert bench.replicate_space_seeds(space, 0) == space


def test_replicate_space_seeds_rejects_a_space_without_seeds_and_negative_replicates():
    bench = load_bench()
    with pytest.raises(ValueError, match="no 'seed'.*learning_rate"):
        bench.replicate_space_seeds({"learning_rate": [1e-4]}, 1)
    with pytest.raises(ValueError, match=">= 0"):
        bench.replicate_space_seeds(load_space(str(SPACE)), -1)


def test_cli_refuses_a_space_without_seeds(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [5.0e-5, 1.0e-4]\n")
    out = tmp_path / "out"
    proc = run_bench("--tasks", "CB", "--space", str(space), "--replicate-space-seeds", "--seed", "1",
                     "--output-dir", str(out))
    assert proc.returncode != 0
    assert "--replicate-space-seeds" in proc.stderr and "no 'seed'" in proc.stderr
    assert not (out / "space.json").exists() and not (out / "results.json").exists()


def test_cli_refuses_to_mix_shifted_and_unshifted_replicates_in_one_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    results = {"CB": {"a": {"score": 0.8, "seed": 2, "precision": "bf16"}}}
    (out / "results.json").write_text(json.dumps(results))
    proc = run_bench("--tasks", "CB", "--space", str(SPACE), "--replicate-space-seeds", "--seed", "2",
                     "--precision", "bf16", "--output-dir", str(out))
    assert proc.returncode != 0
    assert "results.json" in proc.stderr and "--replicate-space-seeds" in proc.stderr
    assert json.loads((out / "results.json").read_text()) == results  # nothing lost
    assert not (out / "space.json").exists()


def test_a_replicate_with_shifted_seeds_sweeps_with_them(tmp_path, tiny_model, shared_data):
    """The benchmark as users run it, (b) only, on a tiny model: replicate 1's trials train with seeds 3-5."""
    out = tmp_path / "out"
    proc = run_bench("--tasks", "CB", "--model", str(tiny_model), "--budget-steps", "8", "--methods", "b",
                     "--space", str(SPACE), "--replicate-space-seeds", "--seed", "1", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_space(str(out / "space.json"))["seed"] == [3, 4, 5]
    entry = json.loads((out / "results.json").read_text())["CB"]["b"]
    assert entry["replicate_space_seeds"] is True and entry["seed"] == 1
    assert entry["params"]["seed"] in (3, 4, 5)
    with open(out / "b" / "CB" / "sweep" / "trials.csv", newline="") as f:
        seeds = {int(float(row["params_seed"])) for row in csv.DictReader(f)}
    assert seeds and seeds <= {3, 4, 5}
