"""Test-set predictions in the leaderboards' submission formats.

- GLUE (gluebenchmark.com/submit): one TSV per task named ``CoLA.tsv``, ``MNLI-m.tsv``, ``AX.tsv``..., header
  ``index<TAB>prediction``, one row per test row in file order; the prediction is the label string of the task's
  files (``entailment``, ``1``...) or, for STS-B, a score in [0, 5] with three decimals.
- SuperGLUE (super.gluebenchmark.com): one JSONL per task named ``BoolQ.jsonl``, ``AX-b.jsonl``..., one object per
  test row, ``{"idx": ..., "label": ...}``; labels are the files' label strings (``"true"``/``"false"`` for the
  boolean tasks), integers for COPA, the entity string for ReCoRD, and for MultiRC one object per passage:
  ``{"idx": p, "passage": {"questions": [{"idx": q, "answers": [{"idx": a, "label": 0|1}]}]}}``.
- RACE has no submission server; ``RACE-H.jsonl``/``RACE-M.jsonl`` hold ``{"id", "question", "label": "A".."D"}``.

Files are written under a temporary name and moved into place, so a failure leaves no half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from data.files import atomic_write_text
from finetune.tasks import Example, Task


def format_label(task: Task, prediction) -> str | int | float:
    """A prediction as the task's submission file writes it."""
    if task.kind == "regression":
        return round(min(5.0, max(0.0, float(prediction))), 3)
    if task.kind == "multiple_choice":
        return "ABCD"[int(prediction)] if task.benchmark == "race" else int(prediction)
    if task.kind == "multirc":
        return int(task.labels[int(prediction)])
    return task.labels[int(prediction)]


def write_submission(task: Task, name: str, examples: Sequence[Example], predictions: Sequence, folder: Path) -> Path:
    """Write ``predictions`` for the test rows ``examples`` to ``folder / name`` and return the path.

    Args:
        task: the task (its benchmark decides the format).
        name: the submission file name (a key of ``task.test``, e.g. ``"MNLI-mm.tsv"``).
        examples: the test rows, in file order.
        predictions: one per example, as for :func:`finetune.metrics.compute_metrics`.
        folder: output folder (created).
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} test rows")
    path = Path(folder) / name
    if task.benchmark == "glue":
        lines = ["index\tprediction"]
        for e, p in zip(examples, predictions):
            value = format_label(task, p)
            lines.append(f"{e.key['index']}\t{value:.3f}" if task.kind == "regression" else f"{e.key['index']}\t{value}")
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path
    if task.kind == "multirc":
        rows = _multirc_nested(task, examples, predictions)
    elif task.kind == "record":
        rows = [{"idx": e.key["idx"], "label": e.candidates[int(p)]} for e, p in zip(examples, predictions)]
    elif task.benchmark == "race":
        rows = [{"id": e.key["id"], "question": e.key["question"], "label": format_label(task, p)}
                for e, p in zip(examples, predictions)]
    else:
        rows = [{"idx": e.key["idx"], "label": format_label(task, p)} for e, p in zip(examples, predictions)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _multirc_nested(task: Task, examples: Sequence[Example], predictions: Sequence) -> list[dict]:
    passages: dict = {}
    for e, p in zip(examples, predictions):
        questions = passages.setdefault(e.key["passage"], {})
        questions.setdefault(e.key["question"], []).append({"idx": e.key["answer"], "label": format_label(task, p)})
    return [
        {"idx": pidx, "passage": {"questions": [{"idx": q, "answers": a} for q, a in questions.items()]}}
        for pidx, questions in passages.items()
    ]
