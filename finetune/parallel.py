"""Data-parallel fine-tuning jobs: rank 0 decides what to train, every rank trains it.

Under ``torchrun`` or ``horovodrun`` (engines of :mod:`bort.distributed`) rank 0 runs the job as in one process (one
run, the sweep's trials, Agora's configurations and oracle) and alone reads and writes the study, the rounds and the
model folders; before each training run it announces the run (its :class:`~finetune.pipeline.RunConfig` and, for
Agora, the grown training set) and the other ranks train it with rank 0, each on its share of every batch. At each dev
evaluation rank 0 also says whether the run stops there (a trial the study's pruner stopped), so that all ranks leave
it together. Separate workers (processes or machines sharing ``--storage``) still spread a sweep's trials.
"""

from __future__ import annotations

from bort.distributed import SingleProcess
from finetune.pipeline import run_once


class _StoppedByRankZero(Exception):
    """The run was stopped on rank 0 (e.g. a pruned trial); the other ranks leave it too."""


class ParallelRuns:
    """``run_once`` for every rank of ``engine``: call :meth:`run_once` on rank 0 and :meth:`follow` on the others,
    then :meth:`finish` on rank 0 (also after an error raised between runs) to release them."""

    def __init__(self, engine: SingleProcess) -> None:
        self.engine = engine
        self._training = False

    def run_once(self, config, train_examples=None, save: bool = True, on_evaluate=None, progress: bool = True,
                 checkpoint=None, pause_at: int = 0):
        """:func:`finetune.pipeline.run_once` on all ranks (called on rank 0; same arguments and result)."""
        if self.engine.world_size == 1:
            return run_once(config, train_examples, save, on_evaluate, progress, checkpoint=checkpoint,
                            pause_at=pause_at)
        self.engine.gather_object({"config": config, "train_examples": train_examples, "checkpoint": checkpoint,
                                   "pause_at": pause_at})

        def report(step: int, score: float) -> None:
            try:
                if on_evaluate is not None:
                    on_evaluate(step, score)
            except BaseException:
                self.engine.gather_object(True)
                self._training = False  # the others leave the run too: they are ready for the next announcement
                raise
            self.engine.gather_object(False)

        self._training = True
        result = run_once(config, train_examples, save, report, progress, engine=self.engine, checkpoint=checkpoint,
                          pause_at=pause_at)
        self._training = False
        return result

    def follow(self) -> int:
        """Ranks other than 0: train every run rank 0 announces until it finishes; returns the number of runs."""
        n = 0
        while (job := self.engine.gather_object(None)[0]) is not None:
            def stop_if_told(step: int, score: float) -> None:
                if self.engine.gather_object(None)[0]:
                    raise _StoppedByRankZero

            try:
                run_once(job["config"], job["train_examples"], save=False, on_evaluate=stop_if_told, progress=False,
                         engine=self.engine, checkpoint=job["checkpoint"], pause_at=job["pause_at"])
            except _StoppedByRankZero:
                pass
            n += 1
        return n

    def finish(self) -> None:
        """Rank 0: tell the other ranks there is nothing more to train. Skipped when rank 0 failed during a run: the
        others are then inside its collectives, and the launcher stops them when rank 0 exits with an error."""
        if self.engine.world_size > 1 and not self._training:
            self.engine.gather_object(None)
