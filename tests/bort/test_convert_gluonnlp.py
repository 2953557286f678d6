"""GluonNLP/MXNet -> Hugging Face conversion reproduces MXNet's outputs (tests for bort/convert_gluonnlp.py).

MXNet 1.9.1 and GluonNLP 0.10.0 only import with numpy < 1.24, so they live in a separate environment made by
scripts/setup_gluonnlp_env.sh (run_tests.sh calls it). gluonnlp_reference.py builds small random-weight models there,
saves their .params and their outputs; here we convert and compare with transformers. Without that environment this
module is skipped with the reason printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForPreTraining

from bort.convert_gluonnlp import (ConversionConfig, GluonFormatError, GluonLayout, build_hf_config, convert,
                                  read_params)
from bort.convert_gluonnlp import main as converter_main

ROOT = Path(__file__).resolve().parents[2]
GLUON_PYTHON = Path(os.environ.get("BORT_GLUONNLP_PYTHON", ROOT / ".venv-gluonnlp" / "bin" / "python"))
REFERENCE = Path(__file__).with_name("gluonnlp_reference.py")
CONVERTER = ROOT / "bort" / "convert_gluonnlp.py"
MODELS = ["bert", "bert_encoder", "roberta", "bort"]
TOL = 1e-4

if not GLUON_PYTHON.exists():
    pytest.skip(f"GLUONNLP ENVIRONMENT MISSING ({GLUON_PYTHON}): run scripts/setup_gluonnlp_env.sh to test the "
                "GluonNLP converter against MXNet", allow_module_level=True)


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """Folder with <model>.params / <model>.npz written by MXNet + GluonNLP in the separate environment."""
    out = tmp_path_factory.mktemp("gluonnlp_ref")
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_ENGINE_TYPE="NaiveEngine")
    env.pop("PYTHONPATH", None)  # keep the main environment's packages (numpy 2) out of the MXNet process
    proc = subprocess.run([str(GLUON_PYTHON), str(REFERENCE), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"reference run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def specs(ref) -> dict:
    return json.loads((ref / "models.json").read_text())


def _convert(ref: Path, name: str, out: Path, heads: int, **kwargs) -> Path:
    return convert(ConversionConfig(params=str(ref / f"{name}.params"), output_dir=str(out),
                                    num_attention_heads=heads, **kwargs))


def _inputs(data, family: str) -> tuple[dict, np.ndarray]:
    ids = torch.from_numpy(data["input_ids"]).long()
    valid = np.arange(ids.shape[1])[None, :] < data["valid_length"][:, None]
    kwargs = {"input_ids": ids, "attention_mask": torch.from_numpy(valid).long()}
    if family == "bert":
        kwargs["token_type_ids"] = torch.from_numpy(data["token_type_ids"]).long()
    return kwargs, valid


@pytest.mark.parametrize("name", MODELS)
def test_reader_matches_mxnet_load(ref, name):
    ours = read_params(ref / f"{name}.params")
    theirs = np.load(ref / f"{name}.mxnet_load.npz")
    assert list(ours) and set(ours) == set(theirs.files)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key


def test_reader_dtypes_and_bad_files(ref, tmp_path):
    ours = read_params(ref / "dtypes.params")
    expected = np.load(ref / "dtypes.npz")
    assert set(ours) == set(expected.files)
    for key in expected.files:
        assert ours[key].dtype == expected[key].dtype and np.array_equal(ours[key], expected[key]), key
    with pytest.raises(GluonFormatError, match="unnamed list"):
        read_params(ref / "unnamed_list.params")
    truncated = tmp_path / "truncated.params"
    truncated.write_bytes((ref / "bert.params").read_bytes()[:5000])
    with pytest.raises(GluonFormatError, match="truncated"):
        read_params(truncated)
    not_params = tmp_path / "model.safetensors"
    not_params.write_bytes(b"\x00" * 64)
    with pytest.raises(GluonFormatError, match="bad header magic"):
        read_params(not_params)


@pytest.mark.parametrize("name", MODELS)
def test_converted_model_matches_mxnet(ref, specs, tmp_path, name, request):
    spec = specs[name]
    # One model is converted with the real teacher's tokenizer (same vocabulary size) to test --tokenizer.
    tokenizer = str(request.getfixturevalue("teacher_path")) if name == "bert_encoder" else None
    out = _convert(ref, name, tmp_path / name, heads=spec["heads"], tokenizer=tokenizer)
    if tokenizer:
        assert len(AutoTokenizer.from_pretrained(out)) == spec["vocab"]
    data = np.load(ref / f"{name}.npz")
    kwargs, valid = _inputs(data, spec["family"])

    config = AutoConfig.from_pretrained(out)
    # GluonNLP's `units` is the width (HF hidden_size), its `hidden_size` the FFN width (HF intermediate_size).
    assert (config.hidden_size, config.intermediate_size) == (spec["units"], spec["hidden_size"])
    assert (config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (
        spec["layers"], spec["heads"], spec["vocab"])
    assert config.model_type == spec["family"]

    model = AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        outputs = model(**kwargs, output_hidden_states=True)
    hidden = torch.stack(outputs.hidden_states[1:]).numpy()  # (layers, batch, seq, width)
    expected = data["hidden_states"]
    assert hidden.shape == expected.shape
    for layer in range(expected.shape[0]):
        np.testing.assert_allclose(hidden[layer][valid], expected[layer][valid], rtol=0, atol=TOL,
                                   err_msg=f"{name}: hidden states of layer {layer + 1}")
    if "pooled" in data.files:
        np.testing.assert_allclose(outputs.pooler_output.numpy(), data["pooled"], rtol=0, atol=TOL)
    if "mlm_logits" in data.files:
        mlm = AutoModelForMaskedLM.from_pretrained(out).eval()
        with torch.no_grad():
            logits = mlm(**kwargs).logits.numpy()
        np.testing.assert_allclose(logits[valid], data["mlm_logits"][valid], rtol=0, atol=TOL)
        assert mlm.get_output_embeddings().weight.data_ptr() == mlm.get_input_embeddings().weight.data_ptr()
    if "nsp_logits" in data.files:
        pretraining = BertForPreTraining.from_pretrained(out).eval()
        with torch.no_grad():
            nsp = pretraining(**kwargs).seq_relationship_logits.numpy()
        np.testing.assert_allclose(nsp, data["nsp_logits"], rtol=0, atol=TOL)
    record = json.loads((out / "conversion.json").read_text())
    assert record["layout"]["family"] == spec["family"] and len(record["source_sha256"]) == 64


def test_unknown_layout_names_the_parameter(ref, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(GluonFormatError, match=r"unknown layout.*encoder\.rel_pos_bias\.weight"):
        _convert(ref, "unknown_layout", out, heads=4)
    with pytest.raises(GluonFormatError, match=r"missing parameter names decoder\.2\.gamma"):
        _convert(ref, "incomplete", out, heads=4)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_bad_options_and_existing_output(ref, specs, tmp_path, teacher_path):
    with pytest.raises(ValueError, match="attention heads is not stored"):
        convert(ConversionConfig(params=str(ref / "bort.params"), output_dir=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="does not divide"):
        _convert(ref, "bort", tmp_path / "a", heads=5)
    with pytest.raises(ValueError, match="has 30522 tokens but .* vocabulary of 70"):
        _convert(ref, "bort", tmp_path / "a", heads=4, tokenizer=str(teacher_path))
    with pytest.raises(GluonFormatError, match="does not match --model-name bort_4_8_768_1024"):
        convert(ConversionConfig(params=str(ref / "bort.params"), output_dir=str(tmp_path / "a"),
                                 model_name="bort_4_8_768_1024"))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="exists and is not empty"):
        _convert(ref, "bort", existing, heads=4)
    with pytest.raises(GluonFormatError):  # a failing conversion leaves the old folder as it was
        _convert(ref, "unknown_layout", existing, heads=4, overwrite=True)
    assert (existing / "keep.txt").read_text() == "user data"
    _convert(ref, "bort", existing, heads=specs["bort"]["heads"], overwrite=True)
    assert not (existing / "keep.txt").exists() and (existing / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no temporary folders left behind


def test_cli_help_and_exit_codes(ref, specs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        converter_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--model-name", "--num-attention-heads", "--hidden-act", "--layer-norm-eps", "--pad-token-id",
                   "--tokenizer", "--overwrite", "bort_4_8_768_1024", "roberta_24_1024_16"):
        assert option in help_text, option
    with pytest.raises(SystemExit) as exit_info:
        converter_main([str(ref / "bort.params"), str(tmp_path / "y"), "--num-attention-heads", "0"])
    assert exit_info.value.code == 2 and "--num-attention-heads must be >= 1" in capsys.readouterr().err
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "bort_hf"
    ok = subprocess.run([sys.executable, str(CONVERTER), str(ref / "bort.params"), str(out), "--num-attention-heads",
                         str(specs["bort"]["heads"])], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "RobertaForMaskedLM" in ok.stdout and (out / "config.json").is_file()
    bad = subprocess.run([sys.executable, str(CONVERTER), str(ref / "unknown_layout.params"), str(tmp_path / "x"),
                          "--num-attention-heads", "4"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "encoder.rel_pos_bias.weight" in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model_name, layers, width, ffn, heads", [
    ("bort_4_8_768_1024", 4, 1024, 768, 8),  # Bort: <D, A, H, I> = <4, 8, 1024, 768> (de Wynter & Perry 2020)
    ("roberta_24_1024_16", 24, 1024, 4096, 16),  # RoBERTa-large (Liu et al. 2019)
])
def test_presets_of_the_released_checkpoints(model_name, layers, width, ffn, heads):
    def layout(hidden_size, intermediate_size):
        return GluonLayout(family="roberta", num_hidden_layers=layers, hidden_size=hidden_size,
                           intermediate_size=intermediate_size, vocab_size=50265, max_length=512, type_vocab_size=0,
                           has_pooler=False, has_nsp=False, has_decoder=True, decoder_tied=True)

    options = ConversionConfig(params=f"{model_name}.params", output_dir="unused", model_name=model_name)
    config, resolved = build_hf_config(layout(width, ffn), options)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads) == (
        layers, width, ffn, heads)
    assert config.model_type == "roberta" and config.layer_norm_eps == 1e-5 and config.pad_token_id == 1
    assert config.max_position_embeddings == 514  # 512 GluonNLP positions after RoBERTa's offset of pad id + 1
    with pytest.raises(GluonFormatError, match=f"does not match --model-name {model_name}"):
        build_hf_config(layout(ffn, width), options)  # GluonNLP's units / hidden_size read the wrong way round
