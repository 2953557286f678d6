"""Quality benchmark: dev scores of (a) one default fine-tuning run, (b) an Optuna sweep, (c) Agora, per task,
with the same total training budget for the three methods (not a timed test).

Budget: every method gets ``--budget-steps`` optimiser steps of ``--batch-size`` examples in total per task, and
every method evaluates dev every ``--eval-every`` steps and keeps its best checkpoint:
(a) one run of that many steps with the default hyperparameters; (b) a budgeted sweep (``budget_steps``): trials of
at most ``--trial-fraction`` of the budget, sampled from the grid, stopped by successive halving (``--pruner``)
unless among the best third at each rung, until the budget is spent (``--trials`` caps their number); with
``--pruner sync-halving`` every configuration of a plan that fits the budget is trained to the first rung and paused,
and the best third continue from there, rung by rung;
(c) Agora with ``--agora-configs`` configurations per round for ``--agora-rounds`` rounds of
``budget / (configs * rounds)`` steps each, later rounds starting from the best model so far (``--agora-warm-start``).
Agora's oracle is (a)'s model (the teacher fine-tuned with the default run), so the oracle costs no extra steps; where
(a) is below 2/3 dev accuracy Agora refuses to run and the table says so. ``--methods c_no_examples`` adds the
ablation: (c) with the same rounds, replay and warm start but no examples added (``per_error=0``, no oracle);
``c_holdout`` is (c) mining its errors on held-out training examples (200, or a fifth of a smaller training set),
so that examples made near dev errors do not lift the dev score it is judged on.
Results are written to ``results.json`` after every method, and a rerun on the same output skips the methods it holds
(so (a) and its oracle model are reused); a method killed part-way continues: (a) from its checkpoint (every 500
steps), (b) from its study and (c) from its rounds, their runs from their checkpoints. (b) and (c) sample the same space
(``--space``; default Bort's grid). Training sets larger than ``--max-train-examples`` are subsampled (seeded). Dev
sets are used whole. ``--seed K`` is one replicate of all three methods: (a)'s seed (head, data order, dropout,
training subsample), the sweep's grid order and Agora's sample of Θ; run each seed into its own ``--output-dir`` and
pass them all to ``bench/compare_finetune_methods.py --output-dir``, which averages every method over them. The space's
training seeds are the same for every replicate, so two replicates whose sweeps reach the same configuration train the
same model; ``--replicate-space-seeds`` shifts them per replicate (``seed: [0, 1, 2]`` becomes ``[3K, 3K+1, 3K+2]``
for ``--seed K``), which makes the replicates of (b) and (c) independent draws.

Usage (the numbers in the README were produced with the command printed at the top of the output):
    python bench/bench_finetune_quality.py --budget-steps 360 --output-dir outputs/bench_finetune
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402

from data.files import atomic_write_json  # noqa: E402
from finetune.agora import AgoraConfig, OracleTooWeak, run_agora  # noqa: E402
from finetune.pipeline import RunConfig, run_once, save_trained  # noqa: E402
from finetune.sweep import PRUNERS, SweepConfig, load_space, run_sweep, steps_used  # noqa: E402
from finetune.tasks import get_task  # noqa: E402
from finetune.trainer import PRECISIONS, TrainConfig  # noqa: E402

TASKS = ["CB", "RTE", "MRPC", "STS-B", "CoLA", "SST-2"]
METHODS = ["a", "b", "c", "c_no_examples", "c_holdout"]
HEADERS = {"a": "(a) default run", "b": "(b) sweep", "c": "(c) Agora", "c_no_examples": "Agora, no examples added",
           "c_holdout": "Agora, errors mined on a training holdout"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=TASKS, help="tasks (default: %(default)s)")
    p.add_argument("--model", default="", help="model to fine-tune (default: the local teacher all-MiniLM-L6-v2)")
    p.add_argument("--budget-steps", type=int, default=360, help="optimiser steps per method per task (default: 360)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per step, all methods (default: 16)")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--max-train-examples", type=int, default=4000,
                   help="seeded subsample of larger training sets, e.g. SST-2's 67,349 (default: 4000)")
    p.add_argument("--learning-rate", type=float, default=5e-5, help="(a)'s learning rate (default: 5e-5)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="dev evaluation interval in steps, all methods (default: budget / 18)")
    p.add_argument("--trials", type=int, default=40, help="(b): at most this many trials (default: 40)")
    p.add_argument("--trial-fraction", type=float, default=0.5,
                   help="(b): a trial's steps as a share of the budget (default: 0.5)")
    p.add_argument("--pruner", default="halving", choices=PRUNERS,
                   help="(b): pruner; sync-halving plans its configurations and rungs to fit the budget "
                        "(default: %(default)s)")
    p.add_argument("--first-rung", type=float, default=0.0,
                   help="(b): halving's first rung as a share of a trial's steps (default: the first dev evaluation)")
    p.add_argument("--agora-warm-start", action=argparse.BooleanOptionalAction, default=True,
                   help="(c): later rounds start from the best model so far (default: on)")
    p.add_argument("--agora-configs", type=int, default=2, help="(c): |Θ| (default: 2)")
    p.add_argument("--agora-rounds", type=int, default=2, help="(c): rounds (default: 2)")
    p.add_argument("--methods", nargs="+", default=["a", "b", "c"], choices=METHODS,
                   help="methods to run (default: a b c); c_no_examples is Agora adding no examples, an ablation of "
                        "its rounds, replay and warm start; c_holdout mines errors on held-out training examples "
                        "(200, at most a fifth) instead of dev, so dev stays clean. A method already in the output's "
                        "results.json is kept")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="all methods' training and dev passes (fine-tuning's --precision; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="replicate: (a)'s seed, (b)'s grid order, (c)'s sample of configurations (default: 0)")
    p.add_argument("--space", default="", help="JSON/YAML space for (b) and (c) (default: Bort's grid)")
    p.add_argument("--replicate-space-seeds", action="store_true",
                   help="shift the space's training seeds by --seed times their number, so that each replicate's "
                        "(b) and (c) train with seeds no other replicate uses (default: the space's seeds as given)")
    p.add_argument("--output-dir", default="outputs/bench_finetune", help="output folder (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    replicate = {"seed": args.seed, "precision": args.precision}  # stored with every method's entry
    if args.replicate_space_seeds:
        replicate["replicate_space_seeds"] = True
    conditions = {"command": " ".join(["python", *sys.argv]), "threads": torch.get_num_threads(),
                  "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                  "budget": f"{args.budget_steps} steps x {args.batch_size} examples per method per task",
                  **replicate}
    print(json.dumps(conditions))
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    # a replicate's methods share one seed, precision and seed set (entries before these options: 0, fp32, unshifted)
    for option, default in (("seed", 0), ("precision", "fp32"), ("replicate_space_seeds", False)):
        wanted = getattr(args, option)
        for name, row in results.items():
            other = {m: entry.get(option, default) for m, entry in row.items() if entry.get(option, default) != wanted}
            if other:
                raise SystemExit(f"{results_path}: {name} {', '.join(other)} ran with "
                                 f"--{option.replace('_', '-')} {', '.join(map(str, sorted(set(other.values()))))}, "
                                 f"not {wanted}: use another --output-dir per {option}")
    space = args.space
    if args.replicate_space_seeds:
        try:
            shifted = replicate_space_seeds(load_space(args.space), args.seed)
        except ValueError as e:
            raise SystemExit(f"--replicate-space-seeds: {e}")
        space = str(out / "space.json")  # the space (b) and (c) sample, kept beside the results
        atomic_write_json(Path(space), shifted)
    eval_every = args.eval_every or max(1, args.budget_steps // 18)
    for name in args.tasks:
        task = get_task(name)
        row = results.setdefault(name, {})
        base = TrainConfig(learning_rate=args.learning_rate, batch_size=args.batch_size,
                           max_seq_length=args.max_seq_length, max_train_examples=args.max_train_examples,
                           max_steps=args.budget_steps, eval_every=eval_every,
                           early_stopping_patience=0, warmup_fraction=0.1, weight_decay=0.01, seed=args.seed,
                           precision=args.precision)
        run = RunConfig(task=name, model=args.model, output_dir=str(out / "a"), predict_test=False, train=base)
        oracle = run.task_dir  # (a)'s model, Agora's oracle
        needs_a = "a" in args.methods or any(m in args.methods and m not in row for m in ("c", "c_holdout"))
        if needs_a and ("a" not in row or not (oracle / "config.json").is_file()):
            t0 = time.time()
            # a killed benchmark continues (a) from its checkpoint, (b) and (c) from their studies and rounds
            result, model, tokenizer = run_once(run, save=False, progress=False, checkpoint=run.checkpoint_dir)
            save_trained(run, task, model, tokenizer, result)
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
            row["a"] = {"score": result.score, "metrics": result.dev_metrics, "seconds": time.time() - t0,
                        **replicate}
            print(name, "a", row["a"], flush=True)
            atomic_write_json(results_path, results)

        if "b" in args.methods and "b" not in row:
            t0 = time.time()
            per_trial = replace(base, max_steps=max(1, int(args.budget_steps * args.trial_fraction)))
            study = run_sweep(RunConfig(task=name, model=args.model, output_dir=str(out / "b"), predict_test=False,
                                        train=per_trial),
                              SweepConfig(sampler="grid", n_trials=args.trials, space=space, pruner=args.pruner,
                                          budget_steps=args.budget_steps, sampler_seed=args.seed,
                                          halving_min_steps=int(args.first_rung * per_trial.max_steps)),
                              progress=False)
            row["b"] = {"score": study.best_value, "metrics": study.best_trial.user_attrs["dev_metrics"],
                        "params": study.best_trial.params, "trials": len(study.trials),
                        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
                        "steps": steps_used(study), "pruner": args.pruner, "seconds": time.time() - t0, **replicate}
            print(name, "b", row["b"], flush=True)
            atomic_write_json(results_path, results)

        steps = args.budget_steps // (args.agora_configs * args.agora_rounds)
        holdout_size = 200  # or a fifth of a smaller training set (CB: 50 of 250)
        if "c_holdout" in args.methods:
            holdout_size = min(holdout_size, len(task.read(run.data_path, "train")) // 5)
        for method, per_error, mine_on in (("c", 2, "dev"), ("c_no_examples", 0, "dev"), ("c_holdout", 2, "holdout")):
            if method not in args.methods or method in row:
                continue
            t0 = time.time()
            try:
                state = run_agora(RunConfig(task=name, model=args.model, output_dir=str(out / method),
                                            predict_test=False, train=replace(base, max_steps=max(1, steps))),
                                  AgoraConfig(oracle=str(oracle) if per_error else "", per_error=per_error,
                                              mine_on=mine_on, holdout_size=holdout_size,
                                              n_configs=args.agora_configs, max_rounds=args.agora_rounds,
                                              replay=args.agora_rounds, space=space,
                                              warm_start=args.agora_warm_start, agora_seed=args.seed),
                                  progress=False)
                row[method] = {"score": state["best"]["score"], "metrics": state["best"]["metrics"],
                               "rounds": [{k: r[k] for k in ("round", "best_score", "errors", "added", "train_size")}
                                          for r in state["rounds"]], "seconds": time.time() - t0, **replicate}
            except OracleTooWeak as e:
                row[method] = {"score": None, "refused": str(e), "seconds": time.time() - t0, **replicate}
            print(name, method, row[method], flush=True)
            atomic_write_json(results_path, results)
    print(table(results, get_metric_names(results)))
    return 0


def replicate_space_seeds(space: dict[str, list], replicate: int) -> dict[str, list]:
    """``space`` with its training seeds shifted for replicate ``replicate``: each seed ``s`` becomes
    ``s + replicate * n`` (``n``: the number of seeds), so replicates 0, 1, ... use disjoint seed sets when the space's
    seeds are 0..n-1. The other hyperparameters, and so the grid order of a replicate, are unchanged.

    Raises:
        ValueError: the space has no ``seed`` list, or ``replicate`` is negative.
    """
    if "seed" not in space:
        raise ValueError(f"the space has no 'seed' to shift; its hyperparameters: {', '.join(space)}")
    if replicate < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate}")
    n = len(space["seed"])
    return {**space, "seed": [int(s) + replicate * n for s in space["seed"]]}


def get_metric_names(results: dict) -> dict:
    return {name: "/".join(m for m in get_task(name).metrics) for name in results}


def table(results: dict, metric_names: dict) -> str:
    """A Markdown table: one row per task, one column per method any task has, and two averages."""
    methods = [m for m in METHODS if any(m in row for row in results.values())]

    def cell(row, m):
        return "-" if m not in row else "refused" if row[m]["score"] is None else f"{100 * row[m]['score']:.1f}"

    lines = ["| task | metric | " + " | ".join(HEADERS[m] for m in methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, row in results.items():
        lines.append(f"| {name} | {metric_names[name]} | " + " | ".join(cell(row, m) for m in methods) + " |")
    common = [row for row in results.values() if all(row.get(m, {}).get("score") is not None for m in methods)]
    every = {m: [row[m]["score"] for row in results.values() if row.get(m, {}).get("score") is not None]
             for m in methods}
    lines.append(f"| average, tasks every method scored ({len(common)}) | | " + " | ".join(
        f"{100 * sum(r[m]['score'] for r in common) / len(common):.1f}" if common else "-" for m in methods) + " |")
    lines.append("| average, tasks each method scored (n) | | " + " | ".join(
        f"{100 * sum(v) / len(v):.1f} ({len(v)})" if v else "-" for v in every.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
