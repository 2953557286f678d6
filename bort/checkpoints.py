"""Training checkpoints: atomic folders ``step-NNNNNNNN/`` under one root, the newest k kept.

A checkpoint is written under a temporary name in the same root and renamed with ``os.replace`` once complete, so a
run killed while saving leaves the previous checkpoints intact and no partial folder under a final name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from data.files import atomic_folder

STATE_FILE = "training_state.pt"
CONFIG_FILE = "pretraining_config.json"
_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or belongs to another run."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint folder (``step-NNNNNNNN``).

    Raises:
        CheckpointError: the folder's name is not a checkpoint's.
    """
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint folder (step-NNNNNNNN)")
    return int(match.group(1))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (an empty list when ``root`` does not exist)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def save_checkpoint(root: str | os.PathLike, step: int, state: dict, config: dict, *, keep: int,
                    config_file: str = CONFIG_FILE) -> Path:
    """Write ``state`` (torch-serialisable) and ``config`` (JSON, as ``config_file``) as checkpoint ``step``; delete
    all but the newest ``keep``. Returns the checkpoint folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    with atomic_folder(final) as tmp:  # the same step saved again after a resume replaces the old copy
        torch.save(state, tmp / STATE_FILE)
        (tmp / config_file).write_text(json.dumps(config, indent=2))
    for stale in list_checkpoints(root)[:-keep]:
        shutil.rmtree(stale)
    return final


def resolve_checkpoint(resume: str, root: str | os.PathLike) -> Path:
    """``"last"`` → the newest checkpoint under ``root``; otherwise the named folder.

    Raises:
        CheckpointError: no checkpoint under ``root``, or the folder holds no ``training_state.pt``.
    """
    if resume == "last":
        found = list_checkpoints(root)
        if not found:
            raise CheckpointError(f"--resume last: no checkpoint in {root}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE})")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The state saved by :func:`save_checkpoint` (tensors on CPU).

    Raises:
        CheckpointError: the file cannot be read.
    """
    try:
        return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read {STATE_FILE} ({str(exc).splitlines()[0]})") from exc


def rng_state() -> dict:
    """The generators a training step draws from (torch's CPU generator for dropout and the data loader's seed,
    Python's, and CUDA's where present), for a checkpoint; readable with ``weights_only=True``."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
