"""Tasks from the Hugging Face hub (``datasets``), written once into the official file layout.

When no ``--data-dir`` is given and no local GLUE/SuperGLUE folder exists (see ``data/resources.py``), the task loads ``nyu-mll/glue`` or ``aps/super_glue`` with
``datasets.load_dataset`` and writes each split as the official file (TSV with the official column names, or JSONL
with the official fields) under a cache folder; the official readers then read it, so both sources go through the
same validation, labels and submission keys. Hub labels are mapped by their ``ClassLabel`` names (MNLI's hub order
differs from the files'); test rows (label -1) stay unlabelled. MultiRC, ReCoRD and RACE are not offered this way
(their hub tables are flattened differently): use their official files.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.files import atomic_path
from finetune.tasks import DataError, Task

# task -> (hub dataset, configuration, {official split name: hub split}, {official column: hub column})
_GLUE = "nyu-mll/glue"
_SUPERGLUE = "aps/super_glue"
_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2"}
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


def materialise(task: Task, splits: dict, folder: Path) -> Path:
    """Write ``splits`` (official file name -> ``datasets.Dataset``) under ``folder/<task folder>/``; returns
    ``folder`` (the benchmark folder to read from)."""
    for file_name, dataset in splits.items():
        feature = dataset.features.get("label")
        names = list(feature.names) if hasattr(feature, "names") else None
        write_split(task, dataset, names, folder / task.folder / file_name)
    return folder


def load_from_hub(task: Task, folder: Path) -> Path:
    """Download ``task`` with ``datasets`` into the official layout under ``folder`` (once) and return ``folder``.

    Raises:
        DataError: the task is not offered from the hub.
    """
    if task.name not in HUB_TASKS:
        raise DataError(f"{task.name} is not loaded from the hub here; pass --data-dir with its official files "
                        f"(hub tasks: {', '.join(HUB_TASKS)})")
    name, config, split_map, _ = HUB_TASKS[task.name]
    files = [task.train] * bool(task.train) + list(task.dev.values()) + list(task.test.values())
    if all((folder / task.folder / f).is_file() for f in files):
        return folder
    from datasets import load_dataset

    splits = {f: load_dataset(name, config, split=split_map.get(f) or _DEFAULT_SPLITS[f]) for f in files}
    return materialise(task, splits, folder)
