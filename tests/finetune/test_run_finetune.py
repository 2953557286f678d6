"""The entry point end to end on a tiny model and real task files, and its handling of bad input."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification, ByT5Tokenizer

from bort.checkpoints import list_checkpoints
from finetune.run_finetune import build_parser, main
from finetune.tasks import get_task
from finetune.trainer import TrainConfig, _loss, encode, load_model, load_tokenizer, predict, set_seed, train

TINY = ["--max-train-examples", "48", "--max-steps", "6", "--eval-every", "3", "--max-seq-length", "64",
        "--learning-rate", "1e-3", "--batch-size", "8", "--quiet"]


def test_one_run_saves_model_metrics_config_and_submission(tiny_model, tmp_path, superglue_dir):
    out = tmp_path / "out"
    assert main(["CB", "--model", str(tiny_model), "--output-dir", str(out), *TINY]) == 0
    folder = out / "CB"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "entailment", 1: "contradiction", 2: "neutral"}
    assert isinstance(AutoModel.from_pretrained(folder), torch.nn.Module)
    metrics = json.loads((folder / "dev_metrics.json").read_text())
    assert set(metrics["dev"]["val"]) == {"accuracy", "macro_f1", "score"} and metrics["steps"] == 6
    config = json.loads((folder / "finetune_config.json").read_text())
    assert config["task"] == "CB" and config["train"]["learning_rate"] == 1e-3
    assert config["data_dir"] == str(superglue_dir)
    lines = (folder / "predictions" / "CB.jsonl").read_text().splitlines()
    assert len(lines) == 250 and [json.loads(x)["idx"] for x in lines] == list(range(250))
    assert (folder / "tokenizer.json").is_file() and "| CB | run |" in (out / "summary.md").read_text()


def test_quiet_shows_no_progress_bar(tiny_model, tmp_path):
    """--quiet promises warnings only: neither our bars nor transformers' (loading and writing the weights)."""
    script = Path(__file__).resolve().parents[2] / "finetune" / "run_finetune.py"
    proc = subprocess.run([sys.executable, str(script), "CB", "--model", str(tiny_model), "--output-dir",
                           str(tmp_path / "out"), *TINY], env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "CB" / "config.json").is_file()
    output = proc.stdout + proc.stderr
    assert "it/s]" not in output and "%|" not in output, output


def test_a_killed_run_started_again_ends_as_if_never_killed(tiny_model, tmp_path, caplog):
    """SIGKILL once the first checkpoint exists (whenever that lands between two checkpoints); the same command then
    resumes from the newest checkpoint, writes the same model and history as a run never killed, and deletes it."""
    script = Path(__file__).resolve().parents[2] / "finetune" / "run_finetune.py"
    args = ["CB", "--model", str(tiny_model), "--max-steps", "120", "--eval-every", "40", "--save-steps", "10",
            "--early-stopping-patience", "0", "--max-seq-length", "64", "--learning-rate", "1e-3", "--batch-size", "8",
            "--no-predict-test", "--quiet", "--threads", "1"]  # the killed process's thread count, for equal sums
    killed, checkpoints = tmp_path / "killed", tmp_path / "killed" / "checkpoints" / "CB"
    proc = subprocess.Popen([sys.executable, str(script), *args, "--output-dir", str(killed)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list_checkpoints(checkpoints) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL  # killed during the run, not after it
    saved = int(list_checkpoints(checkpoints)[-1].name.split("-")[1])
    assert 0 < saved < 120 and not (killed / "CB").exists()
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.WARNING):
            assert main([*args, "--output-dir", str(killed)]) == 0
            assert f"resuming from step {saved} " in caplog.text
            caplog.clear()
            assert main([*args, "--output-dir", str(tmp_path / "whole")]) == 0
            assert "resuming" not in caplog.text
    finally:
        torch.set_num_threads(threads)
    metrics = [json.loads((out / "CB" / "dev_metrics.json").read_text()) for out in (killed, tmp_path / "whole")]
    assert metrics[0] == metrics[1] and metrics[0]["steps"] == 120 and len(metrics[0]["history"]) == 3
    weights = [load_file(out / "CB" / "model.safetensors") for out in (killed, tmp_path / "whole")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    assert not checkpoints.parent.exists()


@pytest.mark.parametrize("name", ["STS-B", "COPA"])
def test_regression_and_multiple_choice_heads_learn(name, tiny_model, glue_dir, superglue_dir):
    """The regression and multiple-choice heads fit a handful of examples: loss down, score far above chance."""
    task = get_task(name)
    root = glue_dir if task.benchmark == "glue" else superglue_dir
    examples = task.read(root, "train" if task.train and name == "STS-B" else "val")[:16]
    set_seed(0)
    tokenizer, model = load_tokenizer(str(tiny_model)), load_model(task, str(tiny_model))
    result = train(task, model, tokenizer, examples, {"dev": examples},
                   TrainConfig(learning_rate=1e-2, batch_size=16, max_steps=60, eval_every=10, warmup_fraction=0.0,
                               early_stopping_patience=0, max_seq_length=64, weight_decay=0.0), progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    # Fitting 16 training examples: far above chance (Pearson 0, accuracy 1/2) on them.
    assert result.score > (0.5 if name == "STS-B" else 0.9)


def test_every_option_states_its_default_at_most_once():
    """Options whose help already names their default (e.g. --model: the local teacher) do not repeat it as an
    empty "(default: )"."""
    for action in build_parser()._actions:
        text = (action.help or "") % {"default": action.default}
        assert text.lower().count("default") <= 1 and "(default: )" not in text, action.option_strings
    assert "(default: 2e-05)" in build_parser().format_help()  # a non-empty default is still shown


def test_unknown_task_exits_2_listing_tasks(capsys):
    assert main(["NOPE"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'NOPE'" in err and "MRPC" in err and "ReCoRD" in err


def test_negative_save_steps_exit_2_naming_the_option(capsys, tmp_path):
    assert main(["CB", "--save-steps", "-1", "--output-dir", str(tmp_path)]) == 2
    assert "--save-steps must be >= 0" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.parametrize("option, expected", [
    (["--learning-rate", "-1"], "learning_rate must be > 0, got -1.0"),
    (["--eval-every", "-3"], "eval_every must be >= 0, got -3"),
    (["--max-train-examples", "-2"], "max_train_examples must be >= 0, got -2"),
    (["--warmup-fraction", "1"], "warmup_fraction must lie in [0, 1), got 1.0"),
    (["--num-train-epochs", "0", "--max-steps", "0"],
     "the run needs num_train_epochs > 0 or max_steps > 0, got 0.0 and 0"),
    (["--mode", "sweep", "--budget-steps", "-5"], "budget_steps must be >= 0, got -5"),
    (["--mode", "agora", "--holdout-size", "0"], "holdout_size must be >= 1, got 0"),
    (["--mode", "agora", "--transform", "mlm"], "--transform mlm needs --mlm-model"),
])
def test_a_setting_out_of_range_exits_2_naming_it_before_anything_is_written(option, expected, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["CB", "--output-dir", str(out), *option]) == 2
    assert f"error: {expected}" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a CUDA GPU")
def test_fp16_off_a_gpu_exits_2_naming_the_option_and_an_unknown_precision_is_refused(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["CB", "--model", str(tiny_model), "--output-dir", str(out), "--precision", "fp16", *TINY]) == 2
    assert "--precision fp16 needs a CUDA GPU (dynamic loss scaling); use bf16 or fp32 on this machine" in \
        capsys.readouterr().err
    assert not (out / "CB").exists() and not (out / "checkpoints").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["CB", "--precision", "fp8"])
    assert exit_.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_missing_data_file_exits_2_naming_it(tiny_model, tmp_path, capsys):
    assert main(["RTE", "--model", str(tiny_model), "--data-dir", str(tmp_path), *TINY]) == 2
    assert f"{tmp_path}/RTE/train.tsv: file not found" in capsys.readouterr().err


def test_model_without_tokenizer_exits_2(tiny_model, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / f, bare / f)
    assert main(["CB", "--model", str(bare), "--output-dir", str(tmp_path / "o"), *TINY]) == 2
    assert "no tokenizer files" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main(["CB", "--model", str(bare), "--tokenizer", str(missing), "--output-dir", str(tmp_path / "o"),
                 *TINY]) == 2
    assert f"error: --tokenizer {missing}: not a folder" in capsys.readouterr().err  # not looked up on the hub
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--model", "--oracle", "--oracle-base", "--mlm-model"])
def test_a_model_folder_that_is_missing_or_not_a_model_exits_2_naming_the_option(option, tiny_model, tmp_path,
                                                                                  capsys):
    out = tmp_path / "out"
    extra = ["--mode", "agora", "--model", str(tiny_model), "--transform", "mlm", "--mlm-model", str(tiny_model)]
    assert main(["CB", *extra, option, str(tmp_path / "missing"), "--output-dir", str(out), *TINY]) == 2
    assert f"error: {option} folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["CB", *extra, option, str(tmp_path), "--output-dir", str(out), *TINY]) == 2  # a folder, no model
    assert f"error: {option} folder {tmp_path} has no config.json" in capsys.readouterr().err
    assert not out.exists()  # Agora's folder was made before its --oracle was read


def test_torchrun_engine_outside_its_launcher_exits_2_writing_nothing(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["CB", "--model", str(tiny_model), "--output-dir", str(tmp_path / "o"), "--engine", "torchrun",
                 *TINY]) == 2
    assert "launch with `torchrun --nproc_per_node N" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_long_sequences_are_truncated_with_a_count(tiny_model, superglue_dir, caplog):
    task = get_task("CB")
    examples = task.read(superglue_dir, "val")
    tokenizer = load_tokenizer(str(tiny_model))
    lengths = [len(tokenizer(e.texts[0], e.texts[1])["input_ids"]) for e in examples]
    features, truncated = encode(task, examples, tokenizer, 64)
    assert truncated == sum(n > 64 for n in lengths) > 0
    assert max(len(f["input_ids"]) for f in features) == 64
    model = load_model(task, str(tiny_model))  # 128 positions: a longer request is clipped with a warning
    with caplog.at_level(logging.WARNING):
        train(task, model, tokenizer, examples[:8], {"val": examples[:8]},
              TrainConfig(max_steps=1, max_seq_length=512, batch_size=8), progress=False)
    over = sum(n > 128 for n in lengths[:8])
    assert over > 0 and "exceeds the model's 128 positions" in caplog.text
    assert f"CB: {2 * over} training and dev sequences longer than 128 tokens were truncated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        predict(model, tokenizer, task, examples, max_seq_length=64)
    assert f"CB: {truncated} of {len(examples)} sequences to predict were longer than 64 tokens and were truncated" \
        in caplog.text


def test_a_python_tokenizer_counts_truncated_sequences_too(superglue_dir):
    """A fast tokenizer counts from its one truncating pass (what it cut off); a Python one keeps no encodings and
    needs a second, untruncated pass: both count the same way."""
    task = get_task("CB")
    examples = task.read(superglue_dir, "val")
    tokenizer = ByT5Tokenizer()  # bytes: no vocabulary file, nothing downloaded
    assert not tokenizer.is_fast
    lengths = [len(tokenizer(e.texts[0], e.texts[1])["input_ids"]) for e in examples]
    features, truncated = encode(task, examples, tokenizer, 64)
    assert truncated == sum(n > 64 for n in lengths) > 0
    assert max(len(f["input_ids"]) for f in features) == 64


def test_diagnostic_needs_a_model_with_the_same_labels(tiny_model, tmp_path, capsys):
    """AX-b is predicted by an RTE model: a CB model (three labels) is refused; an RTE-labelled one works."""
    sg = tmp_path / "sg"
    (sg / "AX-b").mkdir(parents=True)
    (sg / "AX-b" / "AX-b.jsonl").write_text("".join(
        json.dumps({"sentence1": f"A{i}", "sentence2": "B", "label": "entailment", "idx": i}) + "\n" for i in range(3)))
    cb_model = tmp_path / "cb"
    load_model(get_task("CB"), str(tiny_model)).save_pretrained(cb_model)
    load_tokenizer(str(tiny_model)).save_pretrained(cb_model)
    assert main(["AX-b", "--model", str(cb_model), "--data-dir", str(sg), "--output-dir", str(tmp_path / "o")]) == 2
    assert "differ from AX-b's" in capsys.readouterr().err
    rte_model = tmp_path / "rte"
    load_model(get_task("SuperGLUE-RTE"), str(tiny_model)).save_pretrained(rte_model)
    load_tokenizer(str(tiny_model)).save_pretrained(rte_model)
    assert main(["AX-b", "--model", str(rte_model), "--data-dir", str(sg), "--output-dir", str(tmp_path / "o")]) == 0
    lines = (tmp_path / "o" / "AX-b" / "predictions" / "AX-b.jsonl").read_text().splitlines()
    assert [json.loads(x)["idx"] for x in lines] == [0, 1, 2]


def test_record_loss_leaves_out_queries_without_a_correct_candidate():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.1, 0.3]], requires_grad=True)
    labels = torch.tensor([[False, True, True], [False, False, False]])  # the second query's answer matches no span
    loss = _loss(get_task("ReCoRD"), logits, labels)
    loss.backward()
    probs = torch.tensor([1.0, 2.0, 0.0]).softmax(-1)
    assert loss.item() == pytest.approx(-torch.log(probs[1] + probs[2]).item())
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad[1], torch.zeros(3))
