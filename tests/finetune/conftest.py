"""Fixtures for the fine-tuning tests: the real GLUE and SuperGLUE folders and small task files made from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.tasks import get_task


@pytest.fixture(scope="session")
def glue_dir(shared_data: Path) -> Path:
    return shared_data / "glue"


@pytest.fixture(scope="session")
def superglue_dir(shared_data: Path) -> Path:
    return shared_data / "superglue"


@pytest.fixture(scope="session")
def small_sst2(tmp_path_factory, glue_dir):
    """48 real SST-2 training rows (24 per class) in the official layout; dev = the first 24 of them, so that a
    tiny oracle can pass the 2/3 bar by memorising."""
    rows = get_task("SST-2").read(glue_dir, "train")[:400]
    pos = [e for e in rows if e.label == 1][:24]
    neg = [e for e in rows if e.label == 0][:24]
    mixed = [x for pair in zip(pos, neg) for x in pair]
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    for name, part in (("train.tsv", mixed), ("dev.tsv", mixed[:24])):
        (root / "SST-2" / name).write_text(
            "sentence\tlabel\n" + "".join(f"{e.texts[0]}\t{e.label}\n" for e in part), encoding="utf-8")
    return root
