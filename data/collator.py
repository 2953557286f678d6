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

    Args:
        tokenizer: a transformers tokenizer with mask and pad tokens.
        mlm_probability: selection probability per maskable token, in (0, 1).
        seed: None uses torch's global generator.

    Call:
        items: a list of mappings with ``input_ids`` (LongTensor (seq_len,)) and optionally ``attention_mask``;
            items of different lengths are right-padded with the pad id.

    Returns:
        ``{"input_ids", "attention_mask", "labels"}``, each LongTensor (batch, seq_len).

    Raises:
        DataError: the tokenizer lacks a mask or pad token, or ``mlm_probability`` is outside (0, 1).
    """

    def __init__(self, tokenizer: Any, mlm_probability: float = 0.15, seed: int | None = 0):
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
        masked, labels = lm.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
