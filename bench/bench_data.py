"""Benchmark: our shard pipeline vs the Hugging Face ``run_mlm.py`` recipe on the same text (not a test).

Builds a corpus by repeating the WikiText-2 files to ``--target-mb`` MB, then, each in a fresh subprocess whose
process tree's resident memory is sampled every 50 ms:

- ours: ``data.shards.create_shards`` with ``--workers`` processes (tokenize, pack, write uint16 shards);
- ours again on twice the text (peak memory must stay flat: streaming);
- Hugging Face: ``datasets.load_dataset("text")`` + ``map(batched=True)`` tokenization (special tokens mask, as
  ``run_mlm.py`` without ``--line_by_line``) + ``map(group_texts)`` into ``max_seq_length`` blocks, with
  ``num_proc=--workers``;
- reload: ``load_corpus`` on the finished cache (hash the inputs, read the manifest, open the shards) and read
  one batch.

Prints input MB/s and tokens/s of each, their ratio by wall time and by CPU time (process tree, from ``wait4``;
less sensitive to other jobs on a shared machine than wall time), peak RSS, and the reload time. Usage:
``OMP_NUM_THREADS=1 python bench/bench_data.py --target-mb 50 --workers 2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(args: list[str]) -> dict:
    """Run ``python bench_data.py <args>`` in a subprocess; returns its JSON result plus peak tree RSS."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.stdout.read()
    # wait4 gives the CPU time of the child and of every descendant it waited for (its worker processes).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step {args[1]} failed with status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result


def make_corpus(folder: Path, target_mb: float) -> list[Path]:
    from data.resources import default_corpus

    sources = [Path(p) for p in default_corpus()]
    text = b"".join(p.read_bytes() for p in sources)
    copies = max(1, round(target_mb * 1e6 / len(text)))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    per_file = 8  # several files, as a real corpus has
    for i in range(0, copies, per_file):
        path = folder / f"part-{i // per_file:03d}.txt"
        path.write_bytes(text * min(per_file, copies - i))
        files.append(path)
    return files


# ---------------------------------------------------------------------------------------------- measured steps


def step_ours(files: list[str], tokenizer: str, cache: str, workers: int, max_len: int) -> dict:
    from transformers import AutoTokenizer

    from data.corpus import make_shard_config
    from data.shards import create_shards

    tok = AutoTokenizer.from_pretrained(tokenizer)
    start = time.perf_counter()
    config = make_shard_config(files, tok, Path(cache), show_progress=False, max_seq_length=max_len,
                               heldout_fraction=0.05, num_shards=8)
    folder = Path(cache) / f"corpus-{config.key()}"
    manifest = create_shards(config, folder, num_workers=workers, show_progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": manifest["stats"]["tokens"], "sequences": manifest["stats"]["sequences"],
            "padding_fraction": manifest["stats"]["padding_fraction"]}


def step_hf(files: list[str], tokenizer: str, cache: str, workers: int, max_len: int) -> dict:
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    start = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=cache)["train"]

    def tokenize(batch):
        return tok(batch["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize, batched=True, num_proc=workers if workers > 1 else None, remove_columns=["text"],
                        load_from_cache_file=False)

    def group_texts(batch):
        joined = {k: list(chain(*batch[k])) for k in batch}
        total = (len(joined["input_ids"]) // max_len) * max_len
        return {k: [v[i : i + max_len] for i in range(0, total, max_len)] for k, v in joined.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=workers if workers > 1 else None,
                            load_from_cache_file=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": len(grouped) * max_len, "sequences": len(grouped)}


def step_reload(files: list[str], tokenizer: str, cache: str, max_len: int, workers: int) -> dict:
    from transformers import AutoTokenizer

    from data.collator import MaskingCollator
    from data.corpus import load_corpus

    tok = AutoTokenizer.from_pretrained(tokenizer)
    start = time.perf_counter()
    corpus = load_corpus(files, tok, max_seq_length=max_len, cache_dir=cache, show_progress=False,
                         num_workers=workers, num_shards=8)
    loaded = time.perf_counter() - start
    batch = MaskingCollator(tok)([corpus.train[i] for i in range(0, len(corpus.train), len(corpus.train) // 32)][:32])
    first_batch = time.perf_counter() - start
    assert corpus.cache_hit and batch["input_ids"].shape == (32, max_len)
    return {"seconds": loaded, "first_batch_seconds": first_batch, "tokens": corpus.stats["tokens"]}


def main() -> None:
    from data.resources import default_teacher

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target-mb", type=float, default=50.0, help="corpus size in MB (WikiText-2 repeated)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for both pipelines")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub name (default: the local teacher)")
    p.add_argument("--skip-hf", action="store_true", help="only our pipeline")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each pipeline, alternating; the fastest wall time of each is reported")
    p.add_argument("--skip-double", action="store_true", help="skip the run on twice the text")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    tokenizer = args.tokenizer or default_teacher()
    if args.step:
        fn = {"ours": step_ours, "hf": step_hf}.get(args.step)
        if fn is not None:
            res = fn(args.files, tokenizer, args.cache, args.workers, args.max_seq_length)
        else:
            res = step_reload(args.files, tokenizer, args.cache, args.max_seq_length, args.workers)
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        files = [str(f) for f in make_corpus(tmp / "text", args.target_mb)]
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        common = ["--workers", str(args.workers), "--max-seq-length", str(args.max_seq_length),
                  "--tokenizer", tokenizer]
        results = {}
        for i in range(args.repeat):
            cache = tmp / f"ours{i}"
            ours = run_measured(["--step", "ours", "--files", *files, "--cache", str(cache), *common])
            if "ours" not in results or ours["seconds"] < results["ours"]["seconds"]:
                results["ours"] = ours
            if not args.skip_hf:
                hf = run_measured(["--step", "hf", "--files", *files, "--cache", str(tmp / f"hf{i}"), *common])
                if "hf" not in results or hf["seconds"] < results["hf"]["seconds"]:
                    results["hf"] = hf
        results["reload"] = run_measured(["--step", "reload", "--files", *files, "--cache", str(tmp / "ours0"),
                                          *common])
        if not args.skip_double:
            double = [str(f) for f in make_corpus(tmp / "text2", 2 * args.target_mb)]
            results["ours_2x"] = run_measured(["--step", "ours", "--files", *double, "--cache", str(tmp / "ours2"),
                                               *common])

    print(f"corpus: {mb:.1f} MB of WikiText-2 repeated, {results['ours']['tokens']:,} tokens; "
          f"workers {args.workers}; max_seq_length {args.max_seq_length}; cpus {os.cpu_count()}")
    for name in ("ours", "ours_2x", "hf"):
        if name in results:
            r = results[name]
            size = 2 * mb if name == "ours_2x" else mb
            print(f"{name:8s} {r['seconds']:7.1f} s  {size / r['seconds']:6.2f} MB/s  "
                  f"{r['tokens'] / r['seconds']:>10,.0f} tokens/s  CPU {r['cpu_seconds']:7.1f} s  "
                  f"peak RSS {r['peak_rss_mib']:7.0f} MiB")
    if "hf" in results:
        print(f"throughput ratio ours / Hugging Face (same text): wall time "
              f"{results['hf']['seconds'] / results['ours']['seconds']:.2f}x, CPU time "
              f"{results['hf']['cpu_seconds'] / results['ours']['cpu_seconds']:.2f}x")
    if "ours_2x" in results:
        print(f"peak RSS ratio 2x text / 1x text (ours): "
              f"{results['ours_2x']['peak_rss_mib'] / results['ours']['peak_rss_mib']:.2f}")
    r = results["reload"]
    print(f"reload of {r['tokens']:,} tokens from the cache: {r['seconds']:.2f} s (hash inputs + open shards), "
          f"{r['first_batch_seconds']:.2f} s to a first masked batch of 32")
    print(json.dumps({"mb": mb, "workers": args.workers, **results}))


if __name__ == "__main__":
    main()
