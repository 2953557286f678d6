"""Benchmark: the fine-tuner's training step and dev evaluation against plain baselines, same run (not a test).

With the real teacher (all-MiniLM-L6-v2 + a fresh head) on a task's real files, times
- the training step (two alternating rounds, the second kept), split into forward+backward+clipping and the
  optimizer step, for the trainer's optimizer (fused AdamW) and for ``torch.optim.AdamW`` with its default
  (per-parameter loop on CPU), and the trainer's step with ``--precision bf16`` (autocast) against fp32;
- one pass over the dev set with ``finetune.trainer.predict_logits`` (length-sorted batches) and with batches in file
  order (the baseline), checking that both give the same logits, and the length-sorted pass under bf16 autocast
  (its largest logit difference and the share of equal predictions);
- tokenizing the whole training set with ``finetune.trainer.encode`` (one truncating pass, the truncation count read
  from the fast tokenizer's encodings) and with a second, untruncated pass that counts (the baseline), checking that
  both give the same features and count;
- what makes a run resumable: writing one checkpoint (model, fused AdamW state, best weights; every ``--save-steps``
  steps of a run) as a share of 500 training steps, and the run's fingerprint over the whole training set (once per
  start).
On a CUDA GPU (``--device cuda``, the default when one is present) the model and batches live there, timings
synchronize the GPU, the step is also timed in fp16 (autocast with the trainer's ``GradScaler``), and each step variant
reports its peak GPU memory (``torch.cuda.max_memory_allocated``).
Prints seconds per step / per pass, their ratios and tokens per second. Nothing else may run meanwhile.
Usage: ``OMP_NUM_THREADS=2 python bench/bench_finetune_speed.py --task MRPC``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bort.checkpoints import STATE_FILE, save_checkpoint  # noqa: E402
from bort.training import parameter_groups  # noqa: E402
from finetune.pipeline import RunConfig, load_splits  # noqa: E402
from finetune.tasks import get_task  # noqa: E402
from finetune.trainer import (TrainConfig, _logits, _loss, _optimizer, _pairs, autocast, encode,  # noqa: E402
                              load_model, load_tokenizer, make_collate, predict_logits, run_fingerprint, subsample)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="MRPC", help="task whose real train/dev files are used (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="training examples per step (default: 16)")
    p.add_argument("--eval-batch-size", type=int, default=32, help="dev examples per batch (default: 32)")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per optimizer (default: 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed dev passes per variant, best kept (default: 3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"),
                   help="where the model runs (default: %(default)s)")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(task, model, batches, optimizer, precision: str = "fp32") -> tuple[float, float]:
    """Mean seconds of (forward+backward+clip, optimizer step) over ``batches`` after two warm-up steps, the forward
    under ``precision``'s autocast and, for fp16, the loss scaled as the trainer does."""
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model.train()
    compute = update = 0.0
    for i, batch in enumerate(batches):
        sync(device)
        t0 = time.perf_counter()
        with autocast(precision, device):
            logits = _logits(model, batch, task)
        scaler.scale(_loss(task, logits.float(), batch["labels"])).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sync(device)
        t1 = time.perf_counter()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:
            compute, update = compute + t1 - t0, update + time.perf_counter() - t1
    return compute / (len(batches) - 2), update / (len(batches) - 2)


@torch.no_grad()
def file_order_logits(model, task, features, collate, batch_size) -> np.ndarray:
    model.eval()
    loader = DataLoader(features, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return np.concatenate([_logits(model, b, task).float().cpu().numpy() for b in loader])


def two_pass_encode(task, examples, tokenizer, max_length) -> tuple[list[dict], int]:
    """The baseline: count truncated sequences from an untruncated pass, then encode with truncation."""
    firsts, seconds, _ = _pairs(task, examples)
    full = tokenizer(firsts, seconds, truncation=False, verbose=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    return encode(task, examples, tokenizer, max_length)[0], truncated


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()  # device results are copied to numpy inside (synchronizing) or are host work
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task = get_task(args.task)
    if task.kind not in ("classification", "regression"):
        raise SystemExit(f"--task {args.task}: pick a classification or regression task")
    run = RunConfig(task=args.task)
    train_examples, dev_sets = load_splits(task, run.data_path)
    tokenizer = load_tokenizer(run.model)
    device = torch.device(args.device)
    model = load_model(task, run.model).to(device)
    collate = make_collate(task, tokenizer.pad_token_id)
    features, _ = encode(task, subsample(train_examples, (args.steps + 2) * args.batch_size, 0), tokenizer,
                         args.max_seq_length)
    batches = [{k: v.to(device) for k, v in collate(features[i:i + args.batch_size]).items()}
               for i in range(0, len(features), args.batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[2:])
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "dtype": "float32", "torch": torch.__version__, "task": args.task, "batch_size": args.batch_size,
              "max_seq_length": args.max_seq_length}
    baseline = torch.optim.AdamW(parameter_groups([model], 0.01), lr=1e-5)
    # two alternating rounds, the second kept: the first steps of a process run slower (allocator, kernel caches)
    fused = _optimizer(model, TrainConfig())
    variants = [("baseline AdamW", baseline, "fp32"), ("trainer (fused AdamW)", fused, "fp32"),
                ("trainer, --precision bf16", fused, "bf16")]
    if device.type == "cuda":
        variants.append(("trainer, --precision fp16", fused, "fp16"))
    for name, optimizer, precision in 2 * variants:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        compute, update = time_steps(task, model, batches, optimizer, precision)
        result[name] = {"forward_backward_s": round(compute, 4), "optimizer_s": round(update, 4),
                        "step_s": round(compute + update, 4),
                        "train_tokens_per_s": round(tokens / (len(batches) - 2) / (compute + update))}
        if device.type == "cuda":
            result[name]["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    result["step_speedup"] = round(result["baseline AdamW"]["step_s"] / result["trainer (fused AdamW)"]["step_s"], 3)
    result["bf16_step_speedup"] = round(result["trainer (fused AdamW)"]["step_s"] /
                                        result["trainer, --precision bf16"]["step_s"], 3)
    if device.type == "cuda":
        result["fp16_step_speedup"] = round(result["trainer (fused AdamW)"]["step_s"] /
                                            result["trainer, --precision fp16"]["step_s"], 3)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    result["cpu_bf16_flags"] = sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16")})

    dev_name, dev = next(iter(dev_sets.items()))
    dev_features, _ = encode(task, dev, tokenizer, args.max_seq_length)
    plain_s, plain = best_of(lambda: file_order_logits(model, task, dev_features, collate, args.eval_batch_size),
                             args.repeats)
    sorted_s, ours = best_of(lambda: predict_logits(model, task, dev_features, collate, args.eval_batch_size),
                             args.repeats)
    np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-4)

    def bf16_logits():
        with autocast("bf16", device):
            return predict_logits(model, task, dev_features, collate, args.eval_batch_size)

    bf16_s, bf16 = best_of(bf16_logits, args.repeats)
    dev_tokens = sum(len(f["input_ids"]) for f in dev_features)
    result["dev pass"] = {"split": dev_name, "examples": len(dev), "file_order_s": round(plain_s, 3),
                          "length_sorted_s": round(sorted_s, 3), "speedup": round(plain_s / sorted_s, 3),
                          "length_sorted_tokens_per_s": round(dev_tokens / sorted_s),
                          "bf16_s": round(bf16_s, 3), "bf16_speedup": round(sorted_s / bf16_s, 3),
                          "bf16_max_abs_logit_difference": round(float(np.abs(bf16 - ours).max()), 4),
                          "bf16_same_predictions": float(np.mean(bf16.argmax(-1) == ours.argmax(-1)))
                          if task.kind == "classification" else None}

    baseline_s, (plain_features, plain_count) = best_of(
        lambda: two_pass_encode(task, train_examples, tokenizer, args.max_seq_length), args.repeats)
    ours_s, (our_features, our_count) = best_of(
        lambda: encode(task, train_examples, tokenizer, args.max_seq_length), args.repeats)
    assert our_features == plain_features and our_count == plain_count
    result["tokenize train"] = {"examples": len(train_examples), "truncated": our_count,
                                "two_pass_s": round(baseline_s, 3), "one_pass_s": round(ours_s, 3),
                                "speedup": round(baseline_s / ours_s, 3),
                                "one_pass_examples_per_s": round(len(train_examples) / ours_s)}

    state = {"model": model.state_dict(), "optimizer": fused.state_dict(),
             "best_model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    with tempfile.TemporaryDirectory() as tmp:
        save_s, folder = best_of(lambda: save_checkpoint(tmp, 1, state, {}, keep=1), args.repeats)
        size = (folder / STATE_FILE).stat().st_size
    fingerprint_s, _ = best_of(lambda: run_fingerprint(task, TrainConfig(), our_features, model, 1), args.repeats)
    step_s = result["trainer (fused AdamW)"]["step_s"]
    result["checkpoint"] = {"save_s": round(save_s, 3), "megabytes": round(size / 2**20, 1),
                            "share_of_500_steps": round(save_s / (500 * step_s), 5),
                            "fingerprint_s": round(fingerprint_s, 3), "fingerprint_examples": len(our_features)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
