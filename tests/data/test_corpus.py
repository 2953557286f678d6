"""load_corpus on the real WikiText-2 and BERT sample files: packing, splits, cache, DataLoader, bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data.corpus import RankSampler, load_corpus
from data.errors import DataError
from tests.data.conftest import reference_documents


def content_by_document(corpus, cls_id, sep_id, max_len):
    """Concatenated content tokens of every document over both splits; checks framing and lengths on the way."""
    docs: dict[int, list[int]] = {}
    for ds in (corpus.train, corpus.heldout):
        for i in range(len(ds)):
            item = ds[i]
            n = int(item["attention_mask"].sum())
            ids = item["input_ids"][:n].tolist()
            assert item["input_ids"].shape == (max_len,) and item["input_ids"].dtype == torch.long
            assert 3 <= n <= max_len and ids[0] == cls_id and ids[-1] == sep_id
            assert cls_id not in ids[1:-1] and sep_id not in ids[1:-1]
            docs.setdefault(ds.document(i), []).extend(ids[1:-1])
    return docs


@pytest.mark.parametrize("max_len", [128, 16])
def test_packing_loses_no_token_and_respects_documents(wikitext_files, bert_sample_text, bert_tokenizer, tmp_path,
                                                       max_len):
    files = [*wikitext_files, bert_sample_text] if max_len == 128 else [wikitext_files[1], bert_sample_text]
    corpus = load_corpus(files, bert_tokenizer, max_seq_length=max_len, cache_dir=tmp_path, show_progress=False)
    expected = [doc for f in files for doc in reference_documents(f)]
    got = content_by_document(corpus, bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id, max_len)
    assert sorted(got) == list(range(len(expected)))
    long_lines = 0
    for number, lines in enumerate(expected):
        ids = bert_tokenizer(lines, add_special_tokens=False, truncation=False, padding=False)["input_ids"]
        assert got[number] == [t for line in ids for t in line], f"document {number}"
        long_lines += sum(len(x) > max_len - 2 for x in ids)
    assert corpus.manifest["stats"]["split_units"] == long_lines
    assert corpus.stats["documents"] == len(expected)
    assert corpus.stats["tokens"] == sum(len(v) for v in got.values())
    assert corpus.stats["sequences"] == len(corpus.train) + len(corpus.heldout)
    real = sum(len(v) + 2 for v in got.values()) + 0  # content + framing of each sequence, counted below
    framed = sum(int(ds[i]["attention_mask"].sum()) for ds in (corpus.train, corpus.heldout) for i in range(len(ds)))
    assert real <= framed
    assert corpus.stats["padding_fraction"] == pytest.approx(1 - framed / (corpus.stats["sequences"] * max_len))


def test_packing_fills_sequences_with_whole_lines(wikitext_files, bert_sample_text, bert_tokenizer, tmp_path):
    """Greedy packing: a sequence ends on a line boundary (or is full), and only when the next line does not fit."""
    max_len = 64
    cap = max_len - 2
    files = [bert_sample_text, wikitext_files[0]]
    corpus = load_corpus(files, bert_tokenizer, max_seq_length=max_len, cache_dir=tmp_path, show_progress=False)
    docs = [doc for f in files for doc in reference_documents(f)]
    checked = 0
    lengths_of = {}
    for ds in (corpus.train, corpus.heldout):
        position: dict[int, int] = {}
        for i in range(len(ds)):
            doc = ds.document(i)
            if doc not in lengths_of:
                lengths = [len(x) for x in bert_tokenizer(docs[doc], add_special_tokens=False)["input_ids"]]
                lengths_of[doc] = (lengths, list(itertools.accumulate(lengths)))
            lengths, ends = lengths_of[doc]
            start = position.get(doc, 0)
            end = position[doc] = start + int(ds[i]["attention_mask"].sum()) - 2
            if end == ends[-1]:
                continue  # the document's last sequence
            assert end in ends or end - start == cap
            if end in ends:
                following = lengths[ends.index(end) + 1]
                assert following > cap - (end - start) or end - start == cap
                checked += 1
    assert checked > 100


def test_roberta_bpe_round_trip(bert_sample_text, bpe_tokenizer, tmp_path):
    """Each short sequence equals the tokenizer's own framed output for the text of its lines."""
    corpus = load_corpus([bert_sample_text], bpe_tokenizer, max_seq_length=512, heldout_fraction=0.3,
                         cache_dir=tmp_path, show_progress=False)
    docs = reference_documents(bert_sample_text)
    got = content_by_document(corpus, bpe_tokenizer.cls_token_id, bpe_tokenizer.sep_token_id, 512)
    for number, lines in enumerate(docs):
        ids = bpe_tokenizer(lines, add_special_tokens=False)["input_ids"]
        assert got[number] == [t for line in ids for t in line]
    # A one-line sequence is exactly what the tokenizer frames itself.
    one_line = bpe_tokenizer(docs[0][0])["input_ids"]
    short = load_corpus([bert_sample_text], bpe_tokenizer, max_seq_length=len(one_line), heldout_fraction=0.3,
                        cache_dir=tmp_path, show_progress=False)
    split = short.train if short.train.document(0) == 0 else short.heldout
    assert split[0]["input_ids"].tolist() == one_line


def test_heldout_split_by_document(wikitext_files, bert_tokenizer, tmp_path):
    fraction = 0.1
    a = load_corpus(wikitext_files, bert_tokenizer, heldout_fraction=fraction, seed=1, cache_dir=tmp_path,
                    show_progress=False)
    train_docs = {a.train.document(i) for i in range(len(a.train))}
    held_docs = {a.heldout.document(i) for i in range(len(a.heldout))}
    assert not train_docs & held_docs
    n = a.stats["documents"]
    assert len(held_docs) == a.stats["heldout"]["documents"] == round(fraction * n)
    assert len(train_docs) == a.stats["train"]["documents"] == n - round(fraction * n)
    b = load_corpus(wikitext_files, bert_tokenizer, heldout_fraction=fraction, seed=2, cache_dir=tmp_path,
                    show_progress=False)
    assert {b.heldout.document(i) for i in range(len(b.heldout))} != held_docs


def test_cache_hit_and_invalidation(wikitext_files, bert_sample_text, bert_tokenizer, bpe_tokenizer, tmp_path):
    text = tmp_path / "text.txt"
    shutil.copy(bert_sample_text, text)
    cache = tmp_path / "cache"
    kw = dict(heldout_fraction=0.3, cache_dir=cache, show_progress=False)
    first = load_corpus([text], bert_tokenizer, **kw)
    assert not first.cache_hit and (first.cache_path / "manifest.json").is_file()
    start = time.perf_counter()
    second = load_corpus([text], bert_tokenizer, **kw)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert time.perf_counter() - start < 5.0
    assert [second.train[i]["input_ids"].tolist() for i in range(len(second.train))] == \
        [first.train[i]["input_ids"].tolist() for i in range(len(first.train))]
    # Same content under another name: still a hit (the key is the content, not the path).
    moved = tmp_path / "moved.txt"
    shutil.copy(text, moved)
    assert load_corpus([moved], bert_tokenizer, **kw).cache_hit
    # Content, tokenizer and length each change the key.
    with open(text, "a", encoding="utf-8") as f:
        f.write("\nOne more document.\n")
    changed = load_corpus([text], bert_tokenizer, **kw)
    assert not changed.cache_hit and changed.cache_path != first.cache_path
    assert changed.stats["documents"] == first.stats["documents"] + 1
    assert not load_corpus([moved], bpe_tokenizer, **kw).cache_hit
    memo = json.loads((cache / "file-hashes.json").read_text())
    assert hashlib.sha256(moved.read_bytes()).hexdigest() in memo.values()
    assert not load_corpus([moved], bert_tokenizer, max_seq_length=64, **kw).cache_hit
    assert load_corpus([moved], bert_tokenizer, max_seq_length=64, **kw).cache_hit


def test_default_wikitext_reload_is_fast(wikitext_files, bert_tokenizer, tmp_path):
    load_corpus(wikitext_files, bert_tokenizer, cache_dir=tmp_path, show_progress=False)
    start = time.perf_counter()
    corpus = load_corpus(wikitext_files, bert_tokenizer, cache_dir=tmp_path, show_progress=False)
    assert corpus.cache_hit and time.perf_counter() - start < 3.0
    assert corpus.stats["train"]["sequences"] > 10 * corpus.stats["heldout"]["sequences"] > 0


def test_dataloader_workers_and_ranks_cover_each_sequence_once(bert_sample_text, bert_tokenizer, tmp_path):
    corpus = load_corpus([bert_sample_text], bert_tokenizer, max_seq_length=32, heldout_fraction=0.3,
                         cache_dir=tmp_path, show_progress=False)
    ds = corpus.train
    everything = Counter(tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds)))
    world = 3
    seen: Counter = Counter()
    for rank in range(world):
        sampler = RankSampler(len(ds), rank=rank, world_size=world, seed=5)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
        for batch in loader:
            seen.update(tuple(row) for row in batch["input_ids"].tolist())
    assert seen == everything
    lengths = [len(RankSampler(len(ds), r, world)) for r in range(world)]
    assert sum(lengths) == len(ds) and max(lengths) - min(lengths) <= 1


# ---------------------------------------------------------------------------------------------------- bad input


def assert_clean(cache: Path) -> None:
    """No shard folder (complete or not) was left behind by a failed call."""
    assert not cache.exists() or not any(p.name.startswith("corpus-") for p in cache.iterdir())


def test_missing_file_and_empty_glob(bert_tokenizer, tmp_path):
    with pytest.raises(DataError, match="nothing.txt: no such file"):
        load_corpus([tmp_path / "nothing.txt"], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False)
    with pytest.raises(DataError, match=r"\*.txt: the pattern matches no file"):
        load_corpus([str(tmp_path / "*.txt")], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False)
    assert_clean(tmp_path / "c")


def test_empty_corpus(bert_tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n = Title = \n\n")
    with pytest.raises(DataError, match="empty.txt: no text"):
        load_corpus([empty], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False)
    assert_clean(tmp_path / "c")


def test_invalid_utf8_names_file_and_line(bert_sample_text, bert_tokenizer, tmp_path):
    lines = bert_sample_text.read_bytes().split(b"\n")
    lines[6] = lines[6] + b" caf\xe9"
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"latin1.txt:7: not valid UTF-8"):
        load_corpus([bad], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False, heldout_fraction=0.3)
    assert_clean(tmp_path / "c")
    with pytest.warns(UserWarning, match="replaced 1 invalid"):
        corpus = load_corpus([bad], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False,
                             heldout_fraction=0.3, encoding_errors="replace")
    assert corpus.stats["replaced_bytes"] == 1


def test_invalid_utf8_line_number_in_a_later_chunk(wikitext_files, bert_tokenizer, tmp_path):
    lines = wikitext_files[0].read_bytes().split(b"\n")
    lines[3000] = b"\xff\xfe" + lines[3000]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"bad.txt:3001: not valid UTF-8 \(byte 0xff at column 1\)"):
        load_corpus([bad], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False, chunk_bytes=50_000)


def test_binary_file_refused_even_with_replace(bert_tokenizer, tmp_path):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(torch.randint(0, 256, (100_000,), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(DataError, match="weights.bin: looks like a binary file"):
        load_corpus([binary], bert_tokenizer, cache_dir=tmp_path / "c", show_progress=False,
                    encoding_errors="replace")
    assert_clean(tmp_path / "c")


def test_tokenizer_without_special_tokens(bert_sample_text, bpe_tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer.backend_tokenizer)
    with pytest.raises(DataError, match="lacks the special token"):
        load_corpus([bert_sample_text], bare, cache_dir=tmp_path / "c", show_progress=False)
    assert_clean(tmp_path / "c")


@pytest.mark.parametrize("fraction, message", [(0.0, "must be in"), (1.0, "must be in"),
                                               (0.01, "holds out no document"),
                                               (0.9, "holds no tokens|leaves no training")])
def test_heldout_fraction_leaving_an_empty_split(bert_sample_text, bert_tokenizer, tmp_path, fraction, message):
    with pytest.raises(DataError, match=message):
        load_corpus([bert_sample_text], bert_tokenizer, heldout_fraction=fraction, cache_dir=tmp_path / "c",
                    show_progress=False)
    assert_clean(tmp_path / "c")


def test_masking_collator_on_corpus_batches(wikitext_files, bert_tokenizer, tmp_path):
    from data.collator import MaskingCollator

    corpus = load_corpus(wikitext_files, bert_tokenizer, cache_dir=tmp_path, show_progress=False)
    items = [corpus.train[i] for i in range(len(corpus.train))]
    batch = MaskingCollator(bert_tokenizer, seed=0)(items)
    assert batch["input_ids"].shape == batch["labels"].shape == (len(items), 128)
    assert math.isclose(float((batch["labels"] != -100).sum() / batch["attention_mask"].sum()), 0.15, abs_tol=0.01)
