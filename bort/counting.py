"""Closed-form size and cost of BERT-family encoders: the p(b) and i(b) of the Bort search.

Parameter counts follow the module layout of Hugging Face ``BertModel`` / ``RobertaModel`` (embeddings, D encoder
layers, pooler) and of the ``*ForMaskedLM`` head, so they equal ``sum(p.numel() for p in model.parameters())`` of a
built model. "Effective" parameters exclude the embedding tables, as the Bort paper reports sizes
(de Wynter & Perry 2020, arXiv 2010.10499, §5: "effective size").

FLOPs count the matrix products of one forward pass (2 FLOPs per multiply-accumulate), the convention of
``torch.utils.flop_counter``; element-wise work (bias adds, softmax, GELU, LayerNorm) is left out, which is below 2%
of the total for sequences of 128 tokens and widths of 128 or more.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from bort.architecture import Architecture


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of one model (number of scalars)."""

    total: int
    embeddings: int

    @property
    def effective(self) -> int:
        """Parameters outside the embedding tables (Bort's "effective size")."""
        return self.total - self.embeddings


def count_parameters(arch: Architecture, config: PretrainedConfig, *, pooler: bool = True, mlm_head: bool = False) -> ParameterCount:
    """Closed-form parameter count of ``arch`` built from ``config`` (the teacher's config supplies V, P, T).

    Args:
        arch: the architecture ⟨D, A, H, I⟩.
        config: a BERT or RoBERTa config giving vocab_size (V), max_position_embeddings (P), type_vocab_size (T).
        pooler: whether the model has the pooler (``BertModel`` does; ``BertForMaskedLM`` does not).
        mlm_head: whether a masked-LM head is added (transform + LayerNorm + output bias; decoder tied to the
            word embeddings when ``config.tie_word_embeddings`` is true, else its weight and bias are counted).
    """
    h, i, d = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers
    v, p, t = config.vocab_size, config.max_position_embeddings, config.type_vocab_size
    embeddings = (v + p + t) * h + 2 * h  # three tables + LayerNorm
    # attention: q, k, v, output (weights + biases) and LayerNorm; FFN: in, out and LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    total = embeddings + d * layer
    if pooler:
        total += h * h + h
    if mlm_head:
        total += (h * h + h) + 2 * h + v  # transform dense, LayerNorm, decoder bias
        if not getattr(config, "tie_word_embeddings", True):
            total += v * h + v  # an untied decoder has its own weight and its own bias
    return ParameterCount(total=total, embeddings=embeddings)


def flops_per_sequence(arch: Architecture, seq_len: int, *, pooler: bool = True) -> int:
    """Forward FLOPs of the matrix products for one sequence of ``seq_len`` tokens.

    Per layer: Q, K, V and output projections 4·2·L·H², attention scores and weighted values 2·2·L²·H,
    feed-forward 2·2·L·H·I; plus the pooler's 2·H² on the first token.

    Raises:
        ValueError: if ``seq_len`` is not positive.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    h, i, n = arch.hidden_size, arch.intermediate_size, seq_len
    per_layer = 8 * n * h * h + 4 * n * n * h + 4 * n * h * i
    return arch.num_hidden_layers * per_layer + (2 * h * h if pooler else 0)
