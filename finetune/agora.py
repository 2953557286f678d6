"""Agora: fine-tuning sweep with error-driven data augmentation (de Wynter, arXiv 2010.07990; SPEC §5).

Loop, one *round* at a time:

1. fine-tune one model per configuration θ in Θ on the current training set (original + added examples);
2. take the round's best model and its errors on the mining set (dev by default, as described by the author;
   ``mine_on="holdout"`` mines a held-out slice of the training set instead, keeping dev clean);
3. make ``per_error`` new inputs near each error with the transformation function (:mod:`finetune.transforms`);
4. label them with the oracle (a fine-tuned model of the task whose dev accuracy must be at least 2/3) and add them
   (``per_error=0`` skips 3-4 and the oracle: an ablation that measures the rest of the loop alone);
5. after ``1 + replay`` rounds on the same Θ ("replay": the author re-ran iterations for convergence), sort Θ by
   dev score and drop the longest run of configurations from the top that share the same outcome (the same dev
   score, rounded to ``tie_decimals``; at least the top one);
6. repeat while Θ is not empty (or up to ``max_rounds``); the best model over all rounds is kept in ``best/``.

With ``warm_start`` the configurations of later rounds start from ``best/`` rather than from the base model.

Every task kind runs the loop (Bort's SuperGLUE scores include COPA, MultiRC and ReCoRD). Not published, chosen
here: Θ is the first ``n_configs`` points of the sweep space (Bort's grid by default) in the sweep's seeded order,
which spreads each hyperparameter's values over them; an error is a wrong class (an answer of MultiRC), a wrong
choice (COPA, RACE), a ReCoRD query whose chosen entity is not a correct one, or for regression an absolute error
above ``regression_error``. The oracle's 2/3 is its dev accuracy: per answer for MultiRC, per question for choice
tasks, ReCoRD's exact match, and for regression the task score (mean of Pearson and Spearman). A new input changes
one segment: one of the two texts of a pair, the context every choice shares (COPA's premise and question, RACE's
article) or one choice's text; for ReCoRD only the passage, since each candidate's query must stay the same query
with another entity in it. The oracle's prediction is its label (for ReCoRD, the chosen entity is the answer).

Every round appends a record to ``rounds.jsonl`` (Θ and the scores, errors, examples generated and added,
training-set size, best dev score), the added examples go to ``added.jsonl``, and ``state.json`` lets an interrupted
run resume at the configuration where it stopped; that configuration's training (and the oracle's) continues from its
newest checkpoint (every ``save_steps`` steps, in ``checkpoints/``, deleted when the run ends).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sklearn.metrics import accuracy_score

from data.files import atomic_write_json, atomic_write_text, copy_folder
from finetune.metrics import compute_metrics
from finetune.pipeline import RunConfig, load_splits, run_once, save_trained, write_predictions
from finetune.sweep import balanced_grid, load_space
from finetune.tasks import Example, Task, get_task
from finetune.trainer import RunResult, check_ranges, load_model, load_tokenizer, predict, save_run, subsample
from finetune.transforms import TRANSFORMS, check_transform, make_transform

logger = logging.getLogger(__name__)

MINE_ON = ("dev", "holdout")  # where Agora mines errors

MIN_ORACLE_ACCURACY = 2 / 3


class OracleTooWeak(ValueError):
    """The oracle's dev accuracy is below 2/3 (Agora's requirement for its labelling model)."""


@dataclass
class AgoraConfig:
    """Agora's own settings (the per-configuration training settings come from the run's ``TrainConfig``)."""

    oracle: str = field(default="", metadata={
        "help": "folder of a model already fine-tuned on the task, used to label new examples; default: fine-tune "
                "--oracle-base on the task first (saved in agora/oracle and reused on resume)"})
    oracle_base: str = field(default="", metadata={"help": "model to fine-tune into the oracle (default: the teacher)"})
    transform: str = field(default="perturb", metadata={
        "help": "perturb (word dropout/swap/synonyms) or mlm (masked-LM substitution, needs --mlm-model)",
        "choices": list(TRANSFORMS)})
    mlm_model: str = field(default="", metadata={"help": "model folder with a trained masked-LM head for --transform mlm"})
    per_error: int = field(default=2, metadata={
        "help": "new examples generated near each error (0: none and no oracle; an ablation that keeps the rounds, "
                "replay, pruning and warm start)"})
    n_configs: int = field(default=4, metadata={
        "help": "|Θ|: the space's first points in the sweep's balanced order (0: all)"})
    space: str = field(default="", metadata={"help": "JSON/YAML search space file (default: Bort's grid)"})
    replay: int = field(default=1, metadata={"help": "extra rounds on the same Θ before each pruning"})
    max_rounds: int = field(default=0, metadata={"help": "stop after this many rounds (0: until Θ is empty)"})
    tie_decimals: int = field(default=3, metadata={"help": "dev scores equal to this many decimals share an outcome"})
    mine_on: str = field(default="dev", metadata={"help": "where errors are mined: dev (as published) or holdout",
                                                  "choices": list(MINE_ON)})
    holdout_size: int = field(default=200, metadata={"help": "training examples held out when --mine-on holdout"})
    regression_error: float = field(default=1.0, metadata={"help": "regression: |prediction - gold| counted as error"})
    agora_seed: int = field(default=0, metadata={"help": "seed of Θ's sample, holdout split and transformations"})
    warm_start: bool = field(default=False, metadata={
        "help": "from the second round on, fine-tune the best model so far instead of the base model (not in the "
                "published loop; a fixed budget then accumulates along the best lineage)"})

    def __post_init__(self) -> None:
        check_transform(self.transform, self.mlm_model)  # here, not only once the oracle is trained
        if self.mine_on not in MINE_ON:
            raise ValueError(f"mine_on must be dev or holdout, got {self.mine_on!r}")
        check_ranges(self, positive=("regression_error",), at_least_1=("holdout_size",),
                     non_negative=("per_error", "replay", "n_configs", "max_rounds", "tie_decimals"))


def agora_dir(run: RunConfig) -> Path:
    return run.task_dir / "agora"


def sample_configurations(space: dict[str, list], n: int, seed: int) -> list[dict]:
    """Θ: the first ``n`` points (all of them when ``n`` is 0) of the grid ``space`` in the sweep's seeded order,
    which spreads each hyperparameter's values over the first points (:func:`finetune.sweep.balanced_grid`)."""
    grid = balanced_grid(space, seed)
    return grid if n == 0 else grid[:n]


def prune(theta: list[dict], scores: list[float], decimals: int) -> list[dict]:
    """Sort Θ by dev score (best first) and drop the run of configurations at the top that share the top score
    (rounded to ``decimals``). Returns the remaining configurations, best first."""
    order = sorted(range(len(theta)), key=lambda i: -scores[i])
    top = round(scores[order[0]], decimals)
    k = 0
    while k < len(order) and round(scores[order[k]], decimals) == top:
        k += 1
    return [theta[i] for i in order[k:]]


def oracle_accuracy(task: Task, predictions, examples: list[Example]) -> float:
    """Dev accuracy of an oracle: of the class (per answer for MultiRC) or the choice; ReCoRD's exact match; the task
    score for regression. A fraction in [0, 1]."""
    if task.kind == "regression":
        return compute_metrics(task, predictions, examples)["score"]
    if task.kind == "record":
        return compute_metrics(task, predictions, examples)["record_em"]
    return float(accuracy_score([e.label for e in examples], predictions))


def check_oracle(task: Task, path: str, dev: list[Example], max_seq_length: int):
    """Load the oracle and measure it on dev; refuse it below 2/3.

    Raises:
        OracleTooWeak: its dev accuracy is below 2/3.
    """
    model, tokenizer = load_model(task, path), load_tokenizer(path)
    accuracy = oracle_accuracy(task, predict(model, tokenizer, task, dev, max_seq_length), dev)
    if accuracy < MIN_ORACLE_ACCURACY:
        measure = {"regression": "dev score (mean of Pearson and Spearman)", "record": "dev exact match"}.get(
            task.kind, "dev accuracy")
        raise OracleTooWeak(
            f"oracle {path} reaches {100 * accuracy:.1f}% {measure} on {task.name}, below the 2/3 Agora needs "
            "for labels that help more than they hurt (arXiv 2010.07990); pass a stronger --oracle")
    return model, tokenizer, accuracy


def find_errors(task: Task, predictions, examples: list[Example], regression_error: float) -> list[Example]:
    """The examples the model gets wrong (see the module's docstring for each kind)."""
    if task.kind == "regression":
        return [e for p, e in zip(predictions, examples) if abs(float(p) - e.label) > regression_error]
    if task.kind == "record":  # a query none of whose candidates is correct cannot be learnt: not an error
        return [e for p, e in zip(predictions, examples) if e.label and int(p) not in e.label]
    return [e for p, e in zip(predictions, examples) if int(p) != e.label]


def inputs(example: Example) -> tuple:
    """What the model reads of ``example``: its texts, or its choices (a key for telling inputs apart)."""
    return example.choices or example.texts


def transform_one_segment(example: Example, transform, rng: random.Random, record: bool = False) -> Example:
    """A copy of ``example``'s input, unlabelled, with one segment chosen at random transformed: one text of
    ``texts``; for choices, the first segment they share or one choice's second segment; with ``record`` (ReCoRD)
    the shared first segment (the passage) alone. ``candidates`` are kept."""
    if not example.choices:
        texts = list(example.texts)
        i = rng.randrange(len(texts))
        texts[i] = transform(texts[i], rng)
        return Example(uid=example.uid, texts=tuple(texts))
    choices = [list(c) for c in example.choices]
    context = choices[0][0]
    shared = all(c[0] == context for c in choices)
    i = -1 if record else rng.randrange(len(choices) + shared) - shared  # -1: the shared first segment
    if i < 0:
        new = transform(context, rng)
        for c in choices:
            c[0] = new if c[0] == context else c[0]
    else:
        choices[i][1] = transform(choices[i][1], rng)
    return Example(uid=example.uid, choices=tuple(map(tuple, choices)), candidates=example.candidates)


def generate(task: Task, errors: list[Example], transform, per_error: int, rng: random.Random,
             seen: set) -> list[Example]:
    """Up to ``per_error`` new unlabelled inputs per error, each with one segment transformed
    (:func:`transform_one_segment`); inputs in ``seen`` (the training set's, earlier rounds') are skipped."""
    out = []
    for e in errors:
        for j in range(per_error):
            new = replace(transform_one_segment(e, transform, rng, record=task.kind == "record"),
                          uid=f"agora:{e.uid}:{j}")
            if inputs(new) in seen:
                continue
            seen.add(inputs(new))
            out.append(new)
    return out


def with_oracle_label(task: Task, example: Example, prediction) -> Example:
    """``example`` labelled with the oracle's ``prediction``: a score (regression), a class or choice index, or for
    ReCoRD the chosen candidate as the one correct answer."""
    if task.kind == "regression":
        return replace(example, label=float(prediction))
    if task.kind == "record":
        return replace(example, label=(int(prediction),), answers=(example.candidates[int(prediction)],))
    return replace(example, label=int(prediction))


def _added_row(example: Example, round_: int) -> dict:
    row = {"uid": example.uid, "texts": list(example.texts), "label": example.label, "round": round_}
    if example.choices:
        row.update(choices=[list(c) for c in example.choices], candidates=list(example.candidates),
                   answers=list(example.answers))
    return row


def _added_example(row: dict) -> Example:
    label = tuple(row["label"]) if isinstance(row["label"], list) else row["label"]
    return Example(uid=row["uid"], texts=tuple(row["texts"]), label=label,
                   choices=tuple(tuple(c) for c in row.get("choices", ())),
                   candidates=tuple(row.get("candidates", ())), answers=tuple(row.get("answers", ())))


def _read_rounds_before(path: Path, round_: int) -> list[dict]:
    """The rows of a JSONL log written by rounds before ``round_``. Rows of a round that was interrupted after it
    appended them but before ``state.json`` moved on are dropped (and the file rewritten), so a resumed round does
    not count its examples or its record twice."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    kept = [r for r in rows if r["round"] < round_]
    if len(kept) < len(rows):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def run_agora(run: RunConfig, agora: AgoraConfig, progress: bool = True, run_job=run_once) -> dict:
    """Run or resume Agora for ``run.task``; returns the final state (rounds, best score and configuration).

    ``run_job`` trains one configuration or the oracle (:func:`finetune.pipeline.run_once`, or a data-parallel
    worker's :meth:`finetune.parallel.ParallelRuns.run_once`).

    Raises:
        OracleTooWeak: the oracle's dev accuracy is below 2/3.
    """
    task = get_task(run.task)
    train_cfg = replace(run.train, max_train_examples=0)
    folder = agora_dir(run)
    state_path = folder / "state.json"
    # Θ comes from the space on a first start (checked before anything is written), from state.json on resume
    space = None if state_path.is_file() else load_space(agora.space, train_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    data_dir = run.data_path
    train_all, dev_sets = load_splits(task, data_dir)
    dev_name, dev = next(iter(dev_sets.items()))
    # The original training set is fixed once (subsample, holdout) so every configuration sees the same data.
    base = subsample(train_all, run.train.max_train_examples, agora.agora_seed)
    if run.train.max_eval_examples > 0:
        dev = dev[: run.train.max_eval_examples]
    mining = dev
    if agora.mine_on == "holdout":
        rng = random.Random(agora.agora_seed)
        base = list(base)
        rng.shuffle(base)
        mining, base = base[: agora.holdout_size], base[agora.holdout_size:]

    if space is None:
        state = json.loads(state_path.read_text())
        logger.info("Agora %s: resuming at round %d", task.name, state["round"])
    else:
        theta = sample_configurations(space, agora.n_configs, agora.agora_seed)
        state = {"round": 0, "theta": theta, "scores": {}, "round_best": None, "best": None, "rep": 0}
        atomic_write_json(folder / "agora_config.json", {"run": asdict(run), "agora": asdict(agora)}, default=str)

    oracle = oracle_tok = None
    if agora.per_error > 0:  # without new examples there is nothing to label
        oracle_path = agora.oracle or str(folder / "oracle")
        if not agora.oracle and not (folder / "oracle" / "config.json").is_file():
            logger.info("Agora %s: fine-tuning the oracle from %s", task.name, agora.oracle_base or "the teacher")
            oracle_run = RunConfig(task=task.name, model=agora.oracle_base, tokenizer="", data_dir=run.data_dir,
                                   output_dir=str(folder / ".oracle_run"), predict_test=False,
                                   save_steps=run.save_steps, train=run.train)
            _, model, tokenizer = run_job(oracle_run, train_examples=base, save=False, progress=progress,
                                          checkpoint=folder / "checkpoints" / "oracle")
            save_run(folder / "oracle", model, tokenizer, RunResult({}, 0, 0, [], 0), asdict(oracle_run))
            shutil.rmtree(folder / "checkpoints" / "oracle", ignore_errors=True)
        oracle, oracle_tok, oracle_acc = check_oracle(task, oracle_path, dev, run.train.max_seq_length)
        state["oracle"] = {"path": oracle_path, "dev_accuracy": oracle_acc}

    _read_rounds_before(folder / "rounds.jsonl", state["round"])
    added = [_added_example(r) for r in _read_rounds_before(folder / "added.jsonl", state["round"])]
    seen = {inputs(e) for e in train_all} | {inputs(e) for e in added}
    transform = make_transform(agora.transform, agora.mlm_model)

    while state["theta"] and (agora.max_rounds == 0 or state["round"] < agora.max_rounds):
        k = state["round"]
        round_dir = folder / f"round_{k}"
        train_set = base + added
        start = str(folder / "best") if agora.warm_start and state["best"] is not None else run.model
        for i, params in enumerate(state["theta"]):
            key = json.dumps(params, sort_keys=True)
            if key in state["scores"]:
                continue  # done before an interruption
            config = replace(run, model=start, tokenizer=run.tokenizer if start == run.model else "",
                             train=replace(train_cfg, **params))
            # an interrupted configuration continues from its checkpoint (same start, data and settings on resume)
            checkpoint = folder / "checkpoints" / f"round_{k}_config_{i}"
            result, model, tokenizer = run_job(config, train_examples=train_set, save=False, progress=progress,
                                               checkpoint=checkpoint)
            state["scores"][key] = result.score
            if state["round_best"] is None or result.score > state["round_best"]["score"]:
                save_trained(replace(config, predict_test=False), task, model, tokenizer, result, data_dir,
                             folder=round_dir / "best",
                             extra={"agora_round": k, "train_size": len(train_set)})
                state["round_best"] = {"score": result.score, "config": params, "metrics": result.dev_metrics}
            atomic_write_json(state_path, state, default=str)
            shutil.rmtree(checkpoint, ignore_errors=True)

        # (2)-(4): errors of the round's best model, new examples near them, oracle labels.
        best_model = load_model(task, str(round_dir / "best"))
        best_tok = load_tokenizer(str(round_dir / "best"))
        predictions = predict(best_model, best_tok, task, mining, run.train.max_seq_length)
        errors = find_errors(task, predictions, mining, agora.regression_error)
        rng = random.Random(agora.agora_seed * 1000 + k)
        new = generate(task, errors, transform, agora.per_error, rng, seen)
        labels = predict(oracle, oracle_tok, task, new, run.train.max_seq_length) if new else []
        new = [with_oracle_label(task, e, y) for e, y in zip(new, labels)]
        _append_jsonl(folder / "added.jsonl", [_added_row(e, k) for e in new])
        added += new

        scores = [state["scores"][json.dumps(p, sort_keys=True)] for p in state["theta"]]
        record = {"round": k, "theta_size": len(state["theta"]), "configs": state["theta"], "scores": scores,
                  "best_score": state["round_best"]["score"], "best_config": state["round_best"]["config"],
                  "dev_metrics": state["round_best"]["metrics"], "errors": len(errors), "generated": len(new),
                  "added": len(new), "train_size": len(train_set), "mined_on": agora.mine_on, "started_from": start}
        _append_jsonl(folder / "rounds.jsonl", [record])
        if state["best"] is None or record["best_score"] > state["best"]["score"]:
            copy_folder(round_dir / "best", folder / "best")
            state["best"] = {"score": record["best_score"], "round": k, "config": record["best_config"],
                             "metrics": record["dev_metrics"]}
        shutil.rmtree(round_dir, ignore_errors=True)
        state["rep"] += 1
        if state["rep"] > agora.replay:
            state["theta"] = prune(state["theta"], scores, agora.tie_decimals)
            state["rep"] = 0
        state.update(round=k + 1, scores={}, round_best=None)
        atomic_write_json(state_path, state, default=str)
        logger.info("Agora %s round %d: best dev %.4f, %d errors, %d added, Θ now %d", task.name, k,
                    record["best_score"], len(errors), len(new), len(state["theta"]))

    with contextlib.suppress(OSError):  # every run deleted its checkpoint when it ended
        (folder / "checkpoints").rmdir()
    if run.predict_test and state["best"] is not None:
        best = str(folder / "best")
        write_predictions(run, task, load_model(task, best), load_tokenizer(best), folder / "best", data_dir)
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()] \
        if (folder / "rounds.jsonl").is_file() else []
    if rounds:
        from finetune.report import plot_rounds

        plot_rounds(rounds, folder / "rounds.png", f"Agora on {task.name} ({dev_name})")
    state["rounds"] = rounds
    return state
