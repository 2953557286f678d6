"""One fine-tuning run: encode a task, build the head, train with early stopping on dev, predict, save.

The head follows the task kind: ``AutoModelForSequenceClassification`` for classification, MultiRC (answer-level
binary scoring) and STS-B (one output, mean-squared error); ``AutoModelForMultipleChoice`` for COPA and RACE, and for
ReCoRD, whose candidate entities are scored as choices (a variable number per query, padded and masked).
Optimisation is AdamW with linear warm-up and decay, no weight decay on biases and LayerNorm weights, gradient
clipping at norm 1 (as in BERT, Devlin et al. 2019, §A.2, and Bort's fine-tuner). Under ``torchrun`` or
``horovodrun`` the run is data-parallel through the engines of :mod:`bort.distributed` (DDP or Horovod gradient
averaging): each rank trains on its share of every global batch, and rank 0's dev score decides checkpoints and early
stopping on all ranks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
    set_seed,  # Python, NumPy and torch generators (and CUDA where present) from one seed
)

from bort.checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bort.distributed import SingleProcess
from bort.modeling import is_local_name
from bort.training import parameter_groups
from data.files import atomic_folder
from finetune.metrics import compute_metrics
from finetune.tasks import DataError, Example, Task

logger = logging.getLogger(__name__)


PRECISIONS = ("fp32", "bf16", "fp16")


def check_ranges(config, positive: tuple[str, ...] = (), at_least_1: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> None:
    """Check numeric fields of a settings dataclass.

    Raises:
        ValueError: the first field out of its range, named with its value (e.g. ``learning_rate must be > 0, got
            -1.0``).
    """
    for names, ok, rule in ((positive, lambda v: v > 0, "> 0"), (at_least_1, lambda v: v >= 1, ">= 1"),
                            (non_negative, lambda v: v >= 0, ">= 0")):
        for name in names:
            if not ok(getattr(config, name)):
                raise ValueError(f"{name} must be {rule}, got {getattr(config, name)}")


@dataclass
class TrainConfig:
    """Hyperparameters of one fine-tuning run (one Optuna trial / one Agora configuration θ).

    Raises:
        ValueError: a value out of its range (naming the field and the value), or fp16 without a CUDA GPU.
    """

    learning_rate: float = field(default=2e-5, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "decoupled AdamW weight decay (Bort's grid: 0-350)"})
    warmup_fraction: float = field(default=0.1, metadata={"help": "share of the steps with linear warm-up, in [0, 1)"})
    batch_size: int = field(default=16, metadata={
        "help": "examples per optimiser step (per process under torchrun/horovodrun)"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialisation, data order and dropout"})
    num_train_epochs: float = field(default=3.0, metadata={"help": "passes over the training set (may be fractional)"})
    max_steps: int = field(default=0, metadata={"help": "optimiser steps; > 0 overrides --num-train-epochs"})
    max_seq_length: int = field(default=128, metadata={
        "help": "tokens per sequence; longer ones are truncated (counted in a warning); clipped to the model's positions"})
    eval_every: int = field(default=0, metadata={"help": "evaluate on dev every this many steps (0: once per epoch)"})
    early_stopping_patience: int = field(default=3, metadata={
        "help": "stop after this many dev evaluations without improvement (0: never)"})
    max_train_examples: int = field(default=0, metadata={
        "help": "if > 0, a seeded random subsample of the training set of this many examples"})
    max_eval_examples: int = field(default=0, metadata={"help": "if > 0, only the first this-many dev examples"})
    precision: str = field(default="fp32", metadata={
        "help": "arithmetic of the forward passes (training and dev): fp32; bf16 (autocast: GPUs with bf16, CPUs "
                "with AMX or AVX512-BF16); fp16 (autocast with dynamic loss scaling, CUDA only). Weights, optimizer "
                "and saved models stay fp32", "choices": list(PRECISIONS)})

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and not torch.cuda.is_available():  # refused before any data is read
            raise ValueError("--precision fp16 needs a CUDA GPU (dynamic loss scaling); use bf16 or fp32 on this "
                             "machine")
        check_ranges(self, positive=("learning_rate",), at_least_1=("batch_size",),
                     non_negative=("weight_decay", "num_train_epochs", "max_steps", "eval_every",
                                   "early_stopping_patience", "max_train_examples", "max_eval_examples"))
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be >= 8, got {self.max_seq_length}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"the run needs num_train_epochs > 0 or max_steps > 0, got {self.num_train_epochs} and "
                             f"{self.max_steps}")


# ----------------------------------------------------------------------------------------------------------------
# Model and tokenizer


def load_tokenizer(model_path: str, tokenizer_path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model (or at ``tokenizer_path``).

    Raises:
        DataError: the folder does not exist or has no tokenizer files.
    """
    source = tokenizer_path or model_path
    if is_local_name(source) and not Path(source).expanduser().is_dir():
        raise DataError(f"{'--tokenizer ' if tokenizer_path else ''}{source}: not a folder")
    if Path(source).is_dir() and not any(
        (Path(source) / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model")
    ):
        raise DataError(f"{source}: no tokenizer files (tokenizer.json, vocab.txt); pass --tokenizer PATH")
    return AutoTokenizer.from_pretrained(source)


def load_model(task: Task, model_path: str) -> PreTrainedModel:
    """The model with the task's head; a head absent from the checkpoint is initialised fresh.

    A checkpoint already fine-tuned for a task with other labels is refused (its label names are compared).
    """
    config = AutoConfig.from_pretrained(model_path)
    has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if task.kind in ("classification", "multirc"):
        if has_head:  # already fine-tuned: its labels must be the task's
            names = [config.id2label[i] for i in range(config.num_labels)]
            if names != list(task.labels):
                raise DataError(f"{model_path}: model labels {names} differ from {task.name}'s {list(task.labels)}")
            return AutoModelForSequenceClassification.from_pretrained(model_path)
        return AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)),
            label2id={label: i for i, label in enumerate(task.labels)})
    if task.kind == "regression":
        if has_head and config.num_labels != 1:
            raise DataError(f"{model_path}: a {config.num_labels}-label classifier cannot predict {task.name} scores")
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, problem_type="regression")
    return AutoModelForMultipleChoice.from_pretrained(model_path)


# ----------------------------------------------------------------------------------------------------------------
# Encoding


def effective_max_length(model: PreTrainedModel, requested: int) -> int:
    """``requested`` clipped to the model's positions (minus RoBERTa-style padding offsets)."""
    positions = getattr(model.config, "max_position_embeddings", requested)
    offset = 2 if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
    limit = positions - offset
    if requested > limit:
        logger.warning("max_seq_length %d exceeds the model's %d positions; using %d", requested, limit, limit)
    return min(requested, limit)


def _pairs(task: Task, examples: Sequence[Example]) -> tuple[list[str], list[str] | None, list[int]]:
    """Flatten examples into (first segments, second segments, choices per example)."""
    firsts, seconds, counts = [], [], []
    for e in examples:
        items = e.choices if task.kind in ("multiple_choice", "record") else [e.texts]
        counts.append(len(items))
        for item in items:
            firsts.append(item[0])
            seconds.append(item[1] if len(item) > 1 else None)
    if all(s is None for s in seconds):
        return firsts, None, counts
    if any(s is None for s in seconds):
        raise DataError(f"{task.name}: examples mix one- and two-segment inputs")
    return firsts, seconds, counts


def encode(task: Task, examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int
           ) -> tuple[list[dict], int]:
    """Tokenize examples into features; returns them and the number of sequences truncated to ``max_length``.

    Each feature holds ``input_ids`` (and ``token_type_ids`` when the tokenizer makes them) as lists of token ids
    (lists of lists, one per choice, for choice tasks) and ``labels`` (absent on test rows).
    """
    firsts, seconds, counts = _pairs(task, examples)
    enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    if enc.encodings is not None:  # a fast tokenizer keeps what truncation cut off: one pass instead of two
        truncated = sum(bool(e.overflowing) for e in enc.encodings)
    else:
        full = tokenizer(firsts, seconds, truncation=False, verbose=False)["input_ids"]
        truncated = sum(len(ids) > max_length for ids in full)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    features, start = [], 0
    for e, c in zip(examples, counts):
        if task.kind in ("multiple_choice", "record"):
            f = {k: enc[k][start:start + c] for k in keys}
        else:
            f = {k: enc[k][start] for k in keys}
        start += c
        if e.label is not None:
            f["labels"] = e.label
        features.append(f)
    return features, truncated


def collate_labels(task: Task, features: list[dict], n_choices: int = 0) -> torch.Tensor:
    """The ``labels`` tensor of labelled ``features`` as a batch of them carries it: ``[batch]`` class or choice
    indices (int64) or scores (float32, regression); for ReCoRD a ``[batch, n_choices]`` bool matrix of correct
    candidates (``n_choices`` 0: the most candidates of any feature)."""
    if task.kind == "record":
        gold = torch.zeros(len(features), n_choices or max(len(f["input_ids"]) for f in features), dtype=torch.bool)
        for i, f in enumerate(features):
            gold[i, list(f["labels"])] = True
        return gold
    return torch.tensor([f["labels"] for f in features], dtype=torch.float if task.kind == "regression" else torch.long)


def make_collate(task: Task, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Pad a batch. Choice tasks give ``[batch, choices, length]`` tensors and a ``choice_mask [batch, choices]``;
    ReCoRD labels become a ``[batch, choices]`` 0/1 matrix of correct candidates."""

    def pad(seqs: list[list[int]], value: int, length: int) -> list[list[int]]:
        return [s + [value] * (length - len(s)) for s in seqs]

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        keys = [k for k in ("input_ids", "token_type_ids") if k in batch[0]]
        out: dict[str, torch.Tensor] = {}
        if task.kind in ("multiple_choice", "record"):
            n_choices = max(len(f["input_ids"]) for f in batch)
            length = max(len(s) for f in batch for s in f["input_ids"])
            for k in keys:
                value = pad_id if k == "input_ids" else 0
                rows = [pad(f[k] + [[]] * (n_choices - len(f[k])), value, length) for f in batch]
                out[k] = torch.tensor(rows, dtype=torch.long)
            out["attention_mask"] = torch.tensor(
                [pad([[1] * len(s) for s in f["input_ids"]] + [[]] * (n_choices - len(f["input_ids"])), 0, length)
                 for f in batch], dtype=torch.long)
            out["choice_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (n_choices - len(f["input_ids"]))
                                               for f in batch], dtype=torch.bool)
            if "labels" in batch[0]:
                out["labels"] = collate_labels(task, batch, n_choices)
            return out
        length = max(len(f["input_ids"]) for f in batch)
        for k in keys:
            out[k] = torch.tensor(pad([f[k] for f in batch], pad_id if k == "input_ids" else 0, length))
        out["attention_mask"] = torch.tensor(pad([[1] * len(f["input_ids"]) for f in batch], 0, length))
        if "labels" in batch[0]:
            out["labels"] = collate_labels(task, batch)
        return out

    return collate


# ----------------------------------------------------------------------------------------------------------------
# Forward, loss, prediction


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    """``[batch, num_labels]`` (classification), ``[batch]`` (regression) or ``[batch, choices]`` masked with -inf."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
    logits = model(**inputs).logits
    if task.kind == "regression":
        return logits.squeeze(-1)
    if task.kind in ("multiple_choice", "record"):
        return logits.masked_fill(~batch["choice_mask"].to(device), float("-inf"))
    return logits


def _loss(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.to(logits.device)
    if task.kind == "regression":
        return F.mse_loss(logits, labels)
    if task.kind == "record":
        # Marginal likelihood of the correct candidates (several spans may carry a correct answer). A query whose
        # answers match no candidate span exactly has no correct candidate: it is left out (its term would be inf).
        answerable = labels.any(-1)
        if not answerable.any():
            return logits.sum() * 0.0
        log_probs = logits[answerable].log_softmax(-1)
        return -(log_probs.masked_fill(~labels[answerable], float("-inf")).logsumexp(-1)).mean()
    return F.cross_entropy(logits, labels)


def to_predictions(task: Task, logits: np.ndarray) -> np.ndarray:
    """Class / choice indices (argmax) or scores (regression) from stacked logits."""
    return logits if task.kind == "regression" else logits.argmax(-1)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, task: Task, features: list[dict], collate, batch_size: int,
                   desc: str = "predict", progress: bool = True) -> np.ndarray:
    """Logits for all features in order (choice tasks padded to the largest number of choices with -inf).

    Batches are formed from features sorted by length, so each pads to a similar length (1.54x faster on MRPC's dev
    set, 2 CPU threads: bench/bench_finetune_speed.py); the rows are returned in the order of ``features``. A
    progress bar (``desc``) is shown for 20 batches or more unless ``progress`` is False."""
    model.eval()
    chunks = []
    order = np.argsort([_length(f) for f in features], kind="stable")
    # its own generator: every DataLoader iterator draws a seed, and from torch's global generator it would move the
    # dropout draws of the training this evaluates, so that how often dev is evaluated changed the run
    loader = DataLoader([features[i] for i in order], batch_size=batch_size, shuffle=False, collate_fn=collate,
                        generator=torch.Generator())
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress or len(loader) < 20):
        chunks.append(_logits(model, batch, task).float().cpu().numpy())
    if task.kind in ("multiple_choice", "record"):
        width = max(c.shape[1] for c in chunks)
        chunks = [np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=-np.inf) for c in chunks]
    stacked = np.concatenate(chunks)
    logits = np.empty_like(stacked)
    logits[order] = stacked
    return logits


def _length(feature: dict) -> int:
    ids = feature["input_ids"]
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class RunResult:
    """What a run produced: best dev metrics (per dev split), the step they were reached, steps done, history."""

    dev_metrics: dict[str, dict[str, float]]
    best_step: int
    steps: int
    history: list[dict]
    truncated: int
    paused: bool = False  # stopped at ``pause_at`` with a checkpoint, to be continued

    @property
    def score(self) -> float:
        """The first dev split's task score (mean of the task's metrics)."""
        return next(iter(self.dev_metrics.values()))["score"]

    @property
    def best_dev_loss(self) -> float:
        """The lowest mean training loss on the first dev split over the evaluations so far (cross-entropy; mean
        squared error for regression); inf when none recorded one. Unlike the task score it moves before the
        predictions change, e.g. while every prediction is still the majority class."""
        return min((h["dev_loss"] for h in self.history if math.isfinite(h.get("dev_loss", math.inf))),
                   default=math.inf)


def default_device() -> torch.device:
    """The GPU of this process (``LOCAL_RANK`` under torchrun) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (one of :data:`PRECISIONS`) on ``device``; a no-op for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # the fused kernel: all-MiniLM-L6-v2's optimizer step took 0.143 s unfused, 0.022 s fused (2 CPU threads)
    return torch.optim.AdamW(parameter_groups([model], config.weight_decay), lr=config.learning_rate, fused=True)


def subsample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A seeded random subsample of ``n`` examples (all of them when ``n`` is 0 or not smaller)."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(examples, n)


def train(
    task: Task,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_examples: list[Example],
    dev_sets: dict[str, list[Example]],
    config: TrainConfig,
    on_evaluate: Callable[[int, float], None] | None = None,
    progress: bool = True,
    engine: SingleProcess | None = None,
    checkpoint: Path | None = None,
    save_steps: int = 0,
    pause_at: int = 0,
) -> RunResult:
    """Fine-tune ``model`` in place and leave it at its best dev checkpoint.

    Args:
        task: the task (head kind, metrics).
        model: a model with the task's head (:func:`load_model`).
        tokenizer: its tokenizer.
        train_examples: labelled training examples (subsampled to ``config.max_train_examples``).
        dev_sets: dev split name -> labelled examples; the first split selects the checkpoint and stops early.
        config: hyperparameters.
        on_evaluate: called as ``on_evaluate(step, score)`` after each evaluation (Optuna reporting/pruning;
            may raise to abort).
        progress: show a tqdm bar (rank 0 only).
        engine: the data-parallel engine (:func:`bort.distributed.init_engine`); default one process. Each of its
            ranks takes ``config.batch_size`` examples per step, so the global batch is ``world_size`` times that.
        checkpoint: a folder for resumable checkpoints (``step-NNNNNNNN/``, the newest kept), written by rank 0 every
            ``save_steps`` steps and read at the start: a run interrupted at any point and started again with the same
            model, data, hyperparameters and number of processes continues from the newest one and ends as the
            uninterrupted run would (same batches, dropout draws, optimizer and schedule state, best checkpoint).
        save_steps: steps between checkpoints (0: none).
        pause_at: stop after this step (0: never) with a checkpoint saved there, the result's ``paused`` set and the
            model at its best dev checkpoint so far; the same call with a later ``pause_at`` (or 0) continues the run
            as if it had not stopped (synchronous successive halving pauses every configuration at a rung). The
            learning-rate schedule stays the one of ``config``'s full length. Ignored at or after the last step.

    Returns:
        The best dev metrics (all splits, at the checkpoint chosen on the first split) and the training history.

    Raises:
        CheckpointError (a ValueError): ``checkpoint`` holds a checkpoint of another run, or an unreadable one.
        ValueError: ``pause_at`` without a ``checkpoint`` folder to continue from.
    """
    if pause_at and checkpoint is None:
        raise ValueError(f"pause_at={pause_at} needs a checkpoint folder to continue the run from")
    set_seed(config.seed)
    engine = engine or SingleProcess()
    device = engine.device()
    mixed = functools.partial(autocast, config.precision, device)
    max_length = effective_max_length(model, config.max_seq_length)
    examples = subsample(train_examples, config.max_train_examples, config.seed)
    features, truncated = encode(task, examples, tokenizer, max_length)
    dev_sets = {k: v[: config.max_eval_examples] if config.max_eval_examples > 0 else v for k, v in dev_sets.items()}
    dev_features = {}
    for name, dev in dev_sets.items():
        dev_features[name], t = encode(task, dev, tokenizer, max_length)
        truncated += t
    if truncated:
        logger.warning("%s: %d training and dev sequences longer than %d tokens were truncated", task.name, truncated,
                       max_length)

    collate = make_collate(task, tokenizer.pad_token_id or 0)
    first_dev = next(iter(dev_features.values()), [])
    dev_labels = collate_labels(task, first_dev) if first_dev and "labels" in first_dev[0] else None  # dev loss
    # one seeded permutation per epoch, each rank taking every world_size-th example of it: N processes of batch b
    # see the same global batches as one process of batch N*b
    sampler = DistributedSampler(features, num_replicas=engine.world_size, rank=engine.rank, shuffle=True,
                                 seed=config.seed)
    loader = DataLoader(features, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)
    total = config.max_steps if config.max_steps > 0 else math.ceil(len(loader) * config.num_train_epochs)
    eval_every = config.eval_every or len(loader)
    model.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    fingerprint = run_fingerprint(task, config, features, model, engine.world_size) if checkpoint else ""
    resumed = _resumable_state(Path(checkpoint), fingerprint) if checkpoint else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
    module = engine.wrap(model)
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * total), total)

    best_score, best_state, best_metrics, best_step, bad_evals = -math.inf, None, {}, 0, 0
    history: list[dict] = []
    step, epoch, in_epoch, rng = 0, 0, 0, None
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        step, epoch, in_epoch, rng = resumed["step"], resumed["epoch"], resumed["in_epoch"], resumed["rng"][engine.rank]
        best_score, best_state, best_metrics = resumed["best_score"], resumed["best_model"], resumed["best_metrics"]
        best_step, bad_evals, history = resumed["best_step"], resumed["bad_evals"], resumed["history"]
    bar = tqdm(total=total, initial=step, leave=False, disable=not progress or not engine.is_main,
               desc=f"{task.name} lr={config.learning_rate:g} bs={config.batch_size} seed={config.seed}")
    stop = paused = False
    if 0 < pause_at <= step < total:  # resumed from where it paused before: nothing to train until continued
        stop = paused = True
    while step < total and not stop:
        sampler.set_epoch(epoch)
        module.train()
        batches = iter(loader)  # draws the loader's seed from torch's generator
        if rng is not None:  # resuming: the generators as the interrupted run left them, this epoch's done batches
            set_rng_state(rng)
            rng = None
            for _ in itertools.islice(batches, in_epoch):
                pass
        else:
            in_epoch = 0
        for batch in batches:
            with mixed():
                logits = _logits(module, batch, task)
            loss = _loss(task, logits.float(), batch["labels"])
            scaler.scale(loss).backward()  # the scaler is a pass-through unless fp16
            engine.reduce_gradients(model.parameters())
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            in_epoch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % eval_every == 0 or step == total:
                with mixed():
                    metrics, dev_loss = _evaluate(model, task, dev_sets, dev_features, dev_labels, collate,
                                                  config.batch_size * 2, progress and engine.is_main)
                score = next(iter(metrics.values()))["score"]
                if engine.world_size > 1:  # rank 0's score decides, so every rank keeps the same checkpoint
                    score, dev_loss = engine.gather_object((score, dev_loss))[0]
                history.append({"step": step, "loss": float(loss.item()), "score": score, "dev_loss": dev_loss})
                module.train()
                if score > best_score:
                    best_score, best_metrics, best_step, bad_evals = score, metrics, step, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_evals += 1
                if on_evaluate is not None:
                    on_evaluate(step, score)
                if config.early_stopping_patience and bad_evals >= config.early_stopping_patience:
                    stop = True
            if step >= total or stop:
                break
            paused = step == pause_at
            if checkpoint and (paused or save_steps > 0 and step % save_steps == 0):
                rngs = engine.gather_object(rng_state())  # each rank's own: dropout draws differ between ranks
                if engine.is_main:
                    save_checkpoint(checkpoint, step, {
                        "fingerprint": fingerprint, "step": step, "epoch": epoch, "in_epoch": in_epoch, "rng": rngs,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                        "best_score": best_score, "best_model": best_state,
                        "best_metrics": best_metrics, "best_step": best_step, "bad_evals": bad_evals,
                        "history": history}, {"task": task.name, "train": asdict(config), "step": step,
                                              "processes": engine.world_size}, keep=1, config_file=CHECKPOINT_CONFIG)
            if paused:
                stop = True
                break
        epoch += 1
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return RunResult(best_metrics, best_step, step, history, truncated, paused)


CHECKPOINT_CONFIG = "finetune_checkpoint.json"


def run_fingerprint(task: Task, config: TrainConfig, features: list[dict], model: torch.nn.Module,
                    world_size: int) -> str:
    """SHA-256 of what decides a run's course: the task, the hyperparameters, the encoded training set (data and
    tokenizer), the initial weights (model and fresh head) and the number of processes. A checkpoint resumes only a run
    with the same fingerprint."""
    h = hashlib.sha256(json.dumps({"task": task.name, "train": asdict(config), "processes": world_size},
                                  sort_keys=True).encode())
    h.update(json.dumps(features).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype
    return h.hexdigest()


def _resumable_state(folder: Path, fingerprint: str) -> dict | None:
    """The newest checkpoint in ``folder`` (None: none yet); refused when another run wrote it."""
    found = list_checkpoints(folder)
    if not found:
        return None
    state = load_checkpoint(found[-1])
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{found[-1]}: a checkpoint of another run (another model, data, hyperparameters or "
                              f"number of processes); delete {folder} to start over, or use another --output-dir")
    logger.warning("resuming from step %d (%s)", state["step"], found[-1])
    return state


def _evaluate(model, task: Task, dev_sets, dev_features, dev_labels: torch.Tensor | None, collate,
              batch_size: int, progress: bool = True) -> tuple[dict[str, dict[str, float]], float]:
    """Metrics of every dev split, and the mean training loss (:func:`_loss`) on the first, whose labels are
    ``dev_labels`` (:func:`collate_labels`; None: no loss, nan)."""
    out, dev_loss = {}, math.nan
    for name, dev in dev_sets.items():
        logits = predict_logits(model, task, dev_features[name], collate, batch_size, desc=f"eval {name}",
                                progress=progress)
        out[name] = compute_metrics(task, to_predictions(task, logits), dev)
        if len(out) == 1 and dev_labels is not None:
            dev_loss = float(_loss(task, torch.from_numpy(logits), dev_labels))
    return out, dev_loss


def predict(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
            max_seq_length: int = 128, batch_size: int = 32) -> np.ndarray:
    """Predictions (class/choice indices, or scores for regression) for ``examples`` in order."""
    model.to(default_device())
    max_length = effective_max_length(model, max_seq_length)
    features, truncated = encode(task, examples, tokenizer, max_length)
    if truncated:
        logger.warning("%s: %d of %d sequences to predict were longer than %d tokens and were truncated", task.name,
                       truncated, len(examples), max_length)
    logits = predict_logits(model, task, features, make_collate(task, tokenizer.pad_token_id or 0), batch_size)
    return to_predictions(task, logits)


# ----------------------------------------------------------------------------------------------------------------
# Saving


def save_run(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, result: RunResult,
             resolved_config: dict) -> None:
    """Write the model (``save_pretrained``, loadable with ``AutoModel``), tokenizer, ``dev_metrics.json`` and
    ``finetune_config.json`` into ``folder`` through a temporary sibling folder, replacing ``folder`` at the end."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "dev_metrics.json").write_text(json.dumps(
            {"dev": result.dev_metrics, "best_step": result.best_step, "steps": result.steps,
             "truncated_sequences": result.truncated, "history": result.history}, indent=2))
        (tmp / "finetune_config.json").write_text(json.dumps(resolved_config, indent=2, default=str))
