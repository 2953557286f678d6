"""The sweep's plot data and the summary table."""

import matplotlib.image
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from finetune.report import plot_rounds, plot_sweep, summary_table, sweep_curves

SPACE = {"learning_rate": CategoricalDistribution([1e-4, 5e-5]), "seed": CategoricalDistribution([0, 1])}


def _trial(learning_rate, seed, state, values, value=None):
    return create_trial(params={"learning_rate": learning_rate, "seed": seed}, distributions=SPACE, state=state,
                        value=value, intermediate_values=values)


def _halving_study() -> optuna.Study:
    """Sync-halving's shape: three configurations to the first rung (120), one continued in two more trials."""
    study = optuna.create_study(direction="maximize", study_name="CB-sweep")
    study.set_user_attr("halving_plan", {"rungs": [120, 360, 1080], "counts": [3, 1, 1]})
    study.add_trial(_trial(1e-4, 0, TrialState.PRUNED, {60: 0.40, 120: 0.50}, 0.50))
    study.add_trial(_trial(5e-5, 0, TrialState.PRUNED, {60: 0.30, 120: 0.45}, 0.45))
    study.add_trial(_trial(1e-4, 1, TrialState.PRUNED, {60: 0.35, 120: 0.55}, 0.55))
    study.add_trial(_trial(1e-4, 1, TrialState.PRUNED, {240: 0.60, 360: 0.62}, 0.62))  # rung 1 of the same one
    study.add_trial(_trial(1e-4, 1, TrialState.COMPLETE, {720: 0.70, 1080: 0.68}, 0.70))
    study.add_trial(_trial(1e-4, 0, TrialState.COMPLETE, {}, 0.50))  # a repeat of a trained point: no evaluations
    return study


def test_sweep_curves_join_a_configurations_trials_and_skip_repeats():
    curves = sweep_curves(_halving_study())
    assert curves == {
        (("learning_rate", 1e-4), ("seed", 0)): {60: 0.40, 120: 0.50},
        (("learning_rate", 5e-5), ("seed", 0)): {60: 0.30, 120: 0.45},
        (("learning_rate", 1e-4), ("seed", 1)): {60: 0.35, 120: 0.55, 240: 0.60, 360: 0.62, 720: 0.70, 1080: 0.68},
    }


def test_plot_sweep_writes_a_png_with_or_without_a_finished_trial(tmp_path):
    plot_sweep(_halving_study(), tmp_path / "history.png")
    assert matplotlib.image.imread(tmp_path / "history.png").shape[2] in (3, 4)  # a readable RGB(A) image
    running = optuna.create_study(direction="maximize", study_name="CB-sweep")
    running.add_trial(_trial(1e-4, 0, TrialState.PRUNED, {60: 0.40}, 0.40))
    plot_sweep(running, tmp_path / "pruned_only.png")
    assert (tmp_path / "pruned_only.png").stat().st_size > 0


def test_summary_table_scales_scores_and_lists_the_configuration():
    table = summary_table([{"task": "CB", "method": "sweep (5 trials)", "metrics": {"accuracy": 0.75, "f1": 0.5},
                            "score": 0.625, "config": {"learning_rate": 1e-4, "seed": 1}}])
    row = "| CB | sweep (5 trials) | accuracy 75.0, f1 50.0 | 62.5 | learning_rate=0.0001, seed=1 |"
    assert table.splitlines()[2] == row


def test_plot_rounds_writes_a_png(tmp_path):
    rounds = [{"round": 0, "scores": [0.70, 0.75], "best_score": 0.75, "train_size": 250},
              {"round": 1, "scores": [0.78], "best_score": 0.78, "train_size": 300}]
    plot_rounds(rounds, tmp_path / "rounds.png", "CB: Agora")
    assert matplotlib.image.imread(tmp_path / "rounds.png").shape[2] in (3, 4)
