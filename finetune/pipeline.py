"""One fine-tuning job end to end: resolve the data folder, read the splits, train, save, predict the test sets."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data.files import atomic_write_json
from data.resources import data_root, default_glue_dir, default_superglue_dir, default_teacher
from finetune.hub import load_from_hub
from finetune.metrics import compute_metrics
from finetune.submission import write_submission
from finetune.tasks import DataError, Example, Task, get_task
from finetune.trainer import RunResult, TrainConfig, load_model, load_tokenizer, predict, save_run, set_seed, train

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Where a job reads and writes; the hyperparameters are in ``train``."""

    task: str
    model: str = field(default="", metadata={
        "help": "model folder (the search's BertModel, a distilled student, the teacher, a fine-tuned model) or hub "
                "name; a missing task head is initialised fresh (default: the local teacher all-MiniLM-L6-v2)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder or hub name (default: the model's)"})
    data_dir: str = field(default="", metadata={
        "help": "benchmark folder in the official layout (GLUE, SuperGLUE or RACE); default: the local data folder, "
                "else the Hugging Face hub dataset (GLUE/SuperGLUE) written in that layout under OUTPUT_DIR/hub_data"})
    output_dir: str = field(default="outputs/finetune", metadata={"help": "output folder (one sub-folder per task)"})
    predict_test: bool = field(default=True, metadata={
        "help": "write test-set predictions in the leaderboard format (and the task's diagnostics)"})
    save_steps: int = field(default=500, metadata={
        "help": "steps between resumable checkpoints of a training run (0: none): in OUTPUT_DIR/checkpoints/TASK "
                "for --mode run, in the sweep's and Agora's folders for their trials and configurations; the same "
                "command started again after an interruption continues from the newest one, which is deleted when "
                "the run ends"})
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.save_steps < 0:
            raise ValueError(f"--save-steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        self.task = get_task(self.task).name
        if not self.model:
            self.model = default_teacher()

    @property
    def checkpoint_dir(self) -> Path:
        """Where a resumable run keeps its checkpoints until it ends."""
        return Path(self.output_dir) / "checkpoints" / self.task

    @property
    def task_dir(self) -> Path:
        return Path(self.output_dir) / self.task

    @property
    def data_path(self) -> Path:
        """The task's benchmark folder (hub downloads are cached under ``output_dir/hub_data``)."""
        return resolve_data_dir(get_task(self.task), self.data_dir, Path(self.output_dir) / "hub_data")


def resolve_data_dir(task: Task, data_dir: str = "", hub_cache: str | Path = "") -> Path:
    """The benchmark folder of ``task``: ``data_dir`` when given, else the local default for its benchmark, else
    the hub dataset written in the official layout under ``hub_cache`` (:mod:`finetune.hub`).

    Raises:
        DataError: no folder given, no local copy, and no hub source (or no ``hub_cache``).
    """
    if data_dir:
        return Path(data_dir)
    root = data_root()
    default = {"glue": default_glue_dir(), "superglue": default_superglue_dir(),
               "race": str(root / "race") if root is not None and (root / "race").is_dir() else None}[task.benchmark]
    if default is not None:
        return Path(default)
    if hub_cache:
        return load_from_hub(task, Path(hub_cache) / task.benchmark)
    raise DataError(f"no local {task.benchmark} folder for {task.name}: pass --data-dir (official layout)")


def load_splits(task: Task, data_dir: Path) -> tuple[list[Example], dict[str, list[Example]]]:
    """The training examples and the dev splits (name -> examples) of a trainable task."""
    if not task.train:
        raise DataError(f"{task.name} is test-only: predict it with a model fine-tuned on {task.predicted_by}")
    return task.read(data_dir, "train"), {name: task.read(data_dir, name) for name in task.dev}


def predict_tests(task: Task, model, tokenizer, data_dir: Path, folder: Path, max_seq_length: int) -> dict:
    """Write the submission files of ``task`` and its diagnostics whose test files exist; returns their paths and,
    for labelled diagnostics (AX-b, AX-g), their metrics."""
    written: dict[str, dict] = {}
    for t in [task] + [get_task(d) for d in task.diagnostics]:
        for name in t.test:
            if not t.files(data_dir, name).exists():
                logger.info("%s: no test file %s, skipping its predictions", t.name, t.files(data_dir, name))
                continue
            examples = t.read(data_dir, name)
            predictions = predict(model, tokenizer, t, examples, max_seq_length)
            entry = {"file": str(write_submission(t, name, examples, predictions, folder))}
            if all(e.label is not None for e in examples):
                entry["metrics"] = compute_metrics(t, predictions, examples)
            written[name] = entry
    return written


def run_once(config: RunConfig, train_examples: list[Example] | None = None, save: bool = True,
             on_evaluate=None, progress: bool = True, engine=None, checkpoint: Path | None = None,
             pause_at: int = 0) -> tuple[RunResult, object, object]:
    """Fine-tune ``config.model`` on ``config.task``; save the best checkpoint into ``config.task_dir`` with its
    dev metrics, resolved config and test predictions (``predictions/``).

    Args:
        config: the job.
        train_examples: training examples to use instead of the task's training file (Agora's grown set).
        save: write the model folder (a sweep saves only its best trial).
        on_evaluate: passed to :func:`finetune.trainer.train`.
        engine: a data-parallel engine (:mod:`bort.distributed`) whose ranks all call this; only rank 0 saves.
        checkpoint: a folder for resumable checkpoints (None: none): one every ``config.save_steps`` steps, and the run
            continues from the newest one there (see :func:`finetune.trainer.train`); the caller deletes it when done.
        pause_at: stop after this step with a checkpoint, to be continued (:func:`finetune.trainer.train`); 0: never.

    Returns:
        The run's result, the fine-tuned model (at its best dev checkpoint) and its tokenizer.
    """
    task = get_task(config.task)
    data_dir = config.data_path
    train_file_examples, dev_sets = load_splits(task, data_dir)
    tokenizer = load_tokenizer(config.model, config.tokenizer or None)
    set_seed(config.train.seed)  # the fresh head's initialisation follows the configuration's seed
    model = load_model(task, config.model)
    result = train(task, model, tokenizer, train_examples if train_examples is not None else train_file_examples,
                   dev_sets, config.train, on_evaluate=on_evaluate, progress=progress, engine=engine,
                   checkpoint=checkpoint, save_steps=config.save_steps, pause_at=pause_at)
    if save and (engine is None or engine.is_main):
        save_trained(config, task, model, tokenizer, result, data_dir)
    return result, model, tokenizer


def save_trained(config: RunConfig, task: Task, model, tokenizer, result: RunResult, data_dir: Path | None = None,
                 folder: Path | None = None, extra: dict | None = None) -> Path:
    """Save model, tokenizer, metrics, resolved config and (if asked) test predictions into ``folder``
    (default ``config.task_dir``)."""
    folder = Path(folder or config.task_dir)
    data_dir = data_dir or config.data_path
    resolved = {**asdict(config), "data_dir": str(data_dir), **(extra or {})}
    save_run(folder, model, tokenizer, result, resolved)
    if config.predict_test:
        write_predictions(config, task, model, tokenizer, folder, data_dir)
    return folder


def write_predictions(config: RunConfig, task: Task, model, tokenizer, folder: Path, data_dir: Path | None = None
                      ) -> dict:
    """Test-set submission files of ``task`` and its diagnostics in ``folder/predictions`` with an ``index.json``
    (file paths, and metrics of labelled diagnostics); returns that index (empty: no test file found)."""
    predictions = predict_tests(task, model, tokenizer, data_dir or config.data_path, Path(folder) / "predictions",
                                config.train.max_seq_length)
    if predictions:
        atomic_write_json(Path(folder) / "predictions" / "index.json", predictions)
    return predictions


def predict_only(config: RunConfig) -> dict:
    """Predict a test-only diagnostic (AX, AX-b, AX-g) with a model fine-tuned on the task that predicts it."""
    task = get_task(config.task)
    data_dir = config.data_path
    tokenizer = load_tokenizer(config.model, config.tokenizer or None)
    model = load_model(task, config.model)
    if not any(task.files(data_dir, n).exists() for n in task.test):
        raise DataError(f"{task.files(data_dir, next(iter(task.test)))}: file not found (task {task.name})")
    return predict_tests(task, model, tokenizer, data_dir, config.task_dir / "predictions", config.train.max_seq_length)
