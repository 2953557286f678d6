"""GLUE, SuperGLUE and RACE tasks: official file formats, label sets, heads and metrics (SPEC §6).

Each task reads the files of its official download from one folder:

- GLUE (Wang et al., 2019, the ``download_glue_data.py`` layout): ``<glue>/<Task>/{train,dev,test}.tsv``,
  MNLI with ``dev_matched``/``dev_mismatched``/``test_matched``/``test_mismatched``, AX as
  ``<glue>/diagnostic/diagnostic.tsv``. TSVs are read with quoting off (the files hold bare quote characters) and
  ``utf-8-sig`` (MRPC starts with a byte-order mark); CoLA's train/dev files have no header.
- SuperGLUE (Wang et al., 2019b): ``<superglue>/<Task>/{train,val,test}.jsonl``, AX-b and AX-g as
  ``<superglue>/AX-b/AX-b.jsonl`` and ``<superglue>/AX-g/AX-g.jsonl``.
- RACE (Lai et al., 2017): ``<race>/{train,dev,test}/{high,middle}/*.txt``, one JSON object per file.

Readers raise :class:`DataError` naming the file and line of the first bad row.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

Kind = Literal["classification", "regression", "multiple_choice", "multirc", "record"]


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


@dataclass
class Example:
    """One input of a task, as the model sees it.

    Attributes:
        uid: ``"<file>:<line>"`` of the row it came from (for error messages).
        texts: one or two text segments (classification, regression, MultiRC answers).
        label: class index (classification, MultiRC), score (regression), index of the correct choice
            (multiple choice), a tuple of correct candidate indices (ReCoRD), or None on test files.
        choices: for multiple-choice and ReCoRD, one ``(segment_a, segment_b)`` pair per choice / candidate entity.
        candidates: ReCoRD entity strings, parallel to ``choices``.
        answers: ReCoRD gold answer strings (metrics are computed against these).
        group: MultiRC question key, AX-g pair id ("" otherwise).
        key: the fields that identify the row in the leaderboard submission file (e.g. ``{"idx": 3}``).
    """

    uid: str
    texts: tuple[str, ...] = ()
    label: int | float | tuple[int, ...] | None = None
    choices: tuple[tuple[str, str], ...] = ()
    candidates: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    group: str = ""
    key: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A task's files, label set, head and metrics.

    Attributes:
        name: canonical name (GLUE/SuperGLUE spelling; SuperGLUE's RTE is ``SuperGLUE-RTE``).
        benchmark: ``"glue"``, ``"superglue"`` or ``"race"``: which data folder holds it.
        folder: sub-folder of the benchmark folder.
        kind: the head: classification, regression (STS-B), multiple_choice (COPA, RACE),
            multirc (answer-level binary scoring grouped by question), record (candidate-entity scoring).
        labels: label strings as written in the files (class index = position); () for regression/choices.
        metrics: metric names (see :mod:`finetune.metrics`); the task's score is their mean, as on the leaderboards.
        dev: evaluation splits, name -> file; the first one is used for early stopping and model selection.
        test: submission file name -> unlabelled test file.
        train: training file ("" for test-only diagnostics).
        reader: ``reader(task, path) -> list[Example]``.
        predicted_by: for diagnostics (AX, AX-b, AX-g), the task whose fine-tuned model predicts them.
        diagnostics: diagnostics that a model of this task also predicts.
    """

    name: str
    benchmark: str
    folder: str
    kind: Kind
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    dev: dict[str, str]
    test: dict[str, str]
    train: str
    reader: Callable[["Task", Path], list[Example]]
    predicted_by: str = ""
    diagnostics: tuple[str, ...] = ()

    @property
    def num_labels(self) -> int:
        """Outputs of the classification head: len(labels), 1 for regression, 1 per choice for choice tasks."""
        if self.kind == "regression" or self.kind in ("multiple_choice", "record"):
            return 1
        return len(self.labels)

    def files(self, root: Path, split: str) -> Path:
        """The path of a split's file (``"train"``, a dev split name or a test submission name)."""
        name = self.train if split == "train" else self.dev.get(split) or self.test.get(split)
        if not name:
            raise DataError(f"task {self.name} has no split {split!r}")
        return root / self.folder / name

    def read(self, root: Path | str, split: str) -> list[Example]:
        """Read one split from the benchmark folder ``root``.

        Raises:
            DataError: the file is missing, a row is malformed, or a label lies outside :attr:`labels`.
        """
        path = self.files(Path(root), split)
        if not path.exists():
            raise DataError(f"{path}: file not found (task {self.name}, split {split})")
        examples = self.reader(self, path)
        if not examples:
            raise DataError(f"{path}: no examples")
        return examples


# ----------------------------------------------------------------------------------------------------------------
# Low-level readers


def _tsv_rows(path: Path, header: bool) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Rows of a GLUE TSV with their 1-based line numbers; quoting off, BOM stripped, trailing spaces kept."""
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [(i + 1, row) for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))]
    rows = [(n, r) for n, r in rows if r and any(c.strip() for c in r)]
    if not header:
        return [], rows
    if not rows:
        raise DataError(f"{path}:1: empty file, expected a header line")
    return [c.strip() for c in rows[0][1]], rows[1:]


def _column(path: Path, columns: list[str], name: str) -> int:
    if name not in columns:
        raise DataError(f"{path}:1: missing column {name!r} in header {columns}")
    return columns.index(name)


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            out.append((n, obj))
    return out


def _field(path: Path, n: int, obj: dict, name: str):
    if name not in obj:
        raise DataError(f"{path}:{n}: missing field {name!r}")
    return obj[name]


def _label_index(task: Task, path: Path, n: int, value) -> int:
    """Map a label as written in a file (string, int or bool) to its class index."""
    text = str(value).lower() if isinstance(value, bool) else str(value).strip()
    if text not in task.labels:
        raise DataError(f"{path}:{n}: label {value!r} is not in the label set of {task.name}: {', '.join(task.labels)}")
    return task.labels.index(text)


def _float_label(path: Path, n: int, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}:{n}: score {value!r} is not a number") from None


# ----------------------------------------------------------------------------------------------------------------
# GLUE


@dataclass(frozen=True)
class _TsvLayout:
    """Column names of one GLUE task (test files have ``index`` and the text columns)."""

    text: tuple[str, ...]
    label: str
    header: bool = True


def _glue_reader(layout: _TsvLayout) -> Callable[[Task, Path], list[Example]]:
    def read(task: Task, path: Path) -> list[Example]:
        # CoLA's train/dev files have no header (source, label, original label, sentence); its test file has one.
        columns, rows = _tsv_rows(path, header=layout.header or _looks_like_header(path))
        if not layout.header and not columns:
            columns = ["source", layout.label, "original_label", layout.text[0]]
        text_idx = [_column(path, columns, c) for c in layout.text]
        label_idx = columns.index(layout.label) if layout.label in columns else None
        index_idx = next((columns.index(c) for c in ("index", "id") if c in columns), None)
        examples = []
        for n, row in rows:
            if len(row) < len(columns):
                raise DataError(f"{path}:{n}: expected {len(columns)} tab-separated fields, found {len(row)}")
            label = None
            if label_idx is not None:
                raw = row[label_idx].strip()
                label = _float_label(path, n, raw) if task.kind == "regression" else _label_index(task, path, n, raw)
            key = {"index": row[index_idx].strip() if index_idx is not None else str(len(examples))}
            examples.append(Example(f"{path}:{n}", tuple(row[i].strip() for i in text_idx), label, key=key))
        return examples

    return read


def _looks_like_header(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        return f.readline().split("\t")[0].strip() == "index"


def _glue(name, folder, layout, labels, metrics, kind="classification", dev=None, test=None, diagnostics=()):
    return Task(
        name=name, benchmark="glue", folder=folder, kind=kind, labels=labels, metrics=metrics,
        dev=dev or {"dev": "dev.tsv"}, test=test or {f"{name}.tsv": "test.tsv"}, train="train.tsv",
        reader=_glue_reader(layout), diagnostics=diagnostics,
    )


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("contradiction", "entailment", "neutral")

GLUE_TASKS = [
    _glue("CoLA", "CoLA", _TsvLayout(("sentence",), "label", header=False), _BINARY, ("mcc",)),
    _glue("SST-2", "SST-2", _TsvLayout(("sentence",), "label"), _BINARY, ("accuracy",)),
    _glue("MRPC", "MRPC", _TsvLayout(("#1 String", "#2 String"), "Quality"), _BINARY, ("f1", "accuracy")),
    _glue("STS-B", "STS-B", _TsvLayout(("sentence1", "sentence2"), "score"), (), ("pearson", "spearman"),
          kind="regression"),
    _glue("QQP", "QQP", _TsvLayout(("question1", "question2"), "is_duplicate"), _BINARY, ("f1", "accuracy")),
    _glue("MNLI", "MNLI", _TsvLayout(("sentence1", "sentence2"), "gold_label"), _MNLI, ("accuracy",),
          dev={"dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
          test={"MNLI-m.tsv": "test_matched.tsv", "MNLI-mm.tsv": "test_mismatched.tsv"}, diagnostics=("AX",)),
    _glue("QNLI", "QNLI", _TsvLayout(("question", "sentence"), "label"), _NLI2, ("accuracy",)),
    _glue("RTE", "RTE", _TsvLayout(("sentence1", "sentence2"), "label"), _NLI2, ("accuracy",)),
    _glue("WNLI", "WNLI", _TsvLayout(("sentence1", "sentence2"), "label"), _BINARY, ("accuracy",)),
    Task(name="AX", benchmark="glue", folder="diagnostic", kind="classification", labels=_MNLI, metrics=("mcc",),
         dev={}, test={"AX.tsv": "diagnostic.tsv"}, train="",
         reader=_glue_reader(_TsvLayout(("sentence1", "sentence2"), "label")), predicted_by="MNLI"),
]


# ----------------------------------------------------------------------------------------------------------------
# SuperGLUE


def _sg_pair(fields: tuple[str, ...]) -> Callable[[Task, Path], list[Example]]:
    def read(task: Task, path: Path) -> list[Example]:
        examples = []
        for n, obj in _jsonl(path):
            texts = tuple(str(_field(path, n, obj, f)) for f in fields)
            label = _label_index(task, path, n, obj["label"]) if "label" in obj else None
            examples.append(Example(f"{path}:{n}", texts, label, group=str(obj.get("pair_id", "")),
                                    key={"idx": _field(path, n, obj, "idx")}))
        return examples

    return read


def _read_wic(task: Task, path: Path) -> list[Example]:
    examples = []
    for n, obj in _jsonl(path):
        word, s1, s2 = (str(_field(path, n, obj, f)) for f in ("word", "sentence1", "sentence2"))
        label = _label_index(task, path, n, obj["label"]) if "label" in obj else None
        examples.append(Example(f"{path}:{n}", (f"{word} : {s1}", s2), label, key={"idx": _field(path, n, obj, "idx")}))
    return examples


def _read_wsc(task: Task, path: Path) -> list[Example]:
    """WSC as a pair: the text, and the question whether the pronoun (span2) refers to the noun phrase (span1)."""
    examples = []
    for n, obj in _jsonl(path):
        text = str(_field(path, n, obj, "text"))
        target = _field(path, n, obj, "target")
        if not isinstance(target, dict) or "span1_text" not in target or "span2_text" not in target:
            raise DataError(f"{path}:{n}: field 'target' needs span1_text and span2_text")
        label = _label_index(task, path, n, obj["label"]) if "label" in obj else None
        question = f"Does \"{target['span2_text']}\" refer to \"{target['span1_text']}\"?"
        examples.append(Example(f"{path}:{n}", (text, question), label, key={"idx": _field(path, n, obj, "idx")}))
    return examples


def _read_copa(task: Task, path: Path) -> list[Example]:
    examples = []
    for n, obj in _jsonl(path):
        premise, c1, c2, question = (str(_field(path, n, obj, f)) for f in ("premise", "choice1", "choice2", "question"))
        if question not in ("cause", "effect"):
            raise DataError(f"{path}:{n}: question must be 'cause' or 'effect', found {question!r}")
        label = None
        if "label" in obj:
            if obj["label"] not in (0, 1):
                raise DataError(f"{path}:{n}: label {obj['label']!r} is not in the label set of COPA: 0, 1")
            label = int(obj["label"])
        stem = f"{premise} What was the {question}?"
        examples.append(Example(f"{path}:{n}", label=label, choices=((stem, c1), (stem, c2)),
                                key={"idx": _field(path, n, obj, "idx")}))
    return examples


def _read_multirc(task: Task, path: Path) -> list[Example]:
    """One example per (passage, question, answer); grouped by question for exact match."""
    examples = []
    for n, obj in _jsonl(path):
        pidx = _field(path, n, obj, "idx")
        passage = _field(path, n, obj, "passage")
        if not isinstance(passage, dict) or "text" not in passage or "questions" not in passage:
            raise DataError(f"{path}:{n}: field 'passage' needs 'text' and 'questions'")
        for q in passage["questions"]:
            for a in q.get("answers", []):
                if "text" not in a or "idx" not in a or "question" not in q or "idx" not in q:
                    raise DataError(f"{path}:{n}: question/answer without 'question'/'text'/'idx'")
                label = _label_index(task, path, n, a["label"]) if "label" in a else None
                examples.append(Example(
                    f"{path}:{n}", (passage["text"], f"{q['question']} {a['text']}"), label,
                    group=f"{pidx}-{q['idx']}", key={"passage": pidx, "question": q["idx"], "answer": a["idx"]},
                ))
    return examples


def _read_record(task: Task, path: Path) -> list[Example]:
    """One example per query; candidates are the passage's distinct entity strings (entity ``end`` is inclusive)."""
    examples = []
    for n, obj in _jsonl(path):
        passage = _field(path, n, obj, "passage")
        if not isinstance(passage, dict) or "text" not in passage or "entities" not in passage:
            raise DataError(f"{path}:{n}: field 'passage' needs 'text' and 'entities'")
        text = passage["text"]
        candidates = list(dict.fromkeys(text[e["start"]: e["end"] + 1] for e in passage["entities"]))
        if not candidates:
            raise DataError(f"{path}:{n}: passage without entities")
        context = text.replace("@highlight\n", "- ")
        for qa in _field(path, n, obj, "qas"):
            query = qa.get("query", "")
            if "@placeholder" not in query:
                raise DataError(f"{path}:{n}: query without @placeholder")
            answers = tuple(a["text"] for a in qa.get("answers", []))
            label = tuple(i for i, c in enumerate(candidates) if c in answers) if answers else None
            choices = tuple((context, query.replace("@placeholder", c)) for c in candidates)
            examples.append(Example(f"{path}:{n}", label=label, choices=choices, candidates=tuple(candidates),
                                    answers=answers, key={"idx": qa.get("idx")}))
    return examples


def _sg(name, folder, kind, labels, metrics, reader, test_name=None, diagnostics=()):
    return Task(
        name=name, benchmark="superglue", folder=folder, kind=kind, labels=labels, metrics=metrics,
        dev={"val": "val.jsonl"}, test={f"{test_name or folder}.jsonl": "test.jsonl"}, train="train.jsonl",
        reader=reader, diagnostics=diagnostics,
    )


_BOOL = ("false", "true")

SUPERGLUE_TASKS = [
    _sg("BoolQ", "BoolQ", "classification", _BOOL, ("accuracy",), _sg_pair(("question", "passage"))),
    _sg("CB", "CB", "classification", ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"),
        _sg_pair(("premise", "hypothesis"))),
    _sg("COPA", "COPA", "multiple_choice", (), ("accuracy",), _read_copa),
    _sg("MultiRC", "MultiRC", "multirc", _BINARY, ("f1a", "em"), _read_multirc),
    _sg("ReCoRD", "ReCoRD", "record", (), ("record_f1", "record_em"), _read_record),
    _sg("SuperGLUE-RTE", "RTE", "classification", _NLI2, ("accuracy",), _sg_pair(("premise", "hypothesis")),
        test_name="RTE", diagnostics=("AX-b", "AX-g")),
    _sg("WiC", "WiC", "classification", _BOOL, ("accuracy",), _read_wic),
    _sg("WSC", "WSC", "classification", _BOOL, ("accuracy",), _read_wsc),
    Task(name="AX-b", benchmark="superglue", folder="AX-b", kind="classification", labels=_NLI2, metrics=("mcc",),
         dev={}, test={"AX-b.jsonl": "AX-b.jsonl"}, train="", reader=_sg_pair(("sentence1", "sentence2")),
         predicted_by="SuperGLUE-RTE"),
    Task(name="AX-g", benchmark="superglue", folder="AX-g", kind="classification", labels=_NLI2,
         metrics=("gender_parity", "accuracy"), dev={}, test={"AX-g.jsonl": "AX-g.jsonl"}, train="",
         reader=_sg_pair(("premise", "hypothesis")), predicted_by="SuperGLUE-RTE"),
]


# ----------------------------------------------------------------------------------------------------------------
# RACE


def _race_reader(level: str) -> Callable[[Task, Path], list[Example]]:
    def read(task: Task, path: Path) -> list[Example]:
        folder = path / level
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (task {task.name})")
        examples = []
        for file in sorted(folder.glob("*.txt")):
            try:
                obj = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{file}:{e.lineno}: malformed JSON ({e.msg})") from None
            article, questions, options = (_field(file, 1, obj, f) for f in ("article", "questions", "options"))
            answers = obj.get("answers")
            if len(options) != len(questions) or (answers is not None and len(answers) != len(questions)):
                raise DataError(f"{file}:1: questions, options and answers differ in length")
            for q, (question, opts) in enumerate(zip(questions, options)):
                if len(opts) != 4:
                    raise DataError(f"{file}:1: question {q} has {len(opts)} options, expected 4")
                label = None
                if answers is not None:
                    if answers[q] not in "ABCD" or len(answers[q]) != 1:
                        raise DataError(f"{file}:1: answer {answers[q]!r} is not in the label set of {task.name}: A, B, C, D")
                    label = "ABCD".index(answers[q])
                choices = tuple(
                    (article, question.replace("_", o) if "_" in question else f"{question} {o}") for o in opts
                )
                examples.append(Example(f"{file}:1", label=label, choices=choices,
                                        key={"id": obj.get("id", file.name), "question": q}))
        return examples

    return read


RACE_TASKS = [
    Task(name=f"RACE-{lv[0].upper()}", benchmark="race", folder="", kind="multiple_choice", labels=(),
         metrics=("accuracy",), dev={"dev": "dev"}, test={f"RACE-{lv[0].upper()}.jsonl": "test"}, train="train",
         reader=_race_reader(lv))
    for lv in ("high", "middle")
]

TASKS: dict[str, Task] = {t.name: t for t in GLUE_TASKS + SUPERGLUE_TASKS + RACE_TASKS}
_ALIASES = {"mnli-m": "MNLI", "mnli-mm": "MNLI", "sst2": "SST-2", "stsb": "STS-B", "sts-b": "STS-B",
            "sg-rte": "SuperGLUE-RTE", "superglue-rte": "SuperGLUE-RTE", "record": "ReCoRD"}


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive; a few common aliases such as ``sst2``, ``MNLI-m``).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    lowered = {k.lower(): k for k in TASKS}
    key = _ALIASES.get(name.lower()) or lowered.get(name.lower())
    if key is None:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]
