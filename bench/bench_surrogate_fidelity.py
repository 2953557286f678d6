"""Surrogate fidelity of the search: does e after s steps rank candidates as e after 10·s steps does?

Bort's premise is that a short, fixed training budget ranks architectures correctly. For each initialisation
('teacher' extraction and 'random'), this trains the FPTAS candidates of the default space for s and for 10·s steps
on the same batches and prints the Spearman rank correlation (scipy.stats.spearmanr) of the two e columns, with the
distillation throughput. Target: rho >= 0.8.

    python bench/bench_surrogate_fidelity.py --steps 20 --num_candidates 8 --threads 2

Every search option applies (see search/run_fptas.py --help); results also go to --output (JSON).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from bort.architecture import Architecture  # noqa: E402
from bort.counting import count_parameters, flops_per_sequence  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.fptas import interval_candidates  # noqa: E402
from search.runner import (head_width_tie_break, make_teacher_outputs, materialize_batches, setup_search,  # noqa: E402
                           train_candidate)


@dataclass
class BenchOptions:
    factor: int = field(default=10, metadata={"help": "The long budget is factor · steps."})
    inits: list[str] = field(default_factory=lambda: ["teacher", "random"], metadata={"help": "Initialisations."})
    output: str = field(default="bench/results/surrogate_fidelity.json", metadata={"help": "JSON results file."})


def main() -> None:
    config, options = HfArgumentParser((SearchConfig, BenchOptions)).parse_args_into_dataclasses()
    setup = setup_search(config)
    inputs = setup.inputs
    teacher_arch = Architecture.from_config(inputs.teacher_config)
    sizes = [count_parameters(a, inputs.teacher_config).effective for a in inputs.archs]
    costs = [flops_per_sequence(a, config.max_seq_length) for a in inputs.archs]
    p_max = count_parameters(teacher_arch, inputs.teacher_config).effective
    i_max = flops_per_sequence(teacher_arch, config.max_seq_length)
    ties = head_width_tie_break(inputs.archs, inputs.teacher_config)
    candidates = [inputs.archs[k] for k in interval_candidates(sizes, costs, inputs.epsilon, p_max, i_max, ties)]
    long_config = dataclasses.replace(config, steps=config.steps * options.factor)
    train_long, heldout = materialize_batches(long_config, setup.corpus, setup.tokenizer)
    train_short = train_long[:config.steps]  # same seeds: the short run's batches are the long run's first ones
    teacher_outputs = make_teacher_outputs(setup, train_long, heldout)  # in memory: fill() is never called
    theta = inputs.thetas[0]
    tokens_per_step = config.batch_size * config.max_seq_length
    results = {"settings": {"steps": config.steps, "factor": options.factor, "candidates": len(candidates),
                            "batch_size": config.batch_size, "max_seq_length": config.max_seq_length,
                            "threads": torch.get_num_threads(), "theta": theta.to_dict(), "teacher": inputs.teacher_name}}
    for init in options.inits:
        run_config = dataclasses.replace(config, init=init)
        rows, seconds, steps = [], 0.0, 0
        for arch in candidates:
            row = {"name": arch.name}
            for label, cfg, batches in (("e_short", run_config, train_short),
                                        ("e_long", dataclasses.replace(long_config, init=init), train_long)):
                start = time.perf_counter()
                _, terms, _ = train_candidate(cfg, inputs, setup.teacher, arch, theta, batches, heldout,
                                              teacher_outputs)
                seconds += time.perf_counter() - start
                steps += cfg.steps
                row[label] = terms["loss"]
            rows.append(row)
            print(f"[{init}] {arch.name}: e after {config.steps} steps {row['e_short']:.4f}, "
                  f"after {long_config.steps} steps {row['e_long']:.4f}", flush=True)
        rho, pvalue = spearmanr([r["e_short"] for r in rows], [r["e_long"] for r in rows])
        results[init] = {"rows": rows, "spearman_rho": float(rho), "p_value": float(pvalue),
                         "tokens_per_second": steps * tokens_per_step / seconds,
                         "mean_e_short": sum(r["e_short"] for r in rows) / len(rows),
                         "mean_e_long": sum(r["e_long"] for r in rows) / len(rows)}
        print(f"[{init}] Spearman rho(e_s, e_10s) = {rho:.3f} (p = {pvalue:.3g}) over {len(rows)} candidates; "
              f"distillation {results[init]['tokens_per_second']:.0f} tokens/s (teacher outputs cached)", flush=True)
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
