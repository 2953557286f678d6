"""Readers on the real GLUE/SuperGLUE files (row counts of ../shared/data/README.md) and on small files in the
official formats for the tasks that are not there; bad input names the file and line."""

import json
from pathlib import Path

import pytest

from finetune.tasks import TASKS, DataError, get_task

# (task, split, rows): README row counts. CoLA's test.tsv has 1,064 lines including its header: 1,063 rows.
REAL_COUNTS = [
    ("CoLA", "train", 8551), ("CoLA", "dev", 1043), ("CoLA", "CoLA.tsv", 1063),
    ("SST-2", "train", 67349), ("SST-2", "dev", 872), ("SST-2", "SST-2.tsv", 1821),
    ("MRPC", "train", 3667), ("MRPC", "dev", 408), ("MRPC", "MRPC.tsv", 1725),
    ("STS-B", "train", 5749), ("STS-B", "dev", 1500), ("STS-B", "STS-B.tsv", 1379),
    ("RTE", "train", 2490), ("RTE", "dev", 277), ("RTE", "RTE.tsv", 3000),
    ("WNLI", "train", 635), ("WNLI", "dev", 71), ("WNLI", "WNLI.tsv", 146),
    ("AX", "AX.tsv", 1104),
    ("CB", "train", 250), ("CB", "val", 56), ("CB", "CB.jsonl", 250),
    ("SuperGLUE-RTE", "train", 2490), ("SuperGLUE-RTE", "val", 277), ("SuperGLUE-RTE", "RTE.jsonl", 3000),
    ("BoolQ", "val", 3270), ("COPA", "val", 100), ("MultiRC", "val", 4848), ("WSC", "val", 104), ("WiC", "val", 638),
]


@pytest.mark.parametrize("name,split,rows", REAL_COUNTS)
def test_real_files_row_counts(name, split, rows, glue_dir, superglue_dir):
    task = get_task(name)
    examples = task.read(glue_dir if task.benchmark == "glue" else superglue_dir, split)
    assert len(examples) == rows
    labelled = split in ("train", "dev", "val")
    assert all((e.label is not None) == labelled for e in examples)


def test_real_file_quirks(glue_dir, superglue_dir):
    mrpc = get_task("MRPC").read(glue_dir, "dev")  # starts with a BOM: the header must still be found
    assert mrpc[0].texts[0].startswith("He said the foodservice pie business")
    assert mrpc[0].label == 1
    cola = get_task("CoLA").read(glue_dir, "train")  # no header: first row is data
    assert cola[0].texts == ("Our friends won't buy this analysis, let alone the next one we propose.",)
    sst = get_task("SST-2").read(glue_dir, "train")  # bare quotes are text, not CSV quoting
    assert any('"' in e.texts[0] or "'" in e.texts[0] for e in sst[:2000])
    stsb = get_task("STS-B").read(glue_dir, "dev")
    assert stsb[0].label == 5.0 and all(0 <= e.label <= 5 for e in stsb)
    cb = get_task("CB").read(superglue_dir, "val")
    assert [e.label for e in cb[:1]] == [1]  # "contradiction" in the label order entailment, contradiction, neutral
    multirc = get_task("MultiRC").read(superglue_dir, "val")
    assert len({e.group for e in multirc}) > 80 and multirc[0].key == {"passage": 0, "question": 0, "answer": 0}
    copa = get_task("COPA").read(superglue_dir, "val")
    assert len(copa[0].choices) == 2 and copa[0].label == 1


def test_fewglue_train_files_read_as_official_format(superglue_dir, tmp_path):
    """BoolQ/COPA/MultiRC/WiC/WSC training sets are absent; FewGLUE's train.jsonl files use the same format."""
    for name, rows in [("BoolQ", 32), ("COPA", 32), ("WiC", 32), ("WSC", 32)]:
        task = get_task(name)
        (tmp_path / task.folder).mkdir()
        (tmp_path / task.folder / "train.jsonl").symlink_to(superglue_dir / "FewGLUE_32dev" / task.folder / "train.jsonl")
        assert len(task.read(tmp_path, "train")) == rows


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2")


def test_mnli_qqp_qnli_official_tsv(tmp_path):
    _write(tmp_path / "MNLI/train.tsv", MNLI_HEADER + "\tlabel1\tgold_label\n"
           "0\t1\t1e\tgov\t(x)\t(y)\t(X)\t(Y)\tA \"quoted\" premise.\tA hypothesis.\tneutral\tneutral\n"
           "1\t2\t2c\tfic\t(x)\t(y)\t(X)\t(Y)\tP2\tH2\tcontradiction\tcontradiction\n")
    dev = MNLI_HEADER + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n" \
        "0\t1\t1e\tgov\t(x)\t(y)\t(X)\t(Y)\tP\tH\tentailment\tentailment\tneutral\tentailment\tentailment\tentailment\n"
    _write(tmp_path / "MNLI/dev_matched.tsv", dev)
    _write(tmp_path / "MNLI/dev_mismatched.tsv", dev)
    _write(tmp_path / "MNLI/test_matched.tsv", MNLI_HEADER + "\n7\t1\t1e\tgov\t(x)\t(y)\t(X)\t(Y)\tP\tH\n")
    mnli = get_task("MNLI")
    train = mnli.read(tmp_path, "train")
    assert [e.label for e in train] == [2, 0] and train[0].texts == ('A "quoted" premise.', "A hypothesis.")
    assert mnli.read(tmp_path, "dev_mismatched")[0].label == 1
    assert mnli.read(tmp_path, "MNLI-m.tsv")[0].key == {"index": "7"}
    assert get_task("MNLI-mm") is mnli

    _write(tmp_path / "QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
           "5\t1\t2\tHow do I cook?\tHow to cook?\t1\n6\t3\t4\tWhy?\tWhen?\t0\n")
    _write(tmp_path / "QQP/test.tsv", "id\tquestion1\tquestion2\n0\tA?\tB?\n")
    qqp = get_task("QQP")
    assert [e.label for e in qqp.read(tmp_path, "train")] == [1, 0]
    assert qqp.read(tmp_path, "QQP.tsv")[0].key == {"index": "0"}

    _write(tmp_path / "QNLI/dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n"
           "1\tWhere?\tNo.\tnot_entailment\n")
    assert [e.label for e in get_task("QNLI").read(tmp_path, "dev")] == [0, 1]


def test_superglue_official_jsonl_absent_tasks(tmp_path):
    _write(tmp_path / "AX-b/AX-b.jsonl", json.dumps({"sentence1": "A", "sentence2": "B", "label": "entailment",
                                                     "idx": 0, "logic": "Negation"}) + "\n")
    _write(tmp_path / "AX-g/AX-g.jsonl", "".join(json.dumps(
        {"premise": "P", "hypothesis": h, "label": "not_entailment", "idx": i, "pair_id": 551646})
        + "\n" for i, h in enumerate(["He left.", "She left."])))
    assert get_task("AX-b").read(tmp_path, "AX-b.jsonl")[0].label == 0
    axg = get_task("AX-g").read(tmp_path, "AX-g.jsonl")
    assert [e.group for e in axg] == ["551646", "551646"] and [e.label for e in axg] == [1, 1]

    text = "@highlight\nParis is the capital of France. Lyon is not."  # Paris 11-15, France 35-40, Lyon 43-46
    record = {"source": "Daily mail", "idx": 3, "passage": {"text": text, "entities": [
        {"start": 11, "end": 15}, {"start": 35, "end": 40}, {"start": 43, "end": 46}, {"start": 11, "end": 15}]},
        "qas": [{"query": "@placeholder is the capital.", "idx": 9,
                 "answers": [{"start": 11, "end": 15, "text": "Paris"}]}]}
    _write(tmp_path / "ReCoRD/train.jsonl", json.dumps(record) + "\n")
    (q,) = get_task("ReCoRD").read(tmp_path, "train")
    assert q.candidates == ("Paris", "France", "Lyon")  # inclusive ends, duplicates merged
    assert q.label == (0,) and q.answers == ("Paris",) and q.key == {"idx": 9}
    assert q.choices[2][1] == "Lyon is the capital."


def test_race_official_layout(tmp_path):
    article = {"answers": ["B", "D"], "options": [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
               "questions": ["Which letter?", "The last one is _ ."], "article": "Letters.", "id": "high7.txt"}
    _write(tmp_path / "train/high/7.txt", json.dumps(article))
    _write(tmp_path / "train/middle/1.txt", json.dumps({**article, "id": "middle1.txt"}))
    high = get_task("RACE-H").read(tmp_path, "train")
    assert [e.label for e in high] == [1, 3] and high[1].choices[3][1] == "The last one is h ."
    assert high[0].key == {"id": "high7.txt", "question": 0}
    assert len(get_task("race-m").read(tmp_path, "train")) == 2


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks: CoLA, SST-2") as err:
        get_task("COLAA")
    assert all(name in str(err.value) for name in TASKS)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"RTE/train.tsv: file not found"):
        get_task("RTE").read(tmp_path, "train")


@pytest.mark.parametrize("task, split, path, content, error", [
    ("RTE", "train", "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tA\tB\tmaybe\n",
     r"RTE/train.tsv:3: label 'maybe' is not in the label set of RTE"),
    ("RTE", "dev", "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA only\n",
     r"dev.tsv:2: expected 4 tab-separated fields, found 2"),
    ("STS-B", "train", "STS-B/train.tsv", "index\tsentence1\tsentence2\tscore\n0\tA\tB\tfive\n",
     r"train.tsv:2: score 'five' is not a number"),
    ("QNLI", "train", "QNLI/train.tsv", "index\tquestion\tlabel\n", r"QNLI/train.tsv:1: missing column 'sentence'"),
    ("CB", "train", "CB/train.jsonl", '{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n{oops\n',
     r"CB/train.jsonl:2: malformed JSON"),
    ("CB", "val", "CB/val.jsonl", '{"premise": "p", "hypothesis": "h", "label": "yes", "idx": 0}\n',
     r"CB/val.jsonl:1: label 'yes' is not in the label set of CB"),
    ("COPA", "val", "COPA/val.jsonl", '{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "idx": 0}\n',
     r"COPA/val.jsonl:1: question must be"),
])
def test_bad_rows_name_file_and_line(task, split, path, content, error, tmp_path):
    _write(tmp_path / path, content)
    with pytest.raises(DataError, match=error):
        get_task(task).read(tmp_path, split)
