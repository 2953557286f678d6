"""Agora on a tiny model: one round adds oracle-labelled examples near the dev errors, a second round (resumed)
trains on them; a weak oracle is refused; pruning and the transformation functions."""

import json
import logging
import random

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from finetune.agora import AgoraConfig, prune, run_agora, sample_configurations, transform_one_segment
from finetune.pipeline import RunConfig, run_once
from finetune.run_finetune import main
from finetune.tasks import DataError, Example, get_task
from finetune.trainer import TrainConfig, load_model, load_tokenizer, predict
from finetune.transforms import SYNONYMS, MaskedLMSubstitution, make_transform, perturb


def test_one_round_adds_labelled_examples_then_resumes(tiny_model, small_sst2, tmp_path):
    oracle_out = tmp_path / "oracle"
    assert main(["SST-2", "--model", str(tiny_model), "--data-dir", str(small_sst2), "--output-dir", str(oracle_out),
                 "--max-steps", "90", "--eval-every", "30", "--learning-rate", "3e-3", "--warmup-fraction", "0",
                 "--weight-decay", "0", "--batch-size", "16", "--early-stopping-patience", "0", "--no-predict-test",
                 "--quiet"]) == 0
    oracle = oracle_out / "SST-2"
    assert json.loads((oracle / "dev_metrics.json").read_text())["dev"]["dev"]["accuracy"] >= 2 / 3

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": [1e-4, 5e-4], "batch_size": [16]}))
    out = tmp_path / "out"
    args = ["SST-2", "--mode", "agora", "--model", str(tiny_model), "--oracle", str(oracle), "--data-dir",
            str(small_sst2), "--output-dir", str(out), "--space", str(space), "--n-configs", "2", "--replay", "1",
            "--max-steps", "3", "--per-error", "2", "--no-predict-test", "--quiet"]
    assert main([*args, "--max-rounds", "1"]) == 0
    folder = out / "SST-2" / "agora"
    (record,) = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    added = [json.loads(x) for x in (folder / "added.jsonl").read_text().splitlines()]
    assert record["round"] == 0 and record["train_size"] == 48 and record["theta_size"] == 2
    assert record["errors"] > 0 and 0 < record["added"] == len(added) <= 2 * record["errors"]
    originals = {e.texts for e in get_task("SST-2").read(small_sst2, "train")}
    assert all(tuple(a["texts"]) not in originals for a in added)
    # The labels are the oracle's: predict again with the oracle, independently of the loop.
    task = get_task("SST-2")
    again = predict(load_model(task, str(oracle)), load_tokenizer(str(oracle)), task,
                    [Example(uid="x", texts=tuple(a["texts"])) for a in added])
    assert [a["label"] for a in added] == again.tolist()
    assert json.loads((folder / "state.json").read_text())["round"] == 1
    assert (folder / "best" / "dev_metrics.json").is_file() and (folder / "rounds.png").stat().st_size > 0

    # A crash in round 1 after it appended its rows but before state.json moved on: resuming must not count them.
    for log in ("added.jsonl", "rounds.jsonl"):
        with open(folder / log, "a", encoding="utf-8") as f:
            f.write(json.dumps({**json.loads((folder / log).read_text().splitlines()[0]), "round": 1}) + "\n")
    space.unlink()  # resuming takes Θ from state.json: the space file is not read again
    assert main([*args, "--max-rounds", "2"]) == 0  # resume: round 1 trains on the grown set
    records = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1] and records[1]["train_size"] == 48 + len(added)
    assert "| SST-2 | agora (2 rounds)" in (out / "summary.md").read_text()


def test_without_examples_agora_needs_no_oracle_and_adds_nothing(tiny_model, small_sst2, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": [1e-4, 5e-4], "batch_size": [16]}))
    out = tmp_path / "out"
    assert main(["SST-2", "--mode", "agora", "--model", str(tiny_model), "--data-dir", str(small_sst2),
                 "--output-dir", str(out), "--space", str(space), "--n-configs", "2", "--max-rounds", "2",
                 "--max-steps", "3", "--per-error", "0", "--warm-start", "--no-predict-test", "--quiet"]) == 0
    folder = out / "SST-2" / "agora"
    records = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["added"], r["train_size"]) for r in records] == [(0, 0, 48), (1, 0, 48)]
    assert records[0]["errors"] > 0 and records[1]["started_from"] == str(folder / "best")
    assert not (folder / "oracle").exists() and (folder / "added.jsonl").read_text() == ""
    assert "oracle" not in json.loads((folder / "state.json").read_text())


def test_weak_oracle_is_refused(tiny_model, small_sst2, tmp_path, capsys):
    task = get_task("SST-2")
    weak = load_model(task, str(tiny_model))
    with torch.no_grad():  # all logits equal: always class 0, right on exactly half of the balanced dev set
        weak.classifier.weight.zero_()
        weak.classifier.bias.zero_()
    weak.save_pretrained(tmp_path / "weak")
    load_tokenizer(str(tiny_model)).save_pretrained(tmp_path / "weak")
    assert main(["SST-2", "--mode", "agora", "--model", str(tiny_model), "--oracle", str(tmp_path / "weak"),
                 "--data-dir", str(small_sst2), "--output-dir", str(tmp_path / "o"), "--max-steps", "1",
                 "--quiet"]) == 2
    assert "50.0% dev accuracy on SST-2, below the 2/3" in capsys.readouterr().err


def _changed_segments(new: Example, old: Example) -> list[str]:
    """Which segments of ``old``'s input ``new`` changed: ``text i``, ``shared`` (the first segment of every choice)
    or ``choice i`` (a choice's second segment); ``["other"]`` when the inputs differ in shape."""
    if old.texts:
        if len(new.texts) != len(old.texts) or new.choices:
            return ["other"]
        return [f"text {i}" for i, (a, b) in enumerate(zip(new.texts, old.texts)) if a != b]
    if len(new.choices) != len(old.choices) or new.texts or new.candidates != old.candidates:
        return ["other"]
    firsts = {a for a, _ in new.choices}
    changed = [] if [a for a, _ in new.choices] == [a for a, _ in old.choices] else \
        ["shared" if len(firsts) == 1 else "other"]
    return changed + [f"choice {i}" for i, (n, o) in enumerate(zip(new.choices, old.choices)) if n[1] != o[1]]


@pytest.mark.parametrize("name", ["COPA", "MultiRC", "ReCoRD"])
def test_a_round_on_choice_and_answer_tasks_adds_oracle_labelled_inputs(name, tiny_model, small_superglue, tmp_path):
    """Agora on a multiple-choice task, MultiRC's answers and ReCoRD's entities: new inputs differ from a dev input
    in one segment (ReCoRD: its passage alone), carry the oracle's predictions as labels and train the next round."""
    task = get_task(name)
    assert main([name, "--model", str(tiny_model), "--data-dir", str(small_superglue), "--output-dir",
                 str(tmp_path / "oracle"), "--max-steps", "120", "--eval-every", "30", "--learning-rate", "3e-3",
                 "--warmup-fraction", "0", "--weight-decay", "0", "--batch-size", "16", "--max-seq-length", "64",
                 "--early-stopping-patience", "0", "--no-predict-test", "--quiet"]) == 0
    oracle = tmp_path / "oracle" / task.name
    args = [name, "--mode", "agora", "--model", str(tiny_model), "--oracle", str(oracle), "--data-dir",
            str(small_superglue), "--output-dir", str(tmp_path / "out"), "--n-configs", "1", "--replay", "1",
            "--learning-rate", "1e-4", "--max-steps", "2", "--max-seq-length", "64", "--per-error", "2",
            "--no-predict-test", "--quiet"]
    assert main([*args, "--max-rounds", "1"]) == 0
    folder = tmp_path / "out" / task.name / "agora"
    assert json.loads((folder / "state.json").read_text())["oracle"]["dev_accuracy"] >= 2 / 3
    (record,) = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (folder / "added.jsonl").read_text().splitlines()]
    assert record["errors"] > 0 and 0 < record["added"] == len(rows) <= 2 * record["errors"]

    dev = task.read(small_superglue, "val")
    added = [Example(uid="x", texts=tuple(r["texts"]), choices=tuple(tuple(c) for c in r.get("choices", ())),
                     candidates=tuple(r.get("candidates", ()))) for r in rows]
    for new in added:  # one segment changed from a dev input, which is not an input already there
        changes = [_changed_segments(new, old) for old in dev]
        assert any(len(c) == 1 and c != ["other"] for c in changes) and [] not in changes
        assert task.kind != "record" or ["shared"] in changes
    # The labels are the oracle's: predict again with the oracle, independently of the loop.
    again = predict(load_model(task, str(oracle)), load_tokenizer(str(oracle)), task, added, max_seq_length=64)
    if task.kind == "record":
        assert [r["label"] for r in rows] == [[int(p)] for p in again]
        assert [r["answers"] for r in rows] == [[e.candidates[int(p)]] for e, p in zip(added, again)]
    else:
        assert [r["label"] for r in rows] == again.tolist()

    assert main([*args, "--max-rounds", "2"]) == 0  # resumed: round 1 trains on the examples read back
    records = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1] and records[1]["train_size"] == len(dev) + len(rows)


def test_prune_drops_the_top_run_of_equal_outcomes():
    theta = [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert prune(theta, [0.70, 0.80, 0.80, 0.60], 3) == [{"i": 0}, {"i": 3}]
    assert prune(theta, [0.70, 0.80, 0.79, 0.60], 3) == [{"i": 2}, {"i": 0}, {"i": 3}]
    assert prune(theta[:1], [0.5], 3) == []


def test_sample_configurations_is_a_seeded_grid_sample_spread_over_the_values():
    space = {"learning_rate": [1e-4, 1e-5], "seed": [0, 1, 2]}
    a, b = sample_configurations(space, 4, 7), sample_configurations(space, 4, 7)
    assert a == b and len({json.dumps(c, sort_keys=True) for c in a}) == 4
    assert len(sample_configurations(space, 0, 7)) == 6
    for seed in range(20):  # two configurations share no value, three hold every seed
        first = sample_configurations(space, 3, seed)
        assert first[0]["learning_rate"] != first[1]["learning_rate"] and first[0]["seed"] != first[1]["seed"]
        assert {c["seed"] for c in first} == {0, 1, 2}


def test_perturb_changes_text_and_uses_synonyms():
    rng = random.Random(0)
    text = "a very good movie with a great story"
    outs = {perturb(text, rng) for _ in range(30)}
    assert text not in outs and len(outs) > 5
    assert SYNONYMS["good"] and "fine" in SYNONYMS["good"] and "good" in SYNONYMS["fine"]
    assert perturb("ok", random.Random(0)) == "ok"  # nothing to edit: unchanged rather than garbage


def test_mlm_substitution_needs_an_mlm_head(teacher_path, tmp_path):
    with pytest.raises(DataError, match="no trained masked-LM head"):
        make_transform("mlm", str(teacher_path))
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    transform = make_transform("mlm", str(tmp_path / "mlm"))
    text = "the cat sat on the mat and looked at the dog"
    out = transform(text, random.Random(0))
    assert out != text and len(out.split()) >= 5
    # A text longer than the transform's window keeps its tail (a passage is not cut to max_length tokens).
    long = MaskedLMSubstitution(str(tmp_path / "mlm"), max_length=8)
    passage = " ".join(["the cat sat on the mat and looked at the dog"] * 4) + " in the end"
    out = long(passage, random.Random(0))
    assert out != passage and out.endswith(passage[-60:]) and len(out.split()) >= len(passage.split()) - 3
    with pytest.raises(ValueError, match="valid: perturb, mlm"):
        make_transform("backtranslate")


def test_warm_start_trains_later_rounds_from_the_best_model_so_far(tiny_model, small_sst2, tmp_path):
    out = tmp_path / "out"
    oracle = tmp_path / "oracle"
    assert main(["SST-2", "--model", str(tiny_model), "--data-dir", str(small_sst2), "--output-dir", str(oracle),
                 "--max-steps", "90", "--eval-every", "30", "--learning-rate", "3e-3", "--warmup-fraction", "0",
                 "--weight-decay", "0", "--early-stopping-patience", "0", "--no-predict-test", "--quiet"]) == 0
    assert main(["SST-2", "--mode", "agora", "--model", str(tiny_model), "--oracle", str(oracle / "SST-2"),
                 "--data-dir", str(small_sst2), "--output-dir", str(out), "--n-configs", "1", "--max-rounds", "2",
                 "--warm-start", "--learning-rate", "1e-3", "--max-steps", "3", "--no-predict-test", "--quiet"]) == 0
    folder = out / "SST-2" / "agora"
    records = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    assert records[0]["started_from"] == str(tiny_model)
    assert records[1]["started_from"] == str(folder / "best")


def test_a_configuration_interrupted_by_ctrl_c_continues_from_its_checkpoint(tiny_model, small_sst2, tmp_path,
                                                                             caplog):
    """Ctrl-C reaches Agora's second configuration of round 0 at step 8, after its checkpoint at step 6; resumed,
    that configuration continues from step 6 and the round ends as an uninterrupted one (same scores, same best)."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": [1e-3, 5e-4], "batch_size": [8]}))
    agora = AgoraConfig(per_error=0, n_configs=2, replay=0, max_rounds=1, space=str(space))

    def run_for(out):
        return RunConfig("SST-2", model=str(tiny_model), data_dir=str(small_sst2), output_dir=str(out),
                         predict_test=False, save_steps=3,
                         train=TrainConfig(max_steps=12, eval_every=4, max_seq_length=64))

    runs = []

    def ctrl_c_in_second_run(config, train_examples=None, save=True, on_evaluate=None, progress=True,
                             checkpoint=None):
        runs.append(checkpoint)

        def report(step, score):
            if len(runs) == 2 and step == 8:
                assert [p.name for p in checkpoint.iterdir()] == ["step-00000006"]
                raise KeyboardInterrupt
        return run_once(config, train_examples, save=save, on_evaluate=report, progress=progress,
                        checkpoint=checkpoint)

    interrupted = run_for(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        run_agora(interrupted, agora, progress=False, run_job=ctrl_c_in_second_run)
    folder = tmp_path / "interrupted" / "SST-2" / "agora"
    assert runs[1] == folder / "checkpoints" / "round_0_config_1"
    assert len(json.loads((folder / "state.json").read_text())["scores"]) == 1  # the first configuration is done
    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        resumed = run_agora(interrupted, agora, progress=False)
    assert f"resuming from step 6 ({runs[1] / 'step-00000006'})" in caplog.text
    whole = run_agora(run_for(tmp_path / "whole"), agora, progress=False)
    assert resumed["rounds"][0]["scores"] == whole["rounds"][0]["scores"] and resumed["best"] == whole["best"]
    assert not (folder / "checkpoints").exists()


@pytest.mark.parametrize("name,segments", [("COPA", {"shared", "choice 0", "choice 1"}), ("ReCoRD", {"shared"})])
def test_any_segment_of_a_choice_task_can_change_but_only_the_passage_of_record(name, segments, small_superglue):
    example = get_task(name).read(small_superglue, "train")[0]
    rng = random.Random(0)
    changed = set()
    for _ in range(60):
        (change,) = _changed_segments(transform_one_segment(example, perturb, rng, record=name == "ReCoRD"), example)
        changed.add(change)
    assert changed == segments
