"""Summary table (task, metric, dev score, best configuration) and one plot per sweep / Agora run."""

from __future__ import annotations

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


def sweep_curves(study: optuna.Study) -> dict[tuple, dict[int, float]]:
    """Dev score per optimiser step of every configuration the sweep trained: ``{sorted (name, value) pairs of its
    hyperparameters: {step: score}}``, from the trials' intermediate values. Trials with the same hyperparameters are
    joined (sync-halving's rungs of one configuration, the retry of an interrupted trial); a repeat of a trained point
    (``duplicate_of``) reports nothing and adds nothing."""
    curves: dict[tuple, dict[int, float]] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.intermediate_values:
            curves.setdefault(tuple(sorted(trial.params.items())), {}).update(trial.intermediate_values)
    return curves


def plot_sweep(study: optuna.Study, path: Path) -> None:
    """Dev score x 100 against optimiser step, one line per configuration (:func:`sweep_curves`), saved as PNG.

    A pruned configuration's line ends where it was stopped; sync-halving's rungs are dashed verticals; the best
    trial's configuration is drawn thick and labelled with its hyperparameters.
    """
    curves = sweep_curves(study)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = tuple(sorted(study.best_trial.params.items())) if complete else None
    fig, ax = plt.subplots(figsize=(7, 4))
    others = [points for key, points in curves.items() if key != best]
    for i, points in enumerate(others):
        steps = sorted(points)
        ax.plot(steps, [100 * points[s] for s in steps], ".-", color="gray", alpha=0.45, linewidth=1,
                label="other configurations" if i == 0 else None)
    if best in curves:
        steps = sorted(curves[best])
        ax.plot(steps, [100 * curves[best][s] for s in steps], "o-", color="C0", linewidth=2,
                label="best: " + ", ".join(f"{k}={v:g}" for k, v in best if isinstance(v, (int, float))))
    for i, rung in enumerate((study.user_attrs.get("halving_plan") or {}).get("rungs", [])[:-1]):
        ax.axvline(rung, color="C1", linestyle="--", linewidth=0.8, label="sync-halving rungs" if i == 0 else None)
    if curves:
        ax.legend(loc="best", fontsize=7)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("dev score x 100")
    ax.set_title(f"{study.study_name}: {len(curves)} configurations, dev score per evaluation")
    ax.grid(alpha=0.3)
    save_figure(fig, Path(path))


def plot_rounds(rounds: list[dict], path: Path, title: str) -> None:
    """Agora, per round: every configuration's dev score (dots; Θ shrinks as it is pruned), the round's best (line)
    and the training-set size (bars), from ``rounds.jsonl``'s rows; saved as PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r["round"] for r in rounds]
    scattered = [(r["round"], 100 * score) for r in rounds for score in r.get("scores", [])]
    if scattered:
        ax.scatter(*zip(*scattered), s=12, color="gray", alpha=0.6, label="each configuration", zorder=3)
    ax.plot(x, [100 * r["best_score"] for r in rounds], "o-", label="best dev score (round)", zorder=4)
    ax.set_xlabel("round")
    ax.set_ylabel("dev score x 100")
    twin = ax.twinx()
    twin.bar(x, [r["train_size"] for r in rounds], alpha=0.2, color="gray", label="training examples")
    twin.set_ylabel("training examples")
    ax.set_zorder(twin.get_zorder() + 1)  # scores in front of the bars
    ax.patch.set_visible(False)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
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
