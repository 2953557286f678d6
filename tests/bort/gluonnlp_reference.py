"""Reference side of test_convert_gluonnlp.py; runs in the separate MXNet/GluonNLP environment (numpy 1.23).

Builds small GluonNLP 0.10.0 BERT, RoBERTa and Bort-shaped models with random weights (every weight, bias and
LayerNorm scale random, so a mis-mapped tensor cannot go unnoticed), saves each with `save_parameters` and runs it on a
fixed right-padded batch, saving every layer's hidden states, the pooled output, next-sentence logits and masked-LM
logits to `<name>.npz`. It also writes files for the error tests (an unnamed list, an unknown layout, a checkpoint
with a missing parameter) and for the reader's dtype test.

Usage: <gluonnlp venv>/bin/python gluonnlp_reference.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
from gluonnlp.model.bert import BERTEncoder, BERTModel, RoBERTaModel

BATCH, SEQ_LEN = 3, 16
VALID_LENGTH = [16, 11, 5]

# name: GluonNLP sizes (units = model width, hidden_size = FFN width) and heads; pad id as the HF side will use it.
# "bort" keeps Bort's shape pattern (bort_4_8_768_1024: 4 layers, FFN narrower than the width, width/heads = 128).
MODELS = {
    "bert": dict(family="bert", layers=2, units=32, hidden_size=48, heads=4, vocab=50, max_length=24,
                 eps=1e-12, pooler=True, classifier=True, decoder=True, pad=0),
    # vocabulary of the shared test teacher's tokenizer, so the test can convert with --tokenizer
    "bert_encoder": dict(family="bert", layers=2, units=32, hidden_size=40, heads=2, vocab=30522, max_length=20,
                         eps=1e-12, pooler=True, classifier=False, decoder=False, pad=0),
    "roberta": dict(family="roberta", layers=2, units=32, hidden_size=64, heads=4, vocab=60, max_length=24,
                    eps=1e-5, pooler=False, classifier=False, decoder=True, pad=1),
    "bort": dict(family="roberta", layers=4, units=48, hidden_size=32, heads=4, vocab=70, max_length=24,
                 eps=1e-5, pooler=False, classifier=False, decoder=True, pad=1),
}


def build(spec):
    encoder = BERTEncoder(num_layers=spec["layers"], units=spec["units"], hidden_size=spec["hidden_size"],
                          max_length=spec["max_length"], num_heads=spec["heads"], dropout=0.0,
                          output_all_encodings=True, layer_norm_eps=spec["eps"])
    if spec["family"] == "bert":
        net = BERTModel(encoder, spec["vocab"], token_type_vocab_size=2, units=spec["units"],
                        embed_size=spec["units"], use_pooler=spec["pooler"], use_decoder=spec["decoder"],
                        use_classifier=spec["classifier"])
    else:
        net = RoBERTaModel(encoder, spec["vocab"], units=spec["units"], embed_size=spec["units"],
                           use_decoder=spec["decoder"])
    net.initialize(mx.init.Normal(0.02))
    return net


def randomize(net, seed):
    """Every parameter random (after a first forward pass has fixed the deferred shapes)."""
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():  # unique Parameters: the tied decoder stays tied
        shape = param.shape
        value = 1 + 0.2 * rng.randn(*shape) if name.endswith("gamma") else 0.2 * rng.randn(*shape)
        param.set_data(mx.nd.array(value.astype(np.float32)))


def batch(spec, seed):
    rng = np.random.RandomState(seed)
    ids = rng.randint(4, spec["vocab"], size=(BATCH, SEQ_LEN))  # no special ids (pad 0/1) inside the text
    types = np.zeros_like(ids)
    for row, length in enumerate(VALID_LENGTH):
        ids[row, length:] = spec["pad"]
        types[row, length // 2:length] = 1
    return ids, types


def run(name, spec, out_dir):
    net = build(spec)
    ids, types = batch(spec, seed=len(name))
    valid = mx.nd.array(VALID_LENGTH, dtype="float32")
    positions = mx.nd.array(np.tile(np.arange(SEQ_LEN), (BATCH, 1)))

    def forward():
        if spec["family"] == "bert":
            return net(mx.nd.array(ids), mx.nd.array(types), valid, positions if spec["decoder"] else None)
        return net(mx.nd.array(ids), valid, positions)

    forward()
    randomize(net, seed=len(name) + spec["units"])
    path = out_dir / f"{name}.params"
    net.save_parameters(str(path))
    outputs = forward()
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    layers = outputs.pop(0)
    result = {"input_ids": ids, "token_type_ids": types, "valid_length": np.array(VALID_LENGTH),
              "hidden_states": np.stack([h.asnumpy() for h in layers])}
    if spec["pooler"]:
        result["pooled"] = outputs.pop(0).asnumpy()
    if spec["classifier"]:
        result["nsp_logits"] = outputs.pop(0).asnumpy()
    if spec["decoder"]:
        result["mlm_logits"] = outputs.pop(0).asnumpy()
    assert not outputs, f"unexpected extra outputs for {name}"
    np.savez(out_dir / f"{name}.npz", **result)
    loaded = mx.nd.load(str(path))  # MXNet's own reading of the file, for the numpy reader's test
    np.savez(out_dir / f"{name}.mxnet_load.npz", **{k: v.asnumpy() for k, v in loaded.items()})


def main(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(0)
    for name, spec in MODELS.items():
        run(name, spec, out_dir)
    rng = np.random.RandomState(7)
    typed = {"f16": rng.randn(3, 5).astype(np.float16), "f64": rng.randn(4).astype(np.float64),
             "i32": rng.randint(-9, 9, size=(2, 2, 3)).astype(np.int32), "u8": rng.randint(0, 255, size=7).astype(np.uint8)}
    mx.nd.save(str(out_dir / "dtypes.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in typed.items()})
    np.savez(out_dir / "dtypes.npz", **typed)
    mx.nd.save(str(out_dir / "unnamed_list.params"), [mx.nd.ones((2, 2))])
    bert = mx.nd.load(str(out_dir / "bert.params"))
    extra = dict(bert, **{"encoder.rel_pos_bias.weight": mx.nd.ones((4, 4))})  # a layout the converter must refuse
    mx.nd.save(str(out_dir / "unknown_layout.params"), extra)
    mx.nd.save(str(out_dir / "incomplete.params"), {k: v for k, v in bert.items() if k != "decoder.2.gamma"})
    (out_dir / "models.json").write_text(json.dumps(MODELS, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
