"""Outputs that are whole or absent.

Every file or folder the tools write is first written under a temporary name beside its final one (the same file
system) and moved into place with one ``os.replace``, so a reader, a crash or a second worker never sees half of it.
Temporary names start with a dot and carry the process id: workers writing the same output do not clobber each
other's drafts, and listings that skip hidden names (checkpoints, study folders) never see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """``DIR/.STEM.KIND-PID.SUFFIX`` for ``DIR/STEM.SUFFIX`` (the suffix kept so writers that infer a format from
    it, like matplotlib's ``savefig``, still do)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{kind}-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; move it to ``path`` when the block ends, delete it if the block
    raises (``path`` then keeps its previous content). Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj, **dumps_kwargs) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically; ``dumps_kwargs`` go to ``json.dumps`` (e.g.
    ``default=str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, **dumps_kwargs) + "\n")


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``folder`` to fill; when the block ends it replaces ``folder`` (see
    :func:`replace_folder`), when the block raises it is deleted and ``folder`` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had our pid
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Put the complete folder ``tmp`` in place of ``folder``. An existing ``folder`` is renamed aside first and
    deleted last, so a crash leaves one whole folder (the old one possibly under ``.NAME.old-PID``), never a mix."""
    tmp, folder = Path(tmp), Path(folder)
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = temporary_sibling(folder, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old)


def copy_folder(source: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Copy the folder ``source`` to ``folder`` atomically (``folder`` is never half-copied)."""
    with atomic_folder(folder) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
