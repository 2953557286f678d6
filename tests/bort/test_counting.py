import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig, RobertaConfig

from bort.architecture import Architecture
from bort.counting import count_parameters, flops_per_sequence


def random_architectures(n, seed=0):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        heads = rng.choice([1, 2, 3, 4, 6, 8])
        out.append(Architecture(rng.randint(1, 4), heads, heads * rng.choice([4, 8, 12, 16]), rng.randint(8, 200)))
    return out


TEACHERS = [
    BertConfig(vocab_size=997, max_position_embeddings=80, type_vocab_size=2),
    RobertaConfig(vocab_size=1013, max_position_embeddings=70, type_vocab_size=1, pad_token_id=1),
    BertConfig(vocab_size=500, max_position_embeddings=64, tie_word_embeddings=False),
]


@pytest.mark.parametrize("teacher", TEACHERS, ids=["bert", "roberta", "bert-untied"])
@pytest.mark.parametrize("mlm_head", [False, True])
def test_closed_form_equals_built_model(teacher, mlm_head):
    for arch in random_architectures(12, seed=hash((teacher.model_type, mlm_head)) % 1000):
        config = arch.to_config(teacher)
        model = (AutoModelForMaskedLM if mlm_head else AutoModel).from_config(config)
        counted = count_parameters(arch, teacher, pooler=not mlm_head, mlm_head=mlm_head)
        assert counted.total == sum(p.numel() for p in model.parameters()), arch
        embeddings = sum(p.numel() for p in model.base_model.embeddings.parameters())
        assert counted.embeddings == embeddings


@pytest.mark.parametrize("seq_len", [16, 64])
def test_analytic_flops_match_flop_counter(seq_len):
    teacher = BertConfig(vocab_size=300, max_position_embeddings=128)
    for arch in random_architectures(15, seed=seq_len):
        config = arch.to_config(teacher)
        config._attn_implementation = "eager"
        model = AutoModel.from_config(config).eval()
        ids = torch.randint(0, 300, (1, seq_len))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=ids)
        counted = counter.get_total_flops()
        assert flops_per_sequence(arch, seq_len) == pytest.approx(counted, rel=0.01), arch


def test_real_teacher_size(teacher_path):
    config = BertConfig.from_pretrained(teacher_path)
    counted = count_parameters(Architecture.from_config(config), config)
    assert counted.total == 22_713_216  # the published size of all-MiniLM-L6-v2 (22.7M)
    assert counted.effective == counted.total - (30522 + 512 + 2) * 384 - 2 * 384


def test_flops_reject_empty_sequences():
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_sequence(Architecture(1, 1, 8, 8), 0)
