"""Input names → local text files: plain files, globs, and Hugging Face `datasets` (hub names or local
Arrow/Parquet/JSON Lines files), the latter exported once to a text file so that one pipeline reads everything.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from data.errors import DataError
from data.files import atomic_path
from data.text import expand_path

# Local files read through `datasets` (by extension) and the `datasets` builder that reads them.
DATASET_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
ROW_MODES = ("lines", "documents")


def default_cache_dir() -> Path:
    """``$BORT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/bort`` or ``~/.cache/bort``."""
    env = os.environ.get("BORT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bort"


def is_hub_name(name: str) -> bool:
    """True for ``"name"``, ``"owner/name"``, ``"name:config"`` or ``"name:config:split"`` that is not a local path.

    A name with a file extension (``valid.txt``), a path prefix (``./``, ``/``, ``~``) or more than one ``/`` is
    taken as a (missing) local file instead, so that a typo in a file name gives "no such file", not a download.
    """
    if not name or glob.has_magic(name) or os.path.exists(name):
        return False
    if name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name:
        return False
    base = name.split(":")[0].rsplit("/", 1)[-1]
    return "." not in base and len(name.split(":")) <= 3 and all(name.split(":"))


def _export(dataset, target: Path, text_column: str, rows: str, label: str, show_progress: bool) -> Path:
    if text_column not in dataset.column_names:
        raise DataError(f"{label}: no column {text_column!r} (columns: {', '.join(dataset.column_names)})")
    if target.is_file():
        return target
    from tqdm.auto import tqdm

    sep = "\n\n" if rows == "documents" else "\n"
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for batch in tqdm(dataset.iter(batch_size=1000), desc=f"export {label}", disable=not show_progress,
                          total=(len(dataset) + 999) // 1000):
            for text in batch[text_column]:
                text = (text or "").rstrip("\n")
                f.write(text + sep)
    return target


def export_dataset(name: str, cache_dir: Path, text_column: str = "text", rows: str = "lines",
                   show_progress: bool = True) -> Path:
    """Write the text column of a `datasets` source to ``cache_dir/datasets/<fingerprint>.txt`` (once).

    Args:
        name: a local ``.jsonl``/``.json``/``.parquet``/``.arrow`` file, or a hub name ``name[:config[:split]]``
            (split ``train`` by default).
        text_column: the column holding the text.
        rows: ``"lines"`` (a row is a line: blank rows and headings separate documents, as in WikiText) or
            ``"documents"`` (a row is a document: a blank line is written after each).

    Raises:
        DataError: the dataset cannot be loaded or lacks the column.
    """
    if rows not in ROW_MODES:
        raise DataError(f"rows must be one of {ROW_MODES}, got {rows!r}")
    import datasets

    try:
        path = Path(name)
        if path.suffix in DATASET_FILE_BUILDERS and path.is_file():
            dataset = datasets.load_dataset(DATASET_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        else:
            repo, config, split = (name.split(":") + [None, None])[:3]
            dataset = datasets.load_dataset(repo, config, split=split or "train")
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        reason = f"{type(e).__name__}: {e}".replace("\n", " ")
        raise DataError(f"{name}: cannot load as a `datasets` dataset ({reason})") from None
    digest = hashlib.sha256(f"{dataset._fingerprint}|{text_column}|{rows}".encode()).hexdigest()[:32]
    return _export(dataset, cache_dir / "datasets" / f"{digest}.txt", text_column, rows, name, show_progress)


def resolve_inputs(paths: Sequence[str | os.PathLike] | str | os.PathLike, cache_dir: Path,
                   text_column: str = "text", rows: str = "lines", show_progress: bool = True) -> list[Path]:
    """Local text files for every input: files and globs as they are, `datasets` sources exported to text.

    Raises:
        DataError: a missing file, a glob matching nothing, a dataset that cannot be loaded.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DataError("no input files given")
    out: list[Path] = []
    for name in map(str, paths):
        dataset_file = Path(name).suffix in DATASET_FILE_BUILDERS and Path(name).is_file()
        if dataset_file or is_hub_name(name):
            out.append(export_dataset(name, cache_dir, text_column, rows, show_progress))
        else:
            out.extend(expand_path(name))
    return out
