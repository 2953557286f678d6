"""Convert GluonNLP 0.x checkpoints of the BERT and RoBERTa families (Bort included) to Hugging Face folders.

Bort (de Wynter and Perry, 2020, "Optimal Subarchitecture Extraction For BERT", §5) was released as a GluonNLP/MXNet
`.params` file, as were GluonNLP's model-zoo BERT and RoBERTa weights. This module turns such a file into a folder
that `transformers.AutoModel` (and `AutoModelForMaskedLM`, when the file holds the masked-LM decoder) loads, so those
checkpoints can serve as teachers or students here.

Reading: a `.params` file is MXNet's NDArray list format (`mx.nd.save` of a name -> array dict, as written by
Gluon's `save_parameters`): a little-endian header (uint64 magic 0x112, uint64 reserved), uint64 count, the arrays,
uint64 count, the names (uint64 length + UTF-8 bytes each). Each dense array is a uint32 magic (0xF993FAC9 for
version 2, 0xF993FACA for version 3 "np shape", 0xF993FAC8 for version 1; older files start directly with a uint32
ndim), an int32 storage type (versions 2-3; 0 = dense), the shape (uint32 ndim + int64 dims; uint32 dims in the
oldest format), the context (int32 device type, int32 device id), an int32 dtype flag (mshadow's: 0 float32,
1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, 12 bfloat16) and the raw C-order data. The format is
read here with numpy alone, so converting needs no MXNet (which only imports with numpy < 1.24); sparse arrays are
refused. Source: apache/incubator-mxnet 1.x, src/ndarray/ndarray.cc (NDArray::Save/Load).

Parameter names (GluonNLP 0.10.0 gluonnlp/model/bert.py, BERTModel/RoBERTaModel/BERTEncoder; GluonNLP 0.9, which
Bort used, writes the same names): `word_embed.0.weight`, `token_type_embed.0.weight` (BERT only),
`encoder.position_weight`, `encoder.layer_norm.{gamma,beta}` (the embedding LayerNorm),
`encoder.transformer_cells.<i>.attention_cell.proj_{query,key,value}.{weight,bias}`,
`...<i>.proj.{weight,bias}`, `...<i>.layer_norm.{gamma,beta}` (post-attention), `...<i>.ffn.ffn_{1,2}.{weight,bias}`,
`...<i>.ffn.layer_norm.{gamma,beta}` (post-FFN), optionally `pooler.{weight,bias}`, `classifier.{weight,bias}` (next
sentence prediction) and the masked-LM decoder `decoder.0` (dense), `decoder.2` (LayerNorm), `decoder.3` (output,
tied to the word embedding). Names differ in one trap: GluonNLP's `units` is the model width (Hugging Face
`hidden_size`) and its `hidden_size` is the FFN width (Hugging Face `intermediate_size`); only Hugging Face meanings
are used below. Bort's `bort_4_8_768_1024` is 4 layers, 8 heads, FFN 768, width 1024.

RoBERTa-family weights (no token-type embedding) become `RobertaModel`: GluonNLP numbers positions from 0 while
Hugging Face's RoBERTa numbers them from `pad_token_id + 1`, so the position table is shifted by that offset
(rows up to the padding index are zero) and `max_position_embeddings` grows by `pad_token_id + 1`. Hidden states agree
on every non-padding token as long as padding tokens appear only after the text (the usual right padding).

Usage: python bort/convert_gluonnlp.py CHECKPOINT.params OUTPUT_DIR --model-name bort_4_8_768_1024 [options]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GLUON_PRESETS",
    "ConversionConfig",
    "GluonFormatError",
    "GluonLayout",
    "GluonPreset",
    "build_hf_config",
    "convert",
    "detect_layout",
    "read_params",
    "to_hf_state_dict",
]

# ------------------------------------------------------------------------------------------------ reading .params

_LIST_MAGIC = 0x112
_V1_MAGIC, _V2_MAGIC, _V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64,
           7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64}
_BFLOAT16 = 12


class GluonFormatError(ValueError):
    """A `.params` file that is not a readable dense MXNet NDArray dict, or of an unknown model layout."""


class _Reader:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GluonFormatError(f"{self.path}: truncated or not an MXNet .params file (needed {n} bytes at "
                                   f"offset {self.pos}, file has {len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> int:
        return int(np.frombuffer(self.take(np.dtype(fmt).itemsize), dtype=fmt)[0])


def _read_array(r: _Reader, index: int) -> np.ndarray:
    magic = r.scalar("<u4")
    if magic in (_V2_MAGIC, _V3_MAGIC):
        stype = r.scalar("<i4")
        if stype != 0:
            raise GluonFormatError(f"{r.path}: array #{index} has sparse storage type {stype}; only dense arrays "
                                   "are supported")
        ndim = r.scalar("<u4")
        shape = tuple(np.frombuffer(r.take(8 * ndim), dtype="<i8").tolist())
    elif magic == _V1_MAGIC:
        ndim = r.scalar("<u4")
        shape = tuple(np.frombuffer(r.take(8 * ndim), dtype="<i8").tolist())
    elif magic < 64:  # the oldest format stores ndim here, then uint32 dims
        ndim = magic
        shape = tuple(np.frombuffer(r.take(4 * ndim), dtype="<u4").tolist())
    else:
        raise GluonFormatError(f"{r.path}: array #{index} starts with unknown magic 0x{magic:08X}")
    if ndim == 0 or any(d < 0 for d in shape):
        raise GluonFormatError(f"{r.path}: array #{index} has no data (shape {shape})")
    r.take(8)  # context: device type and id; arrays are loaded on the CPU regardless
    flag = r.scalar("<i4")
    count = int(np.prod(shape))
    if flag == _BFLOAT16:
        raw = np.frombuffer(r.take(2 * count), dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    if flag not in _DTYPES:
        raise GluonFormatError(f"{r.path}: array #{index} has unknown dtype flag {flag}")
    dtype = np.dtype(_DTYPES[flag]).newbyteorder("<")
    return np.frombuffer(r.take(dtype.itemsize * count), dtype=dtype).reshape(shape)


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray dict file (Gluon `save_parameters` / `mx.nd.save` of a dict) without MXNet.

    Returns name -> array in file order, in the stored dtype (bfloat16 widened to float32); the arrays are
    read-only views into the file's bytes (one copy of the file in memory).
    Raises GluonFormatError for files that are missing, truncated, not in the format, unnamed lists or sparse.
    """
    path = Path(path)
    if not path.is_file():
        raise GluonFormatError(f"{path}: no such file")
    data = path.read_bytes()  # the arrays below are read-only views into it: no second copy
    if len(data) < 24:
        raise GluonFormatError(f"{path}: too short to be an MXNet .params file")
    r = _Reader(memoryview(data), path)
    if r.scalar("<u8") != _LIST_MAGIC:
        raise GluonFormatError(f"{path}: not an MXNet .params file (bad header magic)")
    r.take(8)  # reserved
    arrays = [_read_array(r, i) for i in range(r.scalar("<u8"))]
    names = [bytes(r.take(r.scalar("<u8"))).decode("utf-8", errors="replace") for _ in range(r.scalar("<u8"))]
    if len(names) != len(arrays):
        raise GluonFormatError(f"{path}: {len(arrays)} arrays but {len(names)} names (an unnamed list, not a "
                               "Gluon parameter dict)")
    return dict(zip(names, arrays))


# ------------------------------------------------------------------------------------------------ layouts

@dataclass(frozen=True)
class GluonPreset:
    """A named GluonNLP architecture, in Hugging Face terms (`hidden_size` = model width, GluonNLP's `units`)."""

    family: str  # "bert" (token types, BertModel) or "roberta" (no token types, RobertaModel)
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int  # GluonNLP's `hidden_size`
    num_attention_heads: int
    max_length: int  # GluonNLP's position table length
    hidden_act: str
    layer_norm_eps: float


# Sources: GluonNLP 0.10.0 gluonnlp/model/bert.py (*_hparams); Bort: alexa/bort bort/bort.py (bort_*_hparams).
GLUON_PRESETS: dict[str, GluonPreset] = {
    "bert_12_768_12": GluonPreset("bert", 12, 768, 3072, 12, 512, "gelu", 1e-12),
    "bert_24_1024_16": GluonPreset("bert", 24, 1024, 4096, 16, 512, "gelu", 1e-12),
    "ernie_12_768_12": GluonPreset("bert", 12, 768, 3072, 12, 513, "relu", 1e-5),
    "roberta_12_768_12": GluonPreset("roberta", 12, 768, 3072, 12, 512, "gelu", 1e-5),
    "roberta_24_1024_16": GluonPreset("roberta", 24, 1024, 4096, 16, 512, "gelu", 1e-5),
    "bort_4_8_768_1024": GluonPreset("roberta", 4, 1024, 768, 8, 512, "gelu", 1e-5),
    "bort_2_16_512_1024": GluonPreset("roberta", 2, 1024, 512, 16, 512, "gelu", 1e-5),
}

_CELL = re.compile(r"encoder\.transformer_cells\.(\d+)\.(.+)")
_CELL_PARAMS = tuple(f"attention_cell.proj_{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")) + (
    "proj.weight", "proj.bias", "layer_norm.gamma", "layer_norm.beta", "ffn.ffn_1.weight", "ffn.ffn_1.bias",
    "ffn.ffn_2.weight", "ffn.ffn_2.bias", "ffn.layer_norm.gamma", "ffn.layer_norm.beta")
_CORE = ("word_embed.0.weight", "encoder.position_weight", "encoder.layer_norm.gamma", "encoder.layer_norm.beta")
_GROUPS = {
    "token_type": ("token_type_embed.0.weight",),
    "pooler": ("pooler.weight", "pooler.bias"),
    "nsp": ("classifier.weight", "classifier.bias"),
    "decoder": ("decoder.0.weight", "decoder.0.bias", "decoder.2.gamma", "decoder.2.beta", "decoder.3.weight",
                "decoder.3.bias"),
}


@dataclass(frozen=True)
class GluonLayout:
    """What a `.params` file holds, read from its names and shapes (Hugging Face meanings of the sizes)."""

    family: str  # "bert" or "roberta"
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_length: int
    type_vocab_size: int  # 0 for the RoBERTa family
    has_pooler: bool
    has_nsp: bool
    has_decoder: bool
    decoder_tied: bool  # decoder.3.weight equals word_embed.0.weight


def _list(names) -> str:
    names = sorted(names)
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def detect_layout(params: dict[str, np.ndarray], source: str = "checkpoint") -> GluonLayout:
    """Check the names and shapes of a GluonNLP BERT/RoBERTa parameter dict and describe it.

    Raises GluonFormatError naming unexpected names, missing names of a present part, or inconsistent shapes.
    """
    names = set(params)
    layers: dict[int, set[str]] = {}
    for name in names:
        m = _CELL.fullmatch(name)
        if m and m.group(2) in _CELL_PARAMS:
            layers.setdefault(int(m.group(1)), set()).add(m.group(2))
    known = set(_CORE) | {n for group in _GROUPS.values() for n in group}
    known |= {f"encoder.transformer_cells.{i}.{p}" for i in layers for p in _CELL_PARAMS}
    unexpected = names - known
    if unexpected:
        raise GluonFormatError(f"{source}: unknown layout: unexpected parameter names {_list(unexpected)} "
                               "(expected a GluonNLP 0.x BERTModel/RoBERTaModel saved with save_parameters)")
    missing = [n for n in _CORE if n not in names]
    if not layers:
        missing.append("encoder.transformer_cells.0.*")
    if sorted(layers) != list(range(len(layers))):
        missing.append(f"encoder.transformer_cells.<i> for i in {sorted(set(range(max(layers) + 1)) - set(layers))}")
    for i, present in sorted(layers.items()):
        missing += [f"encoder.transformer_cells.{i}.{p}" for p in _CELL_PARAMS if p not in present]
    parts = {}
    for part, group in _GROUPS.items():
        have = [n for n in group if n in names]
        parts[part] = bool(have)
        if have and len(have) != len(group):
            missing += [n for n in group if n not in names]
    if missing:
        raise GluonFormatError(f"{source}: incomplete checkpoint: missing parameter names {_list(missing)}")
    if parts["nsp"] and not (parts["pooler"] and parts["token_type"]):
        raise GluonFormatError(f"{source}: unknown layout: a next-sentence classifier without a pooler and "
                               "token-type embedding")

    vocab_size, width = params["word_embed.0.weight"].shape
    max_length = params["encoder.position_weight"].shape[0]
    ffn = params["encoder.transformer_cells.0.ffn.ffn_1.weight"].shape[0]
    type_vocab = params["token_type_embed.0.weight"].shape[0] if parts["token_type"] else 0
    expected = {"word_embed.0.weight": (vocab_size, width), "encoder.position_weight": (max_length, width),
                "encoder.layer_norm.gamma": (width,), "encoder.layer_norm.beta": (width,),
                "token_type_embed.0.weight": (type_vocab, width), "pooler.weight": (width, width),
                "pooler.bias": (width,), "classifier.weight": (2, width), "classifier.bias": (2,),
                "decoder.0.weight": (width, width), "decoder.0.bias": (width,), "decoder.2.gamma": (width,),
                "decoder.2.beta": (width,), "decoder.3.weight": (vocab_size, width), "decoder.3.bias": (vocab_size,)}
    cell_shapes = {"proj.weight": (width, width), "ffn.ffn_1.weight": (ffn, width), "ffn.ffn_1.bias": (ffn,),
                   "ffn.ffn_2.weight": (width, ffn)}
    for i in layers:
        for p in _CELL_PARAMS:
            shape = cell_shapes.get(p, (width, width) if p.endswith("weight") else (width,))
            expected[f"encoder.transformer_cells.{i}.{p}"] = shape
    wrong = [f"{n} {tuple(params[n].shape)} (expected {s})" for n, s in expected.items()
             if n in params and tuple(params[n].shape) != s]
    if wrong:
        raise GluonFormatError(f"{source}: inconsistent shapes: {'; '.join(wrong[:6])}")
    for n, a in params.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise GluonFormatError(f"{source}: parameter {n} has non-float dtype {a.dtype}")
    tied = parts["decoder"] and np.array_equal(params["decoder.3.weight"], params["word_embed.0.weight"])
    return GluonLayout(family="bert" if parts["token_type"] else "roberta", num_hidden_layers=len(layers),
                       hidden_size=width, intermediate_size=ffn, vocab_size=vocab_size, max_length=max_length,
                       type_vocab_size=type_vocab, has_pooler=parts["pooler"], has_nsp=parts["nsp"],
                       has_decoder=parts["decoder"], decoder_tied=bool(tied))


# ------------------------------------------------------------------------------------------------ mapping

def _hf_classes(layout: GluonLayout):
    """(model class, its base-model prefix) for the parts present."""
    import transformers as tf

    if layout.family == "bert":
        if layout.has_decoder and layout.has_nsp:
            return tf.BertForPreTraining, "bert."
        if layout.has_decoder:
            return tf.BertForMaskedLM, "bert."
        if layout.has_nsp:
            return tf.BertForNextSentencePrediction, "bert."
        return tf.BertModel, ""
    return (tf.RobertaForMaskedLM, "roberta.") if layout.has_decoder else (tf.RobertaModel, "")


def to_hf_state_dict(params: dict[str, np.ndarray], layout: GluonLayout, pad_token_id: int,
                     head_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Rename and reshape GluonNLP parameters to a Hugging Face Bert*/Roberta* state dict (float32).

    `pad_token_id` only matters for the RoBERTa family: the GluonNLP position table (max_length, width) is placed at
    rows pad_token_id + 1 ... of a (max_length + pad_token_id + 1, width) table whose first rows are zero.
    `head_prefix` is the base-model prefix ("bert.", "roberta." or ""); by default the one for the parts present.
    """
    if head_prefix is None:
        head_prefix = _hf_classes(layout)[1]
    t = {n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in params.items()}  # copies: writable
    p = head_prefix
    out: dict[str, torch.Tensor] = {}
    emb = f"{p}embeddings."
    out[emb + "word_embeddings.weight"] = t["word_embed.0.weight"]
    if layout.family == "bert":
        out[emb + "position_embeddings.weight"] = t["encoder.position_weight"]
        out[emb + "token_type_embeddings.weight"] = t["token_type_embed.0.weight"]
    else:
        offset = pad_token_id + 1
        table = torch.zeros(layout.max_length + offset, layout.hidden_size)
        table[offset:] = t["encoder.position_weight"]
        out[emb + "position_embeddings.weight"] = table
        out[emb + "token_type_embeddings.weight"] = torch.zeros(1, layout.hidden_size)
    out[emb + "LayerNorm.weight"] = t["encoder.layer_norm.gamma"]
    out[emb + "LayerNorm.bias"] = t["encoder.layer_norm.beta"]
    cell_map = {"attention_cell.proj_query": "attention.self.query", "attention_cell.proj_key": "attention.self.key",
                "attention_cell.proj_value": "attention.self.value", "proj": "attention.output.dense",
                "ffn.ffn_1": "intermediate.dense", "ffn.ffn_2": "output.dense"}
    ln_map = {"layer_norm": "attention.output.LayerNorm", "ffn.layer_norm": "output.LayerNorm"}
    for i in range(layout.num_hidden_layers):
        src, dst = f"encoder.transformer_cells.{i}.", f"{p}encoder.layer.{i}."
        for g, h in cell_map.items():
            out[f"{dst}{h}.weight"] = t[f"{src}{g}.weight"]
            out[f"{dst}{h}.bias"] = t[f"{src}{g}.bias"]
        for g, h in ln_map.items():
            out[f"{dst}{h}.weight"] = t[f"{src}{g}.gamma"]
            out[f"{dst}{h}.bias"] = t[f"{src}{g}.beta"]
    if layout.has_pooler:
        out[f"{p}pooler.dense.weight"] = t["pooler.weight"]
        out[f"{p}pooler.dense.bias"] = t["pooler.bias"]
    if layout.has_nsp:
        out["cls.seq_relationship.weight"] = t["classifier.weight"]
        out["cls.seq_relationship.bias"] = t["classifier.bias"]
    if layout.has_decoder:
        if layout.family == "bert":
            head = {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
                    "decoder": "cls.predictions.decoder", "bias": "cls.predictions.bias"}
        else:
            head = {"dense": "lm_head.dense", "norm": "lm_head.layer_norm", "decoder": "lm_head.decoder",
                    "bias": "lm_head.bias"}
        out[head["dense"] + ".weight"] = t["decoder.0.weight"]
        out[head["dense"] + ".bias"] = t["decoder.0.bias"]
        out[head["norm"] + ".weight"] = t["decoder.2.gamma"]
        out[head["norm"] + ".bias"] = t["decoder.2.beta"]
        out[head["decoder"] + ".weight"] = t["decoder.3.weight"]
        out[head["decoder"] + ".bias"] = t["decoder.3.bias"]
        out[head["bias"]] = t["decoder.3.bias"]
    return out


# ------------------------------------------------------------------------------------------------ conversion

@dataclass
class ConversionConfig:
    """Options of one conversion (CLI: python bort/convert_gluonnlp.py --help)."""

    params: str  # the GluonNLP .params file
    output_dir: str  # the Hugging Face folder to write (must not exist or be empty unless overwrite)
    model_name: str | None = None  # a GLUON_PRESETS name: heads, activation, LayerNorm eps and a shape check
    num_attention_heads: int | None = None  # required without model_name (not stored in .params)
    hidden_act: str | None = None  # "gelu" (erf) or "relu"; default: preset's, else "gelu"
    layer_norm_eps: float | None = None  # default: preset's, else 1e-12 (BERT family) / 1e-5 (RoBERTa family)
    pad_token_id: int | None = None  # default: tokenizer's, else 0 (BERT) / 1 (RoBERTa)
    tokenizer: str | None = None  # Hugging Face tokenizer (name or folder) saved alongside; must match ids
    overwrite: bool = False

    def __post_init__(self):
        if self.model_name is not None and self.model_name not in GLUON_PRESETS:
            raise ValueError(f"--model-name {self.model_name!r} is not one of {', '.join(GLUON_PRESETS)}")
        if self.num_attention_heads is not None and self.num_attention_heads < 1:
            raise ValueError(f"--num-attention-heads must be >= 1, got {self.num_attention_heads}")
        if self.hidden_act not in (None, "gelu", "relu"):
            raise ValueError(f"--hidden-act must be gelu or relu, got {self.hidden_act!r}")
        if self.layer_norm_eps is not None and not self.layer_norm_eps > 0:
            raise ValueError(f"--layer-norm-eps must be > 0, got {self.layer_norm_eps}")
        if self.pad_token_id is not None and self.pad_token_id < 0:
            raise ValueError(f"--pad-token-id must be >= 0, got {self.pad_token_id}")


def _resolve(config: ConversionConfig, layout: GluonLayout, tokenizer) -> dict:
    preset = GLUON_PRESETS.get(config.model_name) if config.model_name else None
    if preset is not None:
        got = (layout.family, layout.num_hidden_layers, layout.hidden_size, layout.intermediate_size,
               layout.max_length)
        want = (preset.family, preset.num_hidden_layers, preset.hidden_size, preset.intermediate_size,
                preset.max_length)
        if got != want:
            fields = "family, layers, hidden_size, intermediate_size, positions"
            raise GluonFormatError(f"{config.params}: does not match --model-name {config.model_name}: "
                                   f"({fields}) = {got} in the file, {want} expected")
    heads = config.num_attention_heads or (preset.num_attention_heads if preset else None)
    if heads is None:
        raise ValueError("the number of attention heads is not stored in .params files: pass --model-name "
                         f"(one of {', '.join(GLUON_PRESETS)}) or --num-attention-heads")
    if layout.hidden_size % heads:
        raise ValueError(f"--num-attention-heads {heads} does not divide the model width {layout.hidden_size}")
    pad = config.pad_token_id
    if pad is None and tokenizer is not None and tokenizer.pad_token_id is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = 0 if layout.family == "bert" else 1
    if pad >= layout.vocab_size:
        raise ValueError(f"--pad-token-id {pad} is outside the vocabulary of {layout.vocab_size} tokens")
    return {
        "num_attention_heads": heads,
        "hidden_act": config.hidden_act or (preset.hidden_act if preset else "gelu"),
        "layer_norm_eps": config.layer_norm_eps or (preset.layer_norm_eps if preset
                                                    else 1e-12 if layout.family == "bert" else 1e-5),
        "pad_token_id": pad,
    }


def build_hf_config(layout: GluonLayout, config: ConversionConfig, tokenizer=None):
    """The Hugging Face BertConfig/RobertaConfig for a detected layout and the options; returns (config, resolved).

    `resolved` holds the values taken from the options, the `--model-name` preset or the family defaults:
    num_attention_heads, hidden_act, layer_norm_eps, pad_token_id. Raises GluonFormatError when the layout does not
    match the preset, ValueError for missing or inconsistent options.
    """
    import transformers as tf

    resolved = _resolve(config, layout, tokenizer)
    common = dict(vocab_size=layout.vocab_size, hidden_size=layout.hidden_size,
                  num_hidden_layers=layout.num_hidden_layers, num_attention_heads=resolved["num_attention_heads"],
                  intermediate_size=layout.intermediate_size, hidden_act=resolved["hidden_act"],
                  layer_norm_eps=resolved["layer_norm_eps"], pad_token_id=resolved["pad_token_id"],
                  tie_word_embeddings=layout.decoder_tied or not layout.has_decoder)
    if layout.family == "bert":
        hf = tf.BertConfig(max_position_embeddings=layout.max_length, type_vocab_size=layout.type_vocab_size,
                           **common)
    else:
        hf = tf.RobertaConfig(max_position_embeddings=layout.max_length + resolved["pad_token_id"] + 1,
                              type_vocab_size=1, **common)
    return hf, resolved


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(config: ConversionConfig) -> Path:
    """Convert `config.params` into the Hugging Face folder `config.output_dir`; returns the folder.

    The folder holds config.json, model.safetensors, conversion.json (the resolved options, detected layout and
    the source's SHA-256) and, with `config.tokenizer`, the tokenizer files. It is written under a temporary name in
    the same parent folder and renamed at the end, so a failure leaves no partial output and an existing folder is
    replaced only when everything succeeded (and only with `config.overwrite`).

    Raises GluonFormatError (unreadable file or unknown layout) and ValueError (bad options, existing output).
    """
    src, out = Path(config.params), Path(config.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.overwrite:
        raise ValueError(f"{out} exists and is not empty: choose another output folder or pass --overwrite")
    params = read_params(src)
    layout = detect_layout(params, source=str(src))
    tokenizer = None
    if config.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        if len(tokenizer) != layout.vocab_size:
            raise ValueError(f"--tokenizer {config.tokenizer} has {len(tokenizer)} tokens but {src} has a "
                             f"vocabulary of {layout.vocab_size}")
    hf_config, resolved = build_hf_config(layout, config, tokenizer)
    model_cls, prefix = _hf_classes(layout)
    state = to_hf_state_dict(params, layout, resolved["pad_token_id"], prefix)
    del params
    kwargs = {"add_pooling_layer": layout.has_pooler} if model_cls.__name__ in ("BertModel", "RobertaModel") else {}
    model = model_cls(hf_config, **kwargs).eval()
    expected = set(model.state_dict())
    if set(state) != expected:
        raise RuntimeError(f"internal mapping error for {model_cls.__name__}: missing {_list(expected - set(state))}"
                           f"; extra {_list(set(state) - expected)}")
    model.load_state_dict(state, strict=True)
    if layout.has_decoder and layout.decoder_tied:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    from data.files import atomic_folder  # here: run as a script, the project root joins sys.path only in __main__

    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {"source": str(src), "source_sha256": _sha256(src), "hf_class": model_cls.__name__,
                  "layout": dataclasses.asdict(layout), "resolved": resolved, "options": dataclasses.asdict(config),
                  "position_offset": 0 if layout.family == "bert" else resolved["pad_token_id"] + 1}
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------ CLI

def _parse_args(argv: list[str] | None = None) -> ConversionConfig:
    presets = "; ".join(f"{n}: {p.family}, {p.num_hidden_layers} layers, width {p.hidden_size}, FFN "
                        f"{p.intermediate_size}, {p.num_attention_heads} heads" for n, p in GLUON_PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="convert_gluonnlp.py",
        description="Convert a GluonNLP 0.x BERT/RoBERTa/Bort .params checkpoint into a Hugging Face folder "
                    "(config.json + model.safetensors) that AutoModel and, when the checkpoint has the masked-LM "
                    "decoder, AutoModelForMaskedLM load. Needs no MXNet.",
        epilog=f"Presets: {presets}. Exit status 2 on bad input (unreadable file, unknown layout, bad option).")
    parser.add_argument("params", help="GluonNLP .params file (written by Gluon's save_parameters)")
    parser.add_argument("output_dir", help="Hugging Face folder to create (must not exist or be empty)")
    parser.add_argument("--model-name", choices=sorted(GLUON_PRESETS), default=None, metavar="NAME",
                        help=f"GluonNLP architecture name ({', '.join(GLUON_PRESETS)}): gives the number of heads, activation and LayerNorm "
                             "epsilon, and checks the file's shapes against it")
    parser.add_argument("--num-attention-heads", type=int, default=None, metavar="N",
                        help="attention heads (not stored in .params); required without --model-name, overrides it")
    parser.add_argument("--hidden-act", choices=("gelu", "relu"), default=None,
                        help="FFN activation (gelu = exact erf GELU, GluonNLP's default); default: the preset's, "
                             "else gelu")
    parser.add_argument("--layer-norm-eps", type=float, default=None, metavar="EPS",
                        help="LayerNorm epsilon; default: the preset's, else 1e-12 for BERT-family files (with "
                             "token types) and 1e-5 for RoBERTa-family files")
    parser.add_argument("--pad-token-id", type=int, default=None, metavar="ID",
                        help="padding token id; for RoBERTa-family files it also sets the position offset "
                             "(pad_token_id + 1). Default: the tokenizer's, else 0 (BERT) or 1 (RoBERTa/Bort)")
    parser.add_argument("--tokenizer", default=None, metavar="NAME_OR_DIR",
                        help="Hugging Face tokenizer name or folder to save with the model (e.g. roberta-base for "
                             "RoBERTa/Bort, bert-base-uncased for BERT); its ids must be the checkpoint's")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty OUTPUT_DIR (only after the conversion succeeded)")
    args = parser.parse_args(argv)
    try:
        return ConversionConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = _parse_args(argv)
    try:
        out = convert(config)
    except (GluonFormatError, ValueError, OSError) as exc:
        print(f"convert_gluonnlp.py: error: {exc}", file=sys.stderr)
        return 2
    record = json.loads((out / "conversion.json").read_text())
    print(f"wrote {out} ({record['hf_class']}, {record['layout']['num_hidden_layers']} layers, "
          f"width {record['layout']['hidden_size']}, FFN {record['layout']['intermediate_size']})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
