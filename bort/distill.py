"""Distillation objectives shared by the search's short training and the full pre-training.

Three terms, combined with weights:

- ``attention_relations``: MiniLMv2's self-attention relation distillation (Wang et al. 2021, arXiv 2012.15828,
  §3.1): queries, keys and values of one layer are split into R relation heads, their scaled dot-product relations
  softmaxed over keys, and KL(teacher ‖ student) summed over the Q-Q, K-K and V-V relations. Relations are
  (seq_len × seq_len) per head, so teacher and student widths may differ. Works with encoders that have no MLM head.
- ``hidden_states``: mean squared error between the teacher's last hidden states and the student's, mapped to the
  teacher's width by a learned linear projection (TinyBERT-style, Jiao et al. 2020, arXiv 1909.10351, §3.1).
- ``logits``: Bort's masked-LM distillation (de Wynter & Perry 2020, arXiv 2010.10499, §4): T² · KL(p_teacher^T ‖
  p_student^T) at temperature T over the masked positions, with the true KL (the public Bort code applied
  log-softmax to probabilities and averaged over the vocabulary); ``mlm`` adds the student's cross-entropy against the
  original tokens. Bort's weights are 0.5 (logits) and 0.1 (mlm) at T = 2.

Positions where ``attention_mask`` is 0 never contribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

TERMS = ("attention_relations", "hidden_states", "logits", "mlm")
BORT_WEIGHTS = {"logits": 0.5, "mlm": 0.1}
RELATION_WEIGHTS = {"attention_relations": 1.0}


@dataclass
class DistillOutputs:
    """What one forward pass exposes to the loss. Shapes: qkv, hidden (batch, seq_len, width) float;
    logits (n_masked, vocab_size) float at the positions where labels != -100, in row-major order.

    relations is filled on the teacher's side by :meth:`DistillationLoss.prepare_teacher`: per Q, K, V a pair
    (probabilities (batch, R, seq_len, seq_len), summed entropy over real queries (scalar)), so that a cached
    teacher costs nothing per step but the student's side of the KL.
    """

    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    relations: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def nbytes(self) -> int:
        tensors = [*(self.qkv or ()), self.hidden, self.logits, *(t for pair in self.relations or () for t in pair)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def default_weights(teacher_has_mlm_head: bool) -> dict[str, float]:
    """Bort's logit loss when the teacher has an MLM head, MiniLMv2 relations otherwise."""
    return dict(BORT_WEIGHTS if teacher_has_mlm_head else RELATION_WEIGHTS)


def parse_weights(items: list[str]) -> dict[str, float]:
    """``["NAME=WEIGHT", ...]`` (command-line form) → ``{NAME: WEIGHT}``.

    Raises:
        ValueError: on an item that is not NAME=WEIGHT with NAME in TERMS and a number WEIGHT.
    """
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or name not in TERMS or weight is None:
            raise ValueError(f"loss item {item!r} is not NAME=WEIGHT with NAME in {TERMS}")
        weights[name] = weight
    return weights


class DistillationLoss(nn.Module):
    """Weighted sum of the terms in ``weights`` (keys from ``TERMS``; zero-weight terms are skipped).

    Args:
        weights: term name -> weight.
        student_hidden_size, teacher_hidden_size: widths; the hidden-state term learns a projection between them.
        relation_heads: R for the relation term; both widths must be divisible by R.
        temperature: T of the logit term.

    Raises:
        ValueError: on an unknown term, a negative weight, no positive weight, or a width not divisible by R.
    """

    def __init__(self, weights: dict[str, float], *, student_hidden_size: int, teacher_hidden_size: int,
                 relation_heads: int = 12, temperature: float = 2.0) -> None:
        super().__init__()
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown distillation terms {sorted(unknown)}; valid: {TERMS}")
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"distillation weights must be non-negative with at least one positive: {weights}")
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        self.relation_heads = relation_heads
        self.temperature = temperature
        if "attention_relations" in self.weights:
            for name, width in (("student", student_hidden_size), ("teacher", teacher_hidden_size)):
                if width % relation_heads:
                    raise ValueError(f"{name} hidden_size={width} is not divisible by relation_heads={relation_heads}")
        self.projection = (nn.Linear(student_hidden_size, teacher_hidden_size)
                           if "hidden_states" in self.weights else None)

    @property
    def needs(self) -> set[str]:
        """Which fields of DistillOutputs the terms read: a subset of {"qkv", "hidden", "logits"}."""
        out = set()
        if "attention_relations" in self.weights:
            out.add("qkv")
        if "hidden_states" in self.weights:
            out.add("hidden")
        if "logits" in self.weights or "mlm" in self.weights:
            out.add("logits")
        return out

    @torch.no_grad()
    def prepare_teacher(self, teacher: DistillOutputs, attention_mask: torch.Tensor) -> DistillOutputs:
        """The teacher's outputs in the form the loss reads: relation probabilities replace Q, K, V."""
        if "attention_relations" not in self.weights:
            return teacher
        relations = []
        for x in teacher.qkv:
            log_p = _log_relations(x, attention_mask, self.relation_heads)
            probs = log_p.exp()
            entropy = -(probs * log_p).sum(-1)  # (b, R, L); padded keys have probability 0
            relations.append((probs, (entropy * attention_mask[:, None, :]).sum()))
        return DistillOutputs(hidden=teacher.hidden, logits=teacher.logits, relations=relations)

    def forward(self, student: DistillOutputs, teacher: DistillOutputs, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns {"loss": weighted sum, term: unweighted value, ...}; every value is a scalar tensor.

        attention_mask: (batch, seq_len) with 1 for real tokens; labels: (batch, seq_len) int64 with -100 where not
        masked (needed for "mlm").
        """
        terms: dict[str, torch.Tensor] = {}
        if "attention_relations" in self.weights:
            if teacher.relations is None:
                teacher = self.prepare_teacher(teacher, attention_mask)
            terms["attention_relations"] = sum(
                relation_kl(s, probs, entropy, attention_mask, self.relation_heads)
                for s, (probs, entropy) in zip(student.qkv, teacher.relations))
        if "hidden_states" in self.weights:
            mask = attention_mask.unsqueeze(-1).to(student.hidden.dtype)
            sq = (self.projection(student.hidden) - teacher.hidden).pow(2) * mask
            terms["hidden_states"] = sq.sum() / (mask.sum() * teacher.hidden.shape[-1])
        if "logits" in self.weights:
            terms["logits"] = self.temperature ** 2 * soft_kl(teacher.logits, student.logits, self.temperature)
        if "mlm" in self.weights:
            terms["mlm"] = F.cross_entropy(student.logits, labels[labels != -100])
        terms["loss"] = sum(self.weights[k] * v for k, v in terms.items())
        return terms


def soft_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(t/T) ‖ softmax(s/T)); logits (n, vocab). Zero rows give 0."""
    if teacher_logits.numel() == 0:
        return student_logits.sum() * 0.0
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def relation_kl(student: torch.Tensor, teacher_probs: torch.Tensor, teacher_entropy: torch.Tensor,
                attention_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """KL(teacher relation ‖ student relation) for one of Q, K or V, averaged over batch, heads and real queries.

    KL = cross-entropy − entropy, and the teacher's entropy is fixed, so only the student's log-relations are
    computed per step. student: (batch, seq_len, H_s); teacher_probs: (batch, R, seq_len, seq_len);
    teacher_entropy: the teacher's entropy summed over real queries and heads (scalar); attention_mask: (batch, seq_len).
    """
    log_s = _log_relations(student, attention_mask, heads)
    cross = -(teacher_probs * log_s).sum(-1)  # (b, R, L)
    queries = attention_mask[:, None, :].to(cross.dtype)
    return ((cross * queries).sum() - teacher_entropy) / (queries.sum() * heads)


def _log_relations(x: torch.Tensor, attention_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Log-softmax over keys of the scaled dot products of x with itself, per relation head: (b, R, L, L)."""
    b, n, width = x.shape
    x = x.view(b, n, heads, width // heads).transpose(1, 2)  # (b, R, L, d_r)
    scores = x @ x.transpose(-1, -2) / math.sqrt(width // heads)
    key_bias = (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * torch.finfo(scores.dtype).min
    return F.log_softmax(scores + key_bias, dim=-1)


def forward_for_distillation(model: PreTrainedModel, batch: dict[str, torch.Tensor], needs: set[str],
                             layer: int = -1) -> DistillOutputs:
    """Run ``model`` on ``batch`` and collect what the loss ``needs``.

    batch: "input_ids", "attention_mask" (batch, seq_len) int64, and "labels" when logits are needed.
    layer: the encoder layer whose self-attention Q/K/V feed the relation term (default: the last).
    """
    encoder = model.base_model
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    if "qkv" in needs:
        attention = encoder.encoder.layer[layer].attention.self
        for name in ("query", "key", "value"):
            hooks.append(getattr(attention, name).register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
    try:
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    out = DistillOutputs(hidden=hidden if "hidden" in needs else None)
    if "qkv" in needs:
        out.qkv = (captured["query"], captured["key"], captured["value"])
    if "logits" in needs:
        head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        if head is None:
            raise ValueError(f"{type(model).__name__} has no masked-LM head, but the loss needs logits")
        out.logits = head(hidden[batch["labels"] != -100])
    return out
