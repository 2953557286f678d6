"""The shard pipeline: workers and shards change nothing but the layout, resuming, datasets inputs, metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data.corpus import make_shard_config
from data.errors import DataError
from data.shards import SPLITS, TokenizerSpec, create_shards, open_split
from data.sources import is_hub_name
from tests.data.conftest import reference_documents


def build(files, tokenizer, folder: Path, workers=1, **options):
    options.setdefault("heldout_fraction", 0.1)
    config = make_shard_config(files, tokenizer, folder.parent / "cache", show_progress=False, **options)
    return create_shards(config, folder, num_workers=workers, show_progress=False)


def sequences(folder: Path, split: str) -> Counter:
    s = open_split(folder, split)
    return Counter((s.document(i), tuple(s.sequence(i).tolist())) for i in range(len(s)))


def test_workers_and_shards_change_only_the_layout(wikitext_files, bert_tokenizer, tmp_path):
    one = build(wikitext_files, bert_tokenizer, tmp_path / "one", workers=1, num_shards=1)
    many = build(wikitext_files, bert_tokenizer, tmp_path / "many", workers=2, num_shards=5, chunk_bytes=100_000)
    assert len(many["stats"]["shards"]) == 5
    assert all(sh["train"]["sequences"] > 0 for sh in many["stats"]["shards"])
    for split in SPLITS:
        a, b = sequences(tmp_path / "one", split), sequences(tmp_path / "many", split)
        assert a == b and sum(a.values()) == one["stats"]["splits"][split]["sequences"]
    for k in ("documents", "tokens", "sequences", "padding_fraction"):
        assert one["stats"][k] == many["stats"][k]


def test_shard_files_are_compact_and_consistent(bert_sample_text, bert_tokenizer, tmp_path):
    manifest = build([bert_sample_text], bert_tokenizer, tmp_path / "out", heldout_fraction=0.3)
    assert manifest["config"]["dtype"] == "uint16"
    ids = np.fromfile(tmp_path / "out" / "train-00000.ids", dtype=np.uint16)
    ends = np.fromfile(tmp_path / "out" / "train-00000.ends", dtype=np.int64)
    assert ends[-1] == len(ids) == manifest["stats"]["splits"]["train"]["tokens"]
    assert manifest["config"]["sources"][0]["path"] == str(bert_sample_text)
    spec = TokenizerSpec("big", "{}", 0, 1, 2, vocab_size=70_000)
    assert spec.dtype == np.uint32


def test_resume_after_kill_gives_identical_shards(wikitext_files, tmp_path):
    import subprocess
    import sys
    import time

    script = Path(__file__).resolve().parents[2] / "data" / "create_pretraining_data.py"
    args = [sys.executable, str(script), "--input", str(wikitext_files[0]), "--num-shards", "12",
            "--chunk-mib", "0.05", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--output-dir", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "shard-00001.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"], "the run finished before it could be killed"
    finished_before = {p.name: p.read_bytes() for p in killed.glob("shard-*.json")}
    from data.create_pretraining_data import main

    assert main([*args[2:], "--output-dir", str(killed)]) == 0
    clean = tmp_path / "clean"
    assert main([*args[2:], "--output-dir", str(clean)]) == 0
    names = sorted(p.name for p in clean.iterdir() if p.name != "manifest.json")
    assert names == sorted(p.name for p in killed.iterdir() if p.name != "manifest.json")
    for name in names:
        if name != "run_config.json":
            assert (clean / name).read_bytes() == (killed / name).read_bytes(), name
    for name, data in finished_before.items():  # finished shards were kept, not rebuilt
        assert (killed / name).read_bytes() == data
    a, b = (json.loads((d / "manifest.json").read_text())["stats"] for d in (killed, clean))
    assert a["shards"] == b["shards"] and a["tokens"] == b["tokens"]


def test_output_folder_of_another_configuration(bert_sample_text, bert_tokenizer, tmp_path):
    out = tmp_path / "out"
    build([bert_sample_text], bert_tokenizer, out, heldout_fraction=0.3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="holds shards of another configuration"):
        build([bert_sample_text], bert_tokenizer, out, heldout_fraction=0.3, max_seq_length=64)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_datasets_files_equal_the_text_file(bert_sample_text, bert_tokenizer, tmp_path, fmt):
    import datasets

    rows = bert_sample_text.read_text(encoding="utf-8").split("\n")
    if rows[-1] == "":
        rows.pop()
    path = tmp_path / f"sample.{fmt}"
    ds = datasets.Dataset.from_dict({"text": rows, "id": list(range(len(rows)))})
    ds.to_json(path) if fmt == "jsonl" else ds.to_parquet(path)
    build([bert_sample_text], bert_tokenizer, tmp_path / "txt", heldout_fraction=0.3)
    build([path], bert_tokenizer, tmp_path / "ds", heldout_fraction=0.3)
    for split in SPLITS:
        assert sequences(tmp_path / "txt", split) == sequences(tmp_path / "ds", split)
    with pytest.raises(DataError, match="no column 'body'"):
        build([path], bert_tokenizer, tmp_path / "ds2", text_column="body")


def test_hub_names_are_told_from_missing_files():
    assert is_hub_name("wikitext:wikitext-2-v1") and is_hub_name("bookcorpus") and is_hub_name("owner/name:cfg:test")
    for name in ("valid.txt", "./corpus", "/abs/file", "a/b/c", "corpus/*.txt", "name::"):
        assert not is_hub_name(name), name


def test_sentence_split_packs_tighter_and_keeps_tokens(wikitext_files, bert_tokenizer, tmp_path):
    lines = build(wikitext_files[:1], bert_tokenizer, tmp_path / "lines")
    sents = build(wikitext_files[:1], bert_tokenizer, tmp_path / "sents", sentence_split=True)
    assert sents["stats"]["units"] > 2 * lines["stats"]["units"]
    assert sents["stats"]["padding_fraction"] < 0.8 * lines["stats"]["padding_fraction"]
    docs = reference_documents(wikitext_files[0])
    got: dict[int, list[int]] = {}
    for split in SPLITS:
        s = open_split(tmp_path / "sents", split)
        for i in range(len(s)):
            got.setdefault(s.document(i), []).extend(s.sequence(i)[1:-1].tolist())
    for n in (0, len(docs) // 2, len(docs) - 1):
        ids = bert_tokenizer(docs[n], add_special_tokens=False)["input_ids"]
        assert got[n] == [t for x in ids for t in x]


def test_word_start_metadata_matches_wordpiece_continuations(bert_sample_text, bert_tokenizer, tmp_path):
    build([bert_sample_text], bert_tokenizer, tmp_path / "out", heldout_fraction=0.3, word_starts=True)
    s = open_split(tmp_path / "out", "train")
    continuations = 0
    for i in range(len(s)):
        tokens = bert_tokenizer.convert_ids_to_tokens(s.sequence(i).tolist())
        flags = s.word_start_flags(i).tolist()
        assert flags == [0 if t.startswith("##") else 1 for t in tokens]
        continuations += flags.count(0)
    assert continuations > 10
