"""A two-trial sweep on a tiny model, killed during its second trial, then resumed from its storage."""

import dataclasses
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from finetune.run_finetune import main
from finetune.pipeline import RunConfig, run_once
from finetune.sweep import (BORT_GRID, BalancedGridSampler, SweepConfig, balanced_grid, first_rung, halving_plan,
                            load_space, open_study, run_sweep, steps_used)
from finetune.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _sweep_signalled_in_trial(tiny_model, tmp_path, trial: int, sig: int, *extra: str):
    """Start a two-configuration grid sweep of CB on the command line (trials of 120 steps, a checkpoint every 20),
    send ``sig`` once trial ``trial`` has saved a checkpoint, wait for the process; returns the command's arguments,
    the storage URL, the trial's checkpoint folder, the exit status and stderr."""
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.001, 0.0005]\nseed: [0]\nbatch_size: [8]\n")
    out = tmp_path / "out"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["CB", "--mode", "sweep", "--model", str(tiny_model), "--output-dir", str(out), "--space", str(space),
            "--n-trials", "2", "--storage", storage, "--max-train-examples", "64", "--max-steps", "120",
            "--eval-every", "60", "--save-steps", "20", "--max-seq-length", "64", "--max-eval-examples", "24",
            "--quiet", *extra]
    checkpoints = out / "CB" / "sweep" / "checkpoints" / f"trial_{trial}"
    # SIGINT as a terminal's Ctrl-C finds it: pytest started as a background job of a shell without job control
    # ignores SIGINT, the command would inherit that and Python would then never raise KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, str(ROOT / "finetune" / "run_finetune.py"), *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(checkpoints.glob("step-*/training_state.pt")):
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return args, storage, checkpoints, proc.returncode, err


def test_sweep_resumes_after_interruption(tiny_model, tmp_path, caplog):
    # killed in its second trial once that has saved a checkpoint
    args, storage, checkpoints, status, _ = _sweep_signalled_in_trial(tiny_model, tmp_path, 1, signal.SIGKILL,
                                                                      "--heartbeat-interval", "1")
    assert status == -signal.SIGKILL
    out = tmp_path / "out"
    study = optuna.load_study(study_name="CB-sweep", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    first_value, killed_params = study.trials[0].value, study.trials[1].params
    saved = int(max(checkpoints.glob("step-*")).name.split("-")[1])

    time.sleep(2.5)  # the killed trial's heartbeat goes stale (grace period: twice the 1 s interval)
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    assert f"resuming from step {saved} ({checkpoints / f'step-{saved:08d}'})" in caplog.text  # not from step 0
    study = optuna.load_study(study_name="CB-sweep", storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and complete[0].number == 0 and complete[0].value == first_value
    assert study.trials[1].state == TrialState.FAIL and complete[1].params == killed_params
    assert complete[1].user_attrs["resumed_from"] == saved and complete[1].user_attrs["steps"] == 120
    assert {t.params["learning_rate"] for t in complete} == {0.001, 0.0005}
    assert not checkpoints.parent.exists()

    folder = out / "CB" / "sweep"
    best = json.loads((folder / "best" / "dev_metrics.json").read_text())
    assert best["dev"]["val"]["score"] == pytest.approx(study.best_value)
    assert json.loads((folder / "best" / "finetune_config.json").read_text())["trial"] == study.best_trial.number
    assert (folder / "history.png").stat().st_size > 0 and (folder / "trials.csv").is_file()
    assert len(list((folder / "trials").glob("trial_*"))) == 1  # only the best trial's model is kept
    (kept,) = (folder / "trials").glob("trial_*")
    assert not (kept / "predictions").exists()  # test sets are predicted once, by the final best model
    lines = (folder / "best" / "predictions" / "CB.jsonl").read_text().splitlines()
    assert len(lines) == 250 and "CB.jsonl" in json.loads((folder / "best" / "predictions" / "index.json").read_text())
    assert "| CB | sweep (3 trials)" in (out / "summary.md").read_text()


def test_default_space_is_borts_grid_and_bad_space_is_refused(tmp_path):
    space = load_space(None)
    assert space == BORT_GRID and len(space["seed"]) * 3 * 4 * 4 * 2 == 480
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: [0.1]\n")
    with pytest.raises(ValueError, match="'learning_rat' is not a hyperparameter"):
        load_space(str(bad))


def test_space_files_keep_their_numbers_and_text_numbers_are_refused(tmp_path):
    as_json = tmp_path / "space.json"
    as_json.write_text(json.dumps({"learning_rate": [5e-05, 1e-4], "seed": [12, 13]}))  # json.dumps writes 5e-05
    assert load_space(str(as_json)) == {"learning_rate": [5e-05, 1e-4], "seed": [12, 13]}
    as_yaml = tmp_path / "space.yaml"
    as_yaml.write_text("learning_rate: [5.0e-5, 1.0e-4]\nweight_decay: [0, 0.01]\n")
    assert load_space(str(as_yaml)) == {"learning_rate": [5e-05, 1e-4], "weight_decay": [0, 0.01]}
    as_yaml.write_text("learning_rate: [1e-4]\n")  # YAML 1.1: text, not a number
    with pytest.raises(ValueError, match=r"space.yaml: 'learning_rate' value '1e-4' is not a float .*1.0e-4"):
        load_space(str(as_yaml))
    as_yaml.write_text("seed: [0, 1.5]\n")
    with pytest.raises(ValueError, match="'seed' value 1.5 is not an int"):
        load_space(str(as_yaml))


def test_a_point_out_of_range_is_refused_naming_the_file_and_point(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [1.0e-4, -1.0e-4]\nwarmup_fraction: [0.1]\n")
    assert load_space(str(space)) == {"learning_rate": [1e-4, -1e-4], "warmup_fraction": [0.1]}  # types only
    with pytest.raises(ValueError, match=r"space.yaml: the point \{'learning_rate': -0.0001, 'warmup_fraction': 0.1\} "
                                         r"of the search space: learning_rate must be > 0, got -0.0001"):
        load_space(str(space), TrainConfig())
    space.write_text("max_steps: [0, 10]\n")  # a combination: no steps and no epochs
    assert load_space(str(space), TrainConfig(num_train_epochs=1)) == {"max_steps": [0, 10]}
    with pytest.raises(ValueError, match=r"'max_steps': 0\}.*num_train_epochs > 0 or max_steps > 0"):
        load_space(str(space), TrainConfig(num_train_epochs=0, max_steps=5))
    assert load_space(None, TrainConfig()) == BORT_GRID  # Bort's grid is valid with the defaults


@pytest.mark.parametrize("mode", ["sweep", "agora"])
def test_a_bad_space_stops_sweep_and_agora_before_anything_is_written(mode, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("weight_decay: [0.01, -0.01]\n")
    out = tmp_path / "out"
    assert main(["CB", "--mode", mode, "--space", str(space), "--output-dir", str(out)]) == 2
    assert "the point {'weight_decay': -0.01} of the search space: weight_decay must be >= 0" in capsys.readouterr().err
    assert not out.exists()  # no study, no Agora folder: the corrected file starts afresh


def _spread(points: list[dict], space: dict[str, list]) -> int:
    """The largest difference, over hyperparameters, between how often two of its values occur in ``points``."""
    return max(max(counts) - min(counts) for counts in
               ([sum(p[name] == v for p in points) for v in values] for name, values in space.items()))


def test_balanced_grid_spreads_every_hyperparameter_over_the_first_points():
    bench = load_space(str(ROOT / "bench" / "finetune_space.yaml"))  # 36 points, three learning rates
    for space, first in ((bench, 11), (BORT_GRID, 59)):
        points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
        for seed in range(30):
            order = balanced_grid(space, seed)
            assert len(order) == len(points) and sorted(map(repr, order)) == sorted(map(repr, points))
            assert order == balanced_grid(space, seed)
            assert max(_spread(order[:k], space) for k in range(1, first + 1)) <= 1
    assert balanced_grid(bench, 0) != balanced_grid(bench, 1)
    # Optuna's own shuffle leaves a learning rate out of the first 8 points (sync-halving's first rung in the quality
    # benchmark) for some seeds; the balanced order never does
    def missing(sampler_points):
        return sum(len({p["learning_rate"] for p in points[:8]}) < 3 for points in sampler_points)

    shuffled = [[dict(zip(s._param_names, g)) for g in s._all_grids]
                for s in (optuna.samplers.GridSampler(bench, seed=k) for k in range(200))]
    assert missing(shuffled) > 0
    assert missing(balanced_grid(bench, k) for k in range(200)) == 0


def test_grid_sweep_trains_the_balanced_order_and_stops_when_exhausted():
    space = {"learning_rate": [1e-4, 5e-5, 2e-5], "weight_decay": [0.0, 0.01], "seed": [0, 1]}
    study = optuna.create_study(sampler=BalancedGridSampler(space, seed=4), direction="maximize")
    study.optimize(lambda t: t.suggest_categorical("learning_rate", space["learning_rate"]) * 1e4
                   + t.suggest_categorical("weight_decay", space["weight_decay"])
                   + t.suggest_categorical("seed", space["seed"]), n_trials=100)
    assert [t.params for t in study.trials] == balanced_grid(space, 4)  # all 12 points once, in that order


def test_a_budgeted_halving_sweep_spends_exactly_its_budget(tiny_model, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.003, 0.001, 0.0003]\nseed: [0, 1, 2, 3]\nbatch_size: [8]\n")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["CB", "--mode", "sweep", "--model", str(tiny_model), "--output-dir", str(tmp_path / "out"),
            "--space", str(space), "--sampler", "tpe", "--pruner", "halving", "--budget-steps", "50",
            "--n-trials", "30", "--storage", storage, "--max-train-examples", "64", "--max-steps", "18",
            "--eval-every", "2", "--max-seq-length", "64", "--max-eval-examples", "24", "--quiet"]
    assert main(args) == 0
    trials = optuna.load_study(study_name="CB-sweep", storage=storage).trials
    steps = [t.user_attrs.get("steps", 0) for t in trials]
    assert sum(steps) == 50 and max(steps) <= 18 and len(trials) >= 3  # 50 steps do not fit in two trials of 18
    assert trials[-1].user_attrs.get("cut_to_budget") or trials[-1].state == TrialState.PRUNED
    # where halving stops a trial: test_halving_stops_a_worse_trial_first_at_its_first_rung (the tiny model's
    # trials here all tie at the majority class, and ties are promoted)
    assert main(args) == 0  # the budget is spent: the same command trains nothing more
    assert len(optuna.load_study(study_name="CB-sweep", storage=storage).trials) == len(trials)


@pytest.mark.parametrize("min_steps,first", [(0, 2), (5, 6)], ids=["eval-every", "min-steps-5"])
def test_halving_stops_a_worse_trial_first_at_its_first_rung(tmp_path, min_steps, first):
    """A trial reporting 0.1 against an earlier one at 0.9 is pruned at the first rung: the first evaluation
    (step 2), or --halving-min-steps rounded up to an evaluation (5 -> 6); never at a step between rungs."""
    run = RunConfig(task="CB", model="m", output_dir=str(tmp_path), train=TrainConfig(eval_every=2, max_steps=18))
    sweep = SweepConfig(sampler="tpe", pruner="halving", halving_min_steps=min_steps)
    study = open_study(run, sweep, {"seed": [0, 1, 2]})
    good = study.ask({"seed": optuna.distributions.CategoricalDistribution([0, 1, 2])})
    for step in range(2, 19, 2):
        good.report(0.9, step)
        assert not good.should_prune()
    study.tell(good, 0.9)
    stopped_at = []
    for _ in range(2):  # two worse trials: each is stopped at the first rung (one of three continues per rung)
        worse = study.ask({"seed": optuna.distributions.CategoricalDistribution([0, 1, 2])})
        for step in range(2, 19, 2):
            worse.report(0.1, step)
            if worse.should_prune():
                stopped_at.append(step)
                study.tell(worse, state=TrialState.PRUNED)
                break
    assert stopped_at == [first, first]


def test_first_rung_rounds_up_to_an_evaluation():
    assert [first_rung(40, 120), first_rung(40, 100), first_rung(40, 0), first_rung(0, 7), first_rung(0, 0)] == \
        [120, 120, 40, 7, 0]


def test_planned_steps_follow_max_steps_else_epochs_of_the_subsample():
    from finetune.sweep import planned_steps
    from finetune.trainer import TrainConfig

    assert planned_steps(TrainConfig(max_steps=30), 250) == 30
    # 100 of 250 examples in batches of 16: 7 batches per epoch, 2.5 epochs -> 17.5 -> 18 steps
    assert planned_steps(TrainConfig(num_train_epochs=2.5, batch_size=16, max_train_examples=100), 250) == 18
    assert planned_steps(TrainConfig(num_train_epochs=1, batch_size=16), 250) == 16


def test_sweep_workers_started_together_on_a_fresh_output_share_one_study(tiny_model, tmp_path, at_once):
    # the documented way to run a sweep on several processes; the first ones used to lose the race to create
    # Optuna's tables in the fresh study.db and stop with "table ... already exists"
    run, sweep = RunConfig("CB", model=str(tiny_model), output_dir=str(tmp_path)), SweepConfig()
    names, errors = at_once(lambda: open_study(run, sweep, {"learning_rate": [1e-3], "seed": [0]}).study_name, 4)
    assert errors == [] and names == ["CB-sweep"] * 4
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'CB' / 'sweep' / 'study.db'}")) == 1


def test_a_sweep_study_of_other_settings_is_refused_naming_them(tiny_model, tmp_path):
    run, sweep = RunConfig("CB", model=str(tiny_model), output_dir=str(tmp_path)), SweepConfig()
    space = {"learning_rate": [1e-3, 5e-4], "seed": [0]}
    first = open_study(run, sweep, space)
    first.enqueue_trial({"learning_rate": 1e-3, "seed": 0})
    assert len(open_study(run, sweep, space).trials) == 1  # the same settings: the same study, resumed
    with pytest.raises(ValueError, match=r"other settings \(space\.learning_rate\)"):
        open_study(run, sweep, {"learning_rate": [1e-4], "seed": [0]})
    shorter = dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=7))
    with pytest.raises(ValueError, match=r"other settings \(train\.max_steps\)"):
        open_study(shorter, sweep, space)
    # a TPE study's definition is the one grid sweeps stored before the balanced order: a grid sweep does not continue
    # it, as its trial k would train another point than the one its numbering assumed
    other = dataclasses.replace(run, output_dir=str(tmp_path / "tpe"))
    open_study(other, SweepConfig(sampler="tpe"), space)
    with pytest.raises(ValueError, match=r"other settings \(grid_order\)"):
        open_study(other, sweep, space)


def test_a_configuration_already_trained_is_not_trained_again(tiny_model, tmp_path):
    """TPE on a one-point space proposes it every time: one trial trains, the repeats take its outcome."""
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.001]\nseed: [0]\nbatch_size: [8]\n")
    out = tmp_path / "out"
    args = ["CB", "--mode", "sweep", "--model", str(tiny_model), "--output-dir", str(out), "--space", str(space),
            "--sampler", "tpe", "--n-trials", "3", "--max-train-examples", "32", "--max-steps", "4", "--eval-every",
            "2", "--max-seq-length", "64", "--max-eval-examples", "16", "--quiet"]
    assert main(args) == 0
    study = optuna.load_study(study_name="CB-sweep", storage=f"sqlite:///{out / 'CB' / 'sweep' / 'study.db'}")
    trained, *repeats = study.trials
    assert trained.user_attrs["steps"] == 4 and "duplicate_of" not in trained.user_attrs and len(repeats) == 2
    for t in repeats:
        assert t.params == trained.params and t.user_attrs["duplicate_of"] == 0 and t.user_attrs["steps"] == 0
        assert t.value == trained.value and t.user_attrs["dev_metrics"] == trained.user_attrs["dev_metrics"]
    best = json.loads((out / "CB" / "sweep" / "best" / "finetune_config.json").read_text())
    assert best["trial"] == 0 and len(list((out / "CB" / "sweep" / "trials").glob("trial_*"))) == 1


def test_a_trial_interrupted_by_ctrl_c_continues_from_its_checkpoint_when_the_sweep_resumes(tiny_model, tmp_path,
                                                                                            caplog):
    """A grid sweep of two configurations under a 24-step budget; Ctrl-C reaches the first trial at step 8, after its
    checkpoint at step 6. Resumed, the sweep trains that configuration again from step 6 to the score and dev curve of
    an uninterrupted run, then the second configuration; the budget counts the two steps repeated after the checkpoint."""
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.001, 0.0005]\nseed: [0]\nbatch_size: [8]\n")
    train = TrainConfig(max_train_examples=64, max_steps=12, eval_every=4, max_seq_length=64, max_eval_examples=24)
    run = RunConfig("CB", model=str(tiny_model), output_dir=str(tmp_path / "out"), predict_test=False, save_steps=3,
                    train=train)
    sweep = SweepConfig(space=str(space), n_trials=2, budget_steps=24, storage=f"sqlite:///{tmp_path / 's.db'}")
    folder = tmp_path / "out" / "CB" / "sweep"

    def ctrl_c_at_step_8(config, save=True, on_evaluate=None, progress=True, checkpoint=None):
        def report(step, score):
            on_evaluate(step, score)
            if step == 8:
                assert [p.name for p in checkpoint.iterdir()] == ["step-00000006"]
                raise KeyboardInterrupt
        return run_once(config, save=save, on_evaluate=report, progress=progress, checkpoint=checkpoint)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(run, sweep, progress=False, run_job=ctrl_c_at_step_8)
    study = optuna.load_study(study_name="CB-sweep", storage=sweep.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    interrupted = study.trials[0]
    assert study.trials[1].params == interrupted.params and interrupted.user_attrs["steps"] == 8

    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        study = run_sweep(run, sweep, progress=False)
    assert f"resuming from step 6 ({folder / 'checkpoints' / 'trial_0' / 'step-00000006'})" in caplog.text
    failed, retried, second = study.trials
    assert (retried.state, second.state) == (TrialState.COMPLETE, TrialState.COMPLETE)
    assert retried.params == interrupted.params and second.params != interrupted.params

    reported = {}
    uninterrupted = replace(run, train=replace(train, **interrupted.params))
    result, _, _ = run_once(uninterrupted, save=False, progress=False, on_evaluate=reported.__setitem__)
    assert sorted(reported) == [4, 8, 12]
    assert retried.value == result.score and retried.intermediate_values == reported
    assert retried.user_attrs["resumed_from"] == 6 and retried.user_attrs["steps"] == 12
    # 8 steps before Ctrl-C, 6 after the checkpoint: 10 of the 24 are left for the second configuration
    assert second.user_attrs["cut_to_budget"] == "10 of 12 steps" and steps_used(study) == 24
    assert not (folder / "checkpoints").exists()


def test_ctrl_c_on_the_command_line_exits_130_and_the_same_command_continues_the_trial(tiny_model, tmp_path, caplog):
    args, storage, checkpoints, status, err = _sweep_signalled_in_trial(tiny_model, tmp_path, 0, signal.SIGINT)
    out = tmp_path / "out"
    # Optuna logs the failed trial with its traceback; the command itself ends with one line, not a traceback
    assert status == 130 and err.strip().splitlines()[-1] == \
        f"interrupted: run the same command again to continue where it stopped (outputs and checkpoints in {out})"
    study = optuna.load_study(study_name="CB-sweep", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    saved = int(max(checkpoints.glob("step-*")).name.split("-")[1])

    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    assert f"resuming from step {saved} ({checkpoints / f'step-{saved:08d}'})" in caplog.text
    study = optuna.load_study(study_name="CB-sweep", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params and study.trials[1].user_attrs["steps"] == 120
    assert {t.params["learning_rate"] for t in study.trials[1:]} == {0.001, 0.0005}


def test_halving_plan_fits_the_budget_with_the_most_configurations():
    # the quality benchmark's MRPC sweep: rungs 120/360/1080 under 2160 steps -> 8 configurations, 2, then 1
    assert halving_plan(120, 1080, 36, 2160) == {"rungs": [120, 360, 1080], "counts": [8, 2, 1], "steps": 2160}
    assert halving_plan(2, 18, 9) == {"rungs": [2, 6, 18], "counts": [9, 3, 1], "steps": 9 * 2 + 3 * 4 + 12}
    assert halving_plan(2, 18, 9, budget=40)["counts"] == [8, 2, 1]  # 9 configurations would need 42
    assert halving_plan(20, 18, 4) == {"rungs": [18], "counts": [4], "steps": 72}  # a first rung past the run
    with pytest.raises(ValueError, match="--budget-steps 17 is less than one configuration's run of 18 steps"):
        halving_plan(2, 18, 9, budget=17)
    with pytest.raises(ValueError, match="set --eval-every or --halving-min-steps"):
        halving_plan(0, 18, 9)


@pytest.mark.parametrize("scores, losses, continued, warned", [
    ([0.0, 0.0, 0.0, 0.0], [0.7, 0.5, 0.9, 0.6], [1, 3], True),  # all tied: the two lowest dev losses continue
    ([0.0, 0.3, 0.3, 0.5], [0.5, 0.9, 0.8, 0.9], [2, 3], True),  # a tie at the cut: the lower loss of the two
    ([0.0, 0.0, 0.3, 0.5], [0.1, 0.2, 0.9, 0.9], [2, 3], False),  # the score decides, whatever the losses
    ([0.0, 0.0, 0.0, 0.0], [None, None, None, None], [2, 3], True),  # no loss recorded: the parameters decide
])
def test_a_tie_across_the_cut_of_a_rung_is_broken_by_dev_loss_and_named_in_a_warning(tmp_path, caplog, scores, losses,
                                                                                       continued, warned):
    # CoLA after 120 steps: every configuration predicts the majority class (MCC 0), so the tie-break decides
    from finetune.sweep import _next_in_plan

    study = optuna.create_study(direction="maximize")
    distribution = optuna.distributions.CategoricalDistribution([1e-4, 2e-4, 3e-4, 4e-4])
    for config, (lr, score, loss) in enumerate(zip([4e-4, 3e-4, 2e-4, 1e-4], scores, losses)):
        attrs = {"rung": 0, "config": config, "rung_score": score, "steps": 2}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params={"learning_rate": lr}, distributions={"learning_rate": distribution},
            user_attrs=attrs if loss is None else {**attrs, "rung_loss": loss}))
    plan = {"rungs": [2, 6], "counts": [4, 2], "steps": 16}
    with caplog.at_level(logging.WARNING, logger="finetune.sweep"):
        assert _next_in_plan(study, plan, tmp_path, poll_seconds=0)
    assert sorted(t.user_attrs["config"] for t in study.get_trials(states=(TrialState.WAITING,))) == continued
    cut = sorted(scores)[-2]  # the score of the second configuration continued
    tied = [k for k in range(4) if scores[k] == cut]
    if warned:
        assert f"rung 0: configurations {tied} all scored {cut:.4g}; {[k for k in continued if k in tied]} of them " \
               f"continue, chosen by their dev loss" in caplog.text
    else:
        assert "all scored" not in caplog.text


def _sync_sweep(tiny_model, tmp_path, sampler_seed=0, **sweep):
    """STS-B (a continuous score: no ties) on the tiny model: 3 learning rates x 3 seeds, runs of 18 steps with dev
    every 2, so synchronous halving's rungs are at 2, 6 and 18 steps."""
    tmp_path.mkdir(exist_ok=True)
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.003, 0.001, 0.0003]\nseed: [0, 1, 2]\nbatch_size: [8]\n")
    train = TrainConfig(max_train_examples=64, max_steps=18, eval_every=2, max_seq_length=64, max_eval_examples=32)
    run = RunConfig("STS-B", model=str(tiny_model), output_dir=str(tmp_path / "out"), predict_test=False,
                    save_steps=3, train=train)
    config = SweepConfig(space=str(space), n_trials=9, pruner="sync-halving", sampler_seed=sampler_seed,
                         storage=f"sqlite:///{tmp_path / 's.db'}", **sweep)
    return run, config


def _by_rung(study):
    rungs = {}
    for t in study.trials:
        rungs.setdefault(t.user_attrs["rung"], []).append(t)
    return [rungs[k] for k in sorted(rungs)]


@pytest.fixture(scope="module")
def sync_sweep(tiny_model, tmp_path_factory):
    """One uninterrupted sync-halving sweep, by one worker: (run, sweep, study)."""
    run, sweep = _sync_sweep(tiny_model, tmp_path_factory.mktemp("sync"))
    return run, sweep, run_sweep(run, sweep, progress=False)


def test_sync_halving_pauses_every_configuration_at_a_rung_before_continuing_the_best(sync_sweep):
    run, sweep, study = sync_sweep
    assert study.user_attrs["halving_plan"] == {"rungs": [2, 6, 18], "counts": [9, 3, 1], "steps": 42}
    first, second, last = _by_rung(study)
    assert len({json.dumps(t.params, sort_keys=True) for t in first}) == 9  # the whole grid reached the first rung
    # the barrier: no configuration continued before all had paused at the rung
    assert max(t.number for t in first) < min(t.number for t in second) < max(t.number for t in second) < \
        last[0].number
    curves = {}  # configuration -> its dev scores over all its trials
    for paused, rung in ((first, 2), (second, 6)):
        for t in paused:
            curves.setdefault(t.user_attrs["config"], {}).update(t.intermediate_values)
            assert t.state == TrialState.PRUNED and t.user_attrs["steps"] == rung and max(t.intermediate_values) == rung
            assert t.user_attrs["rung_score"] == max(curves[t.user_attrs["config"]].values())  # its best so far
    ranked = sorted(first, key=lambda t: -t.user_attrs["rung_score"])
    assert [t.user_attrs["config"] for t in second] == [t.number for t in ranked[:3]]
    assert [t.user_attrs["resumed_from"] for t in second] == [2, 2, 2]  # each continued from its pause
    (winner,) = last
    assert winner.user_attrs["config"] == max(second, key=lambda t: t.user_attrs["rung_score"]).user_attrs["config"]
    assert winner.state == TrialState.COMPLETE and winner.user_attrs["resumed_from"] == 6
    assert winner.user_attrs["steps"] == 18 and steps_used(study) == 42 and study.best_trial.number == winner.number

    # the continued run is the configuration's uninterrupted run of 18 steps
    reported = {}
    result, _, _ = run_once(replace(run, train=replace(run.train, **winner.params)), save=False, progress=False,
                            on_evaluate=reported.__setitem__)
    assert winner.value == result.score
    assert winner.intermediate_values == {s: v for s, v in reported.items() if s > 6}
    folder = Path(run.output_dir) / "STS-B" / "sweep"
    assert not (folder / "checkpoints").exists()
    assert json.loads((folder / "best" / "finetune_config.json").read_text())["trial"] == winner.number
    assert run_sweep(run, sweep, progress=False).trials == study.trials  # done: the same call trains nothing


def test_sync_halving_in_another_order_and_interrupted_by_ctrl_c_picks_the_same_winner(sync_sweep, tiny_model,
                                                                                      tmp_path, caplog):
    """Another grid order, and Ctrl-C at step 4 of the first continuation (after its checkpoint at step 3): resumed,
    the sweep ends with the same winner, score and steps as the uninterrupted one."""
    *_, baseline = sync_sweep
    run, sweep = _sync_sweep(tiny_model, tmp_path, sampler_seed=1)

    def ctrl_c_in_a_continuation(config, save=True, on_evaluate=None, progress=True, checkpoint=None, pause_at=0):
        def report(step, score):
            on_evaluate(step, score)
            if step == 4:
                assert [p.name for p in checkpoint.iterdir()] == ["step-00000003"]
                raise KeyboardInterrupt
        return run_once(config, save=save, on_evaluate=report, progress=progress, checkpoint=checkpoint,
                        pause_at=pause_at)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(run, sweep, progress=False, run_job=ctrl_c_in_a_continuation)
    study = optuna.load_study(study_name="STS-B-sweep", storage=sweep.storage)
    assert [t.params for t in study.trials[:9]] != [t.params for t in baseline.trials[:9]]  # another order
    (interrupted,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert interrupted.user_attrs["rung"] == 1 and interrupted.user_attrs["steps"] == 4
    # queued again, with the other two promotions of the rung still waiting
    waiting = [t.user_attrs["config"] for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 3 and interrupted.user_attrs["config"] in waiting
    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        study = run_sweep(run, sweep, progress=False)
    assert f"trial_{interrupted.user_attrs['config']}{os.sep}step-00000003" in caplog.text
    assert study.best_trial.params == baseline.best_trial.params and study.best_value == baseline.best_value
    assert study.best_trial.intermediate_values == baseline.best_trial.intermediate_values
    # the interrupted continuation ran 2 steps past its checkpoint at 3, which are run again
    assert steps_used(study) == 42 + 1


def test_sync_halving_workers_sharing_the_study_wait_at_each_rung(sync_sweep, tiny_model, tmp_path):
    """Two processes started at once on one study (as in the README: the same command, one --storage): together they
    train the plan once, and pick the one worker's winner."""
    *_, baseline = sync_sweep
    run, sweep = _sync_sweep(tiny_model, tmp_path)
    args = [sys.executable, str(ROOT / "finetune" / "run_finetune.py"), "STS-B", "--mode", "sweep", "--model",
            str(tiny_model), "--output-dir", run.output_dir, "--space", sweep.space, "--pruner", "sync-halving",
            "--n-trials", "9", "--storage", sweep.storage, "--max-train-examples", "64", "--max-steps", "18",
            "--eval-every", "2", "--save-steps", "3", "--max-seq-length", "64", "--max-eval-examples", "32",
            "--no-predict-test", "--heartbeat-interval", "2", "--quiet"]
    # the baseline's threads (one under run_tests.sh, so two processes do not oversubscribe the cores): another count
    # sums in another order, and the winner's score would differ in its last digits (seen with OMP_NUM_THREADS=2)
    threads = str(torch.get_num_threads())
    workers = [subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": threads}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    assert not [e for e in errors if "ExperimentalWarning" in e], errors  # the waiting worker's stale-trial check
    study = optuna.load_study(study_name="STS-B-sweep", storage=sweep.storage)
    assert {t.state for t in study.trials} <= {TrialState.PRUNED, TrialState.COMPLETE}
    trained = [t for t in study.trials if t.user_attrs["steps"]]  # a promotion queued by both workers runs once
    assert [len({t.user_attrs["config"] for t in trained if t.user_attrs["rung"] == k}) for k in range(3)] == [9, 3, 1]
    assert len(trained) == 13 and steps_used(study) == 42
    assert len({t.user_attrs["worker"] for t in trained}) == 2  # both trained
    assert study.best_trial.params == baseline.best_trial.params and study.best_value == baseline.best_value


@pytest.mark.parametrize("extra,message", [
    (["--eval-every", "0"], "--pruner sync-halving needs --eval-every: its rungs are dev evaluations"),
    (["--eval-every", "2", "--budget-steps", "17"], "--budget-steps 17 is less than one configuration's run of 18"),
], ids=["no-evaluations", "budget-below-one-run"])
def test_a_sync_halving_sweep_that_cannot_be_planned_exits_2_before_writing(tiny_model, tmp_path, capsys, extra,
                                                                           message):
    out = tmp_path / "out"
    assert main(["CB", "--mode", "sweep", "--pruner", "sync-halving", "--model", str(tiny_model), "--output-dir",
                 str(out), "--max-steps", "18", "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # no study whose settings would refuse the corrected command
