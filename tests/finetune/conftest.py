"""Fixtures for the fine-tuning tests: a tiny BERT built from a config with the real teacher's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, teacher_path: Path) -> Path:
    """A 2-layer, width-32 ``BertModel`` folder (no heads, like the search's output) with the teacher's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)  # the same tiny model in every test session
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def glue_dir(shared_data: Path) -> Path:
    return shared_data / "glue"


@pytest.fixture(scope="session")
def superglue_dir(shared_data: Path) -> Path:
    return shared_data / "superglue"
