"""The distillation training step and evaluation, shared by the search's short runs and the full pre-training.

Optimisation follows Bort's recipe (de Wynter & Perry 2020, arXiv 2010.10499, §4): AdamW, no weight decay on biases
and LayerNorm parameters, linear warm-up then linear decay (``transformers.get_linear_schedule_with_warmup``),
gradient clipping at a global norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from bort.distill import DistillationLoss, DistillOutputs, forward_for_distillation
from bort.distributed import SingleProcess


@dataclass(frozen=True)
class OptimConfig:
    """One hyperparameter set θ of the search. learning_rate: AdamW step size; weight_decay: decoupled decay on
    weights other than biases and LayerNorm; warmup: fraction of the steps (0 ≤ warmup < 1) spent warming up
    linearly; max_grad_norm: global clipping norm (None: no clipping)."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices, none on biases and LayerNorm parameters (Bort, BERT)."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                (no_decay if isinstance(sub, nn.LayerNorm) or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(modules: Sequence[nn.Module], optim: OptimConfig, total_steps: int):
    """AdamW and its linear warm-up/decay schedule over ``total_steps`` optimizer steps."""
    # the fused kernel is several times faster than the default on CPU as well as on GPU
    optimizer = torch.optim.AdamW(parameter_groups(modules, optim.weight_decay), lr=optim.learning_rate, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(optim.warmup * total_steps), total_steps)
    return optimizer, scheduler


class TeacherOutputs:
    """The teacher's DistillOutputs per batch, computed once and kept while they fit in ``max_bytes``.

    Every candidate of a search trains on the same batches, so the teacher's forward pass (and the loss's
    preparation of its targets) runs once per batch instead of once per batch and candidate. Past the budget of
    ``max_bytes``, outputs are recomputed on demand.
    """

    def __init__(self, teacher: PreTrainedModel, loss_fn: DistillationLoss, *, layer: int = -1,
                 max_bytes: int = 4 << 30) -> None:
        self.teacher, self.loss_fn, self.layer, self.max_bytes = teacher, loss_fn, layer, max_bytes
        self._cache: dict[object, DistillOutputs] = {}
        self.nbytes = 0

    def __call__(self, key: object, batch: dict[str, torch.Tensor]) -> DistillOutputs:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self.miss(key, batch)
        self.remember(key, out)
        return out

    def miss(self, key: object, batch: dict[str, torch.Tensor]) -> DistillOutputs:
        """The outputs for a key not held in memory: computed here (a subclass may read them from elsewhere)."""
        return self.compute(batch)

    @torch.no_grad()
    def compute(self, batch: dict[str, torch.Tensor]) -> DistillOutputs:
        """The teacher's forward pass on ``batch`` and the loss's preparation of its targets (no caching)."""
        raw = forward_for_distillation(self.teacher, batch, self.loss_fn.needs, self.layer)
        return self.loss_fn.prepare_teacher(raw, batch["attention_mask"])

    def remember(self, key: object, out: DistillOutputs) -> None:
        """Keep ``out`` for ``key`` while the budget of ``max_bytes`` allows."""
        size = out.nbytes()
        if self.nbytes + size <= self.max_bytes:
            self._cache[key] = out
            self.nbytes += size


class DistillationObjective(nn.Module):
    """The student and the loss's own parameters (e.g. the hidden-state projection) as one module, so that a
    data-parallel wrapper (DDP) or a gradient all-reduce sees every trained parameter.

    Call: ``(batch, target)`` → the loss terms of :meth:`DistillationLoss.forward` for the student's outputs on
    ``batch`` against the teacher's ``target`` (DistillOutputs, prepared).
    """

    def __init__(self, student: PreTrainedModel, loss_fn: DistillationLoss, layer: int = -1) -> None:
        super().__init__()
        self.student, self.loss_fn, self.layer = student, loss_fn, layer

    def forward(self, batch: dict[str, torch.Tensor], target: DistillOutputs) -> dict[str, torch.Tensor]:
        outputs = forward_for_distillation(self.student, batch, self.loss_fn.needs, self.layer)
        return self.loss_fn(outputs, target, batch["attention_mask"], batch.get("labels"))


def accumulate_gradients(objective: Callable[[dict, DistillOutputs], dict[str, torch.Tensor]],
                         micro_batches: Sequence[dict[str, torch.Tensor]],
                         targets: Callable[[int, dict[str, torch.Tensor]], DistillOutputs], *,
                         autocast_dtype: torch.dtype | None = None, device_type: str = "cpu",
                         scaler: torch.amp.GradScaler | None = None,
                         no_sync: Callable[[], AbstractContextManager] | None = None) -> dict[str, torch.Tensor]:
    """Forward and backward over the micro-batches of one optimizer step, gradients summed in ``.grad``.

    Each micro-batch's loss is divided by their number, so the gradient is that of the mean of the micro-batches'
    losses (a data-parallel mean over ranks then gives the mean over every micro-batch of the global batch).
    ``targets(i, batch)`` gives the teacher's outputs for micro-batch ``i``. Under ``autocast_dtype`` (bf16 or fp16)
    the forward runs in mixed precision; ``scaler`` scales the loss (fp16). ``no_sync()`` is entered for all but the
    last micro-batch (DDP's gradient synchronisation happens once per step). Gradients are not zeroed here.

    Returns:
        the mean over micro-batches of every loss term, as detached float32 scalar tensors.
    """
    totals: dict[str, torch.Tensor] = {}
    count = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        target = targets(i, batch)
        context = no_sync() if no_sync is not None and i < count - 1 else nullcontext()
        with context:
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                terms = objective(batch, target)
            loss = terms["loss"].float() / count
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.detach().float() / count
    return totals


def apply_gradients(optimizer: torch.optim.Optimizer, scheduler, *, max_grad_norm: float | None,
                    scaler: torch.amp.GradScaler | None = None) -> bool:
    """Clip (global norm), step the optimizer (through ``scaler`` under fp16) and the schedule, zero the gradients.

    Returns:
        whether the optimizer stepped: False when the fp16 scaler found infinite or NaN gradients and skipped it
        (the scale is then lowered, dynamic loss scaling).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    stepped = True
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale
    else:
        optimizer.step()
    if stepped:  # a skipped step does not advance the schedule
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped


def distill(student: PreTrainedModel, loss_fn: DistillationLoss, batches: Sequence[dict[str, torch.Tensor]],
            teacher: Callable[[object, dict], DistillOutputs], optim: OptimConfig, *, steps: int | None = None,
            key_prefix: object = "train", progress: tqdm | None = None, layer: int = -1,
            engine: SingleProcess | None = None) -> list[float]:
    """Train ``student`` (and the loss's own parameters) for ``steps`` optimizer steps over ``batches`` (cycled).

    Returns the training loss of every step. ``teacher(key, batch)`` supplies the teacher's outputs, where key is
    (key_prefix, batch index) so a TeacherOutputs cache can serve repeated batches. One batch per step, full
    precision: the search's short training. Under a data-parallel ``engine`` (see :mod:`bort.distributed`) each rank
    passes its own share of every batch and the gradients and returned losses are averaged over ranks. The full
    pre-training (``bort/pretraining.py``) runs the same :func:`accumulate_gradients` and :func:`apply_gradients`
    with accumulation and mixed precision.

    Raises:
        FloatingPointError: on a NaN or infinite loss, naming the step.
    """
    steps = len(batches) if steps is None else steps
    eng = engine or SingleProcess()
    optimizer, scheduler = build_optimizer([student, loss_fn], optim, steps)
    objective = DistillationObjective(student, loss_fn, layer).train()
    # under DDP the relation loss leaves the last layer's attention output and FFN without gradient
    model = eng.wrap(objective, find_unused_parameters=eng.world_size > 1)
    losses = []
    for step in range(steps):
        index = step % len(batches)
        terms = accumulate_gradients(model, [batches[index]], lambda _, batch: teacher((key_prefix, index), batch))
        eng.reduce_gradients(objective.parameters())
        loss = float(eng.sum(terms["loss"].double().reshape(1))) / eng.world_size
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite distillation loss {loss} at step {step}")
        apply_gradients(optimizer, scheduler, max_grad_norm=optim.max_grad_norm)
        losses.append(loss)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return losses


@torch.no_grad()
def evaluation_sums(student: PreTrainedModel, loss_fn: DistillationLoss, batches: Iterable[dict[str, torch.Tensor]],
                    teacher: Callable[[object, dict], DistillOutputs], *, key_prefix: object = "heldout",
                    layer: int = -1, mlm_metrics: bool = False, autocast_dtype: torch.dtype | None = None,
                    device_type: str = "cpu") -> dict[str, torch.Tensor]:
    """Sums for held-out metrics, in eval mode (no dropout), so that data-parallel ranks can add theirs up.

    Returns float64 scalar tensors: ``batches``, and per loss term its sum over batches of the batch mean; with
    ``mlm_metrics`` (a student with a masked-LM head and batches with ``labels``) also ``masked_tokens`` and, over
    the masked tokens, ``mlm_nll`` (summed cross-entropy, nats), ``mlm_correct`` (top-1 hits) and ``mlm_rr``
    (summed reciprocal rank of the true token: 1 / (1 + number of tokens scored strictly higher)).
    Normalise with :func:`normalize_evaluation`.
    """
    student.eval()
    loss_fn.eval()
    needs = loss_fn.needs | ({"logits"} if mlm_metrics else set())
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + value.detach().double().cpu()

    for index, batch in enumerate(batches):
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = forward_for_distillation(student, batch, needs, layer)
            terms = loss_fn(outputs, teacher((key_prefix, index), batch), batch["attention_mask"], batch.get("labels"))
        add("batches", torch.tensor(1.0))
        for name, value in terms.items():
            add(name, value)
        if mlm_metrics:
            logits = outputs.logits.float()
            true = batch["labels"][batch["labels"] != -100]
            true_logit = logits.gather(1, true[:, None])
            add("masked_tokens", torch.tensor(float(true.numel())))
            add("mlm_nll", torch.nn.functional.cross_entropy(logits, true, reduction="sum"))
            add("mlm_correct", (logits.argmax(-1) == true).sum())
            add("mlm_rr", (1.0 / (1 + (logits > true_logit).sum(-1).double())).sum())
    return sums


def normalize_evaluation(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means from :func:`evaluation_sums` (possibly summed over ranks): loss terms per batch; ``mlm_loss``
    (nats per masked token), ``mlm_accuracy`` and ``mlm_mrr`` (mean reciprocal rank) per masked token."""
    batches = float(sums["batches"])
    out = {name: float(value) / batches for name, value in sums.items()
           if name not in ("batches", "masked_tokens", "mlm_nll", "mlm_correct", "mlm_rr")}
    if "masked_tokens" in sums:
        tokens = max(float(sums["masked_tokens"]), 1.0)
        out.update(mlm_loss=float(sums["mlm_nll"]) / tokens, mlm_accuracy=float(sums["mlm_correct"]) / tokens,
                   mlm_mrr=float(sums["mlm_rr"]) / tokens)
    return out


def evaluate(student: PreTrainedModel, loss_fn: DistillationLoss, batches: Sequence[dict[str, torch.Tensor]],
             teacher: Callable[[object, dict], DistillOutputs], *, key_prefix: object = "heldout",
             layer: int = -1, mlm_metrics: bool = False, engine: SingleProcess | None = None) -> dict[str, float]:
    """Mean of every loss term over ``batches`` in eval mode (no dropout): the e(b) of the search is ``["loss"]``.
    With ``mlm_metrics`` also ``mlm_loss``, ``mlm_accuracy`` and ``mlm_mrr`` (see :func:`evaluation_sums`). Under a
    data-parallel ``engine`` each rank passes its own whole batches and the means are over every rank's."""
    sums = evaluation_sums(student, loss_fn, batches, teacher, key_prefix=key_prefix, layer=layer,
                           mlm_metrics=mlm_metrics)
    if engine is not None:
        sums = {name: engine.sum(value) for name, value in sorted(sums.items())}
    return normalize_evaluation(sums)
