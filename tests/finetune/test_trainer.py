"""The trainer's prediction order, optimizer and resumable checkpoints on a tiny model and real task files."""

import json

import numpy as np
import pytest
import torch

from bort.checkpoints import CheckpointError, list_checkpoints
from finetune.tasks import get_task
from finetune.trainer import (TrainConfig, _optimizer, encode, load_model, load_tokenizer, make_collate,
                              predict_logits, set_seed, train)


def _write_record(root):
    """ReCoRD (absent from the shared data) in its official format: queries with 2 to 4 candidates of varied length."""
    rows = []
    for i in range(12):
        names = ["Paris", "Lyon", "Nice", "Lille"][: 2 + i % 3]
        text = " ".join(f"{n} is a city{' in France' * (i % 4)}." for n in names)
        entities = [{"start": text.index(n), "end": text.index(n) + len(n) - 1} for n in names]
        rows.append({"idx": i, "passage": {"text": text, "entities": entities},
                     "qas": [{"query": "@placeholder is big.", "idx": i, "answers": [{"text": names[0]}]}]})
    (root / "ReCoRD").mkdir()
    (root / "ReCoRD" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("name", ["MRPC", "COPA", "ReCoRD"])
def test_length_sorted_prediction_returns_rows_in_the_input_order(name, tiny_model, glue_dir, superglue_dir,
                                                                  tmp_path):
    """Batches are built from length-sorted features; each row must still be its own example's logits."""
    task = get_task(name)
    root = {"MRPC": glue_dir, "COPA": superglue_dir, "ReCoRD": tmp_path}[name]
    examples = task.read(_write_record(root) if name == "ReCoRD" else root, "dev" if name == "MRPC" else "val")[:40]
    set_seed(0)
    tokenizer, model = load_tokenizer(str(tiny_model)), load_model(task, str(tiny_model))
    features, _ = encode(task, examples, tokenizer, 64)
    lengths = [max(map(len, f["input_ids"])) if task.kind != "classification" else len(f["input_ids"])
               for f in features]
    assert lengths != sorted(lengths)  # the file order is not the length order, so sorting moves rows
    collate = make_collate(task, tokenizer.pad_token_id)
    batched = predict_logits(model, task, features, collate, batch_size=16)
    alone = [predict_logits(model, task, [f], collate, batch_size=1)[0] for f in features]
    assert batched.shape[0] == len(features)
    for row, single in zip(batched, alone):  # choice rows are padded with -inf to the widest batch
        np.testing.assert_allclose(row[: len(single)], single, rtol=1e-4, atol=1e-5)
        assert np.all(np.isneginf(row[len(single):]))


def test_optimizer_is_fused_adamw_without_decay_on_biases_and_layernorm(tiny_model):
    model = load_model(get_task("RTE"), str(tiny_model))
    optimizer = _optimizer(model, TrainConfig(weight_decay=0.05))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "bert.encoder.layer.0.attention.self.query.weight" in names and "classifier.weight" in names
    assert not any(n.endswith(".bias") or "LayerNorm" in n for n in names)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


class _Interrupt(Exception):
    """Stands for Ctrl-C or a kill between two checkpoints."""


def _cb_run(tiny_model, superglue_dir, checkpoint=None, interrupt_at=0, learning_rate=1e-3, precision="fp32",
            pause_at=0, eval_every=4):
    """A CB run of 12 steps on the tiny model with dropout on (so the resumed run must restore the generators),
    dev every ``eval_every`` steps, a checkpoint every 3 steps into ``checkpoint``; interrupted at step
    ``interrupt_at``."""
    task = get_task("CB")
    train_rows, dev = task.read(superglue_dir, "train")[:64], task.read(superglue_dir, "val")[:24]
    set_seed(0)
    tokenizer, model = load_tokenizer(str(tiny_model)), load_model(task, str(tiny_model))

    def stop(step, score):
        if step == interrupt_at:
            raise _Interrupt

    config = TrainConfig(learning_rate=learning_rate, batch_size=8, max_steps=12, eval_every=eval_every,
                         early_stopping_patience=0, max_seq_length=64, precision=precision)
    result = train(task, model, tokenizer, train_rows, {"val": dev}, config, on_evaluate=stop, progress=False,
                   checkpoint=checkpoint, save_steps=3, pause_at=pause_at)
    return result, model


@pytest.mark.parametrize("progress", [True, False])
def test_progress_false_also_silences_the_dev_passes(progress, tiny_model, superglue_dir, capsys):
    """28 dev batches (over the 20 that show a bar): their bar is shown with the training's, or not at all."""
    task = get_task("CB")
    set_seed(0)
    tokenizer, model = load_tokenizer(str(tiny_model)), load_model(task, str(tiny_model))
    config = TrainConfig(batch_size=1, max_steps=2, eval_every=2, early_stopping_patience=0, max_seq_length=64)
    train(task, model, tokenizer, task.read(superglue_dir, "train")[:4], {"val": task.read(superglue_dir, "val")},
          config, progress=progress)
    assert ("eval val" in capsys.readouterr().err) == progress


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tiny_model, superglue_dir, tmp_path, caplog,
                                                                precision):
    """8 batches make an epoch: the checkpoint at step 6 is mid-epoch, two steps before the interruption at 8."""
    whole, whole_model = _cb_run(tiny_model, superglue_dir, precision=precision)
    with pytest.raises(_Interrupt):
        _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", interrupt_at=8, precision=precision)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["step-00000006"]
    with caplog.at_level("WARNING", logger="finetune.trainer"):
        resumed, resumed_model = _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", precision=precision)
    assert "resuming from step 6" in caplog.text
    assert resumed.history == whole.history and len(whole.history) == 3
    assert (resumed.best_step, resumed.dev_metrics) == (whole.best_step, whole.dev_metrics)
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    fresh, _ = _cb_run(tiny_model, superglue_dir, tmp_path / "fresh", precision=precision)
    assert fresh.history == whole.history  # checkpointing itself changes nothing


def test_how_often_dev_is_evaluated_does_not_change_the_training(tiny_model, superglue_dir):
    """Dropout is on, so any random draw an evaluation took from the training's generators would change the run."""
    every4, _ = _cb_run(tiny_model, superglue_dir, eval_every=4)
    every3, _ = _cb_run(tiny_model, superglue_dir, eval_every=3)
    assert [h["step"] for h in every4.history] == [4, 8, 12] and [h["step"] for h in every3.history] == [3, 6, 9, 12]
    assert every3.history[-1] == every4.history[-1]  # step 12: the same loss, dev score and dev loss


def test_a_run_paused_at_a_step_continues_to_the_uninterrupted_result(tiny_model, superglue_dir, tmp_path):
    """Synchronous halving's pause: step 5 is neither an evaluation nor a checkpoint step of the run; the pause
    saves one there, reports the best so far, and a call with a later pause or none continues from it."""
    whole, whole_model = _cb_run(tiny_model, superglue_dir)
    paused, _ = _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", pause_at=5)
    assert paused.paused and paused.steps == 5 and not whole.paused
    assert (paused.best_step, paused.history) == (4, whole.history[:1])  # the one evaluation before the pause
    assert paused.score == whole.history[0]["score"]
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["step-00000005"]
    again, _ = _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", pause_at=5)  # e.g. a retried paused trial
    assert again.paused and again.steps == 5 and again.history == paused.history
    later, _ = _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", pause_at=9)
    assert later.paused and later.steps == 9 and later.history == whole.history[:2]
    resumed, resumed_model = _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt")
    assert not resumed.paused and resumed.steps == 12
    assert resumed.history == whole.history and (resumed.best_step, resumed.dev_metrics) == (whole.best_step,
                                                                                              whole.dev_metrics)
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="pause_at=5 needs a checkpoint folder"):
        _cb_run(tiny_model, superglue_dir, pause_at=5)


def test_bf16_autocast_trains_close_to_fp32_and_fp16_needs_a_gpu(tiny_model, superglue_dir):
    fp32, fp32_model = _cb_run(tiny_model, superglue_dir)
    bf16, bf16_model = _cb_run(tiny_model, superglue_dir, precision="bf16")
    losses = [(a["loss"], b["loss"]) for a, b in zip(fp32.history, bf16.history)]
    assert len(losses) == 3 and all(a != b and abs(a - b) < 0.05 for a, b in losses)  # bf16 arithmetic, same course
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())  # the weights stay fp32
    if torch.cuda.is_available():  # BORT_TEST_GPU=1 on a machine with a GPU: fp16 with loss scaling runs there
        fp16, fp16_model = _cb_run(tiny_model, superglue_dir, precision="fp16")
        assert all(abs(a["loss"] - b["loss"]) < 0.05 for a, b in zip(fp32.history, fp16.history))
        assert all(p.dtype == torch.float32 for p in fp16_model.parameters())
    else:
        with pytest.raises(ValueError, match="--precision fp16 needs a CUDA GPU"):
            TrainConfig(precision="fp16")  # refused with the settings, before any data or model is loaded


def test_each_evaluation_records_the_dev_loss_of_the_model_it_scored(tiny_model, superglue_dir):
    # the sweep's tie-break between equal rung scores (finetune.sweep._promotion_order)
    from scipy.special import softmax
    from sklearn.metrics import log_loss

    result, model = _cb_run(tiny_model, superglue_dir)
    losses = [h["dev_loss"] for h in result.history]
    assert len(losses) == 3 and len(set(losses)) == 3 and result.best_dev_loss == min(losses)
    task, tokenizer = get_task("CB"), load_tokenizer(str(tiny_model))
    dev = task.read(superglue_dir, "val")[:24]
    features, _ = encode(task, dev, tokenizer, 64)
    logits = predict_logits(model, task, features, make_collate(task, tokenizer.pad_token_id), 16)  # at best_step
    labels = [f["labels"] for f in features]
    at_best = next(h["dev_loss"] for h in result.history if h["step"] == result.best_step)
    assert at_best == pytest.approx(log_loss(labels, softmax(logits, axis=-1), labels=[0, 1, 2]), rel=1e-5)


def test_a_checkpoint_of_another_run_is_refused(tiny_model, superglue_dir, tmp_path):
    with pytest.raises(_Interrupt):
        _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", interrupt_at=4)
    with pytest.raises(CheckpointError, match="another run.*delete"):
        _cb_run(tiny_model, superglue_dir, tmp_path / "ckpt", learning_rate=2e-3)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["step-00000003"]  # kept as it was
