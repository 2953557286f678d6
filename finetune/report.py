"""Summary table (task, metric, dev score, best configuration) and one plot per sweep / Agora run."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from data.files import atomic_path  # noqa: E402

HYPERPARAMETERS = ("learning_rate", "weight_decay", "warmup_fraction", "batch_size", "seed")


def save_figure(fig, path: Path) -> None:
    """Save ``fig`` to ``path`` atomically (the format follows the suffix) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_sweep(study: optuna.Study, path: Path) -> None:
    """Dev score of every trial and the running best (``optuna.visualization.matplotlib``), saved as PNG."""
    with warnings.catch_warnings():  # the matplotlib backend is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="dev score")
    ax.set_title(f"{study.study_name}: dev score per trial")
    save_figure(ax.figure, Path(path))


def plot_rounds(rounds: list[dict], path: Path, title: str) -> None:
    """Agora: best dev score and training-set size per round, saved as PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["round"] for r in rounds]
    ax.plot(x, [100 * r["best_score"] for r in rounds], "o-", label="best dev score (round)")
    ax.set_xlabel("round")
    ax.set_ylabel("dev score x 100")
    twin = ax.twinx()
    twin.bar(x, [r["train_size"] for r in rounds], alpha=0.2, color="gray", label="training examples")
    twin.set_ylabel("training examples")
    ax.set_title(title)
    ax.legend(loc="lower right")
    save_figure(fig, Path(path))


def summary_table(rows: list[dict]) -> str:
    """A Markdown table with one row per task: ``{"task", "method", "metrics": {...}, "score", "config": {...}}``.
    Scores are multiplied by 100."""
    lines = ["| task | method | metrics (dev) | score | best configuration |", "|---|---|---|---|---|"]
    for r in rows:
        metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in r["metrics"].items() if k != "score")
        config = ", ".join(f"{k}={r['config'][k]:g}" for k in HYPERPARAMETERS if k in r.get("config", {}))
        lines.append(f"| {r['task']} | {r['method']} | {metrics} | {100 * r['score']:.1f} | {config} |")
    return "\n".join(lines) + "\n"
