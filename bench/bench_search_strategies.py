"""Search strategies compared on one space, metrics and budget; and the wall-time speed-up of 2 workers over 1.

For each strategy (FPTAS, exhaustive, NSGA-II, TPE) this runs ``search/run_fptas.py`` as a fresh process with its own
study and prints: evaluations trained, wall time, the best W found, and the hypervolume of the (p, i, e) front of
what it trained (objectives divided by the teacher's p and i and by the largest e seen by any strategy; reference
point 1.1 in each; Optuna's exact WFG hypervolume). The sampler strategies get the FPTAS's budget (its number of
candidates × |Θ|), so the comparison is at equal training cost; the exhaustive search gives the best attainable W
and front of the space.

Then it runs the FPTAS with 1 worker of T threads and with 2 workers of T/2 threads each on one fresh study (the
same cores in total; each timing measures its latencies afresh, the token cache is shared) and prints the wall-time
ratio.

    python bench/bench_search_strategies.py --threads 2
    python bench/bench_search_strategies.py --threads 2 --space my_space.yaml --steps 20 --num-candidates 6

Every search option applies (see search/run_fptas.py --help; --output-dir, --storage and --strategy are set here).
Timings depend on the machine's load: run it on an otherwise idle machine for numbers to report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna._hypervolume import compute_hypervolume  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from search.config import SearchConfig  # noqa: E402
from search.runner import study_name  # noqa: E402

DEFAULT_SPACE = """num_hidden_layers: [1, 2, 3]
num_attention_heads: [3, 6]
hidden_size: [96, 192]
intermediate_size: [64, 128, 256]
"""


@dataclass
class BenchOptions:
    strategies: list[str] = field(default_factory=lambda: ["fptas", "exhaustive", "nsga2", "tpe"],
                                  metadata={"help": "Strategies to compare."})
    speedup: bool = field(default=True, metadata={"help": "Also time 2 workers against 1 on the FPTAS."})
    work_dir: str | None = field(default=None, metadata={"help": "Where the searches write (default: a temp dir)."})
    output: str = field(default="bench/results/search_strategies.json", metadata={"help": "JSON results file."})


def _cli(config: SearchConfig) -> list[str]:
    """The search options that differ from their defaults, as command-line arguments."""
    args = []
    for f in dataclasses.fields(SearchConfig):
        value = getattr(config, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default or f.name in ("tiny",):
            continue
        flag = f"--{f.name}"
        if isinstance(value, bool):
            args += [flag] if value else [f"--no_{f.name}"]
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def _run(config: SearchConfig, workers: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(config.threads or 1), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "search/run_fptas.py", *_cli(config)], cwd=ROOT, env=env,
                              stdout=open(log.with_suffix(f".{k}.out"), "w"),
                              stderr=open(log.with_suffix(f".{k}.err"), "w")) for k in range(workers)]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a search failed ({codes}); see {log.parent}")
    return seconds


def _trained(config: SearchConfig) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name(config), storage=config.storage)
    return [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("trained")]


def main() -> None:
    config, options = HfArgumentParser((SearchConfig, BenchOptions)).parse_args_into_dataclasses()
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="bench-strategies-"))
    work.mkdir(parents=True, exist_ok=True)
    if config.space is None:
        (work / "space.yaml").write_text(DEFAULT_SPACE)
        config.space = str(work / "space.yaml")
    config.progress = False
    results: dict = {"settings": {"space": config.space, "steps": config.steps, "threads": config.threads,
                                  "num_candidates": config.num_candidates, "cpu_count": os.cpu_count(),
                                  "load_average_at_start": os.getloadavg()}, "strategies": {}}
    runs = {}
    for strategy in options.strategies:
        out = work / strategy
        run = dataclasses.replace(config, strategy=strategy, output_dir=str(out),
                                  storage=f"sqlite:///{out.resolve()}/study.db")
        out.mkdir(parents=True, exist_ok=True)
        seconds = _run(run, 1, out / "log")
        summary = json.loads((out / "summary.json").read_text())
        runs[strategy] = (_trained(run), summary)
        results["strategies"][strategy] = {"wall_s": seconds, "trained": len(runs[strategy][0]),
                                           "best_W": summary["winner"]["W"], "winner": summary["winner"]["name"]}
        print(f"{strategy:>10}: {len(runs[strategy][0]):3d} evaluations trained in {seconds:7.1f} s, "
              f"best W {summary['winner']['W']:.4f} ({summary['winner']['name']})", flush=True)
    e_max = max(t.values[2] for trials, _ in runs.values() for t in trials)
    for strategy, (trials, summary) in runs.items():
        scale = np.array([summary["maximum_point"]["p"], summary["maximum_point"]["i"], e_max])
        points = np.array([t.values for t in trials]) / scale
        hv = compute_hypervolume(points, np.full(3, 1.1))
        results["strategies"][strategy]["hypervolume"] = float(hv)
        print(f"{strategy:>10}: hypervolume of the (p/p(T), i/i(T), e/e_max) front {hv:.4f} (reference 1.1³)")
    if options.speedup:
        threads = config.threads or os.cpu_count()
        timing = {}
        for workers in (1, 2):
            out = work / f"speedup-{workers}"
            out.mkdir(parents=True, exist_ok=True)
            # a latency profile of its own: each timing includes measuring the candidates' latency from scratch
            run = dataclasses.replace(config, strategy="fptas", output_dir=str(out),
                                      threads=max(1, threads // workers),
                                      storage=f"sqlite:///{out.resolve()}/study.db",
                                      latency_profile=f"bench-speedup-{workers}w-{time.time_ns()}")
            timing[workers] = _run(run, workers, out / "log")
            print(f"FPTAS with {workers} worker(s) × {max(1, threads // workers)} thread(s): "
                  f"{timing[workers]:.1f} s", flush=True)
        results["speedup_2_workers_vs_1"] = timing[1] / timing[2]
        results["speedup_wall_s"] = timing
        print(f"speed-up of 2 workers over 1 (same cores): {timing[1] / timing[2]:.2f}×")
    results["settings"]["load_average_at_end"] = os.getloadavg()
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps(results, indent=2))
    print(f"results: {options.output} (searches in {work})")


if __name__ == "__main__":
    main()
