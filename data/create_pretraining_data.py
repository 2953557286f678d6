"""Text → packed token shards for pre-training: ``python data/create_pretraining_data.py --input ... --output-dir``

Named after BERT's script of the same job. Reads text files, globs or Hugging Face ``datasets`` (hub names or local
Arrow/Parquet/JSON Lines), tokenizes them with any fast tokenizer in worker processes, packs whole sentences or
lines into sequences of ``--max-seq-length`` tokens, and writes memory-mappable shards with a manifest
(format: ``data/shards.py``). Re-running with the same arguments resumes an interrupted run or does nothing.
Exit status 2 on bad input, with a one-line message naming the culprit.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

from data.errors import DataError  # noqa: E402


@dataclass
class PretrainingDataConfig:
    """Resolved options of one run (saved as ``run_config.json`` in the output folder)."""

    input: list[str] = field(default_factory=list)
    output_dir: str = ""
    tokenizer: str = ""
    max_seq_length: int = 128
    num_shards: int = 8
    heldout_fraction: float = 0.05
    num_workers: int = 1
    seed: int = 0
    sentence_split: bool = False
    word_starts: bool = False
    encoding_errors: str = "replace"
    chunk_mib: float = 1.0
    text_column: str = "text"
    dataset_rows: str = "lines"
    cache_dir: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if not self.input:
            raise DataError("--input: give at least one file, glob or dataset name")
        if self.num_workers < 1:
            raise DataError(f"--num-workers must be at least 1, got {self.num_workers}")
        if self.chunk_mib <= 0:
            raise DataError(f"--chunk-mib must be positive, got {self.chunk_mib}")


def parse_args(argv: list[str] | None = None) -> PretrainingDataConfig:
    from data.resources import default_corpus, default_teacher

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--input", nargs="+", default=None,
                   help="text files or globs (one sentence or paragraph a line, blank line or ' = Title = ' between "
                        "documents), or `datasets` names name[:config[:split]], or .jsonl/.parquet/.arrow files; "
                        "several sources are merged in the order given (default: the local WikiText-2 files)")
    p.add_argument("--output-dir", required=True, help="folder for the shards and manifest.json (resumed if it holds "
                                                       "an unfinished run of the same configuration)")
    p.add_argument("--tokenizer", default=None, help="a local Hugging Face folder or hub name of a fast tokenizer "
                                                     "(default: the local teacher's)")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence, special tokens included")
    p.add_argument("--num-shards", type=int, default=8, help="output shards (the unit of parallel work and resuming)")
    p.add_argument("--heldout-fraction", type=float, default=0.05, help="fraction of documents held out, in [0, 1)")
    p.add_argument("--num-workers", type=int, default=1, help="worker processes for scanning and tokenizing")
    p.add_argument("--seed", type=int, default=0, help="seed choosing the held-out documents")
    p.add_argument("--sentence-split", action=argparse.BooleanOptionalAction, default=False,
                   help="split lines into sentences (blingfire) before packing: for paragraph-per-line text")
    p.add_argument("--word-starts", action=argparse.BooleanOptionalAction, default=False,
                   help="store whole-word masking metadata (1 byte per token)")
    p.add_argument("--encoding-errors", choices=("strict", "replace"), default="replace",
                   help="invalid UTF-8: 'strict' stops naming file and line; 'replace' uses U+FFFD and counts the "
                        "bytes (mostly-binary files are refused either way)")
    p.add_argument("--chunk-mib", type=float, default=1.0, help="MiB of input per unit of scanning work")
    p.add_argument("--text-column", default="text", help="column of `datasets` inputs holding the text")
    p.add_argument("--dataset-rows", choices=("lines", "documents"), default="lines",
                   help="a `datasets` row is a line (WikiText) or a whole document")
    p.add_argument("--cache-dir", default=None, help="where `datasets` inputs are exported to text "
                                                     "(default: $BORT_CACHE_DIR or ~/.cache/bort)")
    p.add_argument("--overwrite", action="store_true",
                   help="first delete shards of another configuration found in --output-dir (only the files this "
                        "tool writes)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    args.input = args.input or default_corpus()
    args.tokenizer = args.tokenizer or default_teacher()
    return PretrainingDataConfig(**vars(args))


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise DataError(f"--tokenizer {name}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise DataError(f"--tokenizer {name}: cannot load ({str(e).splitlines()[0]})") from None


def run(cfg: PretrainingDataConfig) -> dict:
    """Build the shards; returns the manifest."""
    from data.corpus import make_shard_config
    from data.shards import create_shards, remove_shards, write_json_atomic
    from data.sources import default_cache_dir

    tokenizer = load_tokenizer(cfg.tokenizer)
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    shard_config = make_shard_config(
        cfg.input, tokenizer, cache_root, text_column=cfg.text_column, rows=cfg.dataset_rows,
        show_progress=cfg.progress, max_seq_length=cfg.max_seq_length, heldout_fraction=cfg.heldout_fraction,
        seed=cfg.seed, num_shards=cfg.num_shards, chunk_bytes=int(cfg.chunk_mib * (1 << 20)),
        encoding_errors=cfg.encoding_errors, sentence_split=cfg.sentence_split, word_starts=cfg.word_starts,
    )
    out = Path(cfg.output_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"--output-dir {out}: not writable ({e.strerror or e})") from None
    if cfg.overwrite:
        manifest_path = out / "manifest.json"
        try:
            same = json.loads(manifest_path.read_text()).get("key") == shard_config.key()
        except (OSError, ValueError):
            same = False
        if not same:
            remove_shards(out)
            (out / "run_config.json").unlink(missing_ok=True)
    try:
        manifest = create_shards(shard_config, out, num_workers=cfg.num_workers, show_progress=cfg.progress)
    except DataError:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    write_json_atomic(out / "run_config.json", asdict(cfg))
    return manifest


def summary(manifest: dict) -> str:
    st = manifest["stats"]
    lines = [
        f"shards in {len(st['shards'])} file sets, format version {manifest['format_version']}"
        + (" (already complete: nothing to do)" if manifest.get("cache_hit") else ""),
        f"documents {st['documents']:,} (held out {st['documents_heldout']:,}), input lines {st['lines']:,}, "
        f"text lines {st['text_lines']:,}, packed units (sentences or lines) {st['units']:,}, "
        f"of which longer than a sequence and split {st['split_units']:,}",
        f"tokens {st['tokens']:,}, sequences {st['sequences']:,} (train {st['splits']['train']['sequences']:,}, "
        f"held out {st['splits']['heldout']['sequences']:,}), padding {st['padding_fraction']:.1%}",
    ]
    if st["replaced_bytes"]:
        lines.append(f"replaced invalid UTF-8 bytes: {st['replaced_bytes']:,}")
    if not manifest.get("cache_hit"):
        lines.append(f"time {st['seconds']:.1f} s, {st['tokens'] / max(st['seconds'], 1e-9):,.0f} tokens/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        manifest = run(cfg)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(manifest))
    print(json.dumps({"output_dir": cfg.output_dir, "key": manifest["key"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
