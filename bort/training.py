"""The distillation training step and evaluation, shared by the search's short runs and the full pre-training.

Optimisation follows Bort's recipe (de Wynter & Perry 2020, arXiv 2010.10499, §4): AdamW, no weight decay on biases
and LayerNorm parameters, linear warm-up then linear decay (``transformers.get_linear_schedule_with_warmup``),
gradient clipping at a global norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from bort.distill import DistillationLoss, DistillOutputs, forward_for_distillation


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

    @torch.no_grad()
    def __call__(self, key: object, batch: dict[str, torch.Tensor]) -> DistillOutputs:
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        raw = forward_for_distillation(self.teacher, batch, self.loss_fn.needs, self.layer)
        out = self.loss_fn.prepare_teacher(raw, batch["attention_mask"])
        size = out.nbytes()
        if self.nbytes + size <= self.max_bytes:
            self._cache[key] = out
            self.nbytes += size
        return out


def distill(student: PreTrainedModel, loss_fn: DistillationLoss, batches: Sequence[dict[str, torch.Tensor]],
            teacher: Callable[[object, dict], DistillOutputs], optim: OptimConfig, *, steps: int | None = None,
            key_prefix: object = "train", progress: tqdm | None = None, layer: int = -1) -> list[float]:
    """Train ``student`` (and the loss's own parameters) for ``steps`` optimizer steps over ``batches`` (cycled).

    Returns the training loss of every step. ``teacher(key, batch)`` supplies the teacher's outputs, where key is
    (key_prefix, batch index) so a TeacherOutputs cache can serve repeated batches.

    Raises:
        FloatingPointError: on a NaN or infinite loss, naming the step.
    """
    steps = len(batches) if steps is None else steps
    optimizer, scheduler = build_optimizer([student, loss_fn], optim, steps)
    student.train()
    loss_fn.train()
    losses = []
    for step in range(steps):
        index = step % len(batches)
        batch = batches[index]
        target = teacher((key_prefix, index), batch)
        terms = loss_fn(forward_for_distillation(student, batch, loss_fn.needs, layer), target,
                        batch["attention_mask"], batch.get("labels"))
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite distillation loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.max_grad_norm is not None:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return losses


@torch.no_grad()
def evaluate(student: PreTrainedModel, loss_fn: DistillationLoss, batches: Sequence[dict[str, torch.Tensor]],
             teacher: Callable[[object, dict], DistillOutputs], *, key_prefix: object = "heldout",
             layer: int = -1) -> dict[str, float]:
    """Mean of every loss term over ``batches`` in eval mode (no dropout): the e(b) of the search is ``["loss"]``."""
    student.eval()
    loss_fn.eval()
    totals: dict[str, float] = {}
    for index, batch in enumerate(batches):
        terms = loss_fn(forward_for_distillation(student, batch, loss_fn.needs, layer),
                        teacher((key_prefix, index), batch), batch["attention_mask"], batch.get("labels"))
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.item()
    return {name: total / len(batches) for name, total in totals.items()}
