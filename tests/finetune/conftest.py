"""Fixtures for the fine-tuning tests: the real GLUE and SuperGLUE folders and small task files made from them."""

from __future__ import annotations

import json
import re
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


def _record_from_passage(passage: dict, n_entities: int = 5) -> dict | None:
    """A ReCoRD row in the official format made from a real passage: its first capitalised words after a sentence's
    start are the entities, and each later sentence holding exactly one of them is a query with it as the answer."""
    text = passage["text"]
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    names = list(dict.fromkeys(w for s in sentences for w in re.findall(r"(?<=\s)[A-Z][a-z]{2,}\b", s)))[:n_entities]
    entities = [{"start": m.start(), "end": m.end() - 1} for n in names for m in re.finditer(rf"\b{n}\b", text)]
    qas = []
    for s in sentences[1:]:
        hits = [n for n in names if re.search(rf"\b{n}\b", s)]
        if len(hits) == 1:
            qas.append({"query": re.sub(rf"\b{hits[0]}\b", "@placeholder", s), "idx": len(qas),
                        "answers": [{"text": hits[0]}]})
    return {"passage": {"text": text, "entities": entities}, "qas": qas} if len(names) >= 3 and qas else None


@pytest.fixture(scope="session")
def small_superglue(tmp_path_factory, superglue_dir):
    """COPA, MultiRC and ReCoRD folders in the official format whose training file is also the dev file (so that a
    tiny oracle passes 2/3 by memorising): COPA's first 16 real dev rows; MultiRC's first real passage with its
    first four questions; ReCoRD rows made from MultiRC's second and third real passages
    (:func:`_record_from_passage`)."""
    root = tmp_path_factory.mktemp("superglue")
    multirc = [json.loads(line) for line in (superglue_dir / "MultiRC" / "val.jsonl").read_text("utf-8").splitlines()]
    first = multirc[0]
    first = {**first, "passage": {**first["passage"], "questions": first["passage"]["questions"][:4]}}
    record = [{"source": "MultiRC", "idx": i, **r} for i, p in enumerate(multirc[1:3])
              if (r := _record_from_passage(p["passage"]))]
    rows = {"COPA": (superglue_dir / "COPA" / "val.jsonl").read_text("utf-8").splitlines()[:16],
            "MultiRC": [json.dumps(first)], "ReCoRD": [json.dumps(r) for r in record]}
    for name, lines in rows.items():
        (root / name).mkdir()
        for file in ("train.jsonl", "val.jsonl"):
            (root / name / file).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root
