"""Paired bootstrap of the dev-score differences between fine-tuned models, e.g. the quality benchmark's methods
(not a test).

Each model predicts the task's first dev split once; for every pair of models the dev examples are resampled with
replacement, the same resample for both (paired), and the difference of their task scores (the mean of the task's
metrics, :func:`finetune.metrics.compute_metrics`) gets a 95% BCa confidence interval from
``scipy.stats.bootstrap`` (``--resamples``, seeded; the percentile interval where BCa is undefined because every
resample gives the same difference). On CB's 56 dev examples one example moves accuracy by 1.8
points: the interval says which differences a dev set this small can resolve.

Usage:
    python bench/compare_finetune_methods.py MRPC --output-dir bench/results/finetune_mrpc720
    python bench/compare_finetune_methods.py CB a=DIR_A c=DIR_C    # any model folders, labelled
With ``--output-dir`` (a folder of ``bench/bench_finetune_quality.py``) the models are its methods' kept ones:
``a/TASK``, ``b/TASK/sweep/best`` and ``METHOD/TASK/agora/best`` for Agora and its variants.

Replicates: several ``--output-dir`` folders (the benchmark run with ``--seed 0``, ``--seed 1``, ...), or a label given
several times (``a=DIR0 a=DIR1``), make each method's score the mean over its replicates, on the same dev resample,
so the interval is that of the seed-averaged difference over dev examples; the per-replicate differences are listed
beside it (with two or three seeds they show the spread between seeds, they cannot estimate it).
    python bench/compare_finetune_methods.py CB --output-dir DIR_SEED0 DIR_SEED1 DIR_SEED2

``--plot FILE.png`` draws both: each label's dev score per replicate with their mean, and each pair's difference
with its interval.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import bootstrap  # noqa: E402

from data.files import atomic_write_json  # noqa: E402
from finetune.metrics import compute_metrics  # noqa: E402
from finetune.pipeline import RunConfig, load_splits  # noqa: E402
from finetune.tasks import get_task  # noqa: E402
from finetune.trainer import autocast, default_device, load_model, load_tokenizer, predict  # noqa: E402

METHOD_FOLDERS = {"a": "a/{task}", "b": "b/{task}/sweep/best", "c": "c/{task}/agora/best",
                  "c_no_examples": "c_no_examples/{task}/agora/best", "c_holdout": "c_holdout/{task}/agora/best"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="task name, e.g. MRPC")
    p.add_argument("models", nargs="*", metavar="LABEL=FOLDER",
                   help="fine-tuned model folders to compare; a label given several times is averaged over them")
    p.add_argument("--output-dir", nargs="+", default=[],
                   help="quality-benchmark output folders, one per seed: compare their methods' models, each "
                        "averaged over the folders (a method missing from one of them is left out)")
    p.add_argument("--data-dir", default="", help="the task's benchmark folder (default: the local copy)")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--resamples", type=int, default=1999, help="bootstrap resamples (default: 1999)")
    p.add_argument("--json", default="", help="also write the result to this JSON file")
    p.add_argument("--plot", default="",
                   help="also draw the scores and intervals in this image file (.png, .pdf, .svg)")
    return p.parse_args(argv)


def model_folders(args: argparse.Namespace) -> dict[str, list[Path]]:
    """Label -> its model folders (one per replicate), from ``--output-dir`` (the methods every folder holds) and
    ``LABEL=FOLDER`` arguments.

    Raises:
        SystemExit: an ``--output-dir`` is not a folder or holds no method's model of the task, an argument is not
            LABEL=FOLDER, a folder has no config.json, or fewer than two labels.
    """
    folders: dict[str, list[Path]] = {}
    for d in args.output_dir:
        if not Path(d).is_dir():
            raise SystemExit(f"--output-dir {d}: no such folder")
    holding = set()  # the --output-dir folders with at least one method's model
    for method, pattern in METHOD_FOLDERS.items():
        found = [Path(d) / pattern.format(task=args.task) for d in args.output_dir]
        present = [(f / "config.json").is_file() for f in found]
        holding.update(d for d, ok in zip(args.output_dir, present) if ok)
        if all(present) and found:
            folders[method] = found
        elif any(present):
            print(f"{method}: left out, missing from "
                  f"{', '.join(d for d, ok in zip(args.output_dir, present) if not ok)}", file=sys.stderr)
    for d in args.output_dir:
        if d not in holding:
            raise SystemExit(f"--output-dir {d}: no method's model of {args.task} in it "
                             f"(expected e.g. {METHOD_FOLDERS['a'].format(task=args.task)}/config.json)")
    for item in args.models:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"{item!r}: expected LABEL=FOLDER")
        folders.setdefault(label, []).append(Path(folder))
    for label, paths in folders.items():
        for folder in paths:
            if not (folder / "config.json").is_file():
                raise SystemExit(f"{label}: {folder} is not a model folder (no config.json)")
    if len(folders) < 2:
        raise SystemExit(f"need two models or more to compare, found {len(folders)}: {', '.join(folders) or 'none'}")
    return folders


def predict_as_trained(task, folder: Path, dev: list, max_seq_length: int) -> np.ndarray:
    """``folder``'s dev predictions in the precision it was trained and scored in (``finetune_config.json``'s
    ``train.precision``; fp32 when absent), so they reproduce its dev score."""
    config = folder / "finetune_config.json"
    precision = json.loads(config.read_text()).get("train", {}).get("precision", "fp32") if config.is_file() else "fp32"
    with autocast(precision, default_device()):
        return predict(load_model(task, str(folder)), load_tokenizer(str(folder)), task, dev, max_seq_length)


def plot(result: dict, path: Path) -> None:
    """Left: each label's dev score (x 100) per replicate (dots) and their mean (diamond). Right: each pair's difference
    of means in points with its 95% interval, against zero. Written atomically; the format follows the suffix."""
    from finetune.report import plt, save_figure  # matplotlib (files only), imported only when a plot is asked for

    labels, pairs = list(result["dev_score"]), result["differences"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * max(len(labels), len(pairs)) + 2.5),
                                      gridspec_kw={"width_ratios": [1, 1.3]})
    for y, label in enumerate(labels):
        left.plot(result["replicates"][label], [y] * len(result["replicates"][label]), "o", color="gray", ms=5)
        left.plot(result["dev_score"][label], y, "D", color="black", ms=7)
    left.set_yticks(range(len(labels)), labels)
    left.set_ylim(len(labels) - 0.5, -0.5)  # first label on top
    left.set_xlabel(f"dev score x 100 ({result['task']} {result['split']}, {result['examples']} examples)")
    left.set_title("per replicate (dots) and mean (diamond)")
    for y, d in enumerate(pairs):
        low, high = d["ci95"]
        right.errorbar(d["difference"], y, xerr=[[d["difference"] - low], [high - d["difference"]]], fmt="o",
                       color="black" if low > 0 or high < 0 else "gray", capsize=3)
    right.axvline(0, color="red", lw=0.8)
    right.set_yticks(range(len(pairs)), [d["pair"] for d in pairs])
    right.set_ylim(len(pairs) - 0.5, -0.5)
    right.set_xlabel("difference of means, points (95% paired-bootstrap interval)")
    right.set_title("black: interval excludes 0")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task = get_task(args.task)
    folders = model_folders(args)
    run = RunConfig(task=task.name, data_dir=args.data_dir)
    _, dev_sets = load_splits(task, run.data_path)
    split, dev = next(iter(dev_sets.items()))
    predictions = {label: [predict_as_trained(task, folder, dev, args.max_seq_length) for folder in paths]
                   for label, paths in folders.items()}
    replicates = {label: [compute_metrics(task, p, dev)["score"] for p in preds]
                  for label, preds in predictions.items()}
    scores = {label: float(np.mean(r)) for label, r in replicates.items()}
    result = {"task": task.name, "split": split, "examples": len(dev), "resamples": args.resamples,
              "models": {label: [str(f) for f in paths] for label, paths in folders.items()},
              "dev_score": {label: round(100 * s, 2) for label, s in scores.items()},
              "replicates": {label: [round(100 * s, 2) for s in r] for label, r in replicates.items()},
              "differences": []}
    pairs = list(itertools.combinations(folders, 2))

    def differences(idx):  # one resample of dev rows -> every pair's difference of replicate means, in points
        idx = idx.astype(int)
        rows = [dev[i] for i in idx]
        score = {label: np.mean([compute_metrics(task, p[idx], rows)["score"] for p in preds])
                 for label, preds in predictions.items()}
        return np.array([100 * (score[x] - score[y]) for x, y in pairs])

    res = bootstrap((np.arange(len(dev)),), differences, vectorized=False, n_resamples=args.resamples,
                    confidence_level=0.95, method="BCa", random_state=0)
    for k, (x, y) in enumerate(pairs):
        low, high = float(res.confidence_interval.low[k]), float(res.confidence_interval.high[k])
        if np.isnan(low) or np.isnan(high):  # BCa is undefined when every resample gives one value (CoLA at MCC 0)
            low, high = np.percentile(res.bootstrap_distribution[k], [2.5, 97.5])
        # replicate k of one label against replicate k of the other (the same seed), where both have as many
        paired = ([round(100 * (a - b), 2) for a, b in zip(replicates[x], replicates[y])]
                  if len(replicates[x]) == len(replicates[y]) > 1 else [])
        result["differences"].append({"pair": f"{x} - {y}", "difference": round(100 * (scores[x] - scores[y]), 2),
                                      "ci95": [round(float(low), 2), round(float(high), 2)],
                                      "per_replicate": paired})
    print(json.dumps({k: v for k, v in result.items() if k != "differences"}))
    print("| pair | difference (points) | 95% CI | per replicate |\n|---|---|---|---|")
    for d in result["differences"]:
        print(f"| {d['pair']} | {d['difference']:+.2f} | [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] | "
              + ", ".join(f"{v:+.1f}" for v in d["per_replicate"]) + " |")
    if args.json:
        atomic_write_json(Path(args.json), result)
    if args.plot:
        plot(result, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
