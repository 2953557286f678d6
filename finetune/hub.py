"""Tasks from the Hugging Face hub (``datasets``), written once into the official file layout.

When no ``--data-dir`` is given and no local GLUE/SuperGLUE/RACE folder exists (see ``data/resources.py``), the task
loads ``nyu-mll/glue``, ``aps/super_glue`` or ``ehovy/race`` with ``datasets.load_dataset`` and writes each split as
the official files (TSV with the official column names, JSONL with the official fields, or RACE's one JSON file per
article) under a cache folder; the official readers then read it, so both sources go through the same validation,
labels and submission keys. Hub labels are mapped by their ``ClassLabel`` names (MNLI's hub order differs from the
files'); test rows (label -1, or no answers) stay unlabelled. The hub flattens MultiRC (one row per answer), ReCoRD
(one row per query, entities as strings) and RACE (one row per question): their rows are grouped back by passage or
article, and ReCoRD's entity and answer spans are found in the passage text (end inclusive, as in the files).
"""

from __future__ import annotations

import json
from pathlib import Path

from data.files import atomic_folder, atomic_path
from finetune.tasks import DataError, Task

# task -> (hub dataset, configuration, {official split name: hub split}, {official column: hub column})
_GLUE = "nyu-mll/glue"
_SUPERGLUE = "aps/super_glue"
_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2"}
_RACE_SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # RACE's folders -> hub splits
HUB_TASKS: dict[str, tuple[str, str, dict[str, str], dict[str, str]]] = {
    "CoLA": (_GLUE, "cola", {}, {"sentence": "sentence"}),
    "SST-2": (_GLUE, "sst2", {}, {"sentence": "sentence"}),
    "MRPC": (_GLUE, "mrpc", {}, {"#1 String": "sentence1", "#2 String": "sentence2"}),
    "STS-B": (_GLUE, "stsb", {}, _PAIR),
    "QQP": (_GLUE, "qqp", {}, {"question1": "question1", "question2": "question2"}),
    "MNLI": (_GLUE, "mnli", {"dev_matched.tsv": "validation_matched", "dev_mismatched.tsv": "validation_mismatched",
                             "test_matched.tsv": "test_matched", "test_mismatched.tsv": "test_mismatched"},
             {"sentence1": "premise", "sentence2": "hypothesis"}),
    "QNLI": (_GLUE, "qnli", {}, {"question": "question", "sentence": "sentence"}),
    "RTE": (_GLUE, "rte", {}, _PAIR),
    "WNLI": (_GLUE, "wnli", {}, _PAIR),
    "AX": (_GLUE, "ax", {"diagnostic.tsv": "test"}, {"sentence1": "premise", "sentence2": "hypothesis"}),
    "BoolQ": (_SUPERGLUE, "boolq", {}, {}),
    "CB": (_SUPERGLUE, "cb", {}, {}),
    "COPA": (_SUPERGLUE, "copa", {}, {}),
    "SuperGLUE-RTE": (_SUPERGLUE, "rte", {}, {}),
    "WiC": (_SUPERGLUE, "wic", {}, {}),
    "WSC": (_SUPERGLUE, "wsc.fixed", {}, {}),
    "AX-b": (_SUPERGLUE, "axb", {"AX-b.jsonl": "test"}, {}),
    "MultiRC": (_SUPERGLUE, "multirc", {}, {}),
    "ReCoRD": (_SUPERGLUE, "record", {}, {}),
    "RACE-H": ("ehovy/race", "high", _RACE_SPLITS, {}),
    "RACE-M": ("ehovy/race", "middle", _RACE_SPLITS, {}),
}
_DEFAULT_SPLITS = {"train.tsv": "train", "dev.tsv": "validation", "test.tsv": "test",
                   "train.jsonl": "train", "val.jsonl": "validation", "test.jsonl": "test"}
# Official label column of each GLUE task (the other tasks' column is "label").
_GLUE_LABEL = {"MRPC": "Quality", "STS-B": "score", "QQP": "is_duplicate", "MNLI": "gold_label"}


def _label(task: Task, row: dict, names: list[str] | None):
    """The label as the official file writes it, or None for an unlabelled (test) row."""
    value = row["label"]
    if task.kind == "regression":
        return None if value is None or value < 0 else f"{value:.3f}"
    if value is None or value < 0:
        return None
    if task.kind == "multiple_choice":
        return int(value)
    name = names[value] if names else str(value)
    if name in ("True", "False"):
        return name == "True"
    if name in task.labels:
        return name
    return task.labels[value]  # numeric GLUE labels ("0"/"1") follow the hub's index


def write_split(task: Task, rows, names: list[str] | None, path: Path) -> None:
    """Write hub ``rows`` (dicts) as the official file ``path`` (a temporary name, then moved into place)."""
    _, _, _, columns = HUB_TASKS[task.name]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        if task.benchmark == "glue":
            label_column = _GLUE_LABEL.get(task.name, "label")
            rows = list(rows)
            labelled = any(_label(task, r, names) is not None for r in rows)
            header = ["index", *columns] + ([label_column] if labelled else [])
            f.write("\t".join(header) + "\n")
            for i, r in enumerate(rows):
                fields = [str(r.get("idx", i))] + [" ".join(str(r[c]).split()) for c in columns.values()]
                if labelled:
                    fields.append(str(_label(task, r, names)))
                f.write("\t".join(fields) + "\n")
        elif task.name in _GROUPED:
            for out in _GROUPED[task.name](task, rows, names):
                f.write(json.dumps(out) + "\n")
        else:
            for r in rows:
                out = {k: v for k, v in r.items() if k != "label"}
                if task.name == "WSC":
                    out = {"text": r["text"], "idx": r["idx"], "target": {
                        k: r[k] for k in ("span1_index", "span2_index", "span1_text", "span2_text")}}
                label = _label(task, r, names)
                if label is not None:
                    out["label"] = label
                f.write(json.dumps(out) + "\n")


def _multirc(task: Task, rows, names) -> list[dict]:
    """Official MultiRC objects (passage -> questions -> answers) from the hub's one row per answer."""
    passages: dict[int, dict] = {}
    questions: dict[tuple[int, int], dict] = {}
    for r in rows:
        idx = r["idx"]
        passage = passages.setdefault(idx["paragraph"], {"idx": idx["paragraph"], "passage": {
            "text": r["paragraph"], "questions": []}})
        key = (idx["paragraph"], idx["question"])
        if key not in questions:
            questions[key] = {"idx": idx["question"], "question": r["question"], "answers": []}
            passage["passage"]["questions"].append(questions[key])
        answer = {"idx": idx["answer"], "text": r["answer"]}
        label = _label(task, r, names)
        if label is not None:
            answer["label"] = int(label)
        questions[key]["answers"].append(answer)
    return list(passages.values())


def _spans(text: str, strings) -> list[dict]:
    """``{"start", "end", "text"}`` (end inclusive) of the first occurrence of each string found in ``text``."""
    out = []
    for string in dict.fromkeys(strings):
        start = text.find(string)
        if string and start >= 0:
            out.append({"start": start, "end": start + len(string) - 1, "text": string})
    return out


def _record(task: Task, rows, names) -> list[dict]:
    """Official ReCoRD objects (passage with entity spans -> queries with answers) from one row per query."""
    passages: dict[int, dict] = {}
    for r in rows:
        idx = r["idx"]
        passage = passages.setdefault(idx["passage"], {"idx": idx["passage"], "passage": {
            "text": r["passage"], "entities": [{"start": e["start"], "end": e["end"]}
                                               for e in _spans(r["passage"], r["entities"])]}, "qas": []})
        qa = {"idx": idx["query"], "query": r["query"]}
        if r.get("answers"):
            qa["answers"] = _spans(r["passage"], r["answers"])
        passage["qas"].append(qa)
    return list(passages.values())


_GROUPED = {"MultiRC": _multirc, "ReCoRD": _record}


def write_race(rows, folder: Path) -> None:
    """Write the hub's RACE rows (one per question) as RACE's files, one JSON object per article named by its
    ``example_id`` (e.g. ``high19432.txt``), into ``folder`` (filled beside it, then moved into place)."""
    articles: dict[str, dict] = {}
    for r in rows:
        article = articles.setdefault(r["example_id"], {"answers": [], "options": [], "questions": [],
                                                        "article": r["article"], "id": r["example_id"]})
        article["questions"].append(r["question"])
        article["options"].append(list(r["options"]))
        article["answers"].append(r["answer"])
    with atomic_folder(folder) as tmp:
        for name, article in articles.items():
            if not all(article["answers"]):  # an unlabelled split
                del article["answers"]
            file_name = Path(name).name if name.endswith(".txt") else f"{Path(name).name}.txt"  # the reader's glob
            (tmp / file_name).write_text(json.dumps(article), encoding="utf-8")


def materialise(task: Task, splits: dict, folder: Path) -> Path:
    """Write ``splits`` (official file name -> ``datasets.Dataset``) under ``folder/<task folder>/``; returns
    ``folder`` (the benchmark folder to read from)."""
    for file_name, dataset in splits.items():
        if task.benchmark == "race":
            write_race(dataset, _target(task, folder, file_name))
            continue
        feature = dataset.features.get("label")
        names = list(feature.names) if hasattr(feature, "names") else None
        write_split(task, dataset, names, _target(task, folder, file_name))
    return folder


def _target(task: Task, folder: Path, file_name: str) -> Path:
    """Where a split is written: the official file, or RACE's folder of articles (``<split>/<level>``)."""
    if task.benchmark == "race":
        return folder / file_name / HUB_TASKS[task.name][1]
    return folder / task.folder / file_name


def load_from_hub(task: Task, folder: Path) -> Path:
    """Download ``task`` with ``datasets`` into the official layout under ``folder`` (once) and return ``folder``.

    Raises:
        DataError: the task is not offered from the hub, or the hub cannot be reached (offline, no connection).
    """
    if task.name not in HUB_TASKS:
        raise DataError(f"{task.name} is not loaded from the hub here; pass --data-dir with its official files "
                        f"(hub tasks: {', '.join(HUB_TASKS)})")
    name, config, split_map, _ = HUB_TASKS[task.name]
    files = [task.train] * bool(task.train) + list(task.dev.values()) + list(task.test.values())
    if all(_target(task, folder, f).exists() for f in files):  # written whole (atomically) or not at all
        return folder
    from datasets import load_dataset

    try:
        splits = {f: load_dataset(name, config, split=split_map.get(f) or _DEFAULT_SPLITS[f]) for f in files}
    except (OSError, ValueError) as e:  # offline, unreachable, or no such dataset
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{task.name}: no local files and the hub's {name} cannot be loaded ({first}); pass "
                        "--data-dir with the official files") from e
    return materialise(task, splits, folder)
