"""Hyperparameter sweep as an Optuna study (SPEC §5: Bort's published grid is the default space).

The study lives in an Optuna storage (SQLite file by default, any SQLAlchemy URL such as PostgreSQL), so an
interrupted sweep resumes where it stopped and several workers started with the same ``--storage`` and
``--study-name`` share the trials. Trials left ``RUNNING`` by a killed worker are detected by their heartbeat
(``heartbeat_interval``), marked failed and re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``);
a trial interrupted by Ctrl-C is re-queued at once. A trial's run saves a checkpoint every ``save_steps`` steps in
``checkpoints/trial_<n>/`` (deleted when the trial ends), and its re-queued copy continues from the newest one, with
the reported values, halving rungs and step budget of the trial it repeats.
Each trial trains with early stopping on dev; its objective is the task score on the first dev split (maximised).
Only the best trial's model is kept (``trials/trial_<n>``), and at the end it is copied to ``best/``. A configuration
(seed included) that a finished trial already ran in full is not trained again: TPE on a small categorical space
proposes the same point repeatedly, and the repeat takes the earlier trial's outcome (``duplicate_of``).

A fixed compute budget (``budget_steps``: optimiser steps of all trials together) turns the sweep into a
budgeted search: each trial is cut to the steps that remain when it starts, and the study stops when none remain.
With ``pruner="halving"`` (Optuna's asynchronous successive halving, Li et al. 2020, arXiv 1810.05934) a trial
continues past each rung (dev evaluations at 1, 3, 9, ... times the first rung's step: ``halving_min_steps``, else
the first evaluation) only while it is among the best third there, so the budget buys many short trials and a few
long ones. Asynchronous halving promotes a trial that is best among the few that reached a rung before it, so with a
handful of trials the sampler's order decides which configuration gets a long run. ``pruner="sync-halving"``
(synchronous successive halving, Jamieson & Talwalkar 2016, arXiv 1502.07943) removes that: every configuration of the
first rung is trained to it and paused there with a checkpoint, and only when all of them have reported are the best
third continued from their checkpoints to the next rung, and so on (:func:`halving_plan`). Each stretch of a
configuration's run is one trial (user attributes ``rung`` and ``config``, the number of its first trial); workers
sharing the study wait at a rung until it is complete.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import platform
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from bort.checkpoints import checkpoint_step, list_checkpoints
from data.files import atomic_path, atomic_write_json, copy_folder
from finetune.pipeline import RunConfig, run_once, save_trained, write_predictions
from finetune.tasks import get_task
from finetune.trainer import TrainConfig, check_ranges, load_model, load_tokenizer
from search.storage import fail_stale, open_defined_study, open_storage, redact

logger = logging.getLogger(__name__)

#: Bort's starting grid (de Wynter & Perry 2020; arXiv 2010.07990 §5): 5 x 3 x 4 x 4 x 2 = 480 configurations.
BORT_GRID: dict[str, list] = {
    "seed": [0, 1, 2, 3, 4],
    "learning_rate": [1e-4, 1e-5, 9e-6],
    "weight_decay": [0.0, 10.0, 100.0, 350.0],
    "warmup_fraction": [0.35, 0.40, 0.45, 0.50],
    "batch_size": [8, 16],
}


def load_space(path: str | None, base: TrainConfig | None = None) -> dict[str, list]:
    """A search space: ``TrainConfig`` field -> list of values, from a JSON/YAML file, or :data:`BORT_GRID`.

    A ``.json`` file is read as JSON; any other as YAML, where a number in exponent form needs a dot (``1.0e-4``):
    YAML 1.1 reads ``1e-4`` as text. With ``base`` (the run's fixed settings), every point of the grid is checked
    against it, so that a value out of range stops the sweep before its study or any model is made.

    Raises:
        ValueError: the file names a field that is not a hyperparameter, a value list is empty, a value is not of
            its field's type (a number for ``learning_rate``, an integer for ``seed``, ...), or, with ``base``, a
            point of the grid is not a valid ``TrainConfig`` (e.g. a negative learning rate); the message names the
            file and the point.
    """
    if not path:
        space = {k: list(v) for k, v in BORT_GRID.items()}
        return space if base is None else _check_points(space, base, "Bort's grid")
    with open(path, encoding="utf-8") as f:
        try:
            space = json.load(f) if str(path).endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {e}") from e
    if not isinstance(space, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameter -> list of values")
    fields = TrainConfig.__dataclass_fields__
    for name, values in space.items():
        if name not in fields:
            raise ValueError(f"{path}: {name!r} is not a hyperparameter; valid: {', '.join(sorted(fields))}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {name!r} needs a non-empty list of values")
        kind = fields[name].type if isinstance(fields[name].type, str) else fields[name].type.__name__
        allowed = {"float": (int, float), "int": (int,), "str": (str,)}.get(kind, object)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, allowed):
                hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and kind != "str" else ""
                article = "an" if kind == "int" else "a"
                raise ValueError(f"{path}: {name!r} value {value!r} is not {article} {kind}{hint}")
    return space if base is None else _check_points(space, base, path)


def _check_points(space: dict[str, list], base: TrainConfig, source: str) -> dict[str, list]:
    for values in itertools.product(*space.values()):  # Bort's 480 points: 2.6 ms (measured)
        point = dict(zip(space, values))
        try:
            replace(base, **point)
        except ValueError as e:
            raise ValueError(f"{source}: the point {point} of the search space: {e}") from None
    return space


def balanced_grid(space: dict[str, list], seed: int) -> list[dict]:
    """Every point of the grid ``space`` (hyperparameter -> values) once, in a seeded order whose first points spread
    each hyperparameter's values evenly.

    A plain shuffle (Optuna's ``GridSampler``) can leave a whole value out of the first points: the first 8 of the
    quality benchmark's 36-point space (``bench/finetune_space.yaml``) lack one of its three learning rates for 14
    seeds of 200. Here the next point is one whose values the points before it used least (summed over the
    hyperparameters), then whose pairs of values they used least (summed over pairs of hyperparameters), ties going
    to the earlier point of a shuffle seeded with ``seed``. Greedy, so not every prefix can be balanced: over seeds
    0-29 each value's count stays within one of the other values' on the first 11 points of the benchmark's space and
    the first 59 of Bort's grid (:data:`BORT_GRID`); within the first ``k`` points of a balanced prefix, every value
    of a hyperparameter with at most ``k`` values appears. Costs O(points^2 x hyperparameters^2): 0.03 s for Bort's
    480 points.

    Returns:
        ``[{name: value}, ...]`` with the space's own values, the same list for the same space and seed.
    """
    names = list(space)
    if not names:  # one point: the run's own settings
        return [{}]
    sizes = [len(space[name]) for name in names]
    rows = np.array(list(itertools.product(*map(range, sizes))), dtype=np.int64).reshape(-1, len(names))
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    columns = rows + np.cumsum([0, *sizes[:-1]], dtype=np.int64)  # value v of hyperparameter j -> one column index
    pairs = list(itertools.combinations(range(len(names)), 2))
    used_value = np.zeros(sum(sizes), dtype=np.int64)
    used_pair = np.zeros((sum(sizes), sum(sizes)), dtype=np.int64)
    taken = np.zeros(len(rows), dtype=bool)
    weight = len(rows) * len(pairs) + 1  # the pair count only breaks ties of the value count
    order = []
    for _ in range(len(rows)):
        cost = used_value[columns].sum(axis=1) * weight
        for a, b in pairs:
            cost += used_pair[columns[:, a], columns[:, b]]
        cost[taken] = np.iinfo(np.int64).max
        i = int(np.argmin(cost))  # the first minimum: the seeded shuffle breaks ties
        taken[i] = True
        used_value[columns[i]] += 1
        for a, b in pairs:
            used_pair[columns[i, a], columns[i, b]] += 1
        order.append({name: space[name][v] for name, v in zip(names, rows[i].tolist())})
    return order


class BalancedGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler with its points in :func:`balanced_grid`'s order for ``seed``: the first trials of a
    sweep (e.g. sync-halving's first rung) cover each hyperparameter's values. Everything else is Optuna's: every
    point once, enqueued and retried trials keep their parameters, the study stops when the grid is exhausted."""

    def __init__(self, search_space: dict[str, list], seed: int = 0) -> None:
        super().__init__(search_space, seed=seed)
        # GridSampler gives trial k (while k < the grid's size) the k-th tuple of its shuffled _all_grids, whose values
        # follow its sorted _param_names; only that order is replaced
        self._all_grids = [tuple(point[name] for name in self._param_names)
                           for point in balanced_grid(search_space, seed)]


PRUNERS = ("none", "median", "halving", "sync-halving")
SAMPLERS = ("grid", "tpe")
REDUCTION_FACTOR = 3  # both halvings keep the best third of the trials at each rung


@dataclass
class SweepConfig:
    """How the study samples and where it is stored."""

    sampler: str = field(default="grid", metadata={
        "help": "grid (every point of the space, in an order whose first points cover each hyperparameter's values) "
                "or tpe", "choices": list(SAMPLERS)})
    n_trials: int = field(default=20, metadata={
        "help": "finished trials wanted in the study in total (over resumptions and workers); a grid stops earlier "
                "when exhausted; sync-halving: configurations at the first rung"})
    storage: str = field(default="", metadata={
        "help": "Optuna storage URL (e.g. sqlite:///sweep.db, postgresql://...); default: sqlite file in the output"})
    study_name: str = field(default="", metadata={"help": "study name (default: TASK-sweep)"})
    space: str = field(default="", metadata={"help": "JSON/YAML file: hyperparameter -> list of values (default: "
                                                     "Bort's grid, 480 points)"})
    sampler_seed: int = field(default=0, metadata={"help": "seed of the sampler (grid order, TPE)"})
    pruner: str = field(default="none", metadata={
        "help": "none, median (stop trials below the median dev score at the same step), halving (asynchronous "
                "successive halving: a trial continues past a rung while among the best third of the trials that "
                "reached it so far) or sync-halving (synchronous: every configuration is trained to the first rung "
                "and paused, then the best third continue from their checkpoints to the next rung, and so on; "
                "--n-trials configurations at the first rung, fewer where the plan must fit --budget-steps)",
        "choices": list(PRUNERS)})
    halving_min_steps: int = field(default=0, metadata={
        "help": "halving and sync-halving: steps of the first rung, rounded up to a dev evaluation (0: --eval-every, "
                "else, for halving only, Optuna's estimate from the first finished trial); put it where runs have "
                "separated, as a rung that comes before stops trials on indistinguishable scores"})
    budget_steps: int = field(default=0, metadata={
        "help": "optimiser steps of all trials together (0: no limit); a trial is cut to the steps left when it "
                "starts and the sweep stops when none are left (workers started at once may each take the rest)"})
    heartbeat_interval: int = field(default=60, metadata={
        "help": "seconds between a running trial's heartbeats; a trial silent for twice this is re-queued"})

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS or self.pruner not in PRUNERS:
            raise ValueError(f"sampler must be grid or tpe and pruner one of {', '.join(PRUNERS)}, "
                             f"got {self.sampler}/{self.pruner}")
        check_ranges(self, at_least_1=("n_trials", "heartbeat_interval"),
                     non_negative=("budget_steps", "halving_min_steps"))


def sweep_dir(run: RunConfig) -> Path:
    return run.task_dir / "sweep"


def open_study(run: RunConfig, sweep: SweepConfig, space: dict[str, list]) -> optuna.Study:
    """Create or load the study (same name and storage = same study, shared and resumable).

    Raises:
        StorageError (a ValueError): the storage cannot be opened, or the study was created with other defining
            settings (task, model, space, or the training settings the space does not sweep), naming them.
    """
    folder = sweep_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    url = sweep.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    # the search's opener: a one-line error for a bad URL, and sweep workers started together on a fresh storage
    # do not fail on the race to create Optuna's tables
    storage = open_storage(url, heartbeat_interval=sweep.heartbeat_interval,
                           grace_period=2 * sweep.heartbeat_interval, max_retry=3, inherit_intermediate_values=True)
    if sweep.sampler == "grid":
        sampler = BalancedGridSampler(space, seed=sweep.sampler_seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=sweep.sampler_seed)
    pruner = {"none": optuna.pruners.NopPruner,
              "median": lambda: optuna.pruners.MedianPruner(n_warmup_steps=1),
              # rungs at 1, 3, 9, ... times the first; without one Optuna derives it from the first finished trial
              "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
                  min_resource=first_rung(run.train.eval_every, sweep.halving_min_steps) or "auto",
                  reduction_factor=REDUCTION_FACTOR),
              "sync-halving": optuna.pruners.NopPruner}[sweep.pruner]()  # its rungs are run_sweep's
    name = sweep.study_name or f"{run.task}-sweep"
    defining = {"task": run.task, "model": run.model, "space": space,
                "train": {k: v for k, v in asdict(run.train).items() if k not in space}}
    if sweep.sampler == "grid":  # trial k trains the k-th point: a study keeps the order it was started with
        defining["grid_order"] = "balanced"
    open_defined_study(storage, name, ["maximize"], defining, where=redact(url),
                       hint="use another --output-dir, --study-name or --storage")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def first_rung(eval_every: int, min_steps: int) -> int:
    """Step of halving's first rung: ``min_steps`` rounded up to a multiple of ``eval_every`` (the steps at which
    scores are reported), else ``eval_every``; 0 when neither is set."""
    if min_steps and eval_every:
        return math.ceil(min_steps / eval_every) * eval_every
    return min_steps or eval_every


def halving_plan(first: int, total: int, n_max: int, budget: int = 0,
                 eta: int = REDUCTION_FACTOR) -> dict:
    """Synchronous successive halving's plan (Jamieson & Talwalkar 2016, arXiv 1502.07943).

    Args:
        first: the first rung, in optimiser steps (> 0).
        total: a configuration's full run, in steps; the last rung.
        n_max: the most configurations to start (e.g. ``--n-trials``, or the grid's size).
        budget: optimiser steps of the whole plan (0: no limit).
        eta: reduction factor: each rung continues ``count // eta`` (at least one) of the configurations before it.

    Returns:
        ``{"rungs": [first, eta*first, ..., total], "counts": [n, n // eta, ..., 1], "steps": S}``: the step each rung
        ends at, how many configurations reach it, and the plan's optimiser steps S, the sum over rungs of
        ``counts[k] * (rungs[k] - rungs[k-1])``, with ``n`` the largest number up to ``n_max`` whose S fits the budget.

    Raises:
        ValueError: ``first`` or ``total`` < 1, or a budget below one configuration's full run.
    """
    if first < 1 or total < 1 or n_max < 1:
        raise ValueError(f"sync-halving needs a first rung, a run length and configurations >= 1, got "
                         f"{first}, {total}, {n_max} (set --eval-every or --halving-min-steps)")
    rungs = []
    while first < total:
        rungs.append(first)
        first *= eta
    rungs.append(total)

    def counts(n: int) -> list[int]:
        out = [n]
        while len(out) < len(rungs):
            out.append(max(1, out[-1] // eta))
        return out

    def cost(n: int) -> int:
        return sum(c * (r - before) for c, r, before in zip(counts(n), rungs, [0, *rungs]))

    if budget and cost(1) > budget:
        raise ValueError(f"--budget-steps {budget} is less than one configuration's run of {total} steps: raise the "
                         "budget or lower --max-steps")
    n = n_max
    while budget and cost(n) > budget:
        n -= 1
    return {"rungs": rungs, "counts": counts(n), "steps": cost(n)}


def _plan(run: RunConfig, sweep: SweepConfig, space: dict[str, list], total: int) -> dict:
    """Sync-halving's plan for these settings (:func:`halving_plan`); raises ValueError before anything is written."""
    if not run.train.eval_every:  # a paused configuration is ranked by its dev scores up to the rung
        raise ValueError("--pruner sync-halving needs --eval-every: its rungs are dev evaluations")
    n_max = sweep.n_trials
    if sweep.sampler == "grid":  # a grid has no more configurations than its points
        n_max = min(n_max, math.prod(len(v) for v in space.values()))
    return halving_plan(first_rung(run.train.eval_every, sweep.halving_min_steps), total, n_max, sweep.budget_steps)


def _study_plan(study: optuna.Study, plan: dict) -> dict:
    """The plan stored in the study by its first worker (else ``plan``, stored now): resumed and joining workers
    follow the plan its trials were started under."""
    stored = study.user_attrs.get("halving_plan")
    if stored is None:
        study.set_user_attr("halving_plan", plan)
        logger.info("sync-halving plan: %s configurations at rungs of %s steps, %d steps in all",
                    plan["counts"], plan["rungs"], plan["steps"])
        return plan
    if stored != plan:
        logger.warning("study %s keeps the plan it was started with, %s, not %s", study.study_name, stored, plan)
    return stored


def _config_of(trial: optuna.trial.FrozenTrial) -> int:
    """Sync-halving: the number of the trial that started the configuration's run (its checkpoint folder's name)."""
    return int(trial.user_attrs.get("config", _first_attempt(trial)))


def _promotion_order(trial: optuna.trial.FrozenTrial) -> tuple:
    # best score first; ties broken by the lowest dev loss (which moves while the score cannot, e.g. all predictions
    # still the majority class), then by the configuration, never by the order the sampler proposed it in
    return (-trial.user_attrs["rung_score"], trial.user_attrs.get("rung_loss", math.inf),
            json.dumps(trial.params, sort_keys=True))


def _warn_if_tied(ranked: list[optuna.trial.FrozenTrial], n: int, rung: int) -> None:
    """Warn when the last configuration continued past ``rung`` ties with the first one stopped there: the tie-break
    (their dev loss, then their parameters) then chose, not the dev score (e.g. CoLA, where every configuration still
    predicts the majority class, MCC 0, after 120 steps)."""
    if len(ranked) <= n or ranked[n - 1].user_attrs["rung_score"] != ranked[n].user_attrs["rung_score"]:
        return
    score = ranked[n].user_attrs["rung_score"]
    tied = sorted(t.user_attrs["config"] for t in ranked if t.user_attrs["rung_score"] == score)
    chosen = sorted(t.user_attrs["config"] for t in ranked[:n] if t.user_attrs["rung_score"] == score)
    logger.warning("rung %d: configurations %s all scored %.4g; %s of them continue, chosen by their dev loss (by "
                   "their parameters where none was recorded), not their score (a later first rung, "
                   "--halving-min-steps, ranks them on more training)", rung, tied, score, chosen)


def _next_in_plan(study: optuna.Study, plan: dict, folder: Path, poll_seconds: float) -> bool:
    """Synchronous halving's barrier, called before each trial: True when a trial of the plan can start (a new
    configuration for the first rung, or a queued continuation, queued here once a rung is complete), False when the
    plan is done. While other workers are still training the current rung it waits, failing stale trials meanwhile
    (their retries are queued and then taken)."""
    rungs, counts = plan["rungs"], plan["counts"]
    while True:
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        live = [t for t in trials if t.state != TrialState.FAIL]  # a failed trial's queued retry stands for it
        at = [[t for t in live if t.user_attrs.get("rung", 0) == k] for k in range(len(rungs))]
        if len({_config_of(t) for t in at[0]}) < counts[0]:
            return True
        for k in range(len(rungs) - 1):
            if not all(t.state.is_finished() for t in at[k]):
                break
            paused = sorted((t for t in at[k] if "rung_score" in t.user_attrs), key=_promotion_order)
            promoted = {t.user_attrs["config"] for t in at[k + 1]}
            todo = [t for t in paused[:counts[k + 1]] if t.user_attrs["config"] not in promoted]
            if todo:
                _warn_if_tied(paused, counts[k + 1], k)
                for t in todo:
                    study.enqueue_trial(t.params, user_attrs={"rung": k + 1, "config": t.user_attrs["config"]})
                for t in paused[counts[k + 1]:]:  # not continued: their checkpoints are no longer needed
                    shutil.rmtree(folder / "checkpoints" / f"trial_{t.user_attrs['config']}", ignore_errors=True)
                logger.info("rung %d complete: continuing configuration(s) %s to step %d", k,
                            [t.user_attrs["config"] for t in todo], rungs[k + 1])
                return True
        else:
            if all(t.state.is_finished() for t in at[-1]):
                return False
        fail_stale(study)
        time.sleep(poll_seconds)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def steps_used(study: optuna.Study) -> int:
    """Optimiser steps the study's trials have run (a running trial's count is updated at each dev evaluation; a
    trial resumed from a checkpoint counts from it; a queued retry counts nothing yet)."""
    return sum(int(t.user_attrs.get("steps", 0)) - int(t.user_attrs.get("resumed_from", 0))
               for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)


def _first_attempt(trial: optuna.trial.FrozenTrial) -> int:
    """The number of the trial a retry repeats (through any number of retries), else the trial's own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        first = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if first is None else first


def _requeue(study: optuna.Study, number: int) -> None:
    """Queue trial ``number`` again (same parameters, attributes and reported values), as Optuna does for a trial
    whose worker died: an interrupted sweep then trains that configuration when it resumes (the grid sampler would
    otherwise take the failed trial's point as visited)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
        retry(study, study.get_trials(deepcopy=False)[number])


def planned_steps(train: TrainConfig, n_train: int) -> int:
    """The steps one run of ``train`` plans on ``n_train`` examples: ``max_steps``, else epochs x batches."""
    if train.max_steps > 0:
        return train.max_steps
    if train.max_train_examples > 0:
        n_train = min(n_train, train.max_train_examples)
    return math.ceil(math.ceil(n_train / train.batch_size) * train.num_train_epochs)


def run_sweep(run: RunConfig, sweep: SweepConfig, progress: bool = True, run_job=run_once) -> optuna.Study:
    """Run (or resume, or join) the study until it holds ``sweep.n_trials`` finished trials; keep the best model.

    ``run_job`` trains one trial (:func:`finetune.pipeline.run_once`, or a data-parallel worker's
    :meth:`finetune.parallel.ParallelRuns.run_once`).

    Returns:
        The study; ``study.best_trial.user_attrs`` holds the best trial's dev metrics and its model folder.
    """
    space = load_space(sweep.space, run.train)

    @functools.cache
    def train_size() -> int:  # read once per sweep, and only when a budget needs it
        return 0 if run.train.max_steps > 0 else len(get_task(run.task).read(run.data_path, "train"))

    plan = _plan(run, sweep, space, planned_steps(run.train, train_size())) if sweep.pruner == "sync-halving" else None
    study = open_study(run, sweep, space)
    folder = sweep_dir(run)
    atomic_write_json(folder / "sweep_config.json", {"run": asdict(run), "sweep": asdict(sweep), "space": space},
                      default=str)

    def objective(trial: optuna.Trial) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in space.items()}
        frozen = study.get_trials(deepcopy=False)[trial.number]
        trial.set_user_attr("worker", f"{platform.node()}:{os.getpid()}")  # which process trained it
        rung, pause_at = 0, 0
        if plan is not None:  # sync-halving: a stretch of one configuration's run, to a rung
            rung, config_number = int(frozen.user_attrs.get("rung", 0)), _config_of(frozen)
            trial.set_user_attr("rung", rung)
            trial.set_user_attr("config", config_number)
            pause_at = plan["rungs"][rung] if rung < len(plan["rungs"]) - 1 else 0
            if rung and any(t.number < trial.number and t.state != TrialState.FAIL and t.user_attrs.get("rung") == rung
                            and t.user_attrs.get("config") == config_number for t in study.get_trials(deepcopy=False)):
                trial.set_user_attr("steps", 0)  # two workers queued the same promotion: the first one trains it
                raise optuna.TrialPruned(f"configuration {config_number} is already continued to rung {rung}")
        twin = None if rung else _trained_twin(study, params)
        if twin is not None:  # same configuration and seed, same training: its outcome, no steps spent
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_user_attr("steps", 0)
            if twin.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"the configuration of trial {twin.number}, pruned")
            trial.set_user_attr("dev_metrics", twin.user_attrs["dev_metrics"])
            return twin.value
        # A retry (of a trial whose worker died, or that was interrupted) inherits the trial's attributes and
        # reported values, and continues from the newest checkpoint of the trial it retries; so does a continuation
        # of sync-halving, from where its configuration paused.
        checkpoint = folder / "checkpoints" / f"trial_{_config_of(frozen) if plan else _first_attempt(frozen)}"
        config = replace(run, train=replace(run.train, **params))
        if plan is not None:  # the plan fits the budget; every stretch follows the schedule of the full run
            config = replace(config, train=replace(config.train, max_steps=plan["rungs"][-1]))
        elif sweep.budget_steps:
            left = sweep.budget_steps - steps_used(study)
            if left < 1:  # another worker used the rest meanwhile
                shutil.rmtree(checkpoint, ignore_errors=True)
                raise optuna.TrialPruned("no budget left")
            if "max_steps" in frozen.user_attrs:  # the cut of the trial retried: its checkpoint is of that run
                config = replace(config, train=replace(config.train, max_steps=frozen.user_attrs["max_steps"]))
            else:
                planned = planned_steps(config.train, train_size())
                if left < planned:
                    config = replace(config, train=replace(config.train, max_steps=left))
                    trial.set_user_attr("cut_to_budget", f"{left} of {planned} steps")
                trial.set_user_attr("max_steps", config.train.max_steps)
        found = list_checkpoints(checkpoint)
        resumed_from = checkpoint_step(found[-1]) if found else 0
        # the budget counts a retry's steps from its checkpoint (the trial retried counted the steps before)
        trial.set_user_attr("resumed_from", resumed_from)
        trial.set_user_attr("steps", resumed_from)
        inherited = set(frozen.intermediate_values)

        def report(step: int, score: float) -> None:
            if step in inherited:  # reported by the trial retried (a resumed run repeats it exactly)
                return
            trial.report(score, step)
            trial.set_user_attr("steps", step)  # the budget counts pruned and running trials too
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result, model, tokenizer = run_job(config, save=False, on_evaluate=report, progress=progress,
                                               checkpoint=checkpoint, **({"pause_at": pause_at} if pause_at else {}))
        except KeyboardInterrupt:  # Optuna fails the trial: queue it again, to continue from its checkpoint
            _requeue(study, trial.number)
            raise
        except BaseException:
            if plan is None:  # sync-halving keeps a paused configuration's checkpoint (the error names a bad one)
                shutil.rmtree(checkpoint, ignore_errors=True)
            raise
        if result.paused:  # sync-halving: kept, with its checkpoint, until the rung is complete
            trial.set_user_attr("steps", result.steps)
            trial.set_user_attr("rung_score", result.score)  # the best dev score so far, as its model would be
            if math.isfinite(result.best_dev_loss):  # the tie-break between equal scores
                trial.set_user_attr("rung_loss", result.best_dev_loss)
            raise optuna.TrialPruned(f"paused at step {result.steps}, rung {rung}")
        shutil.rmtree(checkpoint, ignore_errors=True)
        trial.set_user_attr("dev_metrics", result.dev_metrics)
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("steps", result.steps)
        best = _best_value(study)
        if best is None or result.score > best:
            # test predictions are written once, for the final best model (finalize)
            out = save_trained(replace(config, predict_test=False), get_task(run.task), model, tokenizer, result,
                               folder=folder / "trials" / f"trial_{trial.number}",
                               extra={"trial": trial.number, "study": study.study_name})
            trial.set_user_attr("model_dir", str(out))
        return result.score

    def stop_when_spent(study: optuna.Study, _trial) -> None:
        if sweep.budget_steps and steps_used(study) >= sweep.budget_steps:
            study.stop()

    if plan is not None:
        plan = _study_plan(study, plan)
        # one trial at a time, each after the barrier: the grid sampler stops a study.optimize call once its points
        # are all proposed, while continuations of them are still to come
        while _next_in_plan(study, plan, folder, poll_seconds=min(5, sweep.heartbeat_interval)):
            study.optimize(objective, n_trials=1, gc_after_trial=True)
        finalize(study, folder, run)
        return study
    done = _finished(study)
    spent = sweep.budget_steps and steps_used(study) >= sweep.budget_steps
    if done < sweep.n_trials and not spent:
        logger.info("study %s: %d finished trials, running up to %d", study.study_name, done, sweep.n_trials)
        study.optimize(objective, callbacks=[MaxTrialsCallback(sweep.n_trials,
                                                               states=(TrialState.COMPLETE, TrialState.PRUNED)),
                                             stop_when_spent],
                       gc_after_trial=True)
    finalize(study, folder, run)
    return study


def _trained_twin(study: optuna.Study, params: dict) -> optuna.trial.FrozenTrial | None:
    """The first finished trial that trained ``params`` itself and either completed uncut by the budget or was stopped
    by the pruner (a trial pruned for want of budget has no ``steps``); None if there is none."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.params == params and "duplicate_of" not in t.user_attrs and "cut_to_budget" not in t.user_attrs and \
                (t.state == TrialState.COMPLETE or "steps" in t.user_attrs):
            return t
    return None


def _best_value(study: optuna.Study) -> float | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max((t.value for t in complete), default=None)


def finalize(study: optuna.Study, folder: Path, run: RunConfig | None = None) -> None:
    """Copy the best trial's model to ``best/``, delete the other trial folders, write ``trials.csv`` and a plot;
    with ``run.predict_test``, write the best model's test predictions into ``best/predictions`` (once per best)."""
    with contextlib.suppress(OSError):  # trials delete their checkpoints as they finish: remove the emptied folder
        (folder / "checkpoints").rmdir()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    best = study.best_trial
    if "duplicate_of" in best.user_attrs:  # the model is the original trial's
        best = study.get_trials(deepcopy=False)[best.user_attrs["duplicate_of"]]
    best_dir, best_folder = Path(best.user_attrs.get("model_dir", "")), folder / "best"
    if best.user_attrs.get("model_dir") and best_dir.is_dir():
        if _trial_of(best_folder) != best.number:  # else best/ holds it already, with its predictions
            copy_folder(best_dir, best_folder)
        for other in (folder / "trials").glob("trial_*"):
            if other != best_dir and other.name.split("_")[-1].isdigit() and _is_finished(study, other):
                shutil.rmtree(other, ignore_errors=True)
    with atomic_path(folder / "trials.csv") as tmp:
        study.trials_dataframe().to_csv(tmp, index=False)
    from finetune.report import plot_sweep

    plot_sweep(study, folder / "history.png")
    if run is not None and run.predict_test and best_folder.is_dir() and \
            not (best_folder / "predictions" / "index.json").is_file():
        task = get_task(run.task)
        write_predictions(run, task, load_model(task, str(best_folder)), load_tokenizer(str(best_folder)),
                          best_folder)


def _trial_of(model_folder: Path) -> int | None:
    """The trial number recorded in a saved trial model's ``finetune_config.json`` (None: no such folder)."""
    config = model_folder / "finetune_config.json"
    return json.loads(config.read_text()).get("trial") if config.is_file() else None


def _is_finished(study: optuna.Study, trial_dir: Path) -> bool:
    number = int(trial_dir.name.split("_")[-1])
    trials = study.get_trials(deepcopy=False)
    return number < len(trials) and trials[number].state.is_finished()
