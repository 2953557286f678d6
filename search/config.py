"""The search's typed configuration: parsed once from the command line (or one JSON/YAML file), saved with results."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from bort.distill import TERMS, parse_weights
from bort.modeling import INIT_METHODS

# --tiny: a smoke-test scale that finishes in well under a minute on two CPU cores.
TINY = {"steps": 4, "batch_size": 4, "eval_batches": 1, "num_candidates": 3, "latency": "candidates",
        "latency_repeats": 2, "latency_warmup": 1}


@dataclass
class SearchConfig:
    """Every option of ``search/run_fptas.py``; see ``--help`` for units and meanings."""

    teacher: str | None = field(default=None, metadata={
        "help": "Teacher: a local Hugging Face folder or a hub name (BERT or RoBERTa family). "
                "Default: the local all-MiniLM-L6-v2 of the project's data folder, else its hub name."})
    corpus: list[str] | None = field(default=None, metadata={
        "help": "Text files or globs (UTF-8, one sentence or paragraph a line, blank line between documents), or a "
                "`datasets` name. Default: the local WikiText-2 validation and test files, else wikitext-2 from the hub."})
    space: str | None = field(default=None, metadata={
        "help": "Search space file (YAML or JSON; a grid or a list of architectures). Default: the Bort grid scaled "
                "to the teacher."})
    epsilon: int | None = field(default=None, metadata={
        "help": "Interval size ε of the FPTAS, in architectures (1 ≤ ε ≤ |Ξ|): one candidate is trained per ε "
                "consecutive architectures sorted by size. Default: ceil(|Ξ| / num_candidates)."})
    num_candidates: int = field(default=10, metadata={
        "help": "Number of candidates to train when --epsilon is not given."})
    steps: int = field(default=60, metadata={"help": "s: optimizer steps of the short distillation per candidate and θ."})
    learning_rate: list[float] = field(default_factory=lambda: [1e-3], metadata={
        "help": "Θ: learning rates of AdamW (each is one hyperparameter set θ, combined with --weight-decay and --warmup)."})
    weight_decay: list[float] = field(default_factory=lambda: [0.01], metadata={
        "help": "Θ: decoupled weight decays (none on biases and LayerNorm)."})
    warmup: list[float] = field(default_factory=lambda: [0.1], metadata={
        "help": "Θ: warm-up fractions of the steps, in [0, 1)."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per training and evaluation batch."})
    eval_batches: int = field(default=8, metadata={
        "help": "|B|: held-out batches on which e(b) is measured after the short training."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per sequence, special tokens included."})
    heldout_fraction: float = field(default=0.05, metadata={"help": "Fraction of documents held out for e(b)."})
    init: str = field(default="teacher", metadata={
        "help": "Student initialisation: 'teacher' (extract the most important layers, heads and neurons) or "
                "'random' (N(0, 0.02) as Bort).", "choices": list(INIT_METHODS)})
    loss: list[str] | None = field(default=None, metadata={
        "help": "Distillation terms as NAME=WEIGHT (names: " + ", ".join(TERMS) + "). Default: logits=0.5 mlm=0.1 "
                "(Bort) when the teacher has an MLM head, else attention_relations=1 (MiniLMv2)."})
    relation_heads: int | None = field(default=None, metadata={
        "help": "Relation heads R of the attention-relation loss; every hidden_size must be divisible by it. "
                "Default: the teacher's num_attention_heads."})
    temperature: float = field(default=2.0, metadata={"help": "Temperature T of the logit loss."})
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout probability during the short training (the saved config keeps the teacher's)."})
    cost: str = field(default="flops", metadata={
        "help": "i(b) in W: 'flops' (analytic forward FLOPs per sequence, reproducible) or 'latency' (measured "
                "milliseconds per batch on this machine).", "choices": ["flops", "latency"]})
    parameter_count: str = field(default="effective", metadata={
        "help": "p(b) in W: 'effective' (without embeddings, as Bort reports) or 'total'.",
        "choices": ["effective", "total"]})
    maximum_point: str = field(default="teacher", metadata={
        "help": "T in W: 'teacher' or 'space' (the largest architecture of the space).", "choices": ["teacher", "space"]})
    latency: str = field(default="all", metadata={
        "help": "Which architectures get a latency: 'all' measured, only the trained 'candidates' (and T) measured, "
                "or 'predicted': --latency-samples measured and a ridge regression on FLOPs-like features for the "
                "rest (its cross-validated error goes to latency_model.json), for spaces too large to measure.",
        "choices": ["all", "candidates", "predicted"]})
    latency_samples: int = field(default=24, metadata={
        "help": "--latency predicted: architectures measured to fit the predictor (spread over the FLOPs range)."})
    latency_device: str = field(default="cpu", metadata={
        "help": "Device of the latency profile: 'cpu' or 'cuda[:k]' (the device that will run the model)."})
    latency_dtype: str = field(default="float32", metadata={
        "help": "dtype of the latency profile.", "choices": ["float32", "float16", "bfloat16"]})
    latency_profile: str | None = field(default=None, metadata={
        "help": "Name of the latency profile (device, threads, dtype, batch, sequence length); measurements are "
                "cached per profile in --cache-dir/latency and reused by every later search on the same device. "
                "Default: derived from the settings, e.g. cpu-float32-t2-b1-s128."})
    latency_batch_size: int = field(default=1, metadata={"help": "Batch size of latency measurements."})
    latency_repeats: int = field(default=10, metadata={"help": "Timed forward passes per latency measurement."})
    latency_warmup: int = field(default=2, metadata={"help": "Untimed forward passes before timing."})
    threads: int | None = field(default=None, metadata={
        "help": "torch intra-op threads of this worker for training and latency. With N workers on one machine of "
                "C cores, give each C/N so that they do not oversubscribe the cores. Default: torch's choice "
                "(the core count)."})
    teacher_cache_gib: float = field(default=4.0, metadata={
        "help": "Memory budget in GiB for the teacher's cached outputs (reused by every candidate)."})
    output_dir: str = field(default="outputs/fptas", metadata={
        "help": "Results folder. Re-running with the same folder resumes: finished candidates are not retrained."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Cache folder of token shards and of latency measurements per profile. Default: $BORT_CACHE_DIR or "
                "~/.cache/bort."})
    storage: str | None = field(default=None, metadata={
        "help": "Optuna storage URL of the study (an SQLAlchemy URL). Default: a SQLite file study.db in "
                "--output-dir. A PostgreSQL URL (postgresql://user:password@host:port/db) lets any number of workers "
                "on any machines share one search: start each with the same command."})
    strategy: str = field(default="fptas", metadata={
        "help": "'fptas' (one candidate per interval of ε, the Bort search), 'exhaustive' (every architecture of "
                "Ξ), or an Optuna multi-objective sampler over (p, i, e): 'nsga2' (NSGAIISampler) or 'tpe' "
                "(TPESampler), which train --n-trials architectures × θ.",
        "choices": ["fptas", "exhaustive", "nsga2", "tpe"]})
    n_trials: int | None = field(default=None, metadata={
        "help": "Budget of --strategy nsga2/tpe: trained (architecture, θ) evaluations. Default: the FPTAS's "
                "number of candidates × |Θ| (the same budget)."})
    heartbeat_interval: int = field(default=10, metadata={
        "help": "Seconds between a worker's heartbeats for the trial it trains."})
    grace_period: int = field(default=60, metadata={
        "help": "Seconds without a heartbeat after which a trial's worker counts as dead and the trial is re-queued "
                "for another worker. Must exceed --heartbeat-interval."})
    max_retry: int = field(default=3, metadata={
        "help": "How often a trial whose worker died is re-queued before it is left failed."})
    poll_interval: float = field(default=2.0, metadata={
        "help": "Seconds an idle worker waits between looks at the study while other workers finish."})
    engine: str = field(default="auto", metadata={
        "help": "Data parallelism inside this worker: each candidate trains on all ranks, each rank on its share of "
                "every batch. 'auto' follows the launcher (torchrun or horovodrun; none under plain python); rank 0 "
                "alone talks to the storage and writes results.",
        "choices": ["auto", "none", "torchrun", "horovod"]})
    report_only: bool = field(default=False, metadata={
        "help": "Train nothing: write the results (tables, plots, report.md, winner/) from the study's finished "
                "trials, e.g. on another machine than the workers."})
    seed: int = field(default=0, metadata={"help": "Seed of data order, masking and student initialisation."})
    tiny: bool = field(default=False, metadata={
        "help": "Smoke-test scale: " + ", ".join(f"{k}={v}" for k, v in TINY.items()) + " (options left at their "
                "defaults only)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        if self.tiny:
            defaults = {f.name: (f.default_factory() if callable(f.default_factory) else f.default) for f in fields(self)}
            for key, value in TINY.items():
                if key == "latency" and self.cost == "latency":
                    continue  # interval selection then needs every latency
                if getattr(self, key) == defaults[key]:
                    setattr(self, key, value)
        positive = ("num_candidates", "steps", "batch_size", "eval_batches", "max_seq_length", "latency_batch_size",
                    "latency_repeats")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.epsilon is not None and self.epsilon <= 0:
            raise ValueError(f"--epsilon must be between 1 and |Ξ|, got {self.epsilon}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"--heldout-fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.n_trials is not None and self.n_trials <= 0:
            raise ValueError(f"--n-trials must be positive, got {self.n_trials}")
        if self.heartbeat_interval <= 0 or self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"--grace-period ({self.grace_period} s) must exceed --heartbeat-interval "
                             f"({self.heartbeat_interval} s), which must be positive")
        if self.max_retry < 0 or not self.poll_interval > 0:
            raise ValueError("--max-retry must be >= 0 and --poll-interval positive")
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"--threads must be positive, got {self.threads}")
        if not (self.teacher_cache_gib >= 0 and math.isfinite(self.teacher_cache_gib)):
            raise ValueError(f"--teacher-cache-gib must be a non-negative number, got {self.teacher_cache_gib}")
        if self.cost == "latency" and self.latency == "candidates":
            raise ValueError("--cost latency needs the latency of every architecture: use --latency all or predicted")
        if self.latency_samples < 6:
            raise ValueError(f"--latency-samples must be at least 6, got {self.latency_samples}")
        self.loss_weights()  # validates --loss

    def loss_weights(self) -> dict[str, float] | None:
        """--loss as a mapping, or None for the teacher-dependent default.

        Raises:
            ValueError: on a malformed item or unknown term.
        """
        return None if self.loss is None else parse_weights(self.loss)

    def to_dict(self) -> dict:
        return asdict(self)
