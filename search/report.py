"""Results of a search: the architecture table (CSV and JSON), the Pareto front, a plot and a summary."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from data.files import atomic_folder, atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from search.space import DIMENSIONS  # noqa: E402

COLUMNS = ("name", *DIMENSIONS, "params_total", "params_effective", "flops", "latency_ms", "candidate", "e", "W",
           "theta", "pareto", "winner")


def save_winner(folder: Path, model, tokenizer, info: dict) -> None:
    """Write a Hugging Face folder (config, weights, tokenizer, search_result.json) atomically in place of ``folder``.

    Call under :func:`winner_lock` when several workers share the folder."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "search_result.json").write_text(json.dumps(info, indent=2))


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """An exclusive ``fcntl.flock`` on ``path`` (created if missing), held by one process of the machine at a time;
    the operating system releases it if the process dies. Yields True once held; with ``wait=False`` it yields False
    at once (and holds nothing) if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def winner_lock(folder: Path):
    """The lock of the ``winner/`` folder (a file beside it), shared by the workers of one machine."""
    return file_lock(folder.with_name(f".{folder.name}.lock"))


def offer_winner(folder: Path, model, tokenizer, info: dict, rank: tuple) -> bool:
    """Save ``model`` as the winner if ``rank`` (W, −p) beats the one saved in ``folder``; True if it was saved."""
    with winner_lock(folder):
        info_file = folder / "search_result.json"
        if info_file.is_file():
            saved = json.loads(info_file.read_text())
            if tuple(saved.get("rank", (-math.inf,))) >= rank:
                return False
        save_winner(folder, model, tokenizer, {**info, "rank": list(rank)})
        return True


def write_results(output_dir: Path, study: optuna.Study, rows: list[dict], resolved: dict, *, p_max: float,
                  i_max: float, key_p: str, key_i: str) -> dict:
    """Merge the study's trials into ``rows`` and write architectures.csv/.json, pareto_front.json, search.png and
    summary.json. Returns the summary.

    Raises:
        RuntimeError: if the study holds no completed trial of these architectures.
    """
    by_name = {r["name"]: r for r in rows}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for trial in complete:
        row = by_name.get(_name(trial.params))
        if row is not None and (row.get("W") is None or trial.user_attrs["W"] > row["W"]):
            row.update(e=trial.values[2], W=trial.user_attrs["W"], theta=trial.user_attrs["theta_values"],
                       terms=trial.user_attrs["terms"])
    evaluated = [r for r in rows if r.get("W") is not None]
    if not evaluated:
        raise RuntimeError("the study has no completed trial of this space")
    front = {_name(t.params) for t in study.best_trials}
    winner = max(evaluated, key=lambda r: (r["W"], -r[key_p]))
    for row in rows:
        row["pareto"] = row["name"] in front
        row["winner"] = row is winner
        for key in ("e", "W", "theta"):
            row.setdefault(key, None)

    atomic_write_json(output_dir / "architectures.json", rows)
    atomic_write_text(output_dir / "architectures.csv", _csv(rows))
    atomic_write_json(output_dir / "pareto_front.json", [r for r in rows if r["pareto"]])
    plot_search(rows, output_dir / "search.png", key_p=key_p, key_i=key_i)
    summary = {
        "winner": {"name": winner["name"], "architecture": {d: winner[d] for d in DIMENSIONS},
                   "theta": winner["theta"], "W": winner["W"], "e": winner["e"],
                   "params_total": winner["params_total"], "params_effective": winner["params_effective"],
                   "flops": winner["flops"], "latency_ms": winner["latency_ms"]},
        "maximum_point": {"p": p_max, "i": i_max, "p_key": key_p, "i_key": key_i},
        "relative_to_maximum_point": {"p": winner[key_p] / p_max, "i": winner[key_i] / i_max},
        "space_size": len(rows),
        "candidates": sum(r["candidate"] for r in rows),
        "evaluations": len(complete),
        "pareto_front": sorted(front),
        "teacher": resolved["resolved"]["teacher"],
        "output_dir": str(output_dir),
    }
    atomic_write_json(output_dir / "summary.json", summary)
    return summary


def _name(params: dict) -> str:
    return f"D{params['num_hidden_layers']}-A{params['num_attention_heads']}-H{params['hidden_size']}-" \
           f"I{params['intermediate_size']}"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "theta": json.dumps(row["theta"]) if row["theta"] else ""})
    return buffer.getvalue()


def plot_search(rows: list[dict], path: Path, *, key_p: str, key_i: str) -> None:
    """Two panels: cost against size for all of Ξ (evaluated ones coloured by e, the Pareto front ringed, the winner
    starred), and W of the evaluated candidates against size. Written atomically as PNG."""
    cost_label = "forward GFLOPs per sequence" if key_i == "flops" else "latency (ms per batch)"
    scale_i = 1e-9 if key_i == "flops" else 1.0
    size_label = ("effective" if key_p == "params_effective" else "total") + " parameters (millions)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    measured = [r for r in rows if r[key_i] is not None]
    left.scatter([r[key_p] / 1e6 for r in measured], [r[key_i] * scale_i for r in measured], s=10, c="lightgrey",
                 label="architectures of Ξ")
    evaluated = [r for r in rows if r["W"] is not None]
    points = left.scatter([r[key_p] / 1e6 for r in evaluated], [r[key_i] * scale_i for r in evaluated], s=40,
                          c=[r["e"] for r in evaluated], cmap="viridis", label="trained candidates")
    fig.colorbar(points, ax=left, label="e (held-out distillation loss)")
    front = [r for r in evaluated if r["pareto"]]
    left.scatter([r[key_p] / 1e6 for r in front], [r[key_i] * scale_i for r in front], s=110, facecolors="none",
                 edgecolors="red", label="Pareto front (p, i, e)")
    winner = next(r for r in rows if r["winner"])
    for ax, y in ((left, winner[key_i] * scale_i), (right, winner["W"])):
        ax.scatter([winner[key_p] / 1e6], [y], marker="*", s=260, c="gold", edgecolors="black", zorder=5,
                   label=f"winner {winner['name']}")
    left.set(xlabel=size_label, ylabel=cost_label, title="Size and cost of the search space")
    left.legend(fontsize=8)
    right.scatter([r[key_p] / 1e6 for r in evaluated], [r["W"] for r in evaluated], s=40, c="tab:blue")
    for r in evaluated:
        right.annotate(r["name"], (r[key_p] / 1e6, r["W"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    right.set(xlabel=size_label, ylabel="W-coefficient (larger is better)", title="W of the trained candidates")
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
