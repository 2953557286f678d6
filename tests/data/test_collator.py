"""MaskingCollator: BERT's masking rates within binomial bounds, specials and padding untouched, seeding."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binom

from data.collator import MaskingCollator
from data.errors import DataError


def padded_items(tokenizer, texts, length):
    enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=length, padding="max_length",
                    return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]} for i in range(len(texts))]


@pytest.fixture(scope="module")
def items(bert_tokenizer, bert_sample_text):
    texts = [line for line in bert_sample_text.read_text(encoding="utf-8").splitlines() if line.strip()]
    return padded_items(bert_tokenizer, texts * 8, 64)


def within_binomial(count: int, n: int, p: float, alpha: float = 1e-6) -> bool:
    lo, hi = binom.ppf(alpha / 2, n, p), binom.isf(alpha / 2, n, p)
    return lo <= count <= hi


def test_masking_rates_within_binomial_bounds(bert_tokenizer, items):
    collate = MaskingCollator(bert_tokenizer, mlm_probability=0.15, seed=0)
    ids = torch.stack([it["input_ids"] for it in items])
    special = torch.isin(ids, torch.tensor(bert_tokenizer.all_special_ids))
    maskable = int((~special).sum())
    selected = replaced_by_mask = unchanged = 0
    for _ in range(5):
        batch = collate(items)
        chosen = batch["labels"] != -100
        assert not chosen[special].any(), "a special or padding token was selected"
        assert torch.equal(batch["labels"][chosen], ids[chosen])
        assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])
        assert torch.equal(batch["attention_mask"], torch.stack([it["attention_mask"] for it in items]))
        selected += int(chosen.sum())
        replaced_by_mask += int((batch["input_ids"][chosen] == bert_tokenizer.mask_token_id).sum())
        unchanged += int((batch["input_ids"][chosen] == ids[chosen]).sum())
    assert within_binomial(selected, 5 * maskable, 0.15)
    assert within_binomial(replaced_by_mask, selected, 0.8)
    # Unchanged: 10% kept plus the random draws that hit the original token (1 / vocabulary size of the 10%).
    assert within_binomial(unchanged, selected, 0.1 + 0.1 / len(bert_tokenizer))
    random_other = selected - replaced_by_mask - unchanged
    assert within_binomial(random_other, selected, 0.1 * (1 - 1 / len(bert_tokenizer)))


def test_same_seed_same_masks_other_seed_other_masks(bert_tokenizer, items):
    a = MaskingCollator(bert_tokenizer, seed=3)(items)
    b = MaskingCollator(bert_tokenizer, seed=3)(items)
    c = MaskingCollator(bert_tokenizer, seed=4)(items)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])
    collate = MaskingCollator(bert_tokenizer, seed=3)
    first, second = collate(items), collate(items)
    assert not torch.equal(first["labels"], second["labels"]), "masks must be drawn anew on every call (dynamic)"


def test_variable_length_items_are_padded(bert_tokenizer):
    texts = ["a short one", "a somewhat longer sentence with more words in it"]
    enc = bert_tokenizer(texts)
    batch = MaskingCollator(bert_tokenizer, seed=0)([{"input_ids": torch.tensor(x)} for x in enc["input_ids"]])
    n = max(len(x) for x in enc["input_ids"])
    assert batch["input_ids"].shape == (2, n) and batch["input_ids"].dtype == torch.int64
    assert batch["attention_mask"].tolist()[0] == [1] * len(enc["input_ids"][0]) + [0] * (n - len(enc["input_ids"][0]))
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_bad_arguments(bert_tokenizer, bpe_tokenizer):
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(DataError, match="mlm_probability"):
        MaskingCollator(bert_tokenizer, mlm_probability=1.5)
    bare = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(DataError, match="lacks a mask_token"):
        MaskingCollator(bare)


def test_whole_word_masking_selects_whole_words(bert_sample_text, bert_tokenizer, tmp_path):
    from data.corpus import load_corpus

    corpus = load_corpus([bert_sample_text], bert_tokenizer, max_seq_length=64, heldout_fraction=0.3,
                         word_starts=True, cache_dir=tmp_path, show_progress=False)
    items = [corpus.train[i] for i in range(len(corpus.train))] * 10
    batch = MaskingCollator(bert_tokenizer, seed=0, whole_word_mask=True)(items)
    chosen = batch["labels"] != -100
    starts = torch.stack([it["word_starts"] for it in items])
    ids = torch.stack([it["input_ids"] for it in items])
    tokens_in_words = continuation_checked = 0
    for row in range(len(items)):
        for t in range(1, ids.shape[1]):
            if starts[row, t] == 0 and ids[row, t] != bert_tokenizer.pad_token_id:
                assert chosen[row, t] == chosen[row, t - 1], "a word was masked in part"
                continuation_checked += 1
    assert continuation_checked > 100
    special = torch.isin(ids, torch.tensor(bert_tokenizer.all_special_ids))
    assert not chosen[special].any()
    word_starts = int(((starts == 1) & ~special).sum())
    chosen_words = int((chosen & (starts == 1)).sum())
    assert within_binomial(chosen_words, word_starts, 0.15)
    tokens_in_words = int(chosen.sum())
    as_mask = int((batch["input_ids"][chosen] == bert_tokenizer.mask_token_id).sum())
    assert within_binomial(as_mask, tokens_in_words, 0.8)
