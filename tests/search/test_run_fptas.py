"""The main job end to end: `python search/run_fptas.py` on the real teacher and real text, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from transformers import AutoModel

from search.run_fptas import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir, teacher_path, wikitext_files):
    out = tmp_path_factory.mktemp("search") / "fptas"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "search/run_fptas.py", "--tiny", "--output-dir", str(out), "--cache-dir",
                           str(cache_dir), "--no_progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_tiny_run_writes_every_result(tiny_run):
    out, proc = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    assert f"winner: {summary['winner']['name']}" in proc.stdout
    for name in ("config.json", "architectures.csv", "architectures.json", "pareto_front.json", "search.png",
                 "study.db", "winner/config.json", "winner/model.safetensors", "winner/tokenizer.json"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "architectures.json").read_text())
    assert len(rows) == 300 == summary["space_size"]
    evaluated = [r for r in rows if r["W"] is not None]
    assert len(evaluated) == summary["candidates"] == 3
    assert max(evaluated, key=lambda r: r["W"])["name"] == summary["winner"]["name"]
    assert all(r["latency_ms"] > 0 for r in evaluated) and all(r["e"] > 0 for r in evaluated)
    assert {r["name"] for r in rows if r["pareto"]} <= {r["name"] for r in evaluated}
    assert (out / "architectures.csv").read_text().count("\n") == 301
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["tiny"] is True and config["resolved"]["space_size"] == 300
    # the latencies' record names the thread count they were measured under (the run's OMP_NUM_THREADS), not None
    latency = json.loads((out / "latency.json").read_text())
    assert latency["key"]["profile"]["threads"] == int(os.environ.get("OMP_NUM_THREADS", "1"))
    assert latency["profile_name"].startswith(f"cpu-float32-t{latency['key']['profile']['threads']}-")


def test_winner_loads_with_automodel(tiny_run):
    out, _ = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    model = AutoModel.from_pretrained(out / "winner")
    arch = summary["winner"]["architecture"]
    assert model.config.num_hidden_layers == arch["num_hidden_layers"]
    assert model.config.hidden_size == arch["hidden_size"]
    assert sum(p.numel() for p in model.parameters()) == summary["winner"]["params_total"]


def test_rerun_resumes_without_retraining(tiny_run, cache_dir, capsys):
    out, _ = tiny_run
    weights = out / "winner" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, json.loads((out / "summary.json").read_text())["winner"])
    assert main(["--tiny", "--output-dir", str(out), "--cache-dir", str(cache_dir), "--no_progress"]) == 0
    study = optuna.load_study(study_name="fptas", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3  # nothing was evaluated again
    assert (weights.stat().st_mtime_ns, json.loads((out / "summary.json").read_text())["winner"]) == before


def test_a_study_of_other_settings_is_refused(tiny_run, cache_dir, capsys):
    out, _ = tiny_run
    assert main(["--tiny", "--steps", "5", "--output-dir", str(out), "--cache-dir", str(cache_dir)]) == 2
    assert "created with other settings (steps)" in capsys.readouterr().err


def bad_input_cases(tmp: Path, teacher: Path):
    (tmp / "empty.txt").write_text("")
    (tmp / "latin1.txt").write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    (tmp / "broken_teacher").mkdir()
    (tmp / "broken_teacher" / "config.json").write_text("{ not json")
    (tmp / "odd_heads.yaml").write_text("num_hidden_layers: [2]\nnum_attention_heads: [5]\nhidden_size: [128]\n"
                                        "intermediate_size: [64]\n")
    (tmp / "deep.yaml").write_text("num_hidden_layers: [12]\nnum_attention_heads: [4]\nhidden_size: [128]\n"
                                   "intermediate_size: [64]\n")
    (tmp / "a_file").write_text("x")
    return [
        (["--teacher", str(tmp / "no_such_teacher")], "no_such_teacher"),
        (["--teacher", str(tmp / "broken_teacher")], "broken_teacher"),
        (["--corpus", str(tmp / "no_such_corpus.txt")], "no_such_corpus.txt"),
        (["--corpus", str(tmp / "empty.txt")], "empty.txt"),
        (["--corpus", str(tmp / "latin1.txt")], "latin1.txt"),
        (["--space", str(tmp / "odd_heads.yaml")], "no valid architecture"),
        (["--space", str(tmp / "deep.yaml")], "num_hidden_layers=12 exceeds the teacher's 6"),
        (["--epsilon", "301"], "--epsilon=301 is outside 1..|Ξ| = 1..300"),
        (["--epsilon", "0"], "--epsilon must be between 1"),
        (["--output-dir", str(tmp / "a_file")], "is not a folder"),
        (["--output-dir", str(tmp / "a_file" / "below")], "is not writable"),
        (["--engine", "torchrun"], "--engine torchrun: launch with `torchrun --nproc_per_node N ...`"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(case, tmp_path, cache_dir, teacher_path, capsys):
    args, culprit = bad_input_cases(tmp_path, teacher_path)[case]
    out = tmp_path / "out"
    argv = ["--tiny", "--cache-dir", str(cache_dir), "--no_progress"]
    argv += args if "--output-dir" in args else [*args, "--output-dir", str(out)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert culprit in err.splitlines()[-1], err
    assert err.splitlines()[-1].startswith("run_fptas.py: error:")
    assert not out.exists()
