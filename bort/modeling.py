"""Teachers and students: loading a teacher, building a student of an architecture, extracting it from the teacher.

Extraction keeps the teacher's most important parts, in the spirit of DynaBERT (Hou et al. 2020, arXiv 2004.04037,
§3.1), which ranks attention heads and feed-forward neurons and keeps the top ones. DynaBERT scores them by the loss
change of a task; our teachers may have no head to compute such a loss, so we rank by weight magnitude, which needs no
data:

- hidden channels (H): by the summed absolute LayerNorm gains over the whole encoder;
- layers (D): evenly spaced, always keeping the last layer;
- heads (A), per layer: by ‖W_V rows of the head‖·‖W_O columns of the head‖;
- dimensions inside a head when the student's head is narrower: Q/K dimensions by ‖W_Q row‖·‖W_K row‖, V/O by
  ‖W_V row‖·‖W_O column‖; when it is wider, the extra dimensions start with zero queries and zero output columns so
  the extracted function is unchanged, and queries are scaled by sqrt(d_student / d_teacher) to keep the attention
  temperature of the teacher;
- feed-forward neurons (I), per layer: by ‖W_in row‖·‖W_out column‖.

Kept indices stay in the teacher's order, so extracting the teacher's own architecture reproduces it exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from bort.architecture import Architecture

INIT_METHODS = ("teacher", "random")


class TeacherError(ValueError):
    """A teacher that cannot be found, read or used."""


def load_teacher_config(name_or_path: str) -> PretrainedConfig:
    """The config of a local Hugging Face folder or hub model name.

    Raises:
        TeacherError: if the folder has no readable config.json or the hub name cannot be resolved.
    """
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise TeacherError(f"teacher folder {name_or_path} does not exist")
    if looks_local and not (path / "config.json").is_file():
        raise TeacherError(f"teacher folder {name_or_path} has no config.json")
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TeacherError(f"cannot load teacher {name_or_path!r}: {first}") from exc


def has_mlm_head(config: PretrainedConfig) -> bool:
    """Whether the checkpoint declares a masked-LM head (``*ForMaskedLM`` in ``config.architectures``)."""
    return any(name.endswith("ForMaskedLM") for name in (config.architectures or []))


def load_teacher(name_or_path: str, *, attn_implementation: str = "eager") -> PreTrainedModel:
    """Load a teacher in eval mode with gradients off: ``*ForMaskedLM`` when the checkpoint has the head, else the encoder.

    Raises:
        TeacherError: if it cannot be loaded, or its declared masked-LM head has no weights in the checkpoint.
    """
    config = load_teacher_config(name_or_path)
    auto = AutoModelForMaskedLM if has_mlm_head(config) else AutoModel
    try:
        model, info = auto.from_pretrained(name_or_path, attn_implementation=attn_implementation, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TeacherError(f"cannot load teacher weights from {name_or_path!r}: {exc}".splitlines()[0]) from exc
    if info.get("missing_keys"):
        raise TeacherError(f"teacher {name_or_path!r} lacks weights for {sorted(info['missing_keys'])[:3]}...")
    model.eval().requires_grad_(False)
    return model


def build_student(arch: Architecture, teacher_config: PretrainedConfig, *, mlm_head: bool = False, seed: int = 0,
                  attn_implementation: str = "eager") -> PreTrainedModel:
    """A randomly initialised student (N(0, initializer_range), as Bort initialises) with the teacher's other settings."""
    config = arch.to_config(teacher_config)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if mlm_head else AutoModel
    return auto.from_config(config)


def extract_student(teacher: PreTrainedModel, arch: Architecture, *, seed: int = 0,
                    attn_implementation: str = "eager") -> PreTrainedModel:
    """A student of ``arch`` initialised from the most important parts of ``teacher`` (see the module docstring).

    The student has the teacher's class (encoder or masked-LM model) and a config equal to the teacher's except for
    the four architecture fields.

    Raises:
        ArchitectureError: if ``arch`` is not a sub-architecture of the teacher.
    """
    arch.check_subarchitecture_of(teacher.config)
    student = build_student(arch, teacher.config, mlm_head=teacher_has_head(teacher), seed=seed,
                            attn_implementation=attn_implementation)
    with torch.no_grad():
        _copy_encoder(teacher.base_model, student.base_model, arch)
        if hasattr(teacher, "cls"):
            _copy_bert_mlm_head(teacher.cls.predictions, student.cls.predictions, _hidden_index(teacher.base_model, arch))
        elif hasattr(teacher, "lm_head"):
            _copy_roberta_mlm_head(teacher.lm_head, student.lm_head, _hidden_index(teacher.base_model, arch))
    return student


def build_or_extract(arch: Architecture, teacher: PreTrainedModel, *, init: str, seed: int = 0) -> PreTrainedModel:
    """The student the search trains: ``init="teacher"`` extracts it, ``init="random"`` builds it fresh.

    The student has a masked-LM head exactly when the teacher has one.

    Raises:
        ValueError: on an unknown ``init``; ArchitectureError as in :func:`extract_student`.
    """
    if init == "teacher":
        return extract_student(teacher, arch, seed=seed)
    if init == "random":
        arch.check_subarchitecture_of(teacher.config)
        return build_student(arch, teacher.config, mlm_head=teacher_has_head(teacher), seed=seed)
    raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")


def teacher_has_head(model: PreTrainedModel) -> bool:
    """Whether a loaded model carries a masked-LM head."""
    return hasattr(model, "cls") or hasattr(model, "lm_head")


# --- importance ranking ------------------------------------------------------------------------------------------

def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in increasing index order (ties broken by index)."""
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return torch.sort(order).values


def _hidden_index(encoder: nn.Module, arch: Architecture) -> torch.Tensor:
    gains = encoder.embeddings.LayerNorm.weight.abs().clone()
    for layer in encoder.encoder.layer:
        gains += layer.attention.output.LayerNorm.weight.abs() + layer.output.LayerNorm.weight.abs()
    return _top(gains, arch.hidden_size)


def _layer_index(num_teacher_layers: int, depth: int) -> list[int]:
    # evenly spaced, ending at the last layer: e.g. 2 of 6 -> [2, 5], 3 of 6 -> [1, 3, 5]
    return [round((k + 1) * num_teacher_layers / depth) - 1 for k in range(depth)]


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise AssertionError(f"shape mismatch while extracting: {tuple(src.shape)} into {tuple(dst.shape)}")
    dst.copy_(src)


def _copy_layer_norm(dst: nn.LayerNorm, src: nn.LayerNorm, h_idx: torch.Tensor) -> None:
    _copy(dst.weight, src.weight[h_idx])
    _copy(dst.bias, src.bias[h_idx])


def _copy_encoder(src: nn.Module, dst: nn.Module, arch: Architecture) -> None:
    h_idx = _hidden_index(src, arch)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        _copy(getattr(dst.embeddings, name).weight, getattr(src.embeddings, name).weight[:, h_idx])
    _copy_layer_norm(dst.embeddings.LayerNorm, src.embeddings.LayerNorm, h_idx)
    teacher_heads = src.config.num_attention_heads
    d_t = src.config.hidden_size // teacher_heads
    for dst_layer, l in zip(dst.encoder.layer, _layer_index(len(src.encoder.layer), arch.num_hidden_layers)):
        _copy_layer(src.encoder.layer[l], dst_layer, arch, h_idx, teacher_heads, d_t)
    if getattr(src, "pooler", None) is not None and getattr(dst, "pooler", None) is not None:
        _copy(dst.pooler.dense.weight, src.pooler.dense.weight[h_idx][:, h_idx])
        _copy(dst.pooler.dense.bias, src.pooler.dense.bias[h_idx])


def _copy_layer(src: nn.Module, dst: nn.Module, arch: Architecture, h_idx: torch.Tensor, teacher_heads: int, d_t: int) -> None:
    s_att, d_att = src.attention, dst.attention
    q, k, v, o = s_att.self.query, s_att.self.key, s_att.self.value, s_att.output.dense
    a_s, d_s = arch.num_attention_heads, arch.head_dim
    # per-head views: (heads, d_t, H_t) for Q/K/V rows, (H_t, heads, d_t) for O columns
    wq, wk, wv = (m.weight.view(teacher_heads, d_t, -1) for m in (q, k, v))
    wo = o.weight.view(-1, teacher_heads, d_t)
    head_score = wv.norm(dim=(1, 2)) * wo.norm(dim=(0, 2))
    heads = _top(head_score, a_s)
    width = min(d_s, d_t)
    scale = math.sqrt(d_s / d_t)  # keeps q·k / sqrt(d) at the teacher's temperature
    new = {name: torch.zeros(a_s, d_s, len(h_idx)) for name in ("q", "k", "v")}
    new_b = {name: torch.zeros(a_s, d_s) for name in ("q", "k", "v")}
    new_o = torch.zeros(len(h_idx), a_s, d_s)
    # the student's own random rows for K and V beyond the teacher's head width (zero Q and O keep the function)
    rand_k = d_att.self.key.weight.view(a_s, d_s, -1).clone()
    rand_kb = d_att.self.key.bias.view(a_s, d_s).clone()
    rand_v = d_att.self.value.weight.view(a_s, d_s, -1).clone()
    rand_vb = d_att.self.value.bias.view(a_s, d_s).clone()
    for j, h in enumerate(heads.tolist()):
        qk_dims = _top(wq[h].norm(dim=1) * wk[h].norm(dim=1), width)
        vo_dims = _top(wv[h].norm(dim=1) * wo[:, h].norm(dim=0), width)
        new["q"][j, :width] = wq[h][qk_dims][:, h_idx] * scale
        new_b["q"][j, :width] = q.bias.view(teacher_heads, d_t)[h][qk_dims] * scale
        new["k"][j, :width] = wk[h][qk_dims][:, h_idx]
        new_b["k"][j, :width] = k.bias.view(teacher_heads, d_t)[h][qk_dims]
        new["v"][j, :width] = wv[h][vo_dims][:, h_idx]
        new_b["v"][j, :width] = v.bias.view(teacher_heads, d_t)[h][vo_dims]
        new_o[:, j, :width] = wo[:, h][h_idx][:, vo_dims]
        if d_s > d_t:
            new["k"][j, width:], new_b["k"][j, width:] = rand_k[j, width:], rand_kb[j, width:]
            new["v"][j, width:], new_b["v"][j, width:] = rand_v[j, width:], rand_vb[j, width:]
    for name, module in (("q", d_att.self.query), ("k", d_att.self.key), ("v", d_att.self.value)):
        _copy(module.weight, new[name].reshape(a_s * d_s, -1))
        _copy(module.bias, new_b[name].reshape(-1))
    _copy(d_att.output.dense.weight, new_o.reshape(len(h_idx), -1))
    _copy(d_att.output.dense.bias, o.bias[h_idx])
    _copy_layer_norm(d_att.output.LayerNorm, s_att.output.LayerNorm, h_idx)
    w_in, w_out = src.intermediate.dense.weight, src.output.dense.weight
    neurons = _top(w_in.norm(dim=1) * w_out.norm(dim=0), arch.intermediate_size)
    _copy(dst.intermediate.dense.weight, w_in[neurons][:, h_idx])
    _copy(dst.intermediate.dense.bias, src.intermediate.dense.bias[neurons])
    _copy(dst.output.dense.weight, w_out[h_idx][:, neurons])
    _copy(dst.output.dense.bias, src.output.dense.bias[h_idx])
    _copy_layer_norm(dst.output.LayerNorm, src.output.LayerNorm, h_idx)


def _copy_bert_mlm_head(src: nn.Module, dst: nn.Module, h_idx: torch.Tensor) -> None:
    _copy(dst.transform.dense.weight, src.transform.dense.weight[h_idx][:, h_idx])
    _copy(dst.transform.dense.bias, src.transform.dense.bias[h_idx])
    _copy_layer_norm(dst.transform.LayerNorm, src.transform.LayerNorm, h_idx)
    _copy(dst.bias, src.bias)
    _copy(dst.decoder.weight, src.decoder.weight[:, h_idx])  # a no-op change when tied to the word embeddings


def _copy_roberta_mlm_head(src: nn.Module, dst: nn.Module, h_idx: torch.Tensor) -> None:
    _copy(dst.dense.weight, src.dense.weight[h_idx][:, h_idx])
    _copy(dst.dense.bias, src.dense.bias[h_idx])
    _copy_layer_norm(dst.layer_norm, src.layer_norm, h_idx)
    _copy(dst.bias, src.bias)
    _copy(dst.decoder.weight, src.decoder.weight[:, h_idx])



def set_dropout(model: nn.Module, p: float) -> None:
    """Set the probability of every dropout in ``model`` (hidden and attention dropout of HF BERT/RoBERTa alike).

    The config is left unchanged, so a saved model keeps the teacher's dropout for later fine-tuning.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
