"""Fine-tune a model on GLUE/SuperGLUE/RACE tasks: one run, an Optuna sweep, or Agora (SPEC §5-6).

Examples:
    python finetune/run_finetune.py RTE                                    # one run of the teacher on GLUE RTE
    python finetune/run_finetune.py MRPC CB --mode sweep --n-trials 8 --sampler tpe
    python finetune/run_finetune.py CB --mode agora --model outputs/fptas/winner --n-configs 4
    python finetune/run_finetune.py AX --model outputs/finetune/MNLI       # a diagnostic, predicted only
    torchrun --nproc_per_node 2 finetune/run_finetune.py SST-2              # data-parallel run
    horovodrun -np 2 python finetune/run_finetune.py CB --mode sweep       # data-parallel trials

Outputs go to ``--output-dir/TASK/`` (run), ``.../sweep/`` or ``.../agora/``; a summary table of all tasks is
printed and written to ``--output-dir/summary.md``. Exit status 2 on bad input (message on one line), 130 on Ctrl-C.
Every training run (a run, a sweep's trial, an Agora configuration or oracle) saves a checkpoint every
``--save-steps`` steps: after an interruption or a kill the same command continues from it, and a run ends as the
uninterrupted run would; sweeps also keep their finished trials and Agora its finished rounds and configurations.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402

from bort.distributed import ENGINES, DistributedError, engine  # noqa: E402
from data.files import atomic_write_text  # noqa: E402
from finetune.tasks import TASKS, DataError  # noqa: E402


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, title: str, seen: set[str]) -> None:
    """One ``--kebab-name`` option per field of ``cls`` that has ``metadata["help"]``, typed by its default.
    A field already added by another class (in ``seen``, e.g. ``--space``) is shared."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.name in seen:
            continue
        seen.add(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=f.metadata["help"])
        else:
            help_text = f.metadata["help"]
            if default != "" and "default" not in help_text:  # an empty default is "unset": its help says what then
                help_text += " (default: %(default)s)"
            group.add_argument(name, dest=f.name, type=type(default), default=default,
                               choices=f.metadata.get("choices"), help=help_text)


def from_args(cls, args: argparse.Namespace, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def build_parser() -> argparse.ArgumentParser:
    from finetune.agora import AgoraConfig
    from finetune.pipeline import RunConfig
    from finetune.sweep import SweepConfig
    from finetune.trainer import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", metavar="TASK", help=f"task names: {', '.join(TASKS)}")
    parser.add_argument("--mode", choices=("run", "sweep", "agora"), default="run",
                        help="one fine-tuning run, an Optuna sweep, or Agora (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: from OMP_NUM_THREADS / torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="data parallelism: every run (and every trial or Agora configuration) trains on all "
                             "ranks, each on its share of every batch; 'auto' follows the launcher (torchrun or "
                             "horovodrun; none under plain python); rank 0 alone writes (default: %(default)s)")
    seen: set[str] = set()
    add_dataclass_arguments(parser, RunConfig, "model and data", seen)
    add_dataclass_arguments(parser, TrainConfig, "training (one run, or the fixed values of a sweep/Agora)", seen)
    add_dataclass_arguments(parser, SweepConfig, "sweep (--mode sweep)", seen)
    add_dataclass_arguments(parser, AgoraConfig, "Agora (--mode agora)", seen)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.quiet:  # also the libraries' bars: loading and writing weights, downloads from the hub
        import huggingface_hub.utils
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = run_tasks(args)
    except (DataError, DistributedError, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # runs, trials and Agora's configurations continue from their checkpoints
        print(f"interrupted: run the same command again to continue where it stopped (outputs and checkpoints in "
              f"{args.output_dir})", file=sys.stderr)
        return 130
    if rows:
        from finetune.report import summary_table

        table = summary_table(rows)
        print(table)
        atomic_write_text(Path(args.output_dir) / "summary.md", table)
    return 0


def check_model_sources(args: argparse.Namespace, model: str) -> None:
    """Read the config of every model the command names, so that a mistyped folder or hub name stops it before
    anything is written or trained (Agora's ``--oracle`` was otherwise read after its folder was made).

    Raises:
        ModelSourceError: naming the option, e.g. ``--oracle folder /x does not exist``.
    """
    from bort.modeling import load_model_config

    sources = {"--model": model}
    if args.mode == "agora":
        sources.update({"--oracle": args.oracle, "--oracle-base": args.oracle_base, "--mlm-model": args.mlm_model})
    for option, name in sources.items():
        if name:
            load_model_config(name, option)


def run_tasks(args: argparse.Namespace) -> list[dict]:
    """Run the chosen mode on every task; returns one summary row per task (none on ranks other than 0)."""
    from finetune.pipeline import RunConfig
    from finetune.trainer import TrainConfig

    train = from_args(TrainConfig, args)
    configs = [from_args(RunConfig, args, task=name, train=train) for name in args.tasks]  # validates all names first
    check_model_sources(args, configs[0].model)
    with engine(args.engine) as eng:
        from finetune.parallel import ParallelRuns

        runs = ParallelRuns(eng)
        if not eng.is_main:
            runs.follow()
            return []
        try:
            return [row for run in configs if (row := _run_task(args, run, runs)) is not None]
        finally:
            runs.finish()


def _run_task(args: argparse.Namespace, run, runs) -> dict | None:
    """One task on rank 0 (training on all ranks through ``runs``); its summary row, None for a diagnostic."""
    from finetune.agora import AgoraConfig, run_agora
    from finetune.pipeline import predict_only, save_trained
    from finetune.sweep import SweepConfig, run_sweep
    from finetune.tasks import get_task

    task = get_task(run.task)
    if not task.train:
        for name, entry in predict_only(run).items():
            print(f"{task.name}: wrote {entry['file']}" + (f" {entry['metrics']}" if "metrics" in entry else ""))
        return None
    if args.mode == "run":
        result, model, tokenizer = runs.run_once(run, save=False, progress=not args.quiet,
                                                 checkpoint=run.checkpoint_dir)
        folder = save_trained(run, task, model, tokenizer, result)
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)  # the run is whole: nothing left to resume
        with contextlib.suppress(OSError):  # the last task's run leaves no empty checkpoints/ behind
            run.checkpoint_dir.parent.rmdir()
        print(f"{task.name}: model and dev metrics in {folder}")
        return {"task": task.name, "method": "run", "metrics": next(iter(result.dev_metrics.values())),
                "score": result.score, "config": dataclasses.asdict(run.train)}
    if args.mode == "sweep":
        study = run_sweep(run, from_args(SweepConfig, args), progress=not args.quiet, run_job=runs.run_once)
        best = study.best_trial
        return {"task": task.name, "method": f"sweep ({len(study.trials)} trials)",
                "metrics": next(iter(best.user_attrs["dev_metrics"].values())), "score": best.value,
                "config": best.params}
    state = run_agora(run, from_args(AgoraConfig, args), progress=not args.quiet, run_job=runs.run_once)
    best = state["best"]
    return {"task": task.name, "method": f"agora ({len(state['rounds'])} rounds)",
            "metrics": next(iter(best["metrics"].values())), "score": best["score"], "config": best["config"]}


if __name__ == "__main__":
    sys.exit(main())
