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
    (out / "notes.txt").write_text("the user's own file")
    common = ["--input", str(bert_sample_text), "--tokenizer", str(teacher_path), "--output-dir", str(out),
              "--heldout-fraction", "0.3", "--no-progress", "--cache-dir", str(tmp_path)]
    assert cpd.main([*common, "--num-shards", "1"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert cpd.main([*common, "--num-shards", "1", "--overwrite"]) == 0
    assert not (out / "train-00001.ids").exists() and (out / "notes.txt").read_text() == "the user's own file"
    assert json.loads((out / "manifest.json").read_text())["config"]["num_shards"] == 1


def test_bad_input_exits_2_with_one_line(teacher_path, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--input", str(tmp_path / "missing.txt"),
                           "--tokenizer", str(teacher_path), "--output-dir", str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.txt: no such file" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "empty.txt: no text"),
    ("zeros.bin", bytes(5000), "zeros.bin: looks like a binary"),
    ("latin1.txt", b"ok\ncaf\xe9 au lait\n", "latin1.txt:2: not valid UTF-8"),
])
def test_bad_files_leave_nothing(teacher_path, tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    rc = cpd.main(["--input", str(tmp_path / name), "--tokenizer", str(teacher_path), "--encoding-errors", "strict",
                   "--output-dir", str(tmp_path / "out"), "--no-progress", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_bad_tokenizer_name(bert_sample_text, tmp_path, capsys):
    rc = cpd.main(["--input", str(bert_sample_text), "--tokenizer", str(tmp_path / "no-such-model"),
                   "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and "no such folder" in capsys.readouterr().err
