"""The FPTAS search recipe (de Wynter 2020, arXiv 2010.08512; Bort, arXiv 2010.10499 §3), top to bottom:

1. resolve and validate every input (teacher, corpus, space, ε, Θ, loss) before writing anything;
2. compute p and i for every architecture of Ξ (closed-form counts and FLOPs; measured latency, cached);
3. sort Ξ by p and take one candidate per interval of ε architectures;
4. train each candidate for s steps under each θ ∈ Θ on the same batches, measure e on the same held-out batches;
5. keep the best W per candidate and return the architecture with the largest W.

Every (candidate, θ) is one trial of an Optuna study minimising (p, i, e), so a re-run with the same output folder
skips finished work, and the study's Pareto front is the front of the evaluated architectures.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
import transformers
from optuna.trial import TrialState
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from bort.architecture import Architecture
from bort.counting import count_parameters, flops_per_sequence
from bort.distill import DistillationLoss, default_weights
from bort.distributed import SingleProcess, engine
from bort.latency import LatencyProfile
from bort.modeling import build_or_extract, has_mlm_head, load_teacher, load_teacher_config, set_dropout
from bort.training import OptimConfig, distill, evaluate
from data.collator import MaskingCollator
from data.corpus import load_corpus
from data.files import atomic_write_json
from data.resources import default_corpus, default_teacher
from search.config import SearchConfig
from search.fptas import interval_candidates
from search.latency import LatencyCache, fit_predictor, measure_architectures, predict, sample_for_fit
from search.report import save_winner, winner_lock, write_results
from search.report_page import write_report_page
from search.storage import engine_url, open_defined_study, open_storage, redact
from search.teacher_store import SharedTeacherOutputs, targets_digest
from search.worker import Evaluation, run_planned, run_sampled, trial_key
from search.space import DIMENSIONS, default_space, load_space

logger = logging.getLogger(__name__)
STUDY_NAME = "fptas"


class SearchError(ValueError):
    """An input the search cannot use (named in the message)."""


@dataclass
class Inputs:
    """Everything resolved from the config before any output is written."""

    teacher_name: str
    teacher_config: PretrainedConfig
    corpus: list[str]
    archs: list[Architecture]
    space_dict: dict
    epsilon: int
    thetas: list[OptimConfig]
    loss_weights: dict[str, float]
    relation_heads: int
    output_dir: Path


@dataclass
class SearchSetup:
    """The loaded inputs of a search: shared by the runner and the benchmarks."""

    config: SearchConfig
    inputs: Inputs
    teacher: PreTrainedModel
    tokenizer: object
    corpus: object


def setup_search(config: SearchConfig) -> SearchSetup:
    """Step 1: resolve, validate and load every input. Writes nothing but the token cache.

    Raises:
        SearchError, SpaceError, TeacherError, ArchitectureError, DataError: on bad input.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if not config.progress:
        transformers.utils.logging.disable_progress_bar()
    inputs = _resolve_inputs(config)
    teacher = load_teacher(inputs.teacher_name)
    tokenizer = _load_tokenizer(inputs.teacher_name)
    corpus = load_corpus(inputs.corpus, tokenizer, max_seq_length=config.max_seq_length,
                         heldout_fraction=config.heldout_fraction, seed=config.seed, cache_dir=config.cache_dir,
                         show_progress=config.progress)
    return SearchSetup(config, inputs, teacher, tokenizer, corpus)


def run_search(config: SearchConfig) -> dict | None:
    """Run the whole search (or this worker's share of it); returns the summary written to ``summary.json`` (None
    on the ranks other than 0 of a data-parallel worker, which write nothing).

    Raises:
        SearchError, SpaceError, TeacherError, ArchitectureError, DataError, StorageError: on bad input, before
        anything is written.
        DistributedError: the engine cannot start (see :func:`bort.distributed.init_engine`), before anything is
            written.
    """
    setup = setup_search(config)
    with engine(config.engine) as eng:
        if not eng.is_main:
            _follow(setup, eng)
            return None
        try:
            return _run_main(setup, eng)
        finally:
            if eng.world_size > 1:
                eng.gather_object(None)  # releases the other ranks


def _run_main(setup: SearchSetup, eng: SingleProcess) -> dict:
    """The search on this worker's rank 0 (the only rank that talks to the storage and writes)."""
    config, inputs, teacher, tokenizer, corpus = setup.config, setup.inputs, setup.teacher, setup.tokenizer, \
        setup.corpus
    resolved = _resolved_config(config, inputs, corpus)
    storage = open_storage(_storage_url(config, inputs), heartbeat_interval=config.heartbeat_interval,
                           grace_period=config.grace_period, max_retry=config.max_retry)
    # all inputs are valid and the storage answers: from here on, results are written
    study = _open_study(config, inputs, resolved, storage)
    if config.report_only and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SearchError(f"the study {study.study_name!r} has no finished trial to report yet")
    atomic_write_json(inputs.output_dir / "config.json", resolved)

    rows = _measure_architectures(config, inputs, teacher)
    p_max, i_max = _maximum_point(config, inputs, rows, teacher)
    key_p = f"params_{config.parameter_count}"
    key_i = "flops" if config.cost == "flops" else "latency_ms"
    if config.strategy == "fptas":
        candidates = interval_candidates([r[key_p] for r in rows], [r[key_i] for r in rows], inputs.epsilon, p_max,
                                         i_max, head_width_tie_break(inputs.archs, inputs.teacher_config))
    elif config.strategy == "exhaustive":
        candidates = list(range(len(rows)))
    else:
        candidates = []  # chosen by the sampler as the search goes
    for k in candidates:
        rows[k]["candidate"] = True
    if config.latency == "candidates":
        _add_latencies(config, inputs, [rows[k] for k in candidates])

    teacher_outputs, rank_train = _rank_trainer(setup, eng)

    def train(arch, theta, progress=None):
        if eng.world_size > 1:  # the other ranks train the same candidate on their shares of the batches
            eng.gather_object({"architecture": arch.to_dict(), "theta": theta.to_dict()})
        return rank_train(arch, theta, progress)

    context = Evaluation(config, inputs.thetas, inputs.archs, {r["name"]: r for r in rows}, train, tokenizer,
                         inputs.output_dir, p_max, i_max, key_p, key_i)
    if not config.report_only:
        if candidates:
            # the costliest first: with several workers, the last trials to finish are then short ones
            order = sorted(candidates, key=lambda k: -rows[k]["flops"])
            run_planned(context, study, storage, [(rows[k]["name"], t) for k in order
                                                  for t in range(len(inputs.thetas))])
        else:
            run_sampled(context, study, storage, _n_trials(config, inputs))
    if config.strategy in ("nsga2", "tpe"):
        evaluated = {trial_key(t)[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        for row in rows:
            row["candidate"] = row["name"] in evaluated
        if config.latency == "candidates":
            _add_latencies(config, inputs, [r for r in rows if r["candidate"]])
    summary = write_results(inputs.output_dir, study, rows, resolved, p_max=p_max, i_max=i_max, key_p=key_p,
                            key_i=key_i)
    _ensure_winner_weights(inputs, tokenizer, summary, train, key_p)
    if not config.report_only:  # every evaluation is done: the shared teacher targets are no longer needed
        teacher_outputs.remove()
    hint = redact(engine_url(config.storage)) if config.storage else \
        f"sqlite:///{(inputs.output_dir / 'study.db').resolve()}"
    page = write_report_page(inputs.output_dir, study, rows, summary, resolved, _teacher_row(config, inputs, teacher),
                             storage_hint=hint)
    summary["report"] = str(page)
    return summary


def _teacher_row(config: SearchConfig, inputs: Inputs, teacher: PreTrainedModel, latency: bool = True) -> dict:
    """The teacher's size and FLOPs, and (``latency``) its measured latency under the search's latency profile
    (cached per profile)."""
    arch = Architecture.from_config(inputs.teacher_config)
    pooler = getattr(teacher.base_model, "pooler", None) is not None
    params = count_parameters(arch, inputs.teacher_config, pooler=pooler)
    row = {"name": "teacher", **arch.to_dict(), "params_total": params.total, "params_effective": params.effective,
           "flops": flops_per_sequence(arch, config.max_seq_length, pooler=pooler)}
    if latency:
        _add_latencies(config, inputs, [row])
    return row


def _n_trials(config: SearchConfig, inputs: Inputs) -> int:
    """The sampler strategies' budget: --n-trials, or what the FPTAS trains on this space."""
    if config.n_trials is not None:
        return config.n_trials
    return math.ceil(len(inputs.archs) / inputs.epsilon) * len(inputs.thetas)


# --- 1. inputs ---------------------------------------------------------------------------------------------------

def head_width_tie_break(archs: list[Architecture], teacher_config: PretrainedConfig) -> list[float]:
    """|log(d / d_teacher)| per architecture, d = hidden_size / num_attention_heads: between candidates equal in p and
    i, interval selection prefers the head width closest to the teacher's, the natural width for extraction."""
    d_teacher = teacher_config.hidden_size / teacher_config.num_attention_heads
    return [abs(math.log(a.head_dim / d_teacher)) for a in archs]


def _resolve_inputs(config: SearchConfig) -> Inputs:
    teacher_name = config.teacher or default_teacher()
    teacher_config = load_teacher_config(teacher_name)
    space = load_space(config.space) if config.space else default_space(teacher_config)
    archs = space.validate(teacher_config)
    epsilon = config.epsilon if config.epsilon is not None else math.ceil(len(archs) / config.num_candidates)
    if not 1 <= epsilon <= len(archs):
        raise SearchError(f"--epsilon={epsilon} is outside 1..|Ξ| = 1..{len(archs)} for space {space.source}")
    weights = config.loss_weights() or default_weights(has_mlm_head(teacher_config))
    if ("logits" in weights or "mlm" in weights) and not has_mlm_head(teacher_config):
        raise SearchError(f"--loss uses logits/mlm but teacher {teacher_name} has no masked-LM head "
                          f"(use attention_relations and/or hidden_states)")
    relation_heads = config.relation_heads or teacher_config.num_attention_heads
    if weights.get("attention_relations", 0) > 0:
        widths = {a.hidden_size for a in archs} | {teacher_config.hidden_size}
        bad = sorted(w for w in widths if w % relation_heads)
        if bad:
            raise SearchError(f"--relation-heads={relation_heads} does not divide hidden_size {bad} of the space "
                              f"{space.source}; pick a common divisor")
    thetas = [OptimConfig(learning_rate=lr, weight_decay=wd, warmup=wu)
              for lr, wd, wu in itertools.product(config.learning_rate, config.weight_decay, config.warmup)]
    output_dir = Path(config.output_dir)
    _check_writable(output_dir)
    return Inputs(teacher_name, teacher_config, config.corpus or default_corpus(), archs, space.to_dict(), epsilon,
                  thetas, weights, relation_heads, output_dir)


def _check_writable(path: Path) -> None:
    """Fail early, without creating anything, if ``path`` cannot become a writable folder."""
    if path.exists() and not path.is_dir():
        raise SearchError(f"--output-dir {path} exists and is not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SearchError(f"--output-dir {path} is not writable ({ancestor} does not permit writing)")


def _load_tokenizer(name: str):
    tokenizer = AutoTokenizer.from_pretrained(name)
    if not tokenizer.is_fast:
        raise SearchError(f"teacher {name} has no fast tokenizer (tokenizer.json); the corpus pipeline needs one")
    return tokenizer


def _resolved_config(config: SearchConfig, inputs: Inputs, corpus) -> dict:
    return {
        "options": config.to_dict(),
        "resolved": {
            "teacher": inputs.teacher_name,
            "teacher_architecture": Architecture.from_config(inputs.teacher_config).to_dict(),
            "teacher_model_type": inputs.teacher_config.model_type,
            "corpus": inputs.corpus,
            "corpus_cache": str(corpus.cache_path),
            "corpus_stats": corpus.stats,
            "space": inputs.space_dict,
            "space_size": len(inputs.archs),
            "epsilon": inputs.epsilon,
            "thetas": [t.to_dict() for t in inputs.thetas],
            "loss_weights": inputs.loss_weights,
            "relation_heads": inputs.relation_heads,
        },
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__,
                     "transformers": transformers.__version__},
    }


def _storage_url(config: SearchConfig, inputs: Inputs) -> str:
    if config.storage:
        return config.storage
    inputs.output_dir.mkdir(parents=True, exist_ok=True)  # checked writable in step 1
    return f"sqlite:///{(inputs.output_dir / 'study.db').resolve()}"


def study_name(config: SearchConfig) -> str:
    """One study per strategy, so that strategies compared on one storage do not mix."""
    return STUDY_NAME if config.strategy == "fptas" else f"{STUDY_NAME}-{config.strategy}"


def _open_study(config: SearchConfig, inputs: Inputs, resolved: dict, storage) -> optuna.Study:
    """The study of this search; refuses one created with different search-defining settings (see
    :func:`search.storage.open_defined_study` for two drivers creating it at the same moment)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inputs.output_dir.mkdir(parents=True, exist_ok=True)
    where = redact(config.storage) if config.storage else str(inputs.output_dir / "study.db")
    study, created = open_defined_study(storage, study_name(config), ["minimize"] * 3,
                                        _defining_settings(config, resolved), where=where,
                                        hint="use another --output-dir or --storage")
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([f"p ({config.parameter_count} parameters)", f"i ({config.cost})",
                                    "e (held-out loss)"])
    return study


def _defining_settings(config: SearchConfig, resolved: dict) -> dict:
    """The settings that change what a trial computes: results under other settings must not be mixed."""
    r = resolved["resolved"]
    keys = ("steps", "batch_size", "eval_batches", "max_seq_length", "heldout_fraction", "init", "temperature",
            "dropout", "cost", "parameter_count", "maximum_point", "seed", "strategy")
    out = {k: config.to_dict()[k] for k in keys}
    out.update(teacher=r["teacher"], teacher_architecture=r["teacher_architecture"], corpus_cache=Path(
        r["corpus_cache"]).name, space=r["space"], loss_weights=r["loss_weights"], relation_heads=r["relation_heads"])
    return out


# --- 2. p and i for every architecture ---------------------------------------------------------------------------

def _measure_architectures(config: SearchConfig, inputs: Inputs, teacher: PreTrainedModel) -> list[dict]:
    pooler = getattr(teacher.base_model, "pooler", None) is not None
    rows = []
    for arch in inputs.archs:
        params = count_parameters(arch, inputs.teacher_config, pooler=pooler)
        rows.append({"name": arch.name, **arch.to_dict(), "params_total": params.total,
                     "params_effective": params.effective,
                     "flops": flops_per_sequence(arch, config.max_seq_length, pooler=pooler),
                     "latency_ms": None, "latency_source": None, "candidate": False})
    if config.latency == "all":
        _add_latencies(config, inputs, rows)
    elif config.latency == "predicted":
        _predict_latencies(config, inputs, rows)
    return rows


def _latency_profile(config: SearchConfig) -> LatencyProfile:
    return LatencyProfile(batch_size=config.latency_batch_size, seq_len=config.max_seq_length,
                          device=config.latency_device, dtype=config.latency_dtype, threads=config.threads,
                          warmup=config.latency_warmup, repeats=config.latency_repeats)


def _latency_cache(config: SearchConfig, inputs: Inputs) -> LatencyCache:
    return LatencyCache.open(_latency_profile(config), inputs.teacher_config, name=config.latency_profile,
                             cache_dir=config.cache_dir)


def _add_latencies(config: SearchConfig, inputs: Inputs, rows: list[dict]) -> None:
    """Fill ``latency_ms`` of ``rows`` with measurements, reusing the profile's cache in the user cache folder, and
    record them (with the profile) in the output folder's ``latency.json``."""
    cache = _latency_cache(config, inputs)
    ms = measure_architectures([Architecture(**{d: r[d] for d in DIMENSIONS}) for r in rows], inputs.teacher_config,
                               _latency_profile(config), cache, seed=config.seed, progress=config.progress)
    for row in rows:
        row["latency_ms"], row["latency_source"] = ms[Architecture(**{d: row[d] for d in DIMENSIONS}).name], "measured"
    record = inputs.output_dir / "latency.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    if previous.get("key") != cache.key:
        previous = {}
    atomic_write_json(record, {"profile_name": cache.path.stem.rsplit("-", 1)[0], "cache_file": str(cache.path),
                               "key": cache.key, "ms": {**previous.get("ms", {}), **ms}})


def _predict_latencies(config: SearchConfig, inputs: Inputs, rows: list[dict]) -> None:
    """--latency predicted: measure a FLOPs-spread sample, fit the predictor, predict the rest; report its error."""
    sample = sample_for_fit(inputs.archs, [r["flops"] for r in rows], config.latency_samples)
    names = {a.name for a in sample}
    measured = [r for r in rows if r["name"] in names]
    _add_latencies(config, inputs, measured)
    model, report = fit_predictor(sample, [next(r["latency_ms"] for r in measured if r["name"] == a.name)
                                           for a in sample], config.max_seq_length)
    predicted = predict(model, inputs.archs, config.max_seq_length)
    for row in rows:
        if row["latency_source"] is None:
            row["latency_ms"], row["latency_source"] = predicted[row["name"]], "predicted"
    atomic_write_json(inputs.output_dir / "latency_model.json", {**report, "profile": _latency_profile(
        config).to_dict(), "predicted": {r["name"]: r["latency_ms"] for r in rows if r["latency_source"] ==
                                         "predicted"}})
    logger.info("latency predictor: %d measured points, cross-validated error %.1f%% (R² %.3f)", report["points"],
                100 * report["cv_mape"], report["cv_r2"])


def _maximum_point(config: SearchConfig, inputs: Inputs, rows: list[dict], teacher: PreTrainedModel):
    """p(T) and i(T) for the chosen maximum point T."""
    key_p = f"params_{config.parameter_count}"
    if config.maximum_point == "space":
        top = max(rows, key=lambda r: (r[key_p], r["flops"]))
        if config.cost == "latency" and top["latency_ms"] is None:
            _add_latencies(config, inputs, [top])
        return top[key_p], (top["flops"] if config.cost == "flops" else top["latency_ms"])
    row = _teacher_row(config, inputs, teacher, latency=config.cost == "latency")
    return row[key_p], (row["flops"] if config.cost == "flops" else row["latency_ms"])


# --- 4. training the candidates ----------------------------------------------------------------------------------

def materialize_batches(config: SearchConfig, corpus, tokenizer):
    """The s training batches (shuffled, cycled over epochs) and |B| held-out batches, masked with fixed seeds.

    Every candidate and θ trains on exactly these batches, so their e values compare like with like.
    """
    n_train = len(corpus.train)
    generator = torch.Generator().manual_seed(config.seed)
    needed = config.steps * config.batch_size
    order = torch.cat([torch.randperm(n_train, generator=generator) for _ in range(math.ceil(needed / n_train))])
    collate = MaskingCollator(tokenizer, seed=config.seed)
    train = [collate([corpus.train[int(k)] for k in order[s * config.batch_size:(s + 1) * config.batch_size]])
             for s in range(config.steps)]
    n_held = min(len(corpus.heldout), config.eval_batches * config.batch_size)
    if n_held == 0:
        raise SearchError("the held-out split is empty: raise --heldout-fraction or give more text")
    collate_held = MaskingCollator(tokenizer, seed=config.seed + 1)
    held = [collate_held([corpus.heldout[k] for k in range(s, min(s + config.batch_size, n_held))])
            for s in range(0, n_held, config.batch_size)]
    return train, held


def make_teacher_outputs(setup: SearchSetup, train_batches, heldout_batches) -> SharedTeacherOutputs:
    """The teacher-output cache shared by every candidate (the relation targets do not depend on the student) and,
    through ``<output_dir>/teacher_targets/<digest>/``, by every worker of this machine."""
    reference = _loss_fn(setup.config, setup.inputs, setup.inputs.teacher_config.hidden_size)
    settings = {"needs": sorted(reference.needs), "relation_heads": setup.inputs.relation_heads, "layer": -1}
    digest = targets_digest(setup.inputs.teacher_name, setup.inputs.teacher_config.to_dict(), settings,
                            [*train_batches, *heldout_batches])
    return SharedTeacherOutputs(setup.teacher, reference, setup.inputs.output_dir / "teacher_targets" / digest,
                                max_bytes=int(setup.config.teacher_cache_gib * 2**30))


def _loss_fn(config: SearchConfig, inputs: Inputs, student_hidden_size: int) -> DistillationLoss:
    return DistillationLoss(inputs.loss_weights, student_hidden_size=student_hidden_size,
                            teacher_hidden_size=inputs.teacher_config.hidden_size,
                            relation_heads=inputs.relation_heads, temperature=config.temperature)


def train_candidate(config: SearchConfig, inputs: Inputs, teacher, arch: Architecture, theta: OptimConfig,
                    train_batches, heldout_batches, teacher_outputs, progress=None,
                    engine: SingleProcess | None = None):
    """Step 4 for one (candidate, θ): build or extract the student, distil it for ``config.steps`` steps on
    ``train_batches``, and return (student, held-out loss terms, training losses). e(b) is ``terms["loss"]``.
    Under a data-parallel ``engine``, the batches are this rank's shares (see :func:`rank_share`)."""
    torch.manual_seed(config.seed)
    student = build_or_extract(arch, teacher, init=config.init, seed=config.seed)
    set_dropout(student, config.dropout)
    loss_fn = _loss_fn(config, inputs, arch.hidden_size)
    losses = distill(student, loss_fn, train_batches, teacher_outputs, theta, steps=config.steps, progress=progress,
                     engine=engine)
    terms = evaluate(student, loss_fn, heldout_batches, teacher_outputs, engine=engine)
    return student, terms, losses


def rank_share(train_batches: list[dict], heldout_batches: list[dict], rank: int, world_size: int):
    """This rank's data under data parallelism: rows ``rank::world_size`` of every training batch (the ranks'
    gradients are averaged, so a step sees the whole batch) and whole held-out batches ``rank::world_size`` (the
    ranks' sums are added, so e is the same mean over every held-out batch).

    Raises:
        SearchError: a batch has fewer rows, or there are fewer held-out batches, than ranks.
    """
    if world_size == 1:
        return train_batches, heldout_batches
    if min(len(b["input_ids"]) for b in train_batches) < world_size or len(heldout_batches) < world_size:
        raise SearchError(f"{world_size} ranks need --batch-size and --eval-batches of at least {world_size}")
    shares = [{name: tensor[rank::world_size] for name, tensor in batch.items()} for batch in train_batches]
    return shares, heldout_batches[rank::world_size]


def _rank_trainer(setup: SearchSetup, eng: SingleProcess):
    """(teacher targets, train(arch, theta, progress)) for this rank: its shares of the batches, the teacher's
    targets on them computed before its first candidate (split with this machine's other workers), and the
    candidate's training under ``eng``."""
    train_batches, heldout_batches = rank_share(*materialize_batches(setup.config, setup.corpus, setup.tokenizer),
                                                eng.rank, eng.world_size)
    teacher_outputs = make_teacher_outputs(setup, train_batches, heldout_batches)

    def train(arch: Architecture, theta: OptimConfig, progress=None):
        if not teacher_outputs.filled:
            teacher_outputs.fill([(("train", k), b) for k, b in enumerate(train_batches)] +
                                 [(("heldout", k), b) for k, b in enumerate(heldout_batches)])
        return train_candidate(setup.config, setup.inputs, setup.teacher, arch, theta, train_batches,
                               heldout_batches, teacher_outputs, progress, engine=eng)

    return teacher_outputs, train


def _follow(setup: SearchSetup, eng: SingleProcess) -> None:
    """Ranks other than 0: train each candidate rank 0 announces, together with it, until it announces the end."""
    teacher_outputs, train = _rank_trainer(setup, eng)
    while (command := eng.gather_object(None)[0]) is not None:
        train(Architecture(**command["architecture"]), OptimConfig(**command["theta"]))
    if teacher_outputs.filled:
        teacher_outputs.remove()


# --- 5. the winner -----------------------------------------------------------------------------------------------

def _ensure_winner_weights(inputs, tokenizer, summary, train, key_p: str) -> None:
    """Make ``winner/`` hold the best trial's short-trained weights (retraining it, deterministically, if a killed
    run left another architecture there or another machine's worker trained it)."""
    folder = inputs.output_dir / "winner"
    info_file = folder / "search_result.json"
    winner = summary["winner"]
    with winner_lock(folder):
        if info_file.is_file():
            saved = json.loads(info_file.read_text())
            if saved["architecture"] == winner["architecture"] and saved["theta"] == winner["theta"]:
                return
        student, _, _ = train(Architecture(**winner["architecture"]), OptimConfig(**winner["theta"]))
        # with the rank offer_winner compares, so that a resumed run's weaker trials do not replace it
        save_winner(folder, student, tokenizer, {**{k: winner[k] for k in ("architecture", "theta", "W", "e")},
                                                 "rank": [winner["W"], -winner[key_p]]})
