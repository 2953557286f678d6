"""Pre-training throughput: our trainer vs a plain Hugging Face ``Trainer`` subclass, same loss, model and data.

The baseline is the common way to write distillation with transformers: a ``Trainer`` whose ``compute_loss`` runs the
teacher without gradients and the student's ``*ForMaskedLM`` forward (vocabulary logits at every position, hidden
states), then our :class:`bort.distill.DistillationLoss` on the same terms and weights. Ours is
``bort/run_pretraining_distillation.py``'s loop. Both run the default architecture (Bort's shape scaled to the
teacher), the default teacher and corpus, the same global batch, micro-batch and optimizer settings, in fresh
processes one after the other, and report

- training throughput in real (non-padding) tokens/s over the steps after ``--warmup_steps``;
- peak resident memory of the process (``ru_maxrss``);
- achieved FLOP/s: FLOPs of one step counted by ``torch.utils.flop_counter`` (teacher forward, student forward and
  backward) × steps / time, against the machine's peak: a measured large fp32 matmul with the same threads, and the
  nominal peak (cores × clock × FLOPs per cycle from the CPU's vector units) when the clock is known.

Target: ours ≥ 1.5× the baseline's tokens/s on CPU. On a CUDA GPU both run there, and the run adds ours in bf16 and
fp16 and the ``Trainer`` in bf16, with peak GPU memory (``torch.cuda.max_memory_allocated``) and the measured peak of
a large matmul on the GPU in each dtype.

    python bench/bench_pretraining.py --steps 12 --threads 2
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402


@dataclass
class BenchOptions:
    teacher: str | None = field(default=None, metadata={"help": "Teacher (default: the project's default)."})
    corpus: list[str] | None = field(default=None, metadata={"help": "Text files (default: the project's default)."})
    batch_size: int = field(default=32, metadata={"help": "Global batch, sequences per optimizer step."})
    micro_batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per sequence."})
    steps: int = field(default=12, metadata={"help": "Optimizer steps timed per trainer (after the warm-up)."})
    warmup_steps: int = field(default=2, metadata={"help": "Untimed first optimizer steps."})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads of each trainer process."})
    output: str = field(default="bench/results/pretraining.json", metadata={"help": "JSON results file."})
    worker: str | None = field(default=None, metadata={
        "help": "Internal: run one trainer ('ours', 'ours_bf16', 'ours_fp16', 'hf', 'hf_bf16') and print its JSON "
                "result."})


# --- the baseline ---------------------------------------------------------------------------------------------------

def make_hf_trainer(options: BenchOptions, setup: dict, output_dir: str, timings: list, tokens: list,
                    bf16: bool = False, use_cpu: bool = not torch.cuda.is_available()):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from bort.distill import DistillOutputs

    loss_fn, targets = setup["loss_fn"], setup["targets"]

    class DistillationTrainer(Trainer):
        """The usual subclass: teacher outputs without gradients, the student's full MLM forward, our loss."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            target = targets(None, inputs)
            captured = {}
            attention = model.base_model.encoder.layer[-1].attention.self
            hooks = [getattr(attention, n).register_forward_hook(
                lambda _m, _i, out, n=n: captured.__setitem__(n, out)) for n in ("query", "key", "value")]
            try:
                out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            labels=inputs["labels"], output_hidden_states=True)
            finally:
                for hook in hooks:
                    hook.remove()
            labels = inputs["labels"]
            student = DistillOutputs(qkv=(captured["query"], captured["key"], captured["value"]),
                                     hidden=out.hidden_states[-1], logits=out.logits[labels != -100])
            tokens.append(float(inputs["attention_mask"].sum()))
            loss = loss_fn(student, target, inputs["attention_mask"], labels)["loss"]
            return (loss, out) if return_outputs else loss

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timings.append(time.perf_counter())

    student = setup["student"]
    student.add_module("distillation_loss", loss_fn)  # so that the Trainer's optimizer also trains the projection
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=options.micro_batch_size,
        gradient_accumulation_steps=options.batch_size // options.micro_batch_size,
        max_steps=options.steps + options.warmup_steps, learning_rate=5e-4, weight_decay=0.01, warmup_steps=0.1,
        max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to="none",
        use_cpu=use_cpu, bf16=bf16,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=0)
    timings.append(time.perf_counter())
    return DistillationTrainer(model=student, args=args, train_dataset=setup["train"],
                               data_collator=setup["collator"], callbacks=[Clock()])


def baseline_setup(options: BenchOptions, device: str | None = None) -> dict:
    """Teacher (on ``device``; None: the GPU if there is one), student (random, MLM head), loss and data exactly as
    our trainer builds them."""
    from transformers import AutoTokenizer

    from bort.modeling import build_student, load_teacher
    from bort.pretraining import ATTENTION, default_architecture, setup_loss, teacher_targets
    from bort.pretraining_config import PretrainingConfig
    from data.collator import MaskingCollator
    from data.corpus import load_corpus
    from data.resources import default_corpus, default_teacher

    config = PretrainingConfig(teacher=options.teacher or default_teacher(), init="random")
    # on a GPU the Trainer moves the student there; the teacher goes with it (fp32: the baseline as usually written)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = load_teacher(config.teacher, attn_implementation=ATTENTION).to(device)
    tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    arch = default_architecture(teacher.config)
    student = build_student(arch, teacher.config, mlm_head=True, seed=0, attn_implementation=ATTENTION)
    loss_fn = setup_loss(config, teacher, arch)
    corpus = load_corpus(options.corpus or default_corpus(), tokenizer, max_seq_length=options.max_seq_length,
                         show_progress=False)
    return {"teacher": teacher, "student": student, "loss_fn": loss_fn, "targets": teacher_targets(teacher, loss_fn),
            "train": corpus.train, "collator": MaskingCollator(tokenizer, seed=0), "arch": arch}


# --- workers ------------------------------------------------------------------------------------------------------

def run_ours(options: BenchOptions, precision: str) -> dict:
    from bort.pretraining import run_pretraining
    from bort.pretraining_config import PretrainingConfig

    with tempfile.TemporaryDirectory() as out:
        config = PretrainingConfig(teacher=options.teacher, corpus=options.corpus, init="random",
                                   batch_size=options.batch_size, micro_batch_size=options.micro_batch_size,
                                   max_seq_length=options.max_seq_length,
                                   max_steps=options.steps + options.warmup_steps, logging_steps=1,
                                   eval_steps=10**9, eval_batches=1, save_steps=10**9, output_dir=out,
                                   progress=False, precision=precision, engine="none")
        run_pretraining(config)
        with open(Path(out) / "train_log.csv") as f:
            import csv

            rows = list(csv.DictReader(f))[options.warmup_steps:]
    rates = [float(r["tokens_per_second"]) for r in rows]
    return {"tokens_per_second": statistics.harmonic_mean(rates)}


def run_hf(options: BenchOptions, bf16: bool = False) -> dict:
    setup = baseline_setup(options)
    timings, tokens = [], []
    with tempfile.TemporaryDirectory() as out:
        trainer = make_hf_trainer(options, setup, out, timings, tokens, bf16=bf16)
        trainer.train()
    per_step = len(tokens) // (options.steps + options.warmup_steps)
    timed_tokens = sum(tokens[options.warmup_steps * per_step:])
    seconds = timings[-1] - timings[options.warmup_steps]  # timings[k]: end of step k (0: start)
    return {"tokens_per_second": timed_tokens / seconds}


def flops_per_token(options: BenchOptions) -> dict:
    """FLOPs per real token of one micro-batch (teacher forward, student forward and backward), both ways."""
    from torch.utils.flop_counter import FlopCounterMode

    from bort.training import DistillationObjective, accumulate_gradients

    setup = baseline_setup(options, device="cpu")  # counted on the CPU: the count does not depend on the device
    batch = setup["collator"]([setup["train"][i] for i in range(options.micro_batch_size)])
    real = float(batch["attention_mask"].sum())
    out = {}
    with FlopCounterMode(display=False) as counter:
        accumulate_gradients(DistillationObjective(setup["student"], setup["loss_fn"]), [batch], setup["targets"])
    out["ours"] = counter.get_total_flops() / real
    setup["student"].zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_hf_trainer(options, setup, tmp, [], [], use_cpu=True)
        with FlopCounterMode(display=False) as counter:
            trainer.compute_loss(setup["student"], batch).backward()
    out["hf"] = counter.get_total_flops() / real
    out["architecture"] = setup["arch"].to_dict()
    return out


def gpu_peak() -> dict:
    """Measured matmul FLOP/s on the CUDA GPU, per dtype: 8192³ products, median of 10 after 3 warm-ups, timed with
    CUDA events (fp32 without TF32, torch's default)."""
    n, out = 8192, {"device": torch.cuda.get_device_name()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        times = []
        for i in range(13):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end) / 1e3)
        out[f"matmul_flops_per_second_{name}"] = 2 * n**3 / statistics.median(times)
    return out


def machine_peak(threads: int) -> dict:
    """Measured fp32 matmul FLOP/s with ``threads`` threads, and the nominal peak when the clock is known."""
    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        a @ b
    measured = 2 * n**3 * repeats / (time.perf_counter() - start)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    per_cycle = 64 if " avx512f" in flags else 32 if " fma" in flags else 8  # fp32 FLOPs per cycle and core
    mhz = None
    for line in flags.splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":")[1])
            break
    nominal = threads * mhz * 1e6 * per_cycle if mhz else None
    return {"matmul_flops_per_second": measured, "nominal_flops_per_second": nominal,
            "nominal_assumes": f"{threads} cores × {mhz} MHz × {per_cycle} fp32 FLOPs/cycle (2 FMA units)"}


def worker(options: BenchOptions) -> None:
    torch.set_num_threads(options.threads)
    if options.worker in ("hf", "hf_bf16"):
        result = run_hf(options, bf16=options.worker == "hf_bf16")
    elif options.worker == "flops":
        result = flops_per_token(options)
    else:
        result = run_ours(options, options.worker.partition("_")[2] or "fp32")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def spawn(options: BenchOptions, which: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(options.threads))
    argv = [sys.executable, __file__, "--worker", which]
    for key, value in asdict(options).items():
        if key in ("worker", "output") or value is None:
            continue
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    (options,) = HfArgumentParser(BenchOptions).parse_args_into_dataclasses()
    if options.worker:
        worker(options)
        return
    gpu = torch.cuda.is_available()
    runs = ["ours", "hf"] + (["ours_bf16", "hf_bf16", "ours_fp16"] if gpu else [])
    results = {name: spawn(options, name) for name in runs}
    flops = spawn(options, "flops")
    peak = machine_peak(options.threads)
    if gpu:
        peak.update(gpu_peak())
    for name in runs:
        per_token = flops["hf" if name.startswith("hf") else "ours"]
        results[name]["flops_per_token"] = per_token
        results[name]["achieved_flops_per_second"] = per_token * results[name]["tokens_per_second"]
        # the share of the measured matmul peak of the run's own arithmetic (the GPU's in that dtype when there is one)
        dtype = name.partition("_")[2] or "fp32"
        results[name]["peak_flops_per_second"] = (peak[f"matmul_flops_per_second_{dtype}"] if gpu
                                                  else peak["matmul_flops_per_second"])
    summary = {"settings": {k: v for k, v in asdict(options).items() if k != "worker"},
               "architecture": flops["architecture"], "machine_peak": peak, "results": results,
               "speedup_tokens_per_second": results["ours"]["tokens_per_second"] / results["hf"]["tokens_per_second"]}
    if gpu:
        summary["speedup_tokens_per_second_bf16"] = (results["ours_bf16"]["tokens_per_second"]
                                                     / results["hf_bf16"]["tokens_per_second"])
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps(summary, indent=2))
    print(f"architecture {flops['architecture']}, batch {options.batch_size} × {options.max_seq_length} tokens, "
          f"{options.threads} thread(s)" + (f", GPU {peak['device']}" if gpu else ""))
    for name in runs:
        r = results[name]
        print(f"{name:10s} {r['tokens_per_second']:9.0f} tokens/s  peak RSS {r['peak_rss_mib']:7.0f} MiB  "
              + (f"peak GPU {r['peak_gpu_mib']:7.0f} MiB  " if gpu else "")
              + f"{r['achieved_flops_per_second'] / 1e9:7.2f} GFLOP/s "
              f"({r['achieved_flops_per_second'] / r['peak_flops_per_second']:.1%} of measured matmul peak"
              + (f", {r['achieved_flops_per_second'] / peak['nominal_flops_per_second']:.1%} of nominal"
                 if peak["nominal_flops_per_second"] and not gpu else "") + ")")
    print(f"ours / Trainer tokens/s: {summary['speedup_tokens_per_second']:.2f}x (target >= 1.5x on CPU); "
          f"FLOPs per token ours {flops['ours'] / 1e6:.1f} M vs Trainer {flops['hf'] / 1e6:.1f} M")
    if gpu:
        print(f"ours / Trainer tokens/s in bf16: {summary['speedup_tokens_per_second_bf16']:.2f}x")


if __name__ == "__main__":
    main()
