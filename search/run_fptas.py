"""Find the optimal subarchitecture of a BERT-family teacher with the Bort FPTAS search.

    python search/run_fptas.py                      # defaults: all-MiniLM-L6-v2 on WikiText-2
    python search/run_fptas.py --tiny               # smoke test, under a minute
    python search/run_fptas.py --help               # every option, with units
    python search/run_fptas.py my_search.yaml       # all options from one JSON/YAML file

Re-running with the same --output-dir resumes. Several workers share one search when started with the same command
and the same --storage (a PostgreSQL URL across machines; the default SQLite file on one machine); each writes the
results once the whole study is finished. Exit status 2 on bad input, with a one-line message.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bort.cli import parse_config  # noqa: E402

from search.config import SearchConfig  # noqa: E402


def parse_args(argv: list[str]) -> SearchConfig:
    return parse_config(SearchConfig, argv, prog="run_fptas.py", description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # imported after parsing so that --help answers at once
    from search.runner import run_search
    from search.errors import INPUT_ERRORS
    from search.worker import WorkerError

    try:
        summary = run_search(config)
    except INPUT_ERRORS as exc:
        print(f"run_fptas.py: error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"run_fptas.py: error: {exc}", file=sys.stderr)
        return 1
    if summary is None:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    w = summary["winner"]
    rel = summary["relative_to_maximum_point"]
    print(f"winner: {w['name']}  W={w['W']:.4f}  e={w['e']:.4f}  "
          f"parameters {w['params_effective'] / 1e6:.2f}M effective / {w['params_total'] / 1e6:.2f}M total  "
          f"({rel['p']:.1%} of T's p, {rel['i']:.1%} of T's i)")
    print(f"results: {summary['output_dir']} (report.md, architectures.csv, pareto_front.json, search.png, winner/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
