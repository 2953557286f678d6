"""Hub datasets (built here with the real `datasets` library in the hub's schema) written in the official layout
and read back by the official readers, with labels mapped by name."""

import json

from datasets import ClassLabel, Dataset, Features, Sequence, Value

from finetune.hub import load_from_hub, materialise
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


def test_multirc_flattened_as_on_the_hub_reads_back_as_the_official_file(superglue_dir, tmp_path):
    """The real MultiRC dev file, flattened into the hub's one row per answer, regrouped and read back."""
    rows = []
    for line in (superglue_dir / "MultiRC" / "val.jsonl").read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        for q in obj["passage"]["questions"]:
            for a in q["answers"]:
                rows.append({"paragraph": obj["passage"]["text"], "question": q["question"], "answer": a["text"],
                             "idx": {"paragraph": obj["idx"], "question": q["idx"], "answer": a["idx"]},
                             "label": a["label"]})
    features = Features({"paragraph": Value("string"), "question": Value("string"), "answer": Value("string"),
                         "idx": {"paragraph": Value("int32"), "question": Value("int32"), "answer": Value("int32")},
                         "label": ClassLabel(names=["False", "True"])})
    task = get_task("MultiRC")
    root = materialise(task, {"val.jsonl": Dataset.from_list(rows, features=features)}, tmp_path)
    ours, official = task.read(root, "val"), task.read(superglue_dir, "val")
    assert len(ours) == len(official) == 4848
    assert [(e.texts, e.label, e.group, e.key) for e in ours] == [(e.texts, e.label, e.group, e.key) for e in official]


def test_record_entities_and_answers_are_found_in_the_passage(tmp_path):
    text = "@highlight\nParis is the capital of France. Lyon is not."
    features = Features({"passage": Value("string"), "query": Value("string"), "entities": Sequence(Value("string")),
                         "answers": Sequence(Value("string")),
                         "idx": {"passage": Value("int32"), "query": Value("int32")}})
    rows = {"passage": [text, text], "query": ["@placeholder is the capital.", "@placeholder is not."],
            "entities": [["Paris", "France", "Lyon", "Paris"]] * 2, "answers": [["Paris"], []],
            "idx": [{"passage": 3, "query": 9}, {"passage": 3, "query": 10}]}
    task = get_task("ReCoRD")
    root = materialise(task, {"train.jsonl": Dataset.from_dict(rows, features=features)}, tmp_path)
    (written,) = [json.loads(line) for line in (root / "ReCoRD" / "train.jsonl").read_text().splitlines()]
    assert written["passage"]["entities"] == [{"start": 11, "end": 15}, {"start": 35, "end": 40},
                                              {"start": 43, "end": 46}]  # end inclusive, as in the official files
    assert written["qas"][0]["answers"] == [{"start": 11, "end": 15, "text": "Paris"}]
    first, second = task.read(root, "train")
    assert first.candidates == ("Paris", "France", "Lyon") and first.label == (0,) and first.key == {"idx": 9}
    assert second.label is None and second.key == {"idx": 10}


def test_race_rows_are_regrouped_into_one_file_per_article_and_not_downloaded_again(tmp_path):
    features = Features({"example_id": Value("string"), "article": Value("string"), "answer": Value("string"),
                         "question": Value("string"), "options": Sequence(Value("string"))})

    def split(answers):
        return Dataset.from_dict({"example_id": ["high7.txt", "high7.txt", "high9"],  # RACE's ids end in .txt
                                  "article": ["Letters.", "Letters.", "Numbers."], "answer": answers,
                                  "question": ["Which letter?", "The last one is _ .", "Which number?"],
                                  "options": [["a", "b", "c", "d"], ["e", "f", "g", "h"], ["1", "2", "3", "4"]]},
                                 features=features)

    task = get_task("RACE-H")
    root = materialise(task, {"train": split(["B", "D", "A"]), "dev": split(["A", "A", "C"]),
                              "test": split(["", "", ""])}, tmp_path)
    assert sorted(p.name for p in (root / "train" / "high").iterdir()) == ["high7.txt", "high9.txt"]
    train = task.read(root, "train")
    assert [e.label for e in train] == [1, 3, 0] and train[1].choices[3][1] == "The last one is h ."
    assert train[2].key == {"id": "high9", "question": 0}
    assert [e.label for e in task.read(root, "RACE-H.jsonl")] == [None, None, None]  # the test split
    written = (root / "train" / "high" / "high7.txt").stat().st_mtime_ns
    assert load_from_hub(task, root) == root  # every split written already: nothing loaded or written again
    assert (root / "train" / "high" / "high7.txt").stat().st_mtime_ns == written


def test_a_task_with_no_local_files_and_no_hub_exits_2_naming_the_way_out(tmp_path, monkeypatch, capsys):
    import datasets.config
    import huggingface_hub.constants

    from finetune.run_finetune import main

    for module in (datasets.config, huggingface_hub.constants):  # this test never reaches for the hub
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    out = tmp_path / "out"
    assert main(["RACE-H", "--output-dir", str(out)]) == 2  # no RACE folder in the shared data
    err = capsys.readouterr().err
    assert "RACE-H: no local files and the hub's ehovy/race cannot be loaded" in err and "--data-dir" in err
    assert not (out / "hub_data" / "race" / "train").exists()
