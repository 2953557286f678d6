"""bench/compare_finetune_methods.py on the real SST-2 dev set, with tiny models whose predictions are known."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.tasks import get_task
from finetune.trainer import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "compare_finetune_methods.py"


def constant_classifier(tiny_model: Path, folder: Path, label: int) -> Path:
    """The tiny model with an SST-2 head that predicts ``label`` for every input (zero weights, biased bias)."""
    model = load_model(get_task("SST-2"), str(tiny_model))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([10.0, -10.0] if label == 0 else [-10.0, 10.0]))
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_model)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model, shared_data):
    """The script run as users run it, on two labels: 'pos' (always positive, twice) and 'mixed' (one replicate
    always positive, one always negative), writing its JSON and a plot."""
    tmp, glue_dir = tmp_path_factory.mktemp("compare"), shared_data / "glue"
    pos = constant_classifier(tiny_model, tmp / "pos", 1)
    neg = constant_classifier(tiny_model, tmp / "neg", 0)
    out = tmp / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_finetune_methods.py"), "SST-2",
                           f"pos={pos}", f"pos={pos}", f"mixed={pos}", f"mixed={neg}", "--data-dir", str(glue_dir),
                           "--resamples", "300", "--json", str(out / "result.json"), "--plot", str(out / "plot.png")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    labels = [e.label for e in get_task("SST-2").read(glue_dir, "dev")]
    return json.loads((out / "result.json").read_text()), out, proc.stdout, labels


def test_scores_and_differences_match_hand_computed_accuracies(compared):
    result, _, stdout, labels = compared
    share_positive = 100 * sum(label == 1 for label in labels) / len(labels)
    assert result["examples"] == len(labels) == 872
    assert result["replicates"]["pos"] == [round(share_positive, 2)] * 2
    assert result["replicates"]["mixed"] == [round(share_positive, 2), round(100 - share_positive, 2)]
    assert result["dev_score"]["mixed"] == pytest.approx(50.0)
    (diff,) = result["differences"]
    assert diff["pair"] == "pos - mixed"
    assert diff["difference"] == pytest.approx(round(share_positive - 50.0, 2))
    assert diff["per_replicate"] == [0.0, round(share_positive - (100 - share_positive), 2)]
    low, high = diff["ci95"]
    assert low < diff["difference"] < high
    assert "| pos - mixed |" in stdout


def test_plot_is_written_whole(compared):
    _, out, _, _ = compared
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "result.json"]  # no temporary file left


def load_script():
    spec = importlib.util.spec_from_file_location("compare_finetune_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_output_dir_that_is_missing_or_holds_no_model_is_refused(tmp_path, compared):
    """A mistyped --output-dir (or `--output`, which argparse takes for it) beside LABEL=FOLDER models stops the run and
    names the folder, instead of being left out without a word."""
    script, model = load_script(), compared[1].parent / "pos"
    (tmp_path / "empty").mkdir()
    cases = ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "no method's model of SST-2"))
    for folder, message in cases:
        args = script.parse_args(["SST-2", f"x={model}", f"y={model}", "--output", str(folder)])
        with pytest.raises(SystemExit, match=re.escape(f"--output-dir {folder}: {message}")):
            script.model_folders(args)
