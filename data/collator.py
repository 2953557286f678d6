"""Dynamic masking for masked language modelling, on the fly in the DataLoader (Devlin et al. 2019, §3.1 Task #1;
RoBERTa's dynamic masking, Liu et al. 2019, §4.1).

:class:`MaskingCollator` wraps transformers' ``DataCollatorForLanguageModeling`` (its masking rule and its seeded
generator) and feeds it the special-token mask computed from the ids, so padding and ``[CLS]``/``[SEP]`` are never
masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DataCollatorForLanguageModeling

from data.errors import DataError


class MaskingCollator:
    """Collate items of :class:`data.corpus.PackedSequences` into a masked-LM batch.

    Each non-special, non-padding token is selected with probability ``mlm_probability``; a selected token becomes
    the mask token with probability 0.8, a uniformly random token of the vocabulary with 0.1, and stays unchanged
    with 0.1. ``labels`` hold the original id at selected positions and -100 elsewhere.

    Seeding: the same ``seed`` gives the same masks for the same sequence of calls. Inside DataLoader worker
    ``w`` the generator is reseeded with ``seed + w`` (transformers' rule), so workers draw different masks; give
    each data-parallel rank its own seed (e.g. ``seed + 1000 * rank``).

    Whole-word masking (``whole_word_mask=True``; Devlin et al., BERT repository's "Whole Word Masking" update):
    items must carry ``word_starts`` (shards built with ``word_starts=True``); each word is selected with
    probability ``mlm_probability`` and then all its tokens are, each getting the 80/10/10 treatment.

    Args:
        tokenizer: a transformers tokenizer with mask and pad tokens.
        mlm_probability: selection probability per maskable token (or word), in (0, 1).
        seed: None uses torch's global generator.
        whole_word_mask: select whole words from the items' ``word_starts``.

    Call:
        items: a list of mappings with ``input_ids`` (LongTensor (seq_len,)) and optionally ``attention_mask``;
            items of different lengths are right-padded with the pad id.

    Returns:
        ``{"input_ids", "attention_mask", "labels"}``, each LongTensor (batch, seq_len).

    Raises:
        DataError: the tokenizer lacks a mask or pad token, or ``mlm_probability`` is outside (0, 1).
    """

    def __init__(self, tokenizer: Any, mlm_probability: float = 0.15, seed: int | None = 0,
                 whole_word_mask: bool = False):
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        for t in ("mask_token", "pad_token"):
            if getattr(tokenizer, f"{t}_id", None) is None:
                raise DataError(f"tokenizer {name!r}: lacks a {t} needed for masked language modelling")
        if not 0.0 < mlm_probability < 1.0:
            raise DataError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self._lm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
        self._pid = os.getpid()
        self.whole_word_mask = whole_word_mask
        self.mlm_probability = mlm_probability

    def __call__(self, items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in items]
        if "attention_mask" in items[0]:
            masks = [torch.as_tensor(it["attention_mask"], dtype=torch.long) for it in items]
        else:
            masks = [torch.ones_like(x) for x in ids]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=self.pad_token_id)
        attention_mask = pad_sequence(masks, batch_first=True, padding_value=0)
        special = torch.isin(input_ids, self.special_ids) | (attention_mask == 0)
        lm = self._lm
        if os.getpid() != self._pid:  # copied into a DataLoader worker: derive that worker's generator
            self._pid, lm.generator = os.getpid(), None
        if lm.seed is not None and lm.generator is None:
            lm.create_rng()
        if self.whole_word_mask:
            if "word_starts" not in items[0]:
                raise DataError("whole_word_mask=True needs items with 'word_starts' (build shards with word_starts)")
            starts = pad_sequence([torch.as_tensor(it["word_starts"], dtype=torch.long) for it in items],
                                  batch_first=True, padding_value=1)
            masked, labels = self._mask_whole_words(input_ids, starts, special, lm.generator)
        else:
            masked, labels = lm.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}

    def _mask_whole_words(self, input_ids: torch.Tensor, starts: torch.Tensor, special: torch.Tensor,
                          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Select words (a start and its continuation tokens) with ``mlm_probability``; 80/10/10 per token."""
        word = torch.cumsum(starts, dim=1)  # (B, L): word number of every token, 1-based
        draw = torch.rand(input_ids.shape, generator=generator)
        chosen_start = (draw < self.mlm_probability) & (starts == 1) & ~special
        per_word = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 2, dtype=torch.long)
        per_word.scatter_add_(1, word, chosen_start.long())
        selected = (per_word.gather(1, word) > 0) & ~special
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        r = torch.rand(input_ids.shape, generator=generator)
        random_ids = torch.randint(len(self.tokenizer), input_ids.shape, generator=generator)
        masked = input_ids.clone()
        masked[selected & (r < 0.8)] = self.tokenizer.mask_token_id
        use_random = selected & (r >= 0.8) & (r < 0.9)
        masked[use_random] = random_ids[use_random]
        return masked, labels
