"""Submission files in the leaderboards' formats, in test-file order."""

import csv
import json

from finetune.submission import write_submission
from finetune.tasks import Example, get_task


def test_glue_tsv_format_and_order(glue_dir, tmp_path):
    task = get_task("STS-B")
    rows = task.read(glue_dir, "STS-B.tsv")
    path = write_submission(task, "STS-B.tsv", rows, [7.0, -1.0, 2.34567] + [1.0] * (len(rows) - 3), tmp_path)
    assert path.name == "STS-B.tsv"
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == len(rows) + 1
    assert lines[1:4] == ["0\t5.000", "1\t0.000", "2\t2.346"]  # clipped to [0, 5], three decimals
    with open(glue_dir / "STS-B" / "test.tsv", encoding="utf-8") as f:
        indices = [r[0] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    assert [line.split("\t")[0] for line in lines[1:]] == indices

    rte = get_task("RTE")
    rows = rte.read(glue_dir, "RTE.tsv")
    path = write_submission(rte, "RTE.tsv", rows, [1, 0] * (len(rows) // 2), tmp_path)
    assert path.read_text().splitlines()[1:3] == ["0\tnot_entailment", "1\tentailment"]


def test_superglue_jsonl_formats(superglue_dir, tmp_path):
    cb = get_task("CB")
    rows = cb.read(superglue_dir, "CB.jsonl")
    path = write_submission(cb, "CB.jsonl", rows, [2] * len(rows), tmp_path)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    originals = [json.loads(line) for line in (superglue_dir / "CB" / "test.jsonl").read_text().splitlines()]
    assert [w["idx"] for w in written] == [o["idx"] for o in originals]
    assert written[0] == {"idx": 0, "label": "neutral"}

    boolq = get_task("BoolQ")
    ex = [Example(uid="0", texts=("q", "p"), key={"idx": 5})]
    line = write_submission(boolq, "BoolQ.jsonl", ex, [1], tmp_path).read_text()
    assert json.loads(line) == {"idx": 5, "label": "true"}

    copa = get_task("COPA")
    ex = [Example(uid="0", choices=(("a", "b"), ("a", "c")), key={"idx": 1})]
    assert json.loads(write_submission(copa, "COPA.jsonl", ex, [1], tmp_path).read_text()) == {"idx": 1, "label": 1}

    record = get_task("ReCoRD")
    ex = [Example(uid="0", choices=(("p", "q"),) * 2, candidates=("Paris", "Lyon"), key={"idx": 9})]
    assert json.loads(write_submission(record, "ReCoRD.jsonl", ex, [1], tmp_path).read_text()) == \
        {"idx": 9, "label": "Lyon"}


def test_multirc_nested_format(superglue_dir, tmp_path):
    task = get_task("MultiRC")
    rows = task.read(superglue_dir, "val")[:7]
    predictions = [i % 2 for i in range(len(rows))]
    (line, *rest) = write_submission(task, "MultiRC.jsonl", rows, predictions, tmp_path).read_text().splitlines()
    first = json.loads(line)
    assert first["idx"] == 0 and set(first["passage"]) == {"questions"}
    q0 = first["passage"]["questions"][0]
    assert q0["idx"] == 0 and q0["answers"][:2] == [{"idx": 0, "label": 0}, {"idx": 1, "label": 1}]
    n_answers = sum(len(q["answers"]) for p in [first, *map(json.loads, rest)] for q in p["passage"]["questions"])
    assert n_answers == 7


def test_race_format(tmp_path):
    task = get_task("RACE-M")
    ex = [Example(uid="0", choices=(("a", "b"),) * 4, key={"id": "middle3.txt", "question": 1})]
    assert json.loads(write_submission(task, "RACE-M.jsonl", ex, [2], tmp_path).read_text()) == \
        {"id": "middle3.txt", "question": 1, "label": "C"}
