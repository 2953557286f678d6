import json

import pytest
from transformers import BertConfig, RobertaConfig

from search.space import SpaceError, default_space, load_space

MINILM = BertConfig(num_hidden_layers=6, num_attention_heads=12, hidden_size=384, intermediate_size=1536)


def test_default_space_for_minilm_has_the_papers_300_points():
    space = default_space(MINILM)
    assert space.grid == {"num_hidden_layers": (1, 2, 3, 4, 5, 6), "num_attention_heads": (3, 6, 9, 12),
                          "hidden_size": (192, 288, 384), "intermediate_size": (96, 192, 288, 384, 1152)}
    archs = space.validate(MINILM)
    assert len(archs) == 300
    assert all(a.hidden_size % a.num_attention_heads == 0 for a in archs)


def test_default_space_for_roberta_large_is_the_papers_grid_shape():
    large = RobertaConfig(num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, intermediate_size=4096)
    grid = default_space(large).grid
    assert grid["num_attention_heads"] == (4, 8, 12, 16) and grid["hidden_size"] == (512, 768, 1024)
    assert grid["intermediate_size"] == (256, 512, 768, 1024, 3072)


def test_grid_and_list_files(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("num_hidden_layers: [1, 2]\nnum_attention_heads: [4, 6]\nhidden_size: [96, 128]\n"
                    "intermediate_size: 256\n")
    archs = load_space(grid).validate(MINILM)
    assert len(archs) == 2 * 3  # 128 % 6 != 0 drops one of the four (A, H) pairs
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"architectures": [
        {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 256, "intermediate_size": 768}]}))
    assert [a.name for a in load_space(listed).validate(MINILM)] == ["D4-A8-H256-I768"]


@pytest.mark.parametrize("text, message", [
    ("num_hidden_layers: [8]\nnum_attention_heads: [4]\nhidden_size: [128]\nintermediate_size: [64]\n",
     "num_hidden_layers=8 exceeds the teacher's 6"),
    ("num_hidden_layers: [2]\nnum_attention_heads: [5]\nhidden_size: [128]\nintermediate_size: [64]\n",
     "no valid architecture"),
    ("num_hidden_layers: []\nnum_attention_heads: [4]\nhidden_size: [128]\nintermediate_size: [64]\n",
     "num_hidden_layers must be a non-empty list"),
    ("depth: [2]\n", "unknown keys \\['depth'\\]"),
    ("architectures:\n  - {num_hidden_layers: 2, num_attention_heads: 5, hidden_size: 128, intermediate_size: 64}\n",
     "not divisible"),
    ("num_hidden_layers: [2\nhidden_size: 3\n", "line 2"),
])
def test_invalid_spaces_name_the_culprit(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message):
        load_space(path).validate(MINILM)


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="cannot read space file"):
        load_space(tmp_path / "absent.yaml")
