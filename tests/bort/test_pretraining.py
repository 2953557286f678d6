"""End-to-end tests of bort/run_pretraining_distillation.py on tiny teachers with the real tokenizer and text."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

from bort.checkpoints import list_checkpoints
from bort.pretraining import MicroBatches
from bort.run_pretraining_distillation import main
from data.corpus import RankSampler, load_corpus

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bort" / "run_pretraining_distillation.py"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def _save_teacher(folder: Path, tokenizer, head: bool, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **TINY)
    model = (BertForMaskedLM if head else BertModel)(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory, teacher_path, bert_sample_text):
    root = tmp_path_factory.mktemp("pretraining")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    return {
        "root": root,
        "tokenizer": tokenizer,
        "encoder": _save_teacher(root / "encoder_teacher", tokenizer, head=False),
        "mlm": _save_teacher(root / "mlm_teacher", tokenizer, head=True),
        "text": bert_sample_text,
        "cache": root / "cache",
    }


def _args(setup, out: Path, teacher: str = "encoder", **options) -> list[str]:
    values = {"teacher": setup[teacher], "corpus": setup["text"], "cache_dir": setup["cache"], "output_dir": out,
              "architecture": "1 2 16 24", "max_seq_length": 32, "heldout_fraction": 0.2, "batch_size": 8,
              "micro_batch_size": 4, "max_steps": 6, "eval_steps": 3, "eval_batches": 2, "logging_steps": 1,
              "save_steps": 2, "learning_rate": 1e-3, "warmup": 0.0, "dropout": 0.0, "progress": "false", **options}
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        argv.extend(str(value).split() if key in ("architecture", "loss") else [str(value)])
    return argv


def _rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def test_bort_loss_run_writes_logs_checkpoints_and_a_loadable_model(setup, capsys):
    out = setup["root"] / "bort_run"
    assert main(_args(setup, out, teacher="mlm", max_steps=8, save_total_limit=2, learning_rate=3e-3)) == 0
    # Bort's loss with a masked-LM teacher: 0.5 · T²·KL + 0.1 · MLM, each term logged
    rows = _rows(out / "train_log.csv")
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row in rows:
        assert row["loss"] == pytest.approx(0.5 * row["logits"] + 0.1 * row["mlm"], rel=1e-5)
    evals = _rows(out / "eval_log.csv")
    assert [r["step"] for r in evals] == [3, 6, 8]
    for row in evals:
        assert 0 <= row["mlm_accuracy"] <= 1 and 0 < row["mlm_mrr"] <= 1 and row["mlm_loss"] > 0
    assert evals[-1]["loss"] < evals[0]["loss"]
    # keep the last k = 2 checkpoints (of 2, 4, 6, 8)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000006", "step-00000008"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((out / "pretraining_config.json").read_text())
    assert saved["resolved"]["loss_weights"] == {"logits": 0.5, "mlm": 0.1}
    assert saved["resolved"]["accumulation"] == 2
    mlm, info = AutoModelForMaskedLM.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"] and mlm.config.num_hidden_layers == 1 and mlm.config.hidden_size == 16
    encoder = AutoModel.from_pretrained(out / "model")
    assert torch.equal(encoder.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    assert AutoTokenizer.from_pretrained(out / "model").get_vocab() == setup["tokenizer"].get_vocab()
    assert "model:" in capsys.readouterr().out


def test_resume_gives_the_losses_of_an_uninterrupted_run(setup):
    full = setup["root"] / "uninterrupted"
    options = dict(dropout=0.1, max_steps=6, save_steps=2, save_total_limit=5)
    assert main(_args(setup, full, **options)) == 0
    # an interruption after step 4: the later checkpoint and the model never existed
    cut = setup["root"] / "interrupted"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000006")
    shutil.rmtree(cut / "model")
    assert main(_args(setup, cut, resume="last", **options)) == 0
    def losses(out):  # every logged value but the throughput, compared exactly
        return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in _rows(out / "train_log.csv")]

    assert [r["step"] for r in losses(cut)] == list(range(1, 7))
    assert losses(cut) == losses(full)
    assert _rows(cut / "eval_log.csv") == _rows(full / "eval_log.csv")
    resumed, uninterrupted = _weights(cut), _weights(full)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_micro_batches_are_the_same_for_any_number_of_processes(setup):
    corpus = load_corpus(setup["text"], setup["tokenizer"], max_seq_length=32, heldout_fraction=0.2,
                         cache_dir=setup["cache"], show_progress=False)
    batches = MicroBatches(corpus.train, 4, setup["tokenizer"], mlm_probability=0.15, seed=3)
    batches.set_epoch(1)
    one = [batches[m] for m in RankSampler(len(batches), 0, 1, shuffle=False)]
    two = [[batches[m] for m in RankSampler(len(batches), r, 2, shuffle=False)] for r in range(2)]
    # step s of two processes = micro-batches (2s, 2s+1) of one process accumulating two
    for s in range(len(one) // 2):
        for r in range(2):
            for key in ("input_ids", "labels"):
                assert torch.equal(two[r][s][key], one[2 * s + r][key])
    assert (one[0]["labels"] != -100).any()
    batches.set_epoch(2)
    assert not torch.equal(batches[0]["input_ids"], one[0]["input_ids"])


def _launch(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _same_run(single: Path, parallel: Path) -> None:
    one, two = _rows(single / "train_log.csv"), _rows(parallel / "train_log.csv")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        for term in ("loss", "attention_relations", "hidden_states", "mlm"):
            assert b[term] == pytest.approx(a[term], rel=1e-5, abs=1e-6)
    w1, w2 = _weights(single), _weights(parallel)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    config = json.loads((parallel / "pretraining_config.json").read_text())["resolved"]
    assert config["processes"] == 2 and config["accumulation"] == 1


@pytest.fixture(scope="module")
def single_process_run(setup):
    out = setup["root"] / "one_process"
    assert main(_args(setup, out, save_steps=6)) == 0  # batch 8 = 2 micro-batches of 4, accumulated
    return out


def test_torchrun_two_processes_match_one_process(setup, single_process_run, free_port):
    out = setup["root"] / "torchrun"
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(free_port()), str(SCRIPT), *_args(setup, out, save_steps=6, engine="torchrun")])
    _same_run(single_process_run, out)


def test_horovodrun_two_processes_match_one_process(setup, single_process_run, horovodrun):
    out = setup["root"] / "horovod"
    _launch([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(SCRIPT),
             *_args(setup, out, save_steps=6, engine="horovod")])
    _same_run(single_process_run, out)


# --- bad input ----------------------------------------------------------------------------------------------------

def _fails(argv: list[str], capsys, status: int, *fragments: str) -> str:
    capsys.readouterr()
    assert main(argv) == status
    # one error line, last (progress bars of model loading may precede it)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("run_pretraining_distillation.py: error:"), err
    for fragment in fragments:
        assert fragment in err[0]
    return err[0]


def test_student_with_another_vocabulary_is_refused(setup, capsys):
    student = setup["root"] / "other_vocab_student"
    BertForMaskedLM(BertConfig(vocab_size=500, **TINY)).save_pretrained(student)
    out = setup["root"] / "refused_vocab"
    _fails(_args(setup, out, architecture=None, student=student), capsys, 2, str(student), "vocabulary")
    assert not out.exists()


def test_shards_of_another_tokenizer_are_refused(setup, capsys):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(setup["text"].read_text().splitlines(), vocab_size=300)
    folder = setup["root"] / "other_tokenizer"
    folder.mkdir()
    trainer.save_model(str(folder))
    other = BertTokenizerFast(str(folder / "vocab.txt"))
    corpus = load_corpus(setup["text"], other, max_seq_length=32, heldout_fraction=0.2, cache_dir=setup["cache"],
                         show_progress=False)
    out = setup["root"] / "refused_shards"
    _fails(_args(setup, out, corpus=None, shards=corpus.cache_path), capsys, 2, str(corpus.cache_path),
           "another tokenizer")
    assert not out.exists()


def test_resume_from_another_architecture_is_refused(setup, single_process_run, capsys):
    checkpoint = list_checkpoints(single_process_run / "checkpoints")[-1]
    before = {p.name: p.stat().st_mtime_ns for p in single_process_run.rglob("*")}
    out = setup["root"] / "other_architecture"
    _fails(_args(setup, out, architecture="1 2 32 24", resume=checkpoint), capsys, 2, str(checkpoint),
           "D1-A2-H16-I24", "D1-A2-H32-I24")
    assert {p.name: p.stat().st_mtime_ns for p in single_process_run.rglob("*")} == before
    assert not out.exists()


def test_previous_run_needs_resume(setup, single_process_run, capsys):
    _fails(_args(setup, single_process_run), capsys, 2, "--resume")


def test_diverging_loss_names_the_step_and_the_last_checkpoint(setup, capsys):
    out = setup["root"] / "diverging"
    message = _fails(_args(setup, out, learning_rate=1e35, save_steps=1), capsys, 1,
                     "non-finite loss")
    step = int(message.split(" at step ")[1].split(";")[0])
    assert step >= 2 and f"step-{step - 1:08d}" in message
    assert (out / "checkpoints" / f"step-{step - 1:08d}").is_dir()


def test_bf16_autocast_on_cpu_tracks_fp32(setup, single_process_run):
    out = setup["root"] / "bf16"
    assert main(_args(setup, out, precision="bf16", max_steps=2, save_steps=2)) == 0
    resolved = json.loads((out / "pretraining_config.json").read_text())["resolved"]
    assert resolved["precision"] == "torch.bfloat16" and resolved["teacher_dtype"] == "torch.bfloat16"
    first_bf16, first_fp32 = _rows(out / "train_log.csv")[0], _rows(single_process_run / "train_log.csv")[0]
    assert first_bf16["loss"] == pytest.approx(first_fp32["loss"], rel=0.05)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--batch_size", "--micro_batch_size", "--precision", "--engine", "--resume", "--save_total_limit"):
        assert option in text
    assert "sequences per optimizer step" in text.lower()


def test_fp16_needs_a_gpu(setup, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    out = setup["root"] / "fp16"
    _fails(_args(setup, out, precision="fp16"), capsys, 2, "--precision fp16")
    assert not out.exists()


def test_options_from_one_yaml_file_and_invalid_values(tmp_path, capsys):
    from bort.run_pretraining_distillation import parse_args

    file = tmp_path / "run.yaml"
    file.write_text("architecture: [2, 4, 64, 128]\nbatch_size: 64\nmicro_batch_size: 16\nloss: [logits=1.0]\n")
    config = parse_args([str(file)])
    assert config.architecture == [2, 4, 64, 128] and config.batch_size == 64
    assert config.loss_weights() == {"logits": 1.0}
    for argv, fragment in ((["--batch_size", "10", "--micro_batch_size", "4"], "multiple"),
                           (["--loss", "kl=1"], "NAME=WEIGHT"), (["--architecture", "1", "2", "3"], "four")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_trains_on_shards_from_create_pretraining_data(setup):
    from data.create_pretraining_data import PretrainingDataConfig, run

    shards = setup["root"] / "shards"
    run(PretrainingDataConfig(input=[str(setup["text"])], output_dir=str(shards), tokenizer=str(setup["encoder"]),
                              max_seq_length=32, num_shards=2, heldout_fraction=0.2, progress=False))
    out = setup["root"] / "from_shards"
    assert main(_args(setup, out, corpus=None, shards=shards, max_steps=2, save_steps=2)) == 0
    rows = _rows(out / "train_log.csv")
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    assert (out / "model" / "model.safetensors").is_file()


def test_search_winner_folder_is_a_student(setup):
    winner = setup["root"] / "winner"
    torch.manual_seed(5)
    BertModel(BertConfig(vocab_size=setup["tokenizer"].vocab_size, **{**TINY, "hidden_size": 16,
                                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                      "intermediate_size": 24})).save_pretrained(winner)
    setup["tokenizer"].save_pretrained(winner)
    (winner / "search_result.json").write_text(json.dumps({"architecture": {"num_hidden_layers": 1}}))
    out = setup["root"] / "from_winner"
    assert main(_args(setup, out, architecture=None, student=winner, max_steps=2, save_steps=2,
                      learning_rate=1e-12)) == 0
    trained = AutoModelForMaskedLM.from_pretrained(out / "model")
    start = BertModel.from_pretrained(winner)
    assert trained.config.hidden_size == 16 and trained.config.intermediate_size == 24
    # the winner's weights are the starting point (a learning rate of 1e-12 leaves them in place)
    torch.testing.assert_close(trained.bert.encoder.layer[0].intermediate.dense.weight,
                               start.encoder.layer[0].intermediate.dense.weight, rtol=0, atol=1e-9)
