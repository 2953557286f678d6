import pytest
from transformers import BertConfig

from bort.architecture import Architecture, ArchitectureError


def test_hidden_size_must_divide_by_heads():
    with pytest.raises(ArchitectureError, match="hidden_size=100 is not divisible by num_attention_heads=8"):
        Architecture(4, 8, 100, 256)


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 0), ("intermediate_size", -3), ("hidden_size", 2.5)])
def test_fields_must_be_positive_integers(field, value):
    values = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 8, "intermediate_size": 16, field: value}
    with pytest.raises(ArchitectureError, match=field):
        Architecture(**values)


def test_subarchitecture_check_names_the_field():
    teacher = BertConfig(num_hidden_layers=6, num_attention_heads=12, hidden_size=384, intermediate_size=1536)
    Architecture(6, 12, 384, 1536).check_subarchitecture_of(teacher)
    with pytest.raises(ArchitectureError, match="num_hidden_layers=8 exceeds the teacher's 6"):
        Architecture(8, 12, 384, 1536).check_subarchitecture_of(teacher)


def test_to_config_replaces_only_the_four_dimensions():
    teacher = BertConfig(vocab_size=123, num_hidden_layers=6, num_attention_heads=12, hidden_size=384,
                         intermediate_size=1536, layer_norm_eps=1e-7)
    config = Architecture(2, 4, 128, 256).to_config(teacher)
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size, config.intermediate_size) == (
        2, 4, 128, 256)
    assert config.vocab_size == 123 and config.layer_norm_eps == 1e-7
    assert teacher.hidden_size == 384  # the teacher's config is untouched


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ArchitectureError, match="unknown \\['layers'\\]"):
        Architecture.from_dict({"layers": 2, "num_attention_heads": 2, "hidden_size": 8, "intermediate_size": 8,
                                "num_hidden_layers": 2})
