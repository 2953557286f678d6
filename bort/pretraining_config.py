"""The typed configuration of the pre-training distillation: parsed once (command line or one JSON/YAML file),
saved as ``pretraining_config.json`` beside the outputs and in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from bort.distill import TERMS, parse_weights
from bort.distributed import ENGINES
from bort.modeling import INIT_METHODS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEACHER_DTYPES = ("auto", "fp32", "bf16", "fp16")

# --tiny: a smoke-test scale that finishes in about a minute on two CPU cores.
TINY = {"max_steps": 8, "batch_size": 8, "micro_batch_size": 4, "max_seq_length": 64, "eval_steps": 4,
        "eval_batches": 2, "logging_steps": 1, "save_steps": 4}


@dataclass
class PretrainingConfig:
    """Every option of ``bort/run_pretraining_distillation.py``; see ``--help`` for units and meanings."""

    teacher: str | None = field(default=None, metadata={
        "help": "Teacher: a local Hugging Face folder or a hub name (BERT or RoBERTa family). With a masked-LM head "
                "the loss defaults to Bort's, without one to hidden-state and attention-relation distillation. "
                "Default: the local all-MiniLM-L6-v2 of the project's data folder, else its hub name."})
    student: str | None = field(default=None, metadata={
        "help": "Student to pre-train: a Hugging Face folder, e.g. the search's OUTPUT/winner/ (its weights are the "
                "starting point; a missing masked-LM head is added, randomly initialised). Exclusive with "
                "--architecture."})
    architecture: list[int] | None = field(default=None, metadata={
        "help": "Student architecture as four integers D A H I: num_hidden_layers, num_attention_heads, "
                "hidden_size, intermediate_size. Default (with no --student): Bort's shape ⟨4, 8, 1024, 768⟩ of "
                "BERT-large ⟨24, 16, 1024, 4096⟩ scaled to the teacher."})
    init: str = field(default="teacher", metadata={
        "help": "Initialisation of an --architecture student: 'teacher' (extract the most important layers, heads "
                "and neurons) or 'random' (N(0, initializer_range), as Bort).", "choices": list(INIT_METHODS)})
    corpus: list[str] | None = field(default=None, metadata={
        "help": "Raw text: files or globs (UTF-8), or a `datasets` name; tokenized and packed into the cache once. "
                "Exclusive with --shards. Default (with no --shards): the local WikiText-2 files, else wikitext-2."})
    shards: str | None = field(default=None, metadata={
        "help": "A folder written by data/create_pretraining_data.py (manifest.json and train/heldout shards), "
                "made with the teacher's tokenizer."})
    max_seq_length: int = field(default=128, metadata={
        "help": "Tokens per sequence, special tokens included (raw text only; shards fix their own)."})
    heldout_fraction: float = field(default=0.05, metadata={
        "help": "Fraction of documents held out for evaluation (raw text only), in (0, 1)."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Token cache folder for raw text. Default: $BORT_CACHE_DIR or ~/.cache/bort."})
    loss: list[str] | None = field(default=None, metadata={
        "help": "Distillation terms as NAME=WEIGHT (names: " + ", ".join(TERMS) + "). Default: logits=0.5 mlm=0.1 "
                "(Bort, T²·KL at --temperature plus MLM cross-entropy) when the teacher has an MLM head; else "
                "attention_relations=1 hidden_states=1 mlm=0.1 (MiniLMv2 relations, projected hidden-state MSE, "
                "and MLM so that the student's head learns)."})
    relation_heads: int | None = field(default=None, metadata={
        "help": "Relation heads R of the attention-relation loss; both widths must be divisible by it. Default: the "
                "teacher's num_attention_heads when it divides the student's hidden_size, else the student's heads."})
    temperature: float = field(default=2.0, metadata={"help": "Temperature T of the logit loss."})
    mlm_probability: float = field(default=0.15, metadata={
        "help": "Fraction of tokens selected for masking (80%% [MASK], 10%% random, 10%% kept), in (0, 1)."})
    batch_size: int = field(default=256, metadata={
        "help": "Global batch: sequences per optimizer step over all processes. Fixed whatever the number of "
                "processes, so the learning rate needs no scaling."})
    micro_batch_size: int = field(default=32, metadata={
        "help": "Sequences per forward pass and process; gradient accumulation = batch_size / (micro_batch_size × "
                "processes), which must be a whole number."})
    max_steps: int = field(default=10000, metadata={"help": "Optimizer steps in all (the schedule's length)."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate (for the global batch)."})
    weight_decay: float = field(default=0.01, metadata={
        "help": "Decoupled AdamW weight decay (none on biases and LayerNorm)."})
    warmup: float = field(default=0.1, metadata={
        "help": "Fraction of --max-steps of linear warm-up, in [0, 1); then linear decay to 0."})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "help": "Global gradient-norm clipping threshold (after unscaling under fp16); inf: no clipping."})
    dropout: float | None = field(default=None, metadata={
        "help": "Dropout probability of the student during training. Default: its config's (the saved config "
                "keeps it either way)."})
    precision: str = field(default="auto", metadata={
        "help": "Student arithmetic: 'fp32', 'bf16' (autocast), 'fp16' (autocast with dynamic loss scaling; GPU "
                "only). 'auto': bf16 on a GPU that supports it (else fp16), fp32 on CPU.",
        "choices": list(PRECISIONS)})
    teacher_dtype: str = field(default="auto", metadata={
        "help": "Teacher weights' dtype (it runs without gradients). 'auto': half precision on a GPU (bf16 when "
                "--precision is bf16, else fp16), bf16 on CPU when --precision is bf16, else fp32.",
        "choices": list(TEACHER_DTYPES)})
    engine: str = field(default="auto", metadata={
        "help": "Data parallelism: 'torchrun' (DDP; NCCL on GPU, gloo on CPU), 'horovod' (horovodrun), 'none'; "
                "'auto' follows the launcher.", "choices": list(ENGINES)})
    eval_steps: int = field(default=500, metadata={"help": "Evaluate on held-out data every this many steps (and at the end)."})
    eval_batches: int = field(default=32, metadata={
        "help": "Held-out micro-batches per evaluation (over all processes), in the same order every time."})
    logging_steps: int = field(default=10, metadata={"help": "Log training losses every this many steps."})
    save_steps: int = field(default=1000, metadata={"help": "Write a checkpoint every this many steps (and at the end)."})
    save_total_limit: int = field(default=3, metadata={"help": "Checkpoints kept (the newest ones)."})
    max_skipped_steps: int = field(default=50, metadata={
        "help": "fp16 only: consecutive steps skipped by the loss scaler for non-finite values before stopping."})
    resume: str | None = field(default=None, metadata={
        "help": "Continue from a checkpoint: 'last' (the newest in OUTPUT_DIR/checkpoints) or a checkpoint folder. "
                "The data order, optimizer, scheduler, loss scale and random state continue exactly."})
    output_dir: str = field(default="outputs/pretraining", metadata={
        "help": "Results folder: model/ (Hugging Face folder), checkpoints/, train_log.csv, eval_log.csv, "
                "tensorboard/, pretraining_config.json. A folder holding a previous run needs --resume."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per training process."})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads per process. Default: torch's."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, data order, masking and dropout."})
    tiny: bool = field(default=False, metadata={
        "help": "Smoke-test scale: " + ", ".join(f"{k}={v}" for k, v in TINY.items()) + " (options left at their "
                "defaults only)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (first process only)."})

    def __post_init__(self) -> None:
        if self.tiny:
            defaults = {f.name: f.default for f in fields(self)}
            for key, value in TINY.items():
                if getattr(self, key) == defaults[key]:
                    setattr(self, key, value)
        for name in ("max_seq_length", "batch_size", "micro_batch_size", "max_steps", "eval_steps", "eval_batches",
                     "logging_steps", "save_steps", "save_total_limit", "max_skipped_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"--batch-size {self.batch_size} is not a multiple of --micro-batch-size "
                             f"{self.micro_batch_size}")
        if self.student is not None and self.architecture is not None:
            raise ValueError("give either --student or --architecture, not both")
        if self.architecture is not None and len(self.architecture) != 4:
            raise ValueError(f"--architecture takes four integers D A H I, got {self.architecture}")
        if self.corpus is not None and self.shards is not None:
            raise ValueError("give either --corpus or --shards, not both")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"--heldout-fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"--mlm-probability must be in (0, 1), got {self.mlm_probability}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if self.num_workers < 0 or (self.threads is not None and self.threads <= 0):
            raise ValueError("--num-workers must be ≥ 0 and --threads positive")
        self.loss_weights()  # validates --loss

    def loss_weights(self) -> dict[str, float] | None:
        """--loss as a mapping, or None for the teacher-dependent default."""
        return None if self.loss is None else parse_weights(self.loss)

    def to_dict(self) -> dict:
        return asdict(self)
