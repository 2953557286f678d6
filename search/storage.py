"""The study's storage as the search's distributed engine: many workers, one Optuna study, no candidate twice.

Design (Optuna's RDB storage is the only shared state; nothing else is needed between machines):

* **Queue.** Each (architecture, θ) to train is one study trial, created in the WAITING state with its parameters
  (``study.add_trial``). A worker *claims* the lowest-numbered WAITING trial by switching it to RUNNING with
  ``storage.set_trial_state_values``, which succeeds for exactly one caller (a row lock in PostgreSQL, the database
  lock in SQLite).
* **No candidate twice.** Two drivers that start on one fresh study at the same moment may both enqueue the same
  keys. After a claim, the worker re-reads the study: if the same key has a COMPLETE trial, or a WAITING/RUNNING
  trial with a lower number, its claim is a duplicate and is closed as PRUNED (``user_attrs["duplicate_of"]``).
  Trial numbers follow creation order (Optuna locks the study row while numbering a new trial), so for every key
  exactly the lowest-numbered live trial is trained.
* **Dead workers.** A worker records a heartbeat for its RUNNING trial every ``heartbeat_interval`` seconds
  (``RDBStorage.record_heartbeat``). Any worker calls ``optuna.storages.fail_stale_trials`` before each claim: a
  trial without a heartbeat for ``grace_period`` seconds becomes FAIL, and
  ``RetryHeartbeatStaleTrialCallback`` re-creates it as WAITING, which the next free worker claims.
* **Unreachable storage.** One connection attempt with a short timeout, then a one-line :class:`StorageError`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import warnings

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_S = 300


class StorageError(ValueError):
    """The --storage URL cannot be opened (unreachable server, bad URL, missing driver)."""


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and saved configs)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def engine_url(url: str) -> str:
    """``url`` with the PostgreSQL driver made explicit: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3,
    while the pinned driver is psycopg2 (``postgresql+psycopg2://``)."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = None, inherit_intermediate_values: bool = False) -> RDBStorage:
    """An RDB storage with heartbeats and the retry callback, after one connection attempt.

    Several processes may open one fresh storage at the same moment: one that loses the race to create Optuna's
    tables retries, after 0.5, 1, 2 and 4 s (on a loaded machine the winner may still be creating them at the first
    retry), and then finds them.

    url: an SQLAlchemy URL (``sqlite:///path``, ``postgresql://user:password@host:port/db``, ...);
    heartbeat_interval, grace_period: seconds (None: no heartbeats, for a process that only reads or writes
    results); max_retry: how often a trial whose worker died is re-queued (None: without limit);
    inherit_intermediate_values: the re-queued trial starts with the dead one's reported values (a trial that resumes
    from a checkpoint instead of starting over).

    Raises:
        StorageError: naming the (redacted) URL and the first line of the driver's error (a connection error is
            not retried).
    """
    connect_args: dict = {}
    if url.startswith("sqlite"):
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S}  # workers wait for the database lock instead of failing
    elif url.startswith("postgres"):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
    delays = (0.5, 1.0, 2.0, 4.0)
    for attempt in range(len(delays) + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    engine_url(url), engine_kwargs={"connect_args": connect_args} if connect_args else None,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=None if heartbeat_interval is None
                    else RetryHeartbeatStaleTrialCallback(max_retry=max_retry,
                                                          inherit_intermediate_values=inherit_intermediate_values))
            if url.startswith("sqlite"):
                _serialise_sqlite_transactions(storage.engine)
            return storage
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError,
                ValueError) as exc:
            cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
            detail = str(getattr(cause, "orig", None) or cause).strip().splitlines()
            if attempt < len(delays) and isinstance(cause, sqlalchemy.exc.SQLAlchemyError) and \
                    _lost_creation_race(detail):
                time.sleep(delays[attempt])  # another worker is creating the tables at the same moment
                continue
            raise StorageError(f"cannot open --storage {redact(url)}: "
                               f"{detail[0] if detail else type(cause).__name__}") from None
    raise AssertionError("unreachable")


def _serialise_sqlite_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Make each SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    Python's sqlite3 driver starts a transaction only at the first write, so Optuna's read-check-write of a trial's
    state (``WAITING`` → ``RUNNING``) would not be atomic between processes, and two workers could claim one trial.
    This is the recipe of SQLAlchemy's SQLite dialect documentation ("Serializable isolation / Savepoints /
    Transactional DDL"): let SQLAlchemy emit the BEGIN itself. Readers then queue behind writers, which SQLite's
    busy timeout absorbs.
    """
    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the hooks


def _lost_creation_race(detail: list[str]) -> bool:
    """Whether the error is a concurrent creation of Optuna's tables (SQLite's "already exists", PostgreSQL's
    duplicate key on the catalogue), the only error that is retried."""
    text = " ".join(detail[:2])
    return "already exists" in text or "duplicate key value" in text or "UNIQUE constraint failed" in text


DEFINITION_ATTR = "defining_settings"


def open_defined_study(storage: RDBStorage, study_name: str, directions: list[str], definition: dict, *,
                       where: str, hint: str, wait_s: float = 60.0, poll_s: float = 0.2) -> tuple[optuna.Study, bool]:
    """Create the study and store ``definition`` (its JSON form) in its user attribute ``defining_settings``, or load
    it and check that it was created with the same definition.

    Only the process whose ``create_study`` succeeds writes the definition (the storage's unique study name decides),
    so two drivers started on one fresh study at the same moment with different settings cannot both write theirs
    and both go on. Any other process waits up to ``wait_s`` seconds for the creator to write it; a study still
    without one after that and without trials (its creator died in between) gets ``definition``.

    where, hint: the storage as shown to the user, and what to do instead, for the error message.

    Returns:
        (study, whether this call created it and wrote the definition).

    Raises:
        StorageError: the study was created with another definition (naming the settings that differ), or has trials
            but no definition.
    """
    definition = json.loads(json.dumps(definition, default=str))  # compared in the form it is stored in
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        deadline = time.monotonic() + wait_s
        while True:
            study = optuna.load_study(study_name=study_name, storage=storage)
            stored = study.user_attrs.get(DEFINITION_ATTR)
            if stored is not None:
                if stored != definition:
                    raise StorageError(f"the study {study_name!r} in {where} was created with other settings "
                                       f"({', '.join(differing_settings(stored, definition))}); {hint}")
                return study, False
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        if study.get_trials(deepcopy=False):
            raise StorageError(f"the study {study_name!r} has trials but no {DEFINITION_ATTR!r} attribute: it was "
                               f"not created by this tool")
    study.set_user_attr(DEFINITION_ATTR, definition)
    return study, True


def differing_settings(stored: dict, defining: dict, prefix: str = "") -> list[str]:
    """The dotted names of the settings whose values differ between two definitions (nested dicts key by key)."""
    out: list[str] = []
    for key in sorted(set(stored) | set(defining)):
        a, b = stored.get(key), defining.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def create_waiting(study: optuna.Study, params: dict, distributions: dict) -> None:
    """Queue one trial with fixed ``params`` for any worker to claim."""
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=params, distributions=distributions))


def claim(storage: RDBStorage, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """Switch the lowest-numbered WAITING trial of ``trials`` that nobody else took to RUNNING; None if none.

    A heartbeat is recorded *before* the switch: Optuna's stale-trial check skips RUNNING trials that have no
    heartbeat row at all, so a worker killed between the switch and its first beat would leave a trial that is never
    failed, and every other worker would wait for it forever. Beating first costs nothing when the claim is lost
    (the winner beats again at once).
    """
    for trial in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
        try:
            # FrozenTrial has no public trial-id accessor; the storage API is keyed by it.
            storage.record_heartbeat(trial._trial_id)
            if storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                storage.record_heartbeat(trial._trial_id)
                return storage.get_trial(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def duplicate_of(trial: FrozenTrial, same_key: list[FrozenTrial]) -> FrozenTrial | None:
    """The trial that ``trial`` duplicates among ``same_key`` (trials of the same key, read after the claim):
    a COMPLETE one, or a live (WAITING or RUNNING) one with a lower number. None if ``trial`` is the one to train."""
    for other in sorted(same_key, key=lambda t: t.number):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE or (
                other.state in (TrialState.WAITING, TrialState.RUNNING) and other.number < trial.number):
            return other
    return None


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials of dead workers (no heartbeat within the grace period); the retry callback re-queues them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a daemon thread while the ``with`` block runs."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a transient storage error must not kill the training; the next beat retries
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
