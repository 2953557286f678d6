"""The leaderboards' metrics for each task (SPEC §6), computed with scikit-learn and scipy.

A task's *score* is the mean of its metrics, as the GLUE/SuperGLUE leaderboards average F1/accuracy (MRPC, QQP, CB),
Pearson/Spearman (STS-B), F1a/EM (MultiRC) and F1/EM (ReCoRD). All metrics are fractions in [0, 1]
(correlations in [-1, 1]); reports multiply by 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from finetune.tasks import Example, Task


def _normalize_answer(text: str) -> list[str]:
    """SQuAD/ReCoRD answer normalisation: lower case, no punctuation, no articles, split on white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between two answers (the ReCoRD/SQuAD official definition; no library implements it)."""
    pred, ref = _normalize_answer(prediction), _normalize_answer(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def record_scores(predicted: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """ReCoRD F1 and EM: per query the maximum over gold answers, averaged over queries."""
    f1 = [max(token_f1(p, g) for g in gold) for p, gold in zip(predicted, answers)]
    em = [max(float(_normalize_answer(p) == _normalize_answer(g)) for g in gold) for p, gold in zip(predicted, answers)]
    return {"record_f1": float(np.mean(f1)), "record_em": float(np.mean(em))}


def multirc_scores(predictions: Sequence[int], labels: Sequence[int], groups: Sequence[str]) -> dict[str, float]:
    """MultiRC F1a (binary F1 over all answers) and EM (share of questions whose answers are all right)."""
    by_question: dict[str, list[bool]] = defaultdict(list)
    for p, y, g in zip(predictions, labels, groups):
        by_question[g].append(p == y)
    return {
        "f1a": float(f1_score(labels, predictions, pos_label=1, zero_division=0)),
        "em": float(np.mean([all(v) for v in by_question.values()])),
    }


def gender_parity(predictions: Sequence[int], groups: Sequence[str]) -> float:
    """AX-g gender parity: the share of minimal pairs (same ``pair_id``) whose predictions agree."""
    by_pair: dict[str, set[int]] = defaultdict(set)
    for p, g in zip(predictions, groups):
        by_pair[g].add(int(p))
    return float(np.mean([len(v) == 1 for v in by_pair.values()]))


def compute_metrics(task: Task, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
    """The task's metrics plus ``score`` (their mean).

    Args:
        task: the task.
        predictions: per example, a class index (classification, MultiRC), a float (regression) or the index of
            the chosen choice/candidate (multiple choice, ReCoRD); ``len(predictions) == len(examples)``.
        examples: labelled examples, in the same order.

    Raises:
        ValueError: lengths differ or an example has no label.
    """
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if any(e.label is None for e in examples):
        raise ValueError(f"{task.name}: cannot score unlabelled examples")
    labels = [e.label for e in examples]
    out: dict[str, float] = {}
    if task.kind == "record":
        predicted = [e.candidates[int(p)] for p, e in zip(predictions, examples)]
        out = record_scores(predicted, [e.answers for e in examples])
    elif task.kind == "multirc":
        out = multirc_scores([int(p) for p in predictions], labels, [e.group for e in examples])
    else:
        for name in task.metrics:
            if name == "accuracy":
                out[name] = float(accuracy_score(labels, predictions))
            elif name == "f1":
                out[name] = float(f1_score(labels, predictions, pos_label=1, zero_division=0))
            elif name == "macro_f1":
                out[name] = float(f1_score(labels, predictions, average="macro", labels=range(len(task.labels)),
                                           zero_division=0))
            elif name == "mcc":
                out[name] = float(matthews_corrcoef(labels, predictions))
            elif name in ("pearson", "spearman"):
                fn = pearsonr if name == "pearson" else spearmanr
                value = fn(np.asarray(predictions, float), np.asarray(labels, float))[0]
                out[name] = 0.0 if np.isnan(value) else float(value)  # constant predictions: no correlation
            elif name == "gender_parity":
                out[name] = gender_parity(predictions, [e.group for e in examples])
            else:
                raise ValueError(f"unknown metric {name!r}")
    out["score"] = float(np.mean([out[m] for m in task.metrics]))
    return out
