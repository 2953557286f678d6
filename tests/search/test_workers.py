"""Many workers on one study: SQLite and PostgreSQL, real subprocesses, real SIGKILL, resume, bad storage input.

Every search here is the same tiny one (6 architectures, ε = 1, 20 steps of batch 4 × 32 tokens, the real teacher
and a slice of the real WikiText-2 text), so each multi-worker result is compared with one uninterrupted
single-worker run of the same command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.run_fptas import main
from search.storage import (StorageError, claim, create_waiting, duplicate_of, fail_stale, open_defined_study,
                            open_storage)
from search.worker import distributions, trial_key
from bort.architecture import Architecture

ROOT = Path(__file__).resolve().parents[2]
N_EVALUATIONS = 6  # |Ξ| of the space below, ε = 1, one θ
WAIT_S = 420


def start_workers(n: int, args: list[str], logs: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([sys.executable, "search/run_fptas.py", *args], cwd=ROOT, env=env,
                             stdout=open(logs / f"worker{k}.out", "w"), stderr=open(logs / f"worker{k}.err", "w"),
                             start_new_session=True) for k in range(n)]


def wait_all(procs: list[subprocess.Popen], logs: Path) -> list[int]:
    codes = [p.wait(timeout=WAIT_S) for p in procs]
    for k, code in enumerate(codes):
        assert code in (0, -signal.SIGKILL), (logs / f"worker{k}.err").read_text()[-3000:]
    return codes


def evaluated_table(out: Path) -> dict[str, tuple[float, float]]:
    rows = json.loads((out / "architectures.json").read_text())
    return {r["name"]: (r["e"], r["W"]) for r in rows if r["W"] is not None}


def assert_same_results(out: Path, reference: Path) -> None:
    table, expected = evaluated_table(out), evaluated_table(reference)
    assert table.keys() == expected.keys() and len(table) == N_EVALUATIONS
    for name, (e, w) in expected.items():
        assert table[name] == pytest.approx((e, w), rel=1e-6), name
    winner = json.loads((out / "summary.json").read_text())["winner"]
    expected_winner = json.loads((reference / "summary.json").read_text())["winner"]
    for key in ("name", "architecture", "theta", "params_total", "flops"):
        assert winner[key] == expected_winner[key]
    assert winner["W"] == pytest.approx(expected_winner["W"], rel=1e-6)
    saved = json.loads((out / "winner" / "search_result.json").read_text())
    assert saved["architecture"] == winner["architecture"]


def assert_each_evaluated_once(storage: str) -> optuna.Study:
    study = optuna.load_study(study_name="fptas", storage=storage.replace("postgresql://", "postgresql+psycopg2://"))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    counts = Counter(trial_key(t) for t in complete)
    assert len(counts) == N_EVALUATIONS and set(counts.values()) == {1}, counts
    assert all(t.user_attrs["trained"] for t in complete)
    for t in study.get_trials(states=(TrialState.PRUNED,)):  # duplicates of two drivers' enqueues, never trained
        assert "duplicate_of" in t.user_attrs and "W" not in t.user_attrs
    return study


@pytest.fixture(scope="module")
def reference(search_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(search_cli(out)) == 0
    return out


@pytest.mark.parametrize("backend, workers", [("sqlite", 2), ("sqlite", 4), ("postgresql", 2), ("postgresql", 4)])
def test_workers_finish_one_search_evaluating_each_candidate_once(backend, workers, search_cli, reference,
                                                                  tmp_path, request):
    if backend == "postgresql":
        storage = request.getfixturevalue("postgres_server")(f"workers{workers}")
    else:
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
    out = tmp_path / "out"  # one machine: the workers share the output folder as well
    procs = start_workers(workers, search_cli(out, "--storage", storage), tmp_path / "logs")
    assert wait_all(procs, tmp_path / "logs") == [0] * workers
    study = assert_each_evaluated_once(storage)
    assert_same_results(out, reference)
    for k in range(workers):  # every worker waited for the whole study and reported the same winner
        assert f"winner: {json.loads((reference / 'summary.json').read_text())['winner']['name']}" in \
            (tmp_path / "logs" / f"worker{k}.out").read_text()
    assert len({t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) >= 1


@pytest.mark.parametrize("backend", ["postgresql"])  # the multi-machine case; SQLite shares the same code path
def test_a_worker_killed_mid_candidate_is_replaced(backend, search_cli, reference, tmp_path, request, trials_so_far):
    if backend == "postgresql":
        storage = request.getfixturevalue("postgres_server")("killed_worker")
    else:
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
    out = tmp_path / "out"
    procs = start_workers(2, search_cli(out, "--storage", storage), tmp_path / "logs")
    victim = None
    deadline = time.monotonic() + WAIT_S
    while victim is None and time.monotonic() < deadline:
        running = [t for t in trials_so_far(storage, "fptas", (TrialState.RUNNING,)) if "worker" in t.user_attrs]
        if running:
            victim = running[0]
            os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        else:
            time.sleep(0.05)
    assert victim is not None, "no worker was ever seen training"
    codes = wait_all(procs, tmp_path / "logs")
    assert sorted(codes) == [-signal.SIGKILL, 0]
    study = assert_each_evaluated_once(storage)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL  # failed by the survivor after the grace period
    retry = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if trial_key(t) == trial_key(killed)]
    assert retry[0].system_attrs.get("failed_trial") == victim.number
    assert_same_results(out, reference)


def test_whole_search_killed_then_resumed_gives_the_uninterrupted_result(search_cli, reference, tmp_path,
                                                                         trials_so_far):
    out = tmp_path / "out"
    args = search_cli(out)  # the default storage: study.db in the output folder
    procs = start_workers(2, args, tmp_path / "logs")
    storage = f"sqlite:///{out / 'study.db'}"
    finished: list = []
    deadline = time.monotonic() + WAIT_S
    while len(finished) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        if (out / "study.db").exists():
            finished = trials_so_far(storage, "fptas", (TrialState.COMPLETE,))
    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)
    assert all(p.wait(timeout=60) == -signal.SIGKILL for p in procs)
    before = {t.number: t.datetime_complete for t in
              optuna.load_study(study_name="fptas", storage=storage).get_trials(states=(TrialState.COMPLETE,))}
    assert 2 <= len(before) < N_EVALUATIONS
    assert main(args) == 0  # the same command again
    study = assert_each_evaluated_once(storage)
    after = {t.number: t.datetime_complete for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(after[number] == done for number, done in before.items())  # nothing finished was trained again
    assert_same_results(out, reference)


# --- the claim protocol itself, on a real storage -----------------------------------------------------------------

def _keys_and_study(tmp_path, heartbeat_interval=1, grace_period=2):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=heartbeat_interval,
                           grace_period=grace_period, max_retry=1)
    study = optuna.create_study(study_name="fptas", storage=storage, directions=["minimize"] * 3)
    archs = [Architecture(1, 3, 96, i) for i in (32, 64, 128)]
    return storage, study, archs, distributions(archs, 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_opening_one_fresh_storage_at_once_all_succeed(backend, tmp_path, request, at_once):
    # six openers released together race to create Optuna's tables: Optuna's own RDBStorage fails here for all but
    # one of them on SQLite (checked: "table studies already exists"), the losers must wait and find the tables
    url = request.getfixturevalue("postgres_server")("fresh") if backend == "postgresql" else \
        f"sqlite:///{tmp_path / 'fresh.db'}"

    def open_and_create():
        storage = open_storage(url, heartbeat_interval=1, grace_period=2, max_retry=0)
        optuna.create_study(study_name="fptas", storage=storage, load_if_exists=True)
        return storage.get_study_id_from_name("fptas")

    studies, errors = at_once(open_and_create, 6)
    assert errors == []
    assert len(studies) == 6 and len(set(studies)) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_drivers_of_different_searches_on_one_fresh_study_do_not_both_go_on(backend, tmp_path, request, at_once,
                                                                              monkeypatch):
    url = request.getfixturevalue("postgres_server")("defined") if backend == "postgresql" else \
        f"sqlite:///{tmp_path / 'defined.db'}"
    write = optuna.study.Study.set_user_attr

    def slow_write(self, key, value):  # the creator is slow to record its settings: the window of the race
        time.sleep(1.0)
        write(self, key, value)

    monkeypatch.setattr(optuna.study.Study, "set_user_attr", slow_write)
    definitions = iter([{"space": "A"}, {"space": "B"}])

    def driver():
        return open_defined_study(open_storage(url), "fptas", ["minimize"] * 3, next(definitions), where="here",
                                  hint="stop", wait_s=30)[1]

    created, errors = at_once(driver, 2)
    assert created == [True]  # one wrote its settings and went on; the other saw the mismatch and stopped
    assert len(errors) == 1 and "created with other settings (space)" in errors[0]


def test_a_study_whose_creator_died_before_recording_its_settings_is_adopted_if_empty(tmp_path):
    url = f"sqlite:///{tmp_path / 'orphan.db'}"
    optuna.create_study(study_name="fptas", storage=url, directions=["minimize"] * 3)
    study, created = open_defined_study(open_storage(url), "fptas", ["minimize"] * 3, {"space": "A"}, where="here",
                                        hint="stop", wait_s=0.3)
    assert created and study.user_attrs["defining_settings"] == {"space": "A"}
    optuna.create_study(study_name="other", storage=url, directions=["minimize"] * 3).enqueue_trial({})
    with pytest.raises(StorageError, match="not created by this tool"):
        open_defined_study(open_storage(url), "other", ["minimize"] * 3, {"space": "A"}, where="here", hint="stop",
                           wait_s=0.3)


def test_two_drivers_enqueueing_at_once_still_train_each_key_once(tmp_path):
    storage, study, archs, dists = _keys_and_study(tmp_path)
    for _driver in range(2):  # both saw an empty study and queued everything
        for arch in archs:
            create_waiting(study, {**arch.to_dict(), "theta": 0}, dists)
    trained, duplicates = [], []
    while (trial := claim(storage, study.get_trials(deepcopy=False))) is not None:
        original = duplicate_of(trial, [t for t in study.get_trials() if trial_key(t) == trial_key(trial)])
        if original is None:
            trained.append(trial_key(trial))
            if len(trained) % 2:  # some finish before their duplicate is claimed, some are still running
                study.tell(trial.number, [1.0, 1.0, 1.0])
        else:
            duplicates.append((trial.number, original.number))
            study.tell(trial.number, state=TrialState.PRUNED)
    assert sorted(trained) == sorted((a.name, 0) for a in archs)
    assert len(duplicates) == 3 and all(number > kept for number, kept in duplicates)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_claims_never_take_one_trial_twice(backend, tmp_path, request):
    url = request.getfixturevalue("postgres_server")("claims") if backend == "postgresql" else \
        f"sqlite:///{tmp_path / 'claims.db'}"
    first = open_storage(url, heartbeat_interval=1, grace_period=60, max_retry=0)
    study = optuna.create_study(study_name="fptas", storage=first, directions=["minimize"] * 3)
    archs = [Architecture(d, 3, 96, i) for d in range(1, 7) for i in (32, 64, 128, 256)]
    for arch in archs:
        create_waiting(study, {**arch.to_dict(), "theta": 0}, distributions(archs, 1))
    claimed: list[list[int]] = [[] for _ in range(4)]
    # all four start claiming at once, and yield between claims: in one CI run a single worker claimed all 24, and
    # the race this test is for never happened
    start = threading.Barrier(4, timeout=WAIT_S)

    def worker(k):  # each thread has its own storage and connections, as a separate process would
        storage = open_storage(url, heartbeat_interval=1, grace_period=60, max_retry=0)
        mine = optuna.load_study(study_name="fptas", storage=storage)
        start.wait()
        while (trial := claim(storage, mine.get_trials(deepcopy=False))) is not None:
            claimed[k].append(trial.number)
            time.sleep(0.01)  # the work between two claims, short as it is the others' turn to claim

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    everything = [number for numbers in claimed for number in numbers]
    assert sorted(everything) == list(range(len(archs)))  # each trial claimed by exactly one worker
    assert sum(bool(numbers) for numbers in claimed) >= 2


def test_a_trial_without_heartbeat_is_failed_and_requeued(tmp_path):
    storage, study, archs, dists = _keys_and_study(tmp_path)
    create_waiting(study, {**archs[0].to_dict(), "theta": 0}, dists)
    trial = claim(storage, study.get_trials())
    assert trial is not None and claim(storage, study.get_trials()) is None  # nobody else can take it
    time.sleep(3.5)  # its worker "died": no heartbeat for longer than the 2 s grace period
    fail_stale(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    retry = study.trials[1]
    assert retry.params == trial.params and retry.system_attrs["failed_trial"] == trial.number


class _Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after the raise runs, nothing is cleaned up."""


def test_a_worker_dying_right_after_its_claim_leaves_a_trial_that_is_failed_and_requeued(tmp_path):
    # The CI hang this guards against: a worker killed between the WAITING -> RUNNING switch and its first
    # heartbeat left a RUNNING trial without any heartbeat row, which Optuna's stale check never fails.
    storage, study, archs, dists = _keys_and_study(tmp_path)
    create_waiting(study, {**archs[0].to_dict(), "theta": 0}, dists)
    switch = storage.set_trial_state_values

    def switch_then_die(trial_id, state, values=None):
        if switch(trial_id, state, values):
            raise _Killed
        return False

    storage.set_trial_state_values = switch_then_die
    with pytest.raises(_Killed):
        claim(storage, study.get_trials())
    survivor = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=2, max_retry=1)
    study = optuna.load_study(study_name="fptas", storage=survivor)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    time.sleep(3.5)
    fail_stale(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, culprit", [
    ("postgresql://bort:secret@127.0.0.1:{port}/study", "Connection refused"),
    ("nosuchdb://somewhere/study", "nosuchdb"),
])
def test_unreachable_storage_fails_fast_with_one_line(url, culprit, search_cli, tmp_path, capsys, free_port):
    url = url.format(port=free_port())  # a port nothing listens on
    out = tmp_path / "out"
    start = time.monotonic()
    assert main(search_cli(out, "--storage", url)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("run_fptas.py: error: cannot open --storage") and culprit in err[-1]
    assert "secret" not in err[-1]
    assert time.monotonic() - start < 60 and not out.exists()


@pytest.mark.parametrize("extra, differing", [
    (["--space", "SMALLER_SPACE"], "space"),
    (["--loss", "hidden_states=1"], "loss_weights"),
    (["--cost", "latency", "--latency", "all"], "cost"),
    (["--max-seq-length", "16"], "max_seq_length"),
])
def test_a_study_of_another_definition_is_refused(extra, differing, search_cli, reference, tmp_path, capsys):
    study_file = reference / "study.db"
    before = study_file.stat().st_mtime_ns
    (tmp_path / "smaller.yaml").write_text("num_hidden_layers: [1]\nnum_attention_heads: [3]\nhidden_size: [96]\n"
                                           "intermediate_size: [32, 64]\n")
    extra = [str(tmp_path / "smaller.yaml") if e == "SMALLER_SPACE" else e for e in extra]
    assert main([*search_cli(reference), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "created with other settings" in err and differing in err
    assert len(optuna.load_study(study_name="fptas", storage=f"sqlite:///{study_file}").trials) == N_EVALUATIONS
    assert study_file.stat().st_mtime_ns == before


def test_grace_period_must_exceed_the_heartbeat(search_cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(search_cli(tmp_path / "out", "--heartbeat-interval", "5", "--grace-period", "5"))
    assert exc.value.code == 2 and "--grace-period" in capsys.readouterr().err
