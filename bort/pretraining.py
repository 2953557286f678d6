"""Pre-training distillation of an architecture from a teacher (Bort, de Wynter & Perry 2020, arXiv 2010.10499, §4).

The recipe reads top to bottom in :func:`run_pretraining`: set up the engine (one process, DDP under ``torchrun``,
or Horovod under ``horovodrun``), the teacher, the student, the data, the loss and the optimizer; resume if asked;
train with periodic logging, evaluation and checkpoints; save a Hugging Face folder.

The optimisation step is the one the search's short training uses (:mod:`bort.training`), with gradient
accumulation, mixed precision and data parallelism on top.

Data order. The training sequences are shuffled per epoch (seed + epoch) and cut into micro-batches of
``micro_batch_size``; micro-batch ``m`` is masked with a generator seeded by (seed, epoch, m). Optimizer step ``s``
consumes micro-batches ``s·n … s·n + n − 1`` with ``n = accumulation × processes``, rank ``r`` taking every
``processes``-th (``RankSampler``). The global batch, its masks and the loss (the mean of the micro-batch means) are
thus the same for any number of processes, and a resumed run continues at the exact micro-batch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bort.architecture import Architecture, ArchitectureError
from bort.checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bort.distill import DistillationLoss, DistillOutputs, forward_for_distillation
from bort.distributed import SingleProcess, engine
from bort.modeling import TeacherError, build_student, extract_student, load_teacher, set_dropout, teacher_has_head
from bort.pretraining_config import PretrainingConfig
from bort.training import (
    DistillationObjective,
    OptimConfig,
    accumulate_gradients,
    apply_gradients,
    build_optimizer,
    evaluation_sums,
    normalize_evaluation,
)
from data.collator import MaskingCollator
from data.corpus import PackedSequences, RankSampler, load_corpus
from data.errors import DataError
from data.files import atomic_folder, atomic_path, atomic_write_json
from data.shards import open_split, tokenizer_spec

logger = logging.getLogger(__name__)

# The Q/K/V of the relation loss are read from the projections' outputs, so no attention maps are needed and both
# models use PyTorch's fused scaled-dot-product attention.
ATTENTION = "sdpa"

# Bort's shape ⟨D, A, H, I⟩ = ⟨4, 8, 1024, 768⟩ relative to BERT-large ⟨24, 16, 1024, 4096⟩ (arXiv 2010.10499, §5).
BORT_RATIOS = (4 / 24, 8 / 16, 1024 / 1024, 768 / 4096)


class PretrainingError(ValueError):
    """Bad input to the pre-training: a one-line message naming the option, file or checkpoint."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the message names the step and the last good checkpoint."""


# --- data ---------------------------------------------------------------------------------------------------------

class MicroBatches(Dataset):
    """Masked micro-batches of one split: item ``m`` is micro-batch ``m`` of the current epoch (see the module
    docstring). Items are ``{"input_ids", "attention_mask", "labels"}``: LongTensor (micro_batch_size, seq_len).
    The last, incomplete micro-batch of an epoch is dropped."""

    def __init__(self, sequences: PackedSequences, size: int, tokenizer, *, mlm_probability: float, seed: int,
                 shuffle: bool = True) -> None:
        self.sequences, self.size, self.tokenizer = sequences, size, tokenizer
        self.mlm_probability, self.seed, self.shuffle = mlm_probability, seed, shuffle
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        n = len(self.sequences)
        self.order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
                      if self.shuffle else torch.arange(n))

    def __len__(self) -> int:
        return len(self.sequences) // self.size

    def __getitem__(self, m: int) -> dict[str, torch.Tensor]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, m]).generate_state(1)[0])
        collate = MaskingCollator(self.tokenizer, self.mlm_probability, seed=seed)
        return collate([self.sequences[int(i)] for i in self.order[m * self.size:(m + 1) * self.size]])


def open_shards(folder: str, tokenizer) -> tuple[PackedSequences, PackedSequences]:
    """The train and held-out splits of a folder written by ``data/create_pretraining_data.py``.

    Raises:
        DataError: no complete build in the folder, or shards made with another tokenizer.
    """
    manifest_file = Path(folder) / "manifest.json"
    if not manifest_file.is_file():
        raise DataError(f"--shards {folder}: no manifest.json (make shards with data/create_pretraining_data.py)")
    manifest = json.loads(manifest_file.read_text())
    spec = tokenizer_spec(tokenizer)
    made_with = manifest.get("config", {}).get("tokenizer_sha256")
    if made_with != spec.sha256:
        raise DataError(f"--shards {folder}: made with another tokenizer (sha256 {str(made_with)[:12]}…) than the "
                        f"teacher's ({spec.sha256[:12]}…); rebuild them with --tokenizer set to the teacher")
    length = manifest["config"]["max_seq_length"]
    return tuple(PackedSequences(open_split(folder, split, manifest), length, spec.pad_token_id)
                 for split in ("train", "heldout"))


# --- set-up -------------------------------------------------------------------------------------------------------

def default_architecture(teacher_config) -> Architecture:
    """Bort's shape scaled to the teacher: D, A and I by Bort's ratios to BERT-large, H kept; A lowered until it
    divides H."""
    t = Architecture.from_config(teacher_config)
    depth, heads, _, ffn = (max(1, round(v * r)) for v, r in zip(
        (t.num_hidden_layers, t.num_attention_heads, t.hidden_size, t.intermediate_size), BORT_RATIOS))
    while t.hidden_size % heads:
        heads -= 1
    return Architecture(depth, heads, t.hidden_size, ffn)


def setup_student(config: PretrainingConfig, teacher, tokenizer):
    """The student with a masked-LM head (so the output loads with AutoModelForMaskedLM as well as AutoModel).

    Raises:
        PretrainingError: a --student folder with another vocabulary than the teacher's, or that cannot be loaded.
        ArchitectureError: an --architecture that is not a sub-architecture of the teacher.
    """
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(config.seed)
    if config.student is not None:
        folder = Path(config.student)
        if not (folder / "config.json").is_file():
            raise PretrainingError(f"--student {folder}: not a Hugging Face folder (no config.json)")
        student_config = AutoConfig.from_pretrained(folder)
        _check_same_vocabulary(folder, student_config, teacher, tokenizer, AutoTokenizer)
        student = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation=ATTENTION)
        return student, Architecture.from_config(student_config)
    arch = (Architecture(*config.architecture) if config.architecture is not None
            else default_architecture(teacher.config))
    arch.check_subarchitecture_of(teacher.config)
    student = build_student(arch, teacher.config, mlm_head=True, seed=config.seed, attn_implementation=ATTENTION)
    if config.init == "teacher":
        extracted = extract_student(teacher, arch, seed=config.seed, attn_implementation=ATTENTION)
        state = extracted.state_dict() if teacher_has_head(extracted) else {
            f"{student.base_model_prefix}.{k}": v for k, v in extracted.state_dict().items()}
        missing, unexpected = student.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if ".pooler." not in k]
        if unexpected:
            raise AssertionError(f"extracted weights do not fit the student: {unexpected[:3]}")
    return student, arch


def _check_same_vocabulary(folder: Path, student_config, teacher, tokenizer, auto_tokenizer) -> None:
    if student_config.vocab_size != teacher.config.vocab_size:
        raise PretrainingError(f"--student {folder}: vocabulary of {student_config.vocab_size} tokens, the teacher's "
                               f"has {teacher.config.vocab_size}; distillation needs the teacher's tokenizer")
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        theirs = auto_tokenizer.from_pretrained(folder)
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise PretrainingError(f"--student {folder}: its tokenizer's vocabulary differs from the teacher's; "
                                   "distillation needs the teacher's tokenizer")


def default_loss_weights(teacher_has_mlm_head: bool) -> dict[str, float]:
    """Bort's loss with an MLM teacher; relations, hidden states and MLM (to train the student's head) otherwise."""
    if teacher_has_mlm_head:
        return {"logits": 0.5, "mlm": 0.1}
    return {"attention_relations": 1.0, "hidden_states": 1.0, "mlm": 0.1}


def setup_loss(config: PretrainingConfig, teacher, arch: Architecture) -> DistillationLoss:
    """Raises: PretrainingError for a logit term without a teacher head; ValueError for bad weights."""
    head = teacher_has_head(teacher)
    weights = config.loss_weights() or default_loss_weights(head)
    if weights.get("logits", 0) > 0 and not head:
        raise PretrainingError(f"--loss logits=…: the teacher {config.teacher} has no masked-LM head; use "
                               "attention_relations, hidden_states and mlm")
    heads = config.relation_heads
    if heads is None:
        heads = teacher.config.num_attention_heads
        if arch.hidden_size % heads:
            heads = arch.num_attention_heads
    return DistillationLoss(weights, student_hidden_size=arch.hidden_size,
                            teacher_hidden_size=teacher.config.hidden_size, relation_heads=heads,
                            temperature=config.temperature)


@dataclass
class Precision:
    """autocast dtype of the student (None: fp32), whether fp16 loss scaling is on, the teacher's dtype."""

    autocast: torch.dtype | None
    scaled: bool
    teacher: torch.dtype


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(config: PretrainingConfig, device: torch.device) -> Precision:
    """Raises: PretrainingError for fp16 on CPU."""
    gpu = device.type == "cuda"
    name = config.precision
    if name == "auto":
        name = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "fp32"
    if name == "fp16" and not gpu:
        raise PretrainingError("--precision fp16 needs a GPU (dynamic loss scaling); use bf16 or fp32 on CPU")
    teacher = config.teacher_dtype
    if teacher == "auto":
        teacher = ("bf16" if name == "bf16" else "fp16") if gpu else ("bf16" if name == "bf16" else "fp32")
    return Precision(autocast=None if name == "fp32" else _DTYPES[name], scaled=name == "fp16",
                     teacher=_DTYPES[teacher])


def teacher_targets(teacher, loss_fn: DistillationLoss):
    """``(key, batch) -> DistillOutputs``: the teacher's prepared outputs, in float32, computed without gradients."""
    needs = {n for n in loss_fn.needs if n != "logits" or "logits" in loss_fn.weights}

    @torch.no_grad()
    def targets(_key, batch):
        raw = forward_for_distillation(teacher, batch, needs)
        raw = DistillOutputs(qkv=None if raw.qkv is None else tuple(x.float() for x in raw.qkv),
                             hidden=None if raw.hidden is None else raw.hidden.float(),
                             logits=None if raw.logits is None else raw.logits.float())
        return loss_fn.prepare_teacher(raw, batch["attention_mask"])

    return targets


# --- logging ------------------------------------------------------------------------------------------------------

class CsvLog:
    """Rows appended to a CSV file; on resume, rows after the resumed step are dropped first (atomically)."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path, self.fields = path, None
        if path.is_file() and resume_step is None:  # a run killed before its first checkpoint: start afresh
            path.unlink()
        if path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if int(r["step"]) <= resume_step]
            with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                if rows:
                    self.fields = list(rows[0].keys())
                    writer = csv.DictWriter(f, self.fields)
                    writer.writeheader()
                    writer.writerows(keep)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            if new:
                writer.writeheader()
            writer.writerow(row)


# --- the run ------------------------------------------------------------------------------------------------------

def _check_output_dir(config: PretrainingConfig, out: Path) -> None:
    """Refuse a folder holding another run (without --resume) or one that cannot be created; create nothing."""
    if config.resume is None and (list_checkpoints(out / "checkpoints") or (out / "model").exists()):
        raise PretrainingError(f"--output-dir {out} holds a previous run; pass --resume last to continue it or "
                               "choose another folder")
    existing = out.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise PretrainingError(f"--output-dir {out}: not writable ({existing} is not a writable folder)")


def run_pretraining(config: PretrainingConfig) -> dict:
    """Run the whole pre-training of ``config``; returns a summary (also saved as ``OUTPUT/model/pretraining_result.json``).

    Raises:
        PretrainingError, DataError, CheckpointError, ArchitectureError, TeacherError: bad input (nothing written
            over an earlier run's files).
        TrainingDiverged: a non-finite loss (not under fp16, where the loss scaler skips such steps).
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with engine(config.engine) as eng:
        return _Run(config, eng).train()


class _Run:
    """The state of one run; methods follow the order of the recipe."""

    def __init__(self, config: PretrainingConfig, eng: SingleProcess) -> None:
        from transformers import AutoTokenizer

        from data.resources import default_teacher

        self.config, self.eng = config, eng
        self.out = Path(config.output_dir)
        _check_output_dir(config, self.out)
        self.device = eng.device()
        self.precision = resolve_precision(config, self.device)
        config.teacher = config.teacher or default_teacher()
        self.teacher = load_teacher(config.teacher, attn_implementation=ATTENTION)
        self.tokenizer = AutoTokenizer.from_pretrained(config.teacher)
        student, self.arch = setup_student(config, self.teacher, self.tokenizer)
        if config.dropout is not None:
            set_dropout(student, config.dropout)
        self.loss_fn = setup_loss(config, self.teacher, self.arch)
        self.teacher.to(self.device, dtype=self.precision.teacher)
        self.objective = DistillationObjective(student, self.loss_fn).to(self.device).train()
        self._setup_data()
        processes = eng.world_size
        if config.batch_size % (config.micro_batch_size * processes):
            raise PretrainingError(f"--batch-size {config.batch_size} is not a multiple of --micro-batch-size × "
                                   f"processes = {config.micro_batch_size} × {processes}")
        self.accumulation = config.batch_size // (config.micro_batch_size * processes)
        self.steps_per_epoch = len(self.train_batches) // (self.accumulation * processes)
        if self.steps_per_epoch == 0:
            raise PretrainingError(f"the training split holds {len(self.train_batches.sequences)} sequences, fewer "
                                   f"than one global batch of {config.batch_size}")
        optim = OptimConfig(learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                            warmup=config.warmup, max_grad_norm=config.max_grad_norm)
        self.optimizer, self.scheduler = build_optimizer([self.objective], optim, config.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.scaled else None
        # parameters the loss never reaches (a pooler; an MLM head without an MLM term) need DDP's unused search
        unused = getattr(student.base_model, "pooler", None) is not None or "logits" not in self.loss_fn.needs
        self.model = eng.wrap(self.objective, find_unused_parameters=unused)
        self.targets = teacher_targets(self.teacher, self.loss_fn)
        self.step, self.last_checkpoint = 0, None
        if config.resume is not None:
            self._resume()
        else:
            torch.manual_seed(config.seed + 1000 * eng.rank)  # dropout differs across ranks
        self.config_dict = {**config.to_dict(), "resolved": {
            "architecture": self.arch.to_dict(), "loss_weights": self.loss_fn.weights,
            "relation_heads": self.loss_fn.relation_heads, "processes": processes, "engine": eng.name,
            "accumulation": self.accumulation, "device": str(self.device),
            "precision": str(self.precision.autocast or torch.float32), "teacher_dtype": str(self.precision.teacher),
            "tokens_per_step": config.batch_size * self.max_seq_length}}

    def _setup_data(self) -> None:
        config, eng = self.config, self.eng
        if config.shards is not None:
            train, heldout = open_shards(config.shards, self.tokenizer)
        else:
            from data.resources import default_corpus

            config.corpus = config.corpus or default_corpus()
            def load():
                return load_corpus(config.corpus, self.tokenizer, max_seq_length=config.max_seq_length,
                                   heldout_fraction=config.heldout_fraction, seed=config.seed,
                                   cache_dir=config.cache_dir, show_progress=config.progress and eng.is_main)

            # the first process builds the cache, the others then read it (or fail with the same message)
            corpus, error = None, None
            if eng.is_main:
                try:
                    corpus = load()
                except DataError as exc:
                    error = str(exc)
            error = eng.gather_object(error)[0]
            if error is not None:
                raise DataError(error)
            if corpus is None:
                corpus = load()
            train, heldout = corpus.train, corpus.heldout
        self.max_seq_length = train.max_seq_length
        if self.max_seq_length > self.teacher.config.max_position_embeddings:
            raise PretrainingError(f"sequences of {self.max_seq_length} tokens exceed the teacher's "
                                   f"max_position_embeddings={self.teacher.config.max_position_embeddings}")
        size = config.micro_batch_size
        self.train_batches = MicroBatches(train, size, self.tokenizer, mlm_probability=config.mlm_probability,
                                          seed=config.seed)
        self.heldout_batches = MicroBatches(heldout, size, self.tokenizer, mlm_probability=config.mlm_probability,
                                            seed=config.seed + 1, shuffle=False)
        if len(self.heldout_batches) == 0:
            raise PretrainingError(f"the held-out split holds {len(heldout)} sequences, fewer than one micro-batch "
                                   f"of {size}; raise --heldout-fraction or lower --micro-batch-size")

    def _resume(self) -> None:
        path = resolve_checkpoint(self.config.resume, self.out / "checkpoints")
        state = load_checkpoint(path)
        saved = Architecture.from_dict(state["architecture"])
        if saved != self.arch:
            raise CheckpointError(f"--resume {path}: a checkpoint of {saved.name}, but this run trains "
                                  f"{self.arch.name}")
        if state["loss_weights"] != self.loss_fn.weights:
            raise CheckpointError(f"--resume {path}: trained with loss {state['loss_weights']}, this run uses "
                                  f"{self.loss_fn.weights}")
        if state["batch_size"] != self.config.batch_size or state["max_steps"] != self.config.max_steps:
            raise CheckpointError(f"--resume {path}: saved with --batch-size {state['batch_size']} and --max-steps "
                                  f"{state['max_steps']}; the data order and schedule need the same values")
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.last_checkpoint = state["step"], path
        rng = state["rng"]
        if len(rng) == self.eng.world_size:
            set_rng_state(rng[self.eng.rank])
        else:
            logger.warning("resuming on %d processes a run saved on %d: dropout draws differ from an uninterrupted "
                           "run", self.eng.world_size, len(rng))
            torch.manual_seed(self.config.seed + 1000 * self.eng.rank + self.step)

    # --- training -------------------------------------------------------------------------------------------------

    def train(self) -> dict:
        config, eng = self.config, self.eng
        if eng.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "pretraining_config.json", self.config_dict)
            from torch.utils.tensorboard import SummaryWriter

            resumed_at = self.step if config.resume is not None else None
            self.train_log = CsvLog(self.out / "train_log.csv", resumed_at)
            self.eval_log = CsvLog(self.out / "eval_log.csv", resumed_at)
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)
        bar = tqdm(total=config.max_steps, initial=self.step, desc="pre-training", unit="step",
                   disable=not (config.progress and eng.is_main))
        skipped, tokens, started = 0, 0.0, time.perf_counter()
        evaluation = {}
        while self.step < config.max_steps:
            for micro_batches in self._epoch_from(self.step):
                terms = accumulate_gradients(
                    self.model, micro_batches, self.targets, autocast_dtype=self.precision.autocast,
                    device_type=self.device.type, scaler=self.scaler, no_sync=eng.no_sync(self.model))
                eng.reduce_gradients(self.objective.parameters())
                names = sorted(terms)
                local_tokens = sum(float(b["attention_mask"].sum()) for b in micro_batches)
                summed = eng.sum(torch.stack([*(terms[n].double().cpu() for n in names),
                                              torch.tensor(local_tokens, dtype=torch.float64)]))
                means = {n: float(v) / eng.world_size for n, v in zip(names, summed[:-1])}
                tokens += float(summed[-1])
                finite = math.isfinite(means["loss"])
                if not finite and self.scaler is None:
                    last = self.last_checkpoint or "none (no checkpoint written yet)"
                    raise TrainingDiverged(f"non-finite loss {means['loss']} at step {self.step + 1}; last good "
                                           f"checkpoint: {last}")
                lr = self.scheduler.get_last_lr()[0]
                stepped = apply_gradients(self.optimizer, self.scheduler, max_grad_norm=config.max_grad_norm,
                                          scaler=self.scaler) and finite
                skipped = 0 if stepped else skipped + 1
                if skipped > config.max_skipped_steps:
                    raise TrainingDiverged(f"{skipped} consecutive steps skipped for non-finite values up to step "
                                           f"{self.step + 1}; last good checkpoint: {self.last_checkpoint}")
                self.step += 1
                bar.update(1)
                if self.step % config.logging_steps == 0 or self.step == config.max_steps:
                    seconds = time.perf_counter() - started
                    self._log_train(means, lr, tokens / seconds)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
                    tokens, started = 0.0, time.perf_counter()
                if self.step % config.eval_steps == 0 or self.step == config.max_steps:
                    evaluation = self._evaluate()
                if self.step % config.save_steps == 0 or self.step == config.max_steps:
                    self._save_checkpoint()
                if self.step >= config.max_steps:
                    break
        bar.close()
        summary = {"rank": eng.rank, "step": self.step, "architecture": self.arch.to_dict(), "evaluation": evaluation,
                   "output_dir": str(self.out), "model": str(self.out / "model")}
        if eng.is_main:
            self.writer.close()
            self._save_model(summary)
        eng.barrier()
        return summary

    def _epoch_from(self, step: int):
        """The micro-batches of each remaining step of ``step``'s epoch, on this rank, moved to the device."""
        epoch, position = divmod(step, self.steps_per_epoch)
        self.train_batches.set_epoch(epoch)
        n = self.accumulation
        mine = list(RankSampler(len(self.train_batches), self.eng.rank, self.eng.world_size, shuffle=False))
        # its own generator: creating the iterator must not draw from the global one (dropout after a resume)
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        loader = DataLoader(self.train_batches, batch_size=None, sampler=mine[position * n:self.steps_per_epoch * n],
                            num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                            generator=generator)
        batches = iter(loader)
        for _ in range(position, self.steps_per_epoch):
            yield [self._to_device(next(batches)) for _ in range(n)]

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _log_train(self, means: dict, lr: float, tokens_per_second: float) -> None:
        if not self.eng.is_main:
            return
        row = {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch, "learning_rate": lr, **means,
               "tokens_per_second": tokens_per_second}
        if self.scaler is not None:
            row["loss_scale"] = self.scaler.get_scale()
        self.train_log.write(row)
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"train/{name}", value, self.step)

    def _evaluate(self) -> dict[str, float]:
        eng = self.eng
        total = min(self.config.eval_batches, len(self.heldout_batches))
        mine = [self._to_device(self.heldout_batches[m]) for m in range(eng.rank, total, eng.world_size)]
        mlm = teacher_has_head(self.objective.student)
        sums = evaluation_sums(self.objective.student, self.loss_fn, mine, self.targets, mlm_metrics=mlm,
                               autocast_dtype=self.precision.autocast, device_type=self.device.type)
        names = ["batches", "loss", *sorted(self.loss_fn.weights)]
        if mlm:
            names += ["masked_tokens", "mlm_nll", "mlm_correct", "mlm_rr"]
        vector = eng.sum(torch.stack([torch.as_tensor(sums.get(n, 0.0), dtype=torch.float64) for n in names]))
        metrics = normalize_evaluation(dict(zip(names, vector)))
        self.objective.train()
        if eng.is_main:
            self.eval_log.write({"step": self.step, **metrics})
            for name, value in metrics.items():
                self.writer.add_scalar(f"eval/{name}", value, self.step)
            self.writer.flush()
        return metrics

    def _save_checkpoint(self) -> None:
        rng = self.eng.gather_object(rng_state())
        if self.eng.is_main:
            state = {"step": self.step, "architecture": self.arch.to_dict(), "loss_weights": self.loss_fn.weights,
                     "batch_size": self.config.batch_size, "max_steps": self.config.max_steps,
                     "objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": rng}
            self.last_checkpoint = save_checkpoint(self.out / "checkpoints", self.step, state, self.config_dict,
                                                   keep=self.config.save_total_limit)
        self.eng.barrier()

    def _save_model(self, summary: dict) -> None:
        """The student as a Hugging Face folder (config, weights, tokenizer), written atomically to OUTPUT/model."""
        student = self.objective.student
        student.config.architectures = [type(student).__name__]
        with atomic_folder(self.out / "model") as tmp:
            student.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "pretraining_result.json").write_text(json.dumps(summary, indent=2))


# Errors an entry point reports as bad input (exit status 2).
INPUT_ERRORS = (PretrainingError, DataError, CheckpointError, ArchitectureError, TeacherError)
