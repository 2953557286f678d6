"""Teachers and students: loading a teacher, building a student of an architecture, extracting it from the teacher.

Extraction keeps the teacher's most important parts, in the spirit of DynaBERT (Hou et al. 2020, arXiv 2004.04037,
§3.1), which ranks attention heads and feed-forward neurons and keeps the top ones. DynaBERT scores them by the loss
change of a task; our teachers may have no head to compute such a loss, so we rank by weight magnitude, which needs no
data:

- hidden channels (H): by the summed absolute LayerNorm gains over the whole encoder;
- layers (D): evenly spaced, always keeping the last layer;
- heads (A), per layer: by ‖W_V rows of the head‖·‖W_O columns of the head‖;
- dimensions inside a head when the student's head is narrower: Q/K dimensions by ‖W_Q row‖·‖W_K row‖, V/O by
  ‖W_V row‖·‖W_O column‖, with queries scaled by sqrt(d_student / d_teacher) to keep the teacher's attention
  temperature; when it is wider, it holds ⌈d_student / d_teacher⌉ whole teacher heads side by side (merged heads), so
  every dimension starts from the teacher and the Q/K/V relations of each teacher-width slice are the teacher's;
  dimensions left over when the teacher runs out of heads start with zero queries and zero output columns;
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


class ModelSourceError(ValueError):
    """A model folder or hub name that cannot be found or read."""


class TeacherError(ModelSourceError):
    """A teacher that cannot be found, read or used."""


def is_local_name(name_or_path: str) -> bool:
    """Whether a model or tokenizer name means a folder here (absolute, starting with ``.`` or ``~``, or existing)
    rather than a hub name."""
    path = Path(name_or_path).expanduser()
    return path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()


def load_model_config(name_or_path: str, role: str = "model") -> PretrainedConfig:
    """The config of a local Hugging Face folder or hub model name; ``role`` names it in errors (e.g. ``--oracle``).

    A name that :func:`is_local_name` takes for a folder must be one; any other is a hub name.

    Raises:
        ModelSourceError: the folder does not exist or has no config.json, or the hub name cannot be resolved (the
            message's first line of the hub's error: no such model, or no connection).
    """
    path = Path(name_or_path).expanduser()
    looks_local = is_local_name(name_or_path)
    if looks_local and not path.is_dir():
        raise ModelSourceError(f"{role} folder {name_or_path} does not exist")
    if looks_local and not (path / "config.json").is_file():
        raise ModelSourceError(f"{role} folder {name_or_path} has no config.json")
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"cannot load {role} {name_or_path!r}: {first}") from exc


def load_teacher_config(name_or_path: str) -> PretrainedConfig:
    """The config of a local Hugging Face folder or hub model name.

    Raises:
        TeacherError: if the folder has no readable config.json or the hub name cannot be resolved.
    """
    try:
        return load_model_config(name_or_path, "teacher")
    except ModelSourceError as exc:
        raise TeacherError(str(exc)) from exc.__cause__


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
    new = {name: torch.zeros(a_s, d_s, len(h_idx)) for name in ("q", "k", "v")}
    new_b = {name: torch.zeros(a_s, d_s) for name in ("q", "k", "v")}
    new_o = torch.zeros(len(h_idx), a_s, d_s)
    teacher_b = {"q": q.bias.view(teacher_heads, d_t), "k": k.bias.view(teacher_heads, d_t),
                 "v": v.bias.view(teacher_heads, d_t)}

    def fill(j: int, start: int, h: int, width: int, scale: float) -> None:
        """Copy the top ``width`` dimensions of teacher head h into student head j from dimension ``start``."""
        qk_dims = _top(wq[h].norm(dim=1) * wk[h].norm(dim=1), width)
        vo_dims = _top(wv[h].norm(dim=1) * wo[:, h].norm(dim=0), width)
        span = slice(start, start + width)
        for name, w, dims in (("q", wq, qk_dims), ("k", wk, qk_dims), ("v", wv, vo_dims)):
            factor = scale if name == "q" else 1.0
            new[name][j, span] = w[h][dims][:, h_idx] * factor
            new_b[name][j, span] = teacher_b[name][h][dims] * factor
        new_o[:, j, span] = wo[:, h][h_idx][:, vo_dims]

    if d_s <= d_t:
        # one teacher head per student head, its most important dimensions; queries scaled by sqrt(d_s / d_t)
        # keep q·k / sqrt(d) at the teacher's temperature
        for j, h in enumerate(_top(head_score, a_s).tolist()):
            fill(j, 0, h, d_s, math.sqrt(d_s / d_t))
    else:
        # a wider head holds ceil(d_s / d_t) whole teacher heads side by side (the most important heads, grouped in
        # the teacher's order), so its relations per teacher-width slice are the teacher's; dimensions left over
        # when the teacher runs out of heads keep zero queries and output columns (no effect on the function)
        per_head = math.ceil(d_s / d_t)
        chosen = _top(head_score, min(teacher_heads, a_s * per_head)).tolist()
        rand = {name: (getattr(d_att.self, module).weight.view(a_s, d_s, -1).clone(),
                       getattr(d_att.self, module).bias.view(a_s, d_s).clone())
                for name, module in (("k", "key"), ("v", "value"))}
        for j in range(a_s):
            group = chosen[j * per_head:(j + 1) * per_head]
            for g, h in enumerate(group):
                fill(j, g * d_t, h, min(d_t, d_s - g * d_t), 1.0)
            filled = min(d_s, len(group) * d_t)
            for name, (weight, bias) in rand.items():
                new[name][j, filled:], new_b[name][j, filled:] = weight[j, filled:], bias[j, filled:]
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
