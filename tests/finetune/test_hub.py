"""Hub datasets (built here with the real `datasets` library in the hub's schema) written in the official layout
and read back by the official readers, with labels mapped by name."""

import json

from datasets import ClassLabel, Dataset, Features, Value

from finetune.hub import materialise
from finetune.tasks import get_task


def test_mnli_hub_label_order_is_mapped_by_name(tmp_path):
    features = Features({"premise": Value("string"), "hypothesis": Value("string"), "idx": Value("int32"),
                         "label": ClassLabel(names=["entailment", "neutral", "contradiction"])})
    train = Dataset.from_dict({"premise": ["A\tcat.", "B"], "hypothesis": ["C", "D"], "idx": [0, 1],
                               "label": [0, 2]}, features=features)
    test = Dataset.from_dict({"premise": ["E"], "hypothesis": ["F"], "idx": [0], "label": [-1]}, features=features)
    task = get_task("MNLI")
    root = materialise(task, {"train.tsv": train, "test_matched.tsv": test}, tmp_path)
    rows = task.read(root, "train")
    assert [task.labels[e.label] for e in rows] == ["entailment", "contradiction"]
    assert rows[0].texts == ("A cat.", "C")  # a tab inside a text cannot break the TSV
    (t,) = task.read(root, "MNLI-m.tsv")
    assert t.label is None and t.key == {"index": "0"}


def test_glue_numeric_labels_regression_and_headerless_cola(tmp_path):
    cola = Dataset.from_dict({"sentence": ["Good.", "Bad bad."], "idx": [0, 1], "label": [1, 0]}, features=Features(
        {"sentence": Value("string"), "idx": Value("int32"), "label": ClassLabel(names=["unacceptable", "acceptable"])}))
    task = get_task("CoLA")
    rows = task.read(materialise(task, {"train.tsv": cola}, tmp_path), "train")
    assert [e.label for e in rows] == [1, 0] and rows[1].texts == ("Bad bad.",)
    stsb = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "idx": [0], "label": [3.25]})
    task = get_task("STS-B")
    assert task.read(materialise(task, {"dev.tsv": stsb}, tmp_path), "dev")[0].label == 3.25


def test_superglue_booleans_copa_and_wsc(tmp_path):
    boolq = Dataset.from_dict({"question": ["q"], "passage": ["p"], "idx": [4], "label": [1]}, features=Features(
        {"question": Value("string"), "passage": Value("string"), "idx": Value("int32"),
         "label": ClassLabel(names=["False", "True"])}))
    task = get_task("BoolQ")
    (row,) = task.read(materialise(task, {"val.jsonl": boolq}, tmp_path), "val")
    assert row.label == 1 and row.key == {"idx": 4}
    copa = Dataset.from_dict({"premise": ["p"], "choice1": ["a"], "choice2": ["b"], "question": ["cause"],
                              "idx": [0], "label": [1]}, features=Features(
        {"premise": Value("string"), "choice1": Value("string"), "choice2": Value("string"),
         "question": Value("string"), "idx": Value("int32"), "label": ClassLabel(names=["choice1", "choice2"])}))
    task = get_task("COPA")
    assert task.read(materialise(task, {"train.jsonl": copa}, tmp_path), "train")[0].label == 1
    wsc = Dataset.from_dict({"text": ["Mark told Pete he won."], "span1_index": [0], "span2_index": [3],
                             "span1_text": ["Mark"], "span2_text": ["he"], "idx": [0], "label": [0]})
    task = get_task("WSC")
    root = materialise(task, {"val.jsonl": wsc}, tmp_path)
    written = json.loads((root / "WSC" / "val.jsonl").read_text())
    assert written["target"]["span2_text"] == "he" and task.read(root, "val")[0].label == 0
