"""The trainer's prediction order and optimizer on a tiny model and real task files."""

import json

import numpy as np
import pytest
import torch

from finetune.tasks import get_task
from finetune.trainer import (TrainConfig, _optimizer, encode, load_model, load_tokenizer, make_collate,
                              predict_logits, set_seed)


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
