"""Pre-train a student architecture by distillation from a teacher (Bort, arXiv 2010.10499, §4).

    python bort/run_pretraining_distillation.py --tiny                          # smoke test, about a minute on CPU
    python bort/run_pretraining_distillation.py --student outputs/fptas/winner  # the search's winner
    python bort/run_pretraining_distillation.py --architecture 4 8 1024 768 --teacher roberta-large --shards DIR
    torchrun --nproc_per_node 8 bort/run_pretraining_distillation.py ...        # DDP (NCCL on GPUs, gloo on CPU)
    horovodrun -np 8 python bort/run_pretraining_distillation.py ...            # Horovod, same semantics
    python bort/run_pretraining_distillation.py my_run.yaml                     # all options from one JSON/YAML file

Continue an interrupted run with --resume last. Exit status 2 on bad input and 1 when the loss diverges, with a
one-line message.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bort.cli import parse_config  # noqa: E402
from bort.pretraining_config import PretrainingConfig  # noqa: E402

PROG = "run_pretraining_distillation.py"


def parse_args(argv: list[str]) -> PretrainingConfig:
    return parse_config(PretrainingConfig, argv, prog=PROG, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # imported after parsing so that --help answers at once
    from bort.distributed import DistributedError
    from bort.pretraining import INPUT_ERRORS, TrainingDiverged, run_pretraining

    try:
        summary = run_pretraining(config)
    except (*INPUT_ERRORS, DistributedError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if summary.get("rank", 0) == 0:
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in summary["evaluation"].items())
        print(f"step {summary['step']}: {metrics}")
        print(f"model: {summary['model']} (AutoModel / AutoModelForMaskedLM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
