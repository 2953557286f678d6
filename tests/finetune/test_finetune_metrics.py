"""Every metric against a case computed by hand (the expected values are worked out in the comments)."""

import math

import pytest

from finetune.metrics import compute_metrics, gender_parity, record_scores, token_f1
from finetune.tasks import Example, get_task


def _examples(labels, groups=None):
    groups = groups or [""] * len(labels)
    return [Example(uid=str(i), texts=("x",), label=y, group=g) for i, (y, g) in enumerate(zip(labels, groups))]


def test_accuracy_sst2():
    m = compute_metrics(get_task("SST-2"), [0, 1, 0, 0], _examples([0, 1, 1, 0]))
    assert m == {"accuracy": 0.75, "score": 0.75}


def test_f1_and_accuracy_mrpc():
    # TP=2 FP=1 FN=1 -> precision = recall = 2/3, F1 = 2/3; 3 of 5 right.
    m = compute_metrics(get_task("MRPC"), [1, 0, 0, 1, 1], _examples([1, 1, 0, 0, 1]))
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.6)
    assert m["score"] == pytest.approx((2 / 3 + 0.6) / 2)


def test_matthews_cola():
    # TP=1 TN=2 FP=0 FN=1 -> (1*2 - 0*1) / sqrt(1*2*2*3) = 2 / sqrt(12)
    m = compute_metrics(get_task("CoLA"), [1, 0, 0, 0], _examples([1, 1, 0, 0]))
    assert m["mcc"] == pytest.approx(2 / math.sqrt(12))


def test_pearson_spearman_stsb():
    # deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): cov 3, variances 2 and 42/9; ranks agree -> Spearman 1.
    m = compute_metrics(get_task("STS-B"), [1.0, 2.0, 3.0], _examples([1.0, 2.0, 4.0]))
    assert m["pearson"] == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert m["spearman"] == pytest.approx(1.0)


def test_cb_accuracy_and_macro_f1():
    # class 0: F1 1; class 1: P 1/2 R 1 -> 2/3; class 2: 0. Macro = 5/9; accuracy 3/4.
    m = compute_metrics(get_task("CB"), [0, 1, 1, 0], _examples([0, 1, 2, 0]))
    assert m["macro_f1"] == pytest.approx(5 / 9) and m["accuracy"] == pytest.approx(0.75)


def test_multirc_f1a_and_exact_match():
    # q1 all right, q2 one wrong -> EM 1/2; TP=2 FN=1 FP=0 -> F1a = 2*1*(2/3)/(1+2/3) = 0.8
    m = compute_metrics(get_task("MultiRC"), [1, 0, 1, 0], _examples([1, 0, 1, 1], ["q1", "q1", "q2", "q2"]))
    assert m["f1a"] == pytest.approx(0.8) and m["em"] == pytest.approx(0.5)


def test_record_f1_and_exact_match():
    # "the Eiffel Tower" vs "Eiffel Tower": articles dropped -> EM 1, F1 1.
    # "Paris France" vs "Paris": 1 common token, P 1/2, R 1 -> F1 2/3, EM 0.
    assert token_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    s = record_scores(["the Eiffel Tower", "Paris France"], [["Eiffel Tower"], ["Paris", "Lyon"]])
    assert s["record_f1"] == pytest.approx((1 + 2 / 3) / 2) and s["record_em"] == pytest.approx(0.5)
    task = get_task("ReCoRD")
    ex = [Example(uid="0", label=(1,), candidates=("Lyon", "Paris"), answers=("Paris",))]
    assert compute_metrics(task, [1], ex)["record_em"] == 1.0


def test_gender_parity_axg():
    # pair a agrees, pair b does not -> 1/2; accuracy 3/4.
    assert gender_parity([0, 0, 0, 1], ["a", "a", "b", "b"]) == 0.5
    m = compute_metrics(get_task("AX-g"), [0, 0, 0, 1], _examples([0, 0, 0, 0], ["a", "a", "b", "b"]))
    assert m["accuracy"] == 0.75 and m["gender_parity"] == 0.5


def test_unlabelled_and_length_mismatch_are_refused():
    with pytest.raises(ValueError, match="unlabelled"):
        compute_metrics(get_task("RTE"), [0], [Example(uid="0", texts=("a", "b"))])
    with pytest.raises(ValueError, match="predictions"):
        compute_metrics(get_task("RTE"), [0, 1], _examples([0]))
