"""Fine-tuning on GLUE, SuperGLUE and RACE: task readers and metrics, one run, an Optuna sweep, and Agora.

Entry point: ``python finetune/run_finetune.py TASK [options]`` (or ``./run_finetune.sh``); the library names below.
"""

from finetune.agora import AgoraConfig, OracleTooWeak, run_agora
from finetune.metrics import compute_metrics
from finetune.pipeline import RunConfig, predict_only, run_once
from finetune.submission import write_submission
from finetune.sweep import BORT_GRID, SweepConfig, run_sweep
from finetune.tasks import TASKS, DataError, Example, Task, get_task
from finetune.trainer import TrainConfig, load_model, load_tokenizer, predict, train

__all__ = [
    "AgoraConfig", "BORT_GRID", "DataError", "Example", "OracleTooWeak", "RunConfig", "SweepConfig", "TASKS", "Task",
    "TrainConfig", "compute_metrics", "get_task", "load_model", "load_tokenizer", "predict", "predict_only",
    "run_agora", "run_once", "run_sweep", "train", "write_submission",
]
