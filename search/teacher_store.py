"""The teacher's distillation targets on the search's batches, computed once per machine and shared through files.

Every candidate of a search trains and is evaluated on the same batches, and the teacher's targets on them (for the
relation loss: Q-Q, K-K, V-V relation probabilities) do not depend on the student. One worker computes them once
(:class:`bort.training.TeacherOutputs`); with several workers on one machine each would repeat that pass, which on a
CPU costs more than training a small candidate. Here the workers split the pass instead: each takes the batches no
other worker is computing (a non-blocking ``flock`` per batch), writes each result to a file (written under a
temporary name, then renamed) and then reads the others' files, memory-mapped, so the page cache holds one copy for
all workers. A worker that dies mid-batch releases its lock; another then computes that batch.

The folder is named by a digest of the teacher, the loss's preparation and the batches' contents, so files of other
settings are never read. It lives in the search's output folder (``teacher_targets/``) and is deleted when the
search has finished (it is recomputed if needed later).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from bort.distill import DistillOutputs
from bort.training import TeacherOutputs
from search.report import file_lock

Batch = dict[str, torch.Tensor]


def targets_digest(teacher_name: str, teacher_config: dict, settings: dict, batches: Sequence[Batch]) -> str:
    """16 hex digits identifying the teacher, the target preparation ``settings`` and every batch's tensors."""
    h = hashlib.sha256(json.dumps([teacher_name, teacher_config, settings, torch.__version__], sort_keys=True,
                                  default=str).encode())
    for batch in batches:
        for name in sorted(batch):
            h.update(name.encode())
            h.update(batch[name].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class SharedTeacherOutputs(TeacherOutputs):
    """:class:`TeacherOutputs` backed by one file per batch in ``folder``, shared by the processes of one machine.

    Keys are ``(prefix, index)`` as used by :func:`bort.training.distill` and :func:`bort.training.evaluate`.
    """

    def __init__(self, teacher, loss_fn, folder: Path, *, layer: int = -1, max_bytes: int = 4 << 30) -> None:
        super().__init__(teacher, loss_fn, layer=layer, max_bytes=max_bytes)
        self.folder = Path(folder)
        self.computed = 0  # batches this process computed (the others' it read)
        self.filled = False  # fill() has run in this process

    def _path(self, key: tuple[str, int]) -> Path:
        prefix, index = key
        return self.folder / f"{prefix}-{index:05d}.pt"

    def miss(self, key: tuple[str, int], batch: Batch) -> DistillOutputs:
        out = self._load(key)
        return out if out is not None else self._compute_and_store(key, batch)

    def fill(self, keyed_batches: Sequence[tuple[tuple[str, int], Batch]]) -> None:
        """Make sure every batch's targets are on disk, computing this process's share.

        First pass: compute each batch whose file is missing and whose lock no other process holds. Second pass: for
        the batches others were computing, wait for their lock and compute any that is still missing (its worker
        died)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        busy = []
        for key, batch in keyed_batches:
            if self._path(key).is_file():
                continue
            with file_lock(self._lock_path(key), wait=False) as held:
                if not held:
                    busy.append((key, batch))
                elif not self._path(key).is_file():
                    self._compute_and_store(key, batch)
        for key, batch in busy:
            with file_lock(self._lock_path(key)):
                if not self._path(key).is_file():
                    self._compute_and_store(key, batch)
        self.filled = True

    def remove(self) -> None:
        """Delete the folder (processes that mapped its files keep reading them; later misses are recomputed)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # teacher_targets/, unless another digest's folder is in it
        except OSError:
            pass

    def _lock_path(self, key: tuple[str, int]) -> Path:
        path = self._path(key)
        return path.with_name(f".{path.stem}.lock")

    def _compute_and_store(self, key: tuple[str, int], batch: Batch) -> DistillOutputs:
        out = self.compute(batch)
        self.computed += 1
        if self.folder.is_dir():  # not after remove(): a finished search leaves nothing behind
            path = self._path(key)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                torch.save({"qkv": list(out.qkv) if out.qkv else None, "hidden": out.hidden, "logits": out.logits,
                            "relations": [list(pair) for pair in out.relations] if out.relations else None}, tmp)
                os.replace(tmp, path)
            except FileNotFoundError:  # the folder was removed meanwhile by a worker that saw the search finish
                pass
        return out

    def _load(self, key: tuple[str, int]) -> DistillOutputs | None:
        try:
            stored = torch.load(self._path(key), mmap=True, weights_only=True)
        except FileNotFoundError:
            return None
        relations = [tuple(pair) for pair in stored["relations"]] if stored["relations"] is not None else None
        qkv = tuple(stored["qkv"]) if stored["qkv"] is not None else None
        return DistillOutputs(qkv=qkv, hidden=stored["hidden"], logits=stored["logits"], relations=relations)
