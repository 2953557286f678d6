"""Where default inputs come from when the user names none.

The project ships no data. When a user passes nothing, the defaults resolve, in order, to:

1. the folder named by the environment variable ``BORT_DATA_ROOT``;
2. ``../shared/data`` next to the project root (the layout of this project's development checkouts and CI);
3. the Hugging Face hub equivalents (a hub model name, a ``datasets`` name), loaded by the real loading code.

Every entry point calls these functions only for options the user left unset.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Hub equivalents of the shared files, used when no local copy exists.
HUB_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
# `datasets` name:configuration:split of the same text as the local WikiText-2 files (tokenized v1, with <unk>)
HUB_CORPUS = ("Salesforce/wikitext:wikitext-2-v1:validation", "Salesforce/wikitext:wikitext-2-v1:test")


def data_root() -> Path | None:
    """The local data folder, or None when neither ``BORT_DATA_ROOT`` nor ``../shared/data`` exists."""
    env = os.environ.get("BORT_DATA_ROOT")
    if env:
        return Path(env)
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def default_teacher() -> str:
    """A local teacher folder (all-MiniLM-L6-v2) if present, else its hub name."""
    root = data_root()
    if root is not None and (root / "teacher" / "all-MiniLM-L6-v2" / "config.json").is_file():
        return str(root / "teacher" / "all-MiniLM-L6-v2")
    return HUB_TEACHER


def default_corpus() -> list[str]:
    """Local WikiText-2 validation and test files if present, else the same splits by their hub dataset names."""
    root = data_root()
    if root is not None:
        folder = root / "corpus" / "wikitext-2"
        files = [folder / "valid.txt", folder / "test.txt"]
        if all(f.is_file() for f in files):
            return [str(f) for f in files]
    return list(HUB_CORPUS)


def default_glue_dir() -> str | None:
    """The local GLUE folder (official download layout) or None."""
    root = data_root()
    return str(root / "glue") if root is not None and (root / "glue").is_dir() else None


def default_superglue_dir() -> str | None:
    """The local SuperGLUE folder (official JSONL layout) or None."""
    root = data_root()
    return str(root / "superglue") if root is not None and (root / "superglue").is_dir() else None
