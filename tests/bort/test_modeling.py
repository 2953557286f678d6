import copy

import pytest
import torch
from transformers import AutoModel, BertConfig

from bort.architecture import Architecture, ArchitectureError
from bort.modeling import build_or_extract, extract_student, load_teacher, set_dropout


@pytest.fixture(scope="module")
def tiny_teacher():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, attn_implementation="eager")
    return AutoModel.from_config(config).eval()


def outputs(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).last_hidden_state


def test_full_extraction_reproduces_the_real_teacher(teacher_path):
    teacher = load_teacher(str(teacher_path))
    student = extract_student(teacher, Architecture.from_config(teacher.config))
    ids = torch.randint(0, teacher.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(outputs(student, ids), outputs(teacher, ids))


def test_fewer_layers_keep_evenly_spaced_layers_ending_with_the_last(tiny_teacher):
    student = extract_student(tiny_teacher, Architecture(2, 4, 48, 64))
    truncated = copy.deepcopy(tiny_teacher)
    truncated.encoder.layer = torch.nn.ModuleList([truncated.encoder.layer[i] for i in (1, 3)])
    truncated.config.num_hidden_layers = 2
    ids = torch.randint(0, 200, (2, 16))
    torch.testing.assert_close(outputs(student, ids), outputs(truncated, ids))


def test_fewer_wider_heads_merge_whole_teacher_heads(tiny_teacher):
    # 2 heads of 24 dimensions from 4 heads of 12: each student head holds two teacher heads side by side, so at full
    # width the projections are the teacher's own, and only the attention pattern (over merged heads) differs
    student = extract_student(tiny_teacher, Architecture(4, 2, 48, 64))
    for s_layer, t_layer in zip(student.encoder.layer, tiny_teacher.encoder.layer):
        for name in ("query", "key", "value"):
            assert torch.equal(getattr(s_layer.attention.self, name).weight, getattr(t_layer.attention.self, name).weight)
        assert torch.equal(s_layer.attention.output.dense.weight, t_layer.attention.output.dense.weight)


def test_wide_heads_left_without_teacher_heads_start_silent(tiny_teacher):
    # 3 heads of 15 dims need 2 teacher heads each (12 dims per teacher head), but the teacher has only 4: the third
    # student head gets none and must start with zero queries and zero output columns (no effect on the output)
    student = extract_student(tiny_teacher, Architecture(4, 3, 45, 64))
    for layer in student.encoder.layer:
        query = layer.attention.self.query.weight.view(3, 15, 45)
        output = layer.attention.output.dense.weight.view(45, 3, 15)
        assert torch.count_nonzero(query[2]) == 0 and torch.count_nonzero(output[:, 2]) == 0
        assert torch.count_nonzero(query[:2]) == query[:2].numel()  # the other heads are fully filled


def test_fewer_neurons_keep_the_top_scoring_neurons(tiny_teacher):
    student = extract_student(tiny_teacher, Architecture(4, 4, 48, 20))
    pruned = copy.deepcopy(tiny_teacher)
    with torch.no_grad():
        for layer in pruned.encoder.layer:
            score = layer.intermediate.dense.weight.norm(dim=1) * layer.output.dense.weight.norm(dim=0)
            dropped = torch.argsort(score, descending=True)[20:]
            layer.output.dense.weight[:, dropped] = 0
    ids = torch.randint(0, 200, (2, 16))
    torch.testing.assert_close(outputs(student, ids), outputs(pruned, ids), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", [Architecture(1, 1, 16, 8), Architecture(3, 2, 24, 60), Architecture(2, 3, 36, 64)])
@pytest.mark.parametrize("init", ["teacher", "random"])
def test_students_have_the_requested_architecture(tiny_teacher, arch, init):
    student = build_or_extract(arch, tiny_teacher, init=init)
    assert Architecture.from_config(student.config) == arch
    assert student.config.vocab_size == tiny_teacher.config.vocab_size
    out = outputs(student, torch.randint(0, 200, (2, 8)))
    assert out.shape == (2, 8, arch.hidden_size) and torch.isfinite(out).all()


def test_students_must_be_subarchitectures(tiny_teacher):
    with pytest.raises(ArchitectureError, match="num_hidden_layers=5 exceeds"):
        build_or_extract(Architecture(5, 4, 48, 64), tiny_teacher, init="random")


def test_set_dropout_reaches_every_dropout(tiny_teacher):
    student = build_or_extract(Architecture(2, 2, 16, 16), tiny_teacher, init="random")
    set_dropout(student, 0.0)
    student.train()
    ids = torch.randint(0, 200, (2, 8))
    torch.testing.assert_close(student(input_ids=ids).last_hidden_state, student(input_ids=ids).last_hidden_state)
    assert student.config.hidden_dropout_prob == tiny_teacher.config.hidden_dropout_prob
