"""Strategies on one space and budget (exhaustive, NSGA-II, TPE), the report page, and --report-only."""

import json

import matplotlib.image
import optuna
import pytest
from optuna.trial import TrialState
from transformers import AutoModel

from search.run_fptas import main
from search.worker import trial_key


def trained_trials(out, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return study, [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("trained")]


@pytest.fixture(scope="module")
def exhaustive(search_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("exhaustive") / "out"
    assert main(search_cli(out, "--strategy", "exhaustive")) == 0
    return out


def test_exhaustive_trains_every_architecture_once(exhaustive):
    _, trained = trained_trials(exhaustive, "fptas-exhaustive")
    assert sorted(trial_key(t)[0] for t in trained) == sorted(
        f"D{d}-A3-H96-I{i}" for d in (1, 2) for i in (32, 64, 128))
    rows = json.loads((exhaustive / "architectures.json").read_text())
    summary = json.loads((exhaustive / "summary.json").read_text())
    assert summary["winner"]["name"] == max(rows, key=lambda r: r["W"])["name"]


@pytest.mark.parametrize("strategy, latency", [("nsga2", "candidates"), ("tpe", "predicted")])
def test_samplers_stop_at_their_budget(strategy, latency, search_cli, tmp_path):
    out = tmp_path / "out"
    assert main(search_cli(out, "--strategy", strategy, "--n-trials", "3", "--latency", latency,
                           "--latency-samples", "6")) == 0
    study, trained = trained_trials(out, f"fptas-{strategy}")
    assert len(trained) == 3 and len({trial_key(t) for t in trained}) == 3
    rows = json.loads((out / "architectures.json").read_text())
    assert {r["name"] for r in rows if r["W"] is not None} == {trial_key(t)[0] for t in trained}
    assert sum(r["candidate"] for r in rows) == 3
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs.get("outside_space")
    if latency == "predicted":  # the predictor was fitted on the 6 measured architectures and reports its error
        model = json.loads((out / "latency_model.json").read_text())
        assert model["points"] == 6 and model["cv_mape"] >= 0 and len(model["measured"]) == 6


def test_report_only_on_an_empty_study_says_so(search_cli, tmp_path, capsys):
    assert main(search_cli(tmp_path / "out", "--report-only")) == 2
    assert "has no finished trial to report yet" in capsys.readouterr().err


def test_report_page_compares_the_winner_with_the_teacher(exhaustive, teacher_path):
    page = (exhaustive / "report.md").read_text()
    for heading in ("## The winner against the teacher", "## Pareto front over (p, i, e)", "## W across the space",
                    "## Open the study in optuna-dashboard", "## Configuration"):
        assert heading in page
    for image in ("pareto.png", "w_space.png", "search.png"):
        assert f"({image})" in page and matplotlib.image.imread(exhaustive / image).shape[0] > 100
    teacher_params = sum(p.numel() for p in AutoModel.from_pretrained(teacher_path).parameters())
    teacher_line = next(line for line in page.splitlines() if line.startswith("| teacher |"))
    assert f"{teacher_params:,}" in teacher_line and "⟨6, 12, 384, 1536⟩" in teacher_line
    assert f"optuna-dashboard sqlite:///{(exhaustive / 'study.db').resolve()}" in page


def test_report_only_rewrites_the_results_without_training(exhaustive, search_cli):
    study, trained = trained_trials(exhaustive, "fptas-exhaustive")
    before = len(study.trials)
    for name in ("report.md", "architectures.csv", "summary.json"):
        (exhaustive / name).unlink()
    assert main(search_cli(exhaustive, "--strategy", "exhaustive", "--report_only")) == 0
    assert all((exhaustive / name).is_file() for name in ("report.md", "architectures.csv", "summary.json"))
    assert len(optuna.load_study(study_name="fptas-exhaustive", storage=f"sqlite:///{exhaustive / 'study.db'}")
               .trials) == before
