import pytest
import torch
from transformers import AutoModel, BertConfig

from bort.architecture import Architecture
from bort.distill import DistillationLoss
from bort.modeling import build_or_extract
from bort.training import OptimConfig, TeacherOutputs, distill, evaluate, parameter_groups


@pytest.fixture(scope="module")
def setup(tiny_teacher_and_batches):
    teacher, batches = tiny_teacher_and_batches
    return teacher, batches[:3]


def loss_for(width):
    return DistillationLoss({"attention_relations": 1.0, "hidden_states": 1.0}, student_hidden_size=width,
                            teacher_hidden_size=32, relation_heads=4)


def test_no_weight_decay_on_bias_and_layer_norm(setup):
    teacher, _ = setup
    decay, no_decay = parameter_groups([teacher], 0.01)
    names = {id(p): n for n, p in teacher.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert all("bias" not in names[id(p)] and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(teacher.parameters()))


def test_distillation_lowers_the_loss(setup):
    teacher, batches = setup
    student = build_or_extract(Architecture(1, 2, 16, 24), teacher, init="random")
    loss_fn = loss_for(16)
    cache = TeacherOutputs(teacher, loss_fn)
    before = evaluate(student, loss_fn, batches, cache)["loss"]
    distill(student, loss_fn, batches, cache, OptimConfig(learning_rate=3e-3, warmup=0.0), steps=30)
    after = evaluate(student, loss_fn, batches, cache)["loss"]
    assert after < 0.8 * before


def test_teacher_outputs_are_cached_within_budget(setup):
    teacher, batches = setup
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    try:
        cache = TeacherOutputs(teacher, loss_for(16))
        first = cache(("train", 0), batches[0])
        assert cache(("train", 0), batches[0]) is first and len(calls) == 1
        assert cache.nbytes == first.nbytes() > 0
        uncached = TeacherOutputs(teacher, loss_for(16), max_bytes=0)
        uncached(("train", 0), batches[0])
        uncached(("train", 0), batches[0])
        assert len(calls) == 3 and uncached.nbytes == 0
    finally:
        hook.remove()


def test_non_finite_loss_names_the_step(setup):
    teacher, batches = setup
    student = build_or_extract(Architecture(1, 2, 16, 24), teacher, init="random")
    with torch.no_grad():
        student.embeddings.word_embeddings.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 0"):
        distill(student, loss_for(16), batches, TeacherOutputs(teacher, loss_for(16)), OptimConfig(), steps=2)


def test_optim_config_validation():
    with pytest.raises(ValueError, match="warmup"):
        OptimConfig(warmup=1.5)


def test_accumulation_gives_the_gradient_of_the_mean_of_micro_batch_losses(setup):
    from bort.training import DistillationObjective, accumulate_gradients

    teacher, batches = setup
    loss_fn = loss_for(16)
    cache = TeacherOutputs(teacher, loss_fn)
    grads = []
    for split in ([batches[0], batches[1]], None):
        student = build_or_extract(Architecture(1, 2, 16, 24), teacher, init="random", seed=1)
        objective = DistillationObjective(student, loss_fn)
        loss_fn.zero_grad(set_to_none=True)
        if split is not None:
            accumulate_gradients(objective, split, lambda i, b: cache(("train", i), b))
        else:  # by hand: mean of the two losses, one backward
            loss = sum(objective(b, cache(("train", i), b))["loss"] for i, b in enumerate(batches[:2])) / 2
            loss.backward()
        grads.append({n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10  # all but the pooler, which the loss never reads
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_loss_scaler_skips_a_step_with_infinite_gradients():
    from bort.training import apply_gradients

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(weight.sum() * float("inf")).backward()
    assert apply_gradients(optimizer, scheduler, max_grad_norm=1.0, scaler=scaler) is False
    assert torch.equal(weight.detach(), torch.ones(3)) and scaler.get_scale() < 1024.0
    scaler.scale(weight.sum()).backward()
    assert apply_gradients(optimizer, scheduler, max_grad_norm=1.0, scaler=scaler) is True
    assert (weight.detach() < 1).all()
