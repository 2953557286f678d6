"""A search worker: claims (architecture, θ) trials of the shared study, trains them, records the results.

Any number of workers run the same command against one storage (see ``search/storage.py`` for the protocol). Each
worker loops until every planned evaluation of the study is COMPLETE, whoever ran it; an idle worker keeps looking,
so that the trial of a worker that dies is failed after the grace period, re-queued, and taken over. Every worker
that sees the study finished then writes the results (the same files: they are computed from the study alone).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from bort.architecture import Architecture, ArchitectureError
from bort.training import OptimConfig
from search.config import SearchConfig
from search.fptas import w_coefficient
from search.report import offer_winner
from search.space import DIMENSIONS
from search.storage import Heartbeat, claim, create_waiting, duplicate_of, fail_stale

logger = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"  # recorded on each trial a worker trains
MAX_PROPOSALS_PER_TRIAL = 20  # a sampler that keeps proposing points outside Ξ or seen ones stops after this many


class WorkerError(RuntimeError):
    """The study cannot be finished: evaluations failed on every retry."""


@dataclass
class Evaluation:
    """What a worker needs to evaluate one trial. ``train(arch, theta, progress)`` returns (student, held-out loss
    terms, training losses); rows maps architecture names to their table rows (p, FLOPs, latency)."""

    config: SearchConfig
    thetas: list[OptimConfig]
    archs: list[Architecture]
    rows: dict[str, dict]
    train: Callable
    tokenizer: object
    output_dir: Path
    p_max: float
    i_max: float
    key_p: str
    key_i: str


def distributions(archs: list[Architecture], n_thetas: int) -> dict:
    """One categorical dimension per Hugging Face field (values of Ξ) and θ's index."""
    out = {d: CategoricalDistribution(sorted({getattr(a, d) for a in archs})) for d in DIMENSIONS}
    out["theta"] = IntDistribution(0, n_thetas - 1)
    return out


def trial_key(trial: FrozenTrial) -> tuple[str, int]:
    """(architecture name, θ index) of a trial."""
    return Architecture(**{d: trial.params[d] for d in DIMENSIONS}).name, trial.params["theta"]


def _keyed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if "theta" in t.params]


def run_planned(ctx: Evaluation, study: optuna.Study, storage, keys: list[tuple[str, int]]) -> None:
    """Evaluate every (architecture name, θ index) of ``keys`` exactly once across all workers of ``study``.

    Raises:
        WorkerError: if some keys have no live trial left (failed on every retry) and no worker can finish them.
    """
    dists = distributions(ctx.archs, len(ctx.thetas))
    wanted = set(keys)
    present = {trial_key(t) for t in _keyed(study.get_trials(deepcopy=False))
               if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
    for name, theta in keys:  # in plan order, so that claims follow it
        if (name, theta) not in present:
            row = ctx.rows[name]
            create_waiting(study, {**{d: row[d] for d in DIMENSIONS}, "theta": theta}, dists)
    show = ctx.config.progress
    overall = tqdm(total=len(wanted), desc="evaluations (all workers)", unit="eval", disable=not show, position=0)
    steps = tqdm(total=ctx.config.steps, desc="this worker", unit="step", disable=not show, position=1, leave=False)
    while True:
        fail_stale(study)
        trials = [t for t in _keyed(study.get_trials(deepcopy=False)) if trial_key(t) in wanted]
        done = {trial_key(t) for t in trials if t.state == TrialState.COMPLETE}
        overall.n = len(done)
        overall.set_postfix(running=sum(t.state == TrialState.RUNNING for t in trials), refresh=True)
        if done == wanted:
            break
        trial = claim(storage, trials)
        if trial is None:
            if not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
                lost = sorted(wanted - done)
                raise WorkerError(f"{len(lost)} evaluations failed on every try, e.g. {lost[0][0]} θ{lost[0][1]}; "
                                  f"re-run to queue them again")
            time.sleep(ctx.config.poll_interval)  # others are training the rest; their trials may yet come back
            continue
        same = [t for t in _keyed(study.get_trials(deepcopy=False)) if trial_key(t) == trial_key(trial)]
        original = duplicate_of(trial, same)
        if original is not None:
            try:
                optuna.Trial(study, trial._trial_id).set_user_attr("duplicate_of", original.number)
                study.tell(trial.number, state=TrialState.PRUNED)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # failed meanwhile as stale by another worker: the trial is closed either way
            continue
        evaluate_trial(ctx, study, storage, trial, steps)
    steps.close()
    overall.close()


def make_sampler(strategy: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """NSGA-II with a population of about a third of the budget (at least 4, Optuna's default 50 at most), or
    multi-objective TPE whose random start-up is a quarter of the budget; both seeded."""
    if strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, n_trials // 3)), seed=seed)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=max(2, n_trials // 4), seed=seed, multivariate=True)
    raise ValueError(f"unknown sampler strategy {strategy!r}")


def run_sampled(ctx: Evaluation, study: optuna.Study, storage, n_trials: int) -> None:
    """Let an Optuna sampler pick (architecture, θ) until ``n_trials`` evaluations are trained across all workers.

    Proposals outside Ξ are closed as PRUNED (``user_attrs["outside_space"]``); a proposal of an architecture and θ
    that is already evaluated gets the stored values without training (``user_attrs["reused_from"]``).
    """
    study = optuna.load_study(study_name=study.study_name, storage=storage,
                              sampler=make_sampler(ctx.config.strategy, ctx.config.seed, n_trials))
    dists = distributions(ctx.archs, len(ctx.thetas))
    show = ctx.config.progress
    overall = tqdm(total=n_trials, desc=f"{ctx.config.strategy} evaluations (all workers)", unit="eval",
                   disable=not show, position=0)
    steps = tqdm(total=ctx.config.steps, desc="this worker", unit="step", disable=not show, position=1, leave=False)
    for _ in range(MAX_PROPOSALS_PER_TRIAL * n_trials):
        fail_stale(study)
        trials = _keyed(study.get_trials(deepcopy=False))
        trained = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")]
        overall.n = len(trained)
        overall.refresh()
        if len(trained) >= n_trials:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat ourselves
            trial = study.ask(dists)
        # A worker killed before this beat leaves a RUNNING trial that is never failed; unlike a planned claim
        # nobody waits for it (the loop counts trained trials), so it only stays listed as running.
        storage.record_heartbeat(trial._trial_id)
        frozen = storage.get_trial(trial._trial_id)
        try:
            name, theta = trial_key(frozen)
        except ArchitectureError:  # dimensions sampled one by one: e.g. hidden_size not divisible by the heads
            name, theta = None, None
        if name not in ctx.rows:
            trial.set_user_attr("outside_space", True)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        seen = next((t for t in trials if trial_key(t) == (name, theta) and t.state == TrialState.COMPLETE), None)
        if seen is not None:
            trial.set_user_attr("reused_from", seen.number)
            for key, value in seen.user_attrs.items():
                if key not in ("trained", "reused_from"):
                    trial.set_user_attr(key, value)
            study.tell(trial, seen.values)
            continue
        evaluate_trial(ctx, study, storage, frozen, steps)
    else:
        logger.warning("the %s sampler made %d proposals without reaching %d trained evaluations",
                       ctx.config.strategy, MAX_PROPOSALS_PER_TRIAL * n_trials, n_trials)
    steps.close()
    overall.close()


def evaluate_trial(ctx: Evaluation, study: optuna.Study, storage, trial: FrozenTrial, bar) -> None:
    """Train one claimed RUNNING trial under a heartbeat, record e, W and the details, keep the best weights."""
    arch = Architecture(**{d: trial.params[d] for d in DIMENSIONS})
    theta = ctx.thetas[trial.params["theta"]]
    row = ctx.rows[arch.name]
    bar.reset(total=ctx.config.steps)
    bar.set_description(f"{arch.name} θ{trial.params['theta']}")
    handle = optuna.Trial(study, trial._trial_id)
    handle.set_user_attr("worker", WORKER_ID)
    start = time.perf_counter()
    with Heartbeat(storage, trial._trial_id, ctx.config.heartbeat_interval):
        try:
            student, terms, losses = ctx.train(arch, theta, bar)
        except Exception:
            study.tell(trial.number, state=TrialState.FAIL)
            raise
    seconds = time.perf_counter() - start
    e = terms["loss"]
    w = w_coefficient(row[ctx.key_p], row[ctx.key_i], e, ctx.p_max, ctx.i_max)
    tokens = ctx.config.batch_size * ctx.config.max_seq_length * ctx.config.steps
    # the weights are valid even if another worker closed the trial meanwhile; a failed save must not pass for that
    offer_winner(ctx.output_dir / "winner", student, ctx.tokenizer,
                 {"architecture": arch.to_dict(), "theta": theta.to_dict(), "W": w, "e": e}, (w, -row[ctx.key_p]))
    try:
        for key, value in {"W": w, "terms": terms, "theta_values": theta.to_dict(), "trained": True,
                           "train_loss_first_last": [losses[0], losses[-1]], "train_seconds": seconds,
                           "tokens_per_second": tokens / seconds}.items():
            handle.set_user_attr(key, value)
        study.tell(trial.number, [row[ctx.key_p], row[ctx.key_i], e])
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as exc:
        # Our heartbeat stalled past the grace period and another worker re-queued the trial: its retry counts.
        logger.warning("trial %d of %s was closed by another worker (%s); its retry will record the result",
                       trial.number, arch.name, exc)
