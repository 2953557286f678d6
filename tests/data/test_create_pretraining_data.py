"""The entry point: --help, a run in-process with its summary and saved config, bad input → exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data import create_pretraining_data as cpd

SCRIPT = Path(cpd.__file__)


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    parser_options = [a for a in cpd.PretrainingDataConfig.__dataclass_fields__ if a != "progress"]
    for name in parser_options:
        assert "--" + name.replace("_", "-") in out, name
    assert "--no-progress" in out and "tokens per sequence" in out


def test_run_prints_summary_and_saves_config(bert_sample_text, teacher_path, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cpd.main(["--input", str(bert_sample_text), "--tokenizer", str(teacher_path), "--output-dir", str(out),
                   "--num-shards", "2", "--heldout-fraction", "0.3", "--no-progress", "--cache-dir", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and f"tokens {manifest['stats']['tokens']:,}" in printed
    assert json.loads((out / "run_config.json").read_text())["num_shards"] == 2
    assert cpd.main(["--input", str(bert_sample_text), "--tokenizer", str(teacher_path), "--output-dir", str(out),
                     "--num-shards", "2", "--heldout-fraction", "0.3", "--no-progress",
                     "--cache-dir", str(tmp_path)]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "missing.txt", "missing.txt: no such file"),
    (lambda d: (d / "empty.txt").write_text("") and None or d / "empty.txt", "empty.txt: no text"),
    (lambda d: (d / "zeros.bin").write_bytes(bytes(5000)) and None or d / "zeros.bin", "zeros.bin: looks like a binary"),
])
def test_bad_input_exits_2_with_one_line(teacher_path, tmp_path, make_input, message):
    path = make_input(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--input", str(path), "--tokenizer", str(teacher_path),
                           "--output-dir", str(tmp_path / "out"), "--no-progress", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_tokenizer_name(bert_sample_text, tmp_path, capsys):
    rc = cpd.main(["--input", str(bert_sample_text), "--tokenizer", str(tmp_path / "no-such-model"),
                   "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and "no such folder" in capsys.readouterr().err
