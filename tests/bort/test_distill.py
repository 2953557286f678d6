import math

import pytest
import torch
import torch.nn.functional as F

from bort.distill import DistillationLoss, DistillOutputs, relation_kl, soft_kl


def direct_relation_kl(student, teacher, mask, heads):
    """KL(teacher ‖ student) of scaled dot-product relations, computed the slow, obvious way."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        n = int(mask[b].sum())  # real tokens come first
        for r in range(heads):
            def rel(x):
                d = x.shape[-1] // heads
                part = x[b, :n, r * d:(r + 1) * d].double()
                return torch.softmax(part @ part.T / math.sqrt(d), dim=-1)
            p_t, p_s = rel(teacher), rel(student)
            total += (p_t * (p_t.log() - p_s.log())).sum().item()
            count += n
    return total / count


def test_relation_kl_matches_the_direct_computation():
    torch.manual_seed(0)
    mask = torch.tensor([[1] * 7 + [0] * 3, [1] * 10])
    student, teacher = torch.randn(2, 10, 24), torch.randn(2, 10, 36)
    loss = DistillationLoss({"attention_relations": 1.0}, student_hidden_size=24, teacher_hidden_size=36,
                            relation_heads=3)
    prepared = loss.prepare_teacher(DistillOutputs(qkv=(teacher,) * 3), mask)
    value = relation_kl(student, *prepared.relations[0], mask, heads=3)
    assert value.item() == pytest.approx(direct_relation_kl(student, teacher, mask, 3), rel=1e-4)
    terms = loss(DistillOutputs(qkv=(student,) * 3), DistillOutputs(qkv=(teacher,) * 3), mask)
    assert terms["attention_relations"].item() == pytest.approx(3 * value.item(), rel=1e-5)


def test_relation_kl_is_zero_for_identical_relations():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.long)
    loss = DistillationLoss({"attention_relations": 1.0}, student_hidden_size=16, teacher_hidden_size=16,
                            relation_heads=4)
    terms = loss(DistillOutputs(qkv=(x, x, x)), DistillOutputs(qkv=(x, x, x)), mask)
    assert abs(terms["loss"].item()) < 1e-5


def test_soft_kl_on_a_hand_computed_case():
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> (3/4, 1/4) at T = 1
    student = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_kl(teacher, student, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # at T = 2 the teacher is (sqrt3, 1)/(sqrt3 + 1)
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5)
    assert soft_kl(teacher, student, 2.0).item() == pytest.approx(expected_t2, rel=1e-6)


def test_bort_weights_combine_kl_and_mlm():
    torch.manual_seed(2)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    t_logits, s_logits = torch.randn(2, 11), torch.randn(2, 11)
    loss = DistillationLoss({"logits": 0.5, "mlm": 0.1}, student_hidden_size=8, teacher_hidden_size=8, temperature=2.0)
    terms = loss(DistillOutputs(logits=s_logits), DistillOutputs(logits=t_logits), torch.ones(2, 5), labels)
    kl = F.kl_div(F.log_softmax(s_logits / 2, -1), F.softmax(t_logits / 2, -1), reduction="batchmean")
    ce = F.cross_entropy(s_logits, torch.tensor([4, 7]))
    assert terms["logits"].item() == pytest.approx(4 * kl.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.5 * 4 * kl.item() + 0.1 * ce.item(), rel=1e-5)


def test_hidden_state_term_ignores_padding():
    loss = DistillationLoss({"hidden_states": 1.0}, student_hidden_size=4, teacher_hidden_size=4)
    with torch.no_grad():
        loss.projection.weight.copy_(torch.eye(4))
        loss.projection.bias.zero_()
    student, teacher = torch.zeros(1, 3, 4), torch.ones(1, 3, 4)
    teacher[0, 2] = 100.0  # a padded position must not count
    terms = loss(DistillOutputs(hidden=student), DistillOutputs(hidden=teacher), torch.tensor([[1, 1, 0]]))
    assert terms["hidden_states"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("weights, message", [({"cosine": 1.0}, "unknown distillation terms"),
                                              ({"mlm": 0.0}, "at least one positive"),
                                              ({"attention_relations": 1.0}, "not divisible by relation_heads")])
def test_bad_loss_settings(weights, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(weights, student_hidden_size=10, teacher_hidden_size=12, relation_heads=4)
