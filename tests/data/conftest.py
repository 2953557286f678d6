"""Tokenizers for the data tests: the teacher's real BERT WordPiece, and a small RoBERTa-style byte-level BPE
trained here on BERT's sample text (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def bert_tokenizer(teacher_path: Path):
    return AutoTokenizer.from_pretrained(teacher_path)


@pytest.fixture(scope="session")
def bpe_tokenizer(bert_sample_text: Path):
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(bert_sample_text)], vocab_size=600, min_frequency=1,
              special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", pad_token="<pad>", mask_token="<mask>",
                                   unk_token="<unk>")


def reference_documents(path: Path) -> list[list[str]]:
    """Documents of a text file by the format's rules, written plainly for comparison: lists of stripped lines.

    A blank line or a `` = Title = `` line ends a document; in WikiText files (first non-blank line a title) only
    titles do; heading lines of any level are dropped.
    """
    lines = [raw.strip() for raw in path.read_text(encoding="utf-8").split("\n")]

    def level(line: str) -> int:
        n = 0
        while line.startswith("= ") and line.endswith(" ="):
            line, n = line[2:-2], n + 1
        return n if n and line and not line.startswith("=") else 0

    first = next(line for line in lines if line)
    wikitext = level(first) == 1
    docs: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        lv = level(line) if line else 0
        if (not line and not wikitext) or lv == 1:
            if current:
                docs.append(current)
            current = []
        elif line and lv == 0:
            current.append(line)
    if current:
        docs.append(current)
    return docs
