"""One page per search: ``report.md`` with PNG plots, readable on GitHub or in any Markdown viewer.

It shows the Pareto front over (p, i, e), W across the space, the winner against the teacher (size, FLOPs, measured
latency under the search's latency profile), how the work was spread over workers, the configuration, and how to
open the study in ``optuna-dashboard``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from data.files import atomic_path, atomic_write_text  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_pareto(study: optuna.Study, path: Path, names: list[str]) -> None:
    """Optuna's 3-objective Pareto-front plot (matplotlib backend) of the study's completed trials."""
    # Optuna's matplotlib backend (experimental) switches the global style to ggplot: keep that inside this plot
    with warnings.catch_warnings(), plt.style.context("ggplot"):
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=names)
    fig = ax.figure
    fig.set_size_inches(7, 6)
    _save(fig, path)


def plot_w_space(rows: list[dict], path: Path, *, key_p: str, key_i: str, p_max: float, i_max: float) -> None:
    """Left: the known factor of W, (1 − p/p(T))·(1 − i/i(T)), over every architecture of Ξ (e is known only for
    trained ones). Right: W of the trained architectures, best first."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    known = [r for r in rows if r[key_i] is not None]
    factor = [(1 - r[key_p] / p_max) * (1 - r[key_i] / i_max) for r in known]
    scale_i = 1e-9 if key_i == "flops" else 1.0
    points = left.scatter([r[key_p] / 1e6 for r in known], [r[key_i] * scale_i for r in known], c=factor, s=14,
                          cmap="magma")
    fig.colorbar(points, ax=left, label="(1 − p/p(T))·(1 − i/i(T))")
    trained = sorted((r for r in rows if r["W"] is not None), key=lambda r: -r["W"])
    left.scatter([r[key_p] / 1e6 for r in trained], [r[key_i] * scale_i for r in trained], s=60, facecolors="none",
                 edgecolors="tab:blue", label="trained")
    left.set(xlabel=f"{key_p.replace('_', ' ')} (millions)",
             ylabel="GFLOPs per sequence" if key_i == "flops" else "latency (ms per batch)",
             title="Known factor of W across Ξ")
    left.legend(fontsize=8)
    shown = trained[:30]
    right.barh([r["name"] for r in shown][::-1], [r["W"] for r in shown][::-1], color="tab:blue")
    right.set(xlabel="W (larger is better)", title=f"W of the trained architectures (best {len(shown)})")
    right.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    _save(fig, path)


def _fmt(value, digits=3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_report_page(output_dir: Path, study: optuna.Study, rows: list[dict], summary: dict, resolved: dict,
                      teacher: dict, *, storage_hint: str) -> Path:
    """Write ``report.md`` (and ``pareto.png``, ``w_space.png``) into ``output_dir``; returns the page's path.

    teacher: the teacher's row (params_total, params_effective, flops, latency_ms measured under the same profile).
    storage_hint: the storage URL to give ``optuna-dashboard`` (password already redacted).
    """
    key_p, key_i = summary["maximum_point"]["p_key"], summary["maximum_point"]["i_key"]
    names = [f"p ({key_p.removeprefix('params_')})", f"i ({key_i})", "e"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        plot_pareto(study, output_dir / "pareto.png", names)
    plot_w_space(rows, output_dir / "w_space.png", key_p=key_p, key_i=key_i, p_max=summary["maximum_point"]["p"],
                 i_max=summary["maximum_point"]["i"])
    winner = next(r for r in rows if r["winner"])
    options = resolved["options"]
    states = {s.name: sum(t.state == s for t in study.get_trials(deepcopy=False)) for s in TrialState}
    workers = sorted({t.user_attrs.get("worker") for t in complete if t.user_attrs.get("trained")} - {None})
    r = resolved["resolved"]
    teacher_arch = ", ".join(str(v) for v in r["teacher_architecture"].values())
    space = "an explicit list" if "architectures" in r["space"] else f"grid `{json.dumps(r['space'])}`"
    lines = [
        f"# Search report: {summary['winner']['name']}",
        "",
        f"Teacher `{r['teacher']}` ⟨{teacher_arch}⟩, strategy **{options['strategy']}**, space of "
        f"{summary['space_size']} architectures ({space}), ε = {r['epsilon']}, s = {options['steps']} steps, "
        f"|Θ| = {len(r['thetas'])}.",
        "",
        "## The winner against the teacher",
        "",
        "| | architecture ⟨D, A, H, I⟩ | parameters (total) | effective parameters | forward FLOPs / sequence "
        "| measured latency (ms / batch) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, row in (("teacher", teacher), ("winner", winner)):
        arch = ", ".join(str(row[d]) for d in ("num_hidden_layers", "num_attention_heads", "hidden_size",
                                                 "intermediate_size"))
        lines.append(f"| {label} | ⟨{arch}⟩ | {_fmt(row['params_total'])} | {_fmt(row['params_effective'])} | "
                     f"{_fmt(row['flops'])} | {_fmt(row['latency_ms'])} |")
    ratio = (lambda k: teacher[k] / winner[k] if winner.get(k) and teacher.get(k) else None)
    lines += [f"| teacher ÷ winner | | {_fmt(ratio('params_total'))}× | {_fmt(ratio('params_effective'))}× | "
              f"{_fmt(ratio('flops'))}× | {_fmt(ratio('latency_ms'))}× |", "",
              f"W = {summary['winner']['W']:.4f}, e = {summary['winner']['e']:.4f} (held-out distillation loss after "
              f"s steps), θ = `{json.dumps(summary['winner']['theta'])}`. Latency profile: "
              f"{options['latency_device']}, {options['latency_dtype']}, batch {options['latency_batch_size']}, "
              f"{options['max_seq_length']} tokens, {options['threads'] or 'default'} threads.", "",
              "## Pareto front over (p, i, e) of the trained architectures", "",
              "![Pareto front](pareto.png)" if complete else "(no completed trial)", "",
              "| architecture | p | i | e | W |", "|---|---:|---:|---:|---:|"]
    for row in sorted((r for r in rows if r["pareto"]), key=lambda r: r[key_p]):
        lines.append(f"| {row['name']} | {_fmt(row[key_p])} | {_fmt(row[key_i])} | {_fmt(row['e'])} | "
                     f"{_fmt(row['W'])} |")
    lines += ["", "## W across the space", "", "![W across the space](w_space.png)", "",
              "![Size, cost and W of the search](search.png)", "",
              "## How the work was done", "",
              f"Trials by state: {', '.join(f'{k} {v}' for k, v in states.items() if v)} (PRUNED trials are "
              f"duplicate claims or sampler proposals outside Ξ; FAIL trials are those of workers that died, each "
              f"re-queued). Evaluations trained by {len(workers)} worker process(es).", "",
              "## Open the study in optuna-dashboard", "",
              "```bash", "pip install optuna-dashboard", f"optuna-dashboard {storage_hint}", "```", "",
              f"The study is named `{study.study_name}`; its objectives are {', '.join(names)} (all minimised); "
              "each trial's user attributes hold W, the loss terms, θ and the worker.", "",
              "## Configuration", "", "<details><summary>resolved configuration (config.json)</summary>", "",
              "```json", json.dumps(resolved, indent=2), "```", "", "</details>", ""]
    path = output_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
