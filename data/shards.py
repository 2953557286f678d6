"""Text → packed token shards on disk, streamed, in parallel, resumable; and reading them back memory-mapped.

The one pipeline behind ``data/create_pretraining_data.py`` and :func:`data.corpus.load_corpus`.

Steps (NVIDIA's BERT recipe decouples the same ones: extract, segment, shard; Devlin et al. 2019, §3.1 and
Appendix A.2 for packing whole sentences into sequences of up to 512 tokens):

1. *Plan*: cut the input files into chunks of about ``chunk_bytes`` that start on document boundaries
   (:func:`data.text.plan_chunks`).
2. *Scan* every chunk (in worker processes): count lines and documents, check UTF-8 and refuse binary files.
   Documents get global numbers; ``round(heldout_fraction * documents)`` of them, chosen by a seeded affine
   permutation of their numbers (O(1) memory), form the held-out split.
3. *Build* every shard (in worker processes): shard ``s`` takes chunks ``s, s + num_shards, ...``; lines are read,
   tokenized in batches by the fast tokenizer (its truncation and padding off) and packed greedily: whole lines go
   into a sequence of at most ``max_seq_length - 2`` content tokens framed by ``[CLS] ... [SEP]`` (``<s> ... </s>``
   for RoBERTa); a line that does not fit starts the next sequence, a line longer than a sequence is split into
   full pieces (never dropped), and no sequence crosses a document boundary.

On-disk format (version :data:`FORMAT_VERSION`), in the output folder:

- ``manifest.json``: the configuration (sources with their SHA-256 and size, tokenizer hash, length, seeds, ...),
  its key, ``"complete": true`` once every shard is written, the counts, and the file list.
- per shard ``s`` and split ``train``/``heldout``: ``{split}-{s:05d}.ids`` (token ids, ``uint16`` when the
  vocabulary has at most 65,536 entries, else ``uint32``, framed sequences back to back, no padding),
  ``{split}-{s:05d}.ends`` (``int64`` end offset of each sequence in the ids file),
  ``{split}-{s:05d}.docs`` (``int64`` global document number of each sequence), optionally
  ``{split}-{s:05d}.wordstarts`` (``uint8`` per token: 1 where a word starts, for whole-word masking),
  and ``shard-{s:05d}.json`` (its counts), written last: a shard without it is unfinished and is rebuilt.

Every file is written under a temporary name in the same folder and renamed with ``os.replace``, so an interrupted
run leaves no partial file under a final name, and a re-run skips the finished shards and produces byte-identical
files.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import queue as queue_module
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DataError
from data.files import atomic_path
from data.text import (
    BINARY_FRACTION,
    ENCODING_ERRORS,
    Chunk,
    file_sha256,
    iter_documents_lines,
    plan_chunks,
    scan_chunk,
    sniff,
)

FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
DEFAULT_CHUNK_BYTES = 1 << 20
# Lines tokenized per call of the fast tokenizer.
TOKENIZE_BATCH_LINES = 1024
# Tokens buffered per split before they are appended to the shard files.
WRITE_BUFFER_TOKENS = 1 << 18


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TokenizerSpec:
    """What the workers need of a tokenizer: its serialized backend (truncation and padding off) and special ids."""

    name: str
    backend_json: str
    cls_token_id: int
    sep_token_id: int
    pad_token_id: int
    vocab_size: int

    @property
    def sha256(self) -> str:
        h = hashlib.sha256(self.backend_json.encode("utf-8"))
        h.update(f"{self.cls_token_id},{self.sep_token_id},{self.pad_token_id}".encode())
        return h.hexdigest()

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)


def tokenizer_spec(tokenizer: Any) -> TokenizerSpec:
    """Describe a transformers fast tokenizer (BERT WordPiece, RoBERTa BPE, ...) for the shard builder.

    Raises:
        DataError: not a fast tokenizer, or it lacks a CLS/BOS, SEP/EOS or PAD token.
    """
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        raise DataError(f"tokenizer {name!r}: a fast (Rust `tokenizers`) tokenizer is needed")
    missing = [t for t in ("cls_token", "sep_token", "pad_token") if getattr(tokenizer, f"{t}_id", None) is None]
    if missing:
        raise DataError(
            f"tokenizer {name!r}: lacks the special token(s) {', '.join(missing)} needed to frame sequences"
        )
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return TokenizerSpec(
        name=name,
        backend_json=copy.to_str(),
        cls_token_id=int(tokenizer.cls_token_id),
        sep_token_id=int(tokenizer.sep_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        vocab_size=len(tokenizer),
    )


@dataclass(frozen=True)
class SourceInfo:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ShardConfig:
    """Everything that decides the shards' content. ``key()`` hashes all of it except the file paths.

    Attributes:
        sources: input text files, in order (documents are numbered in this order).
        tokenizer: see :func:`tokenizer_spec`.
        max_seq_length: tokens per sequence, special tokens included (≥ 3).
        heldout_fraction: fraction of documents in the held-out split, in [0, 1).
        seed: chooses the held-out documents.
        num_shards: output shards (≥ 1); also the unit of parallel work and of resuming.
        chunk_bytes: bytes of input per unit of scanning work.
        encoding_errors: ``"strict"`` (invalid UTF-8 is an error naming file and line) or ``"replace"`` (U+FFFD,
            counted in the manifest).
        sentence_split: split lines into sentences before packing (for paragraph-per-line text).
        word_starts: also store whole-word masking metadata.
    """

    sources: tuple[SourceInfo, ...]
    tokenizer: TokenizerSpec
    max_seq_length: int = 128
    heldout_fraction: float = 0.05
    seed: int = 0
    num_shards: int = 1
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    encoding_errors: str = "strict"
    sentence_split: bool = False
    word_starts: bool = False

    def __post_init__(self):
        if self.max_seq_length < 3:
            raise DataError(f"max_seq_length must be at least 3 (two special tokens + one), got {self.max_seq_length}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise DataError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.num_shards < 1:
            raise DataError(f"num_shards must be at least 1, got {self.num_shards}")
        if self.encoding_errors not in ENCODING_ERRORS:
            raise DataError(f"encoding_errors must be one of {ENCODING_ERRORS}, got {self.encoding_errors!r}")

    def identity(self) -> dict:
        """The content-defining fields as JSON-able data (file contents by hash, tokenizer by hash)."""
        return {
            "format_version": FORMAT_VERSION,
            "sources": [s.sha256 for s in self.sources],
            "tokenizer_sha256": self.tokenizer.sha256,
            "max_seq_length": self.max_seq_length,
            "heldout_fraction": self.heldout_fraction,
            "seed": self.seed,
            "num_shards": self.num_shards,
            "chunk_bytes": self.chunk_bytes,
            "encoding_errors": self.encoding_errors,
            "sentence_split": self.sentence_split,
            "word_starts": self.word_starts,
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:32]


def describe_sources(paths: Sequence[Path], memo: Path | None = None) -> tuple[SourceInfo, ...]:
    """Hash every input file (SHA-256 of its bytes); refuse unreadable and mostly-binary files first.

    Args:
        memo: optional JSON file remembering digests by (absolute path, size, modification time in ns, inode), as
            git's index and make do, so that reloading a large corpus does not re-read it; None hashes every time.
    """
    known: dict[str, str] = {}
    if memo is not None:
        try:
            known = json.loads(memo.read_text())
        except (OSError, ValueError):
            known = {}
    out, changed = [], False
    for p in paths:
        sniff(p)
        st = p.stat()
        stamp = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        digest = known.get(stamp)
        if digest is None:
            digest = known[stamp] = file_sha256(p)
            changed = True
        out.append(SourceInfo(path=str(p), sha256=digest, size=st.st_size))
    if memo is not None and changed:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(memo, known)
        except OSError:
            pass  # the memo only saves time; hashing again next time is correct
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Atomic files


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename: a done-marker never vouches for a lost shard


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def shard_file(folder: Path, split: str, shard: int, kind: str) -> Path:
    return folder / f"{split}-{shard:05d}.{kind}"


def shard_done_file(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.json"


# ----------------------------------------------------------------------------------------------------------------
# Held-out split


def heldout_permutation(num_documents: int, seed: int) -> tuple[int, int]:
    """Coefficients ``(a, b)`` of the permutation ``g -> (a * g + b) mod num_documents`` chosen by ``seed``."""
    if num_documents <= 1:
        return 1, 0
    rng = random.Random(seed)
    while True:
        a = rng.randrange(1, num_documents)
        if math.gcd(a, num_documents) == 1:
            break
    return a, rng.randrange(num_documents)


def is_heldout(document: int, num_documents: int, num_heldout: int, perm: tuple[int, int]) -> bool:
    a, b = perm
    return (a * document + b) % num_documents < num_heldout


# ----------------------------------------------------------------------------------------------------------------
# Packing


class Packer:
    """Greedy packing of a stream of lines (token id lists) into sequences of at most ``capacity`` content tokens.

    Calls ``emit(document, ids, word_starts)`` for every finished sequence (content tokens only; framing is the
    writer's job). Whole lines are kept together; a line longer than ``capacity`` is cut into full pieces, the last
    piece starting the next sequence; a new document always starts a new sequence.
    """

    def __init__(self, capacity: int, emit: Callable[[int, list[int], list[int] | None], None], word_starts: bool):
        self.split_units = 0  # lines (or sentences) longer than a sequence, cut into pieces
        self.capacity = capacity
        self.emit = emit
        self.word_starts = word_starts
        self.document = -1
        self.ids: list[int] = []
        self.starts: list[int] = []

    def add(self, document: int, ids: list[int], starts: list[int] | None = None) -> None:
        if document != self.document:
            self.flush()
            self.document = document
        if not ids:
            return
        if len(self.ids) + len(ids) <= self.capacity:
            self.ids.extend(ids)
            if self.word_starts:
                self.starts.extend(starts)
            return
        self.flush()
        cap = self.capacity
        self.split_units += len(ids) > cap
        while len(ids) > cap:
            self.emit(document, ids[:cap], starts[:cap] if self.word_starts else None)
            ids = ids[cap:]
            if self.word_starts:
                starts = starts[cap:]
        self.ids = list(ids)
        self.starts = list(starts) if self.word_starts else []

    def flush(self) -> None:
        if self.ids:
            self.emit(self.document, self.ids, self.starts if self.word_starts else None)
        self.ids, self.starts = [], []


class SplitWriter:
    """Appends framed sequences of one split of one shard to temporary files; ``commit`` renames them."""

    def __init__(self, folder: Path, split: str, shard: int, spec: TokenizerSpec, word_starts: bool):
        self.kinds = ["ids", "ends", "docs"] + (["wordstarts"] if word_starts else [])
        self.final = {k: shard_file(folder, split, shard, k) for k in self.kinds}
        self.tmp = {k: p.with_name(f".{p.name}.tmp-{os.getpid()}") for k, p in self.final.items()}
        self.files = {k: open(p, "wb") for k, p in self.tmp.items()}
        self.dtype = spec.dtype
        self.cls, self.sep = spec.cls_token_id, spec.sep_token_id
        self.buf: dict[str, list[int]] = {k: [] for k in self.kinds}
        self.tokens = 0
        self.sequences = 0
        self.content_tokens = 0

    def add(self, document: int, ids: list[int], starts: list[int] | None) -> None:
        buf = self.buf
        buf["ids"].append(self.cls)
        buf["ids"].extend(ids)
        buf["ids"].append(self.sep)
        if starts is not None:
            buf["wordstarts"].append(1)
            buf["wordstarts"].extend(starts)
            buf["wordstarts"].append(1)
        self.tokens += len(ids) + 2
        self.content_tokens += len(ids)
        self.sequences += 1
        buf["ends"].append(self.tokens)
        buf["docs"].append(document)
        if len(buf["ids"]) >= WRITE_BUFFER_TOKENS:
            self.flush()

    def flush(self) -> None:
        dtypes = {"ids": self.dtype, "ends": np.int64, "docs": np.int64, "wordstarts": np.uint8}
        for k in self.kinds:
            if self.buf[k]:
                self.files[k].write(np.asarray(self.buf[k], dtype=dtypes[k]).tobytes())
                self.buf[k] = []

    def commit(self) -> dict[str, int]:
        self.flush()
        for k in self.kinds:
            self.files[k].flush()
            os.fsync(self.files[k].fileno())
            self.files[k].close()
            os.replace(self.tmp[k], self.final[k])
        return {"sequences": self.sequences, "tokens": self.tokens, "content_tokens": self.content_tokens}

    def abort(self) -> None:
        for k in self.kinds:
            self.files[k].close()
            self.tmp[k].unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Workers

_TOKENIZERS: dict[str, Any] = {}
_PROGRESS: Any = None


def _backend(spec: TokenizerSpec):
    tok = _TOKENIZERS.get(spec.sha256)
    if tok is None:
        from tokenizers import Tokenizer

        tok = _TOKENIZERS[spec.sha256] = Tokenizer.from_str(spec.backend_json)
    return tok


def _sentence_splitter():
    try:
        from blingfire import text_to_sentences
    except ImportError as e:  # pragma: no cover - blingfire is pinned in requirements.txt
        raise DataError("sentence_split needs the `blingfire` package (pip install blingfire)") from e
    return lambda text: [s for s in text_to_sentences(text).split("\n") if s.strip()]


def _init_worker(progress_queue) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _report(nbytes: int, ntokens: int) -> None:
    if _PROGRESS is not None:
        _PROGRESS.put((nbytes, ntokens))


@dataclass(frozen=True)
class ChunkTask:
    chunk: Chunk
    first_line: int
    first_document: int


@dataclass(frozen=True)
class ShardTask:
    shard: int
    folder: str
    config: ShardConfig
    chunks: tuple[ChunkTask, ...]
    num_documents: int
    num_heldout: int


def _scan(args: tuple[Chunk, str]):
    result = scan_chunk(*args)
    _report(args[0].end - args[0].start, 0)
    return result


def build_shard(task: ShardTask) -> dict:
    """Tokenize, pack and write one shard (both splits); returns its counts, also saved as ``shard-XXXXX.json``."""
    cfg, folder = task.config, Path(task.folder)
    tok = _backend(cfg.tokenizer)
    split_sentences = _sentence_splitter() if cfg.sentence_split else None
    perm = heldout_permutation(task.num_documents, cfg.seed)
    writers = {s: SplitWriter(folder, s, task.shard, cfg.tokenizer, cfg.word_starts) for s in SPLITS}
    heldout_cache: dict[int, bool] = {}

    def emit(document: int, ids: list[int], starts: list[int] | None) -> None:
        held = heldout_cache.get(document)
        if held is None:
            heldout_cache.clear()
            held = heldout_cache[document] = is_heldout(document, task.num_documents, task.num_heldout, perm)
        writers["heldout" if held else "train"].add(document, ids, starts)

    packer = Packer(cfg.max_seq_length - 2, emit, cfg.word_starts)
    units = 0  # lines, or sentences with sentence_split

    def run_batch(docs: list[int], texts: list[str]) -> int:
        if split_sentences is not None:
            pairs = [(d, s) for d, t in zip(docs, texts) for s in split_sentences(t)]
            docs, texts = [p[0] for p in pairs], [p[1] for p in pairs]
        before = sum(w.content_tokens for w in writers.values()) + len(packer.ids)
        if cfg.word_starts:
            encodings = tok.encode_batch(texts, add_special_tokens=False)
            for d, enc in zip(docs, encodings):
                words = enc.word_ids
                starts = [1 if i == 0 or w != words[i - 1] or w is None else 0 for i, w in enumerate(words)]
                packer.add(d, enc.ids, starts)
        else:
            for d, enc in zip(docs, tok.encode_batch_fast(texts, add_special_tokens=False)):
                packer.add(d, enc.ids)
        after = sum(w.content_tokens for w in writers.values()) + len(packer.ids)
        _report(0, after - before)
        return len(texts)

    try:
        for ct in task.chunks:
            docs: list[int] = []
            texts: list[str] = []
            lines = iter_documents_lines(ct.chunk, ct.first_line, ct.first_document, cfg.encoding_errors)
            for document, _, text in lines:
                docs.append(document)
                texts.append(text)
                if len(texts) >= TOKENIZE_BATCH_LINES:
                    units += run_batch(docs, texts)
                    docs, texts = [], []
            if texts:
                units += run_batch(docs, texts)
            _report(ct.chunk.end - ct.chunk.start, 0)
        packer.flush()
        counts = {s: w.commit() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    result = {"shard": task.shard, "key": cfg.key(), "units": units, "split_units": packer.split_units,
              "splits": counts}
    write_json_atomic(shard_done_file(folder, task.shard), result)
    return result


def _shard_is_done(folder: Path, shard: int, key: str, word_starts: bool) -> dict | None:
    path = shard_done_file(folder, shard)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if info.get("key") != key:
        return None
    kinds = ["ids", "ends", "docs"] + (["wordstarts"] if word_starts else [])
    if not all(shard_file(folder, s, shard, k).is_file() for s in SPLITS for k in kinds):
        return None
    return info


# ----------------------------------------------------------------------------------------------------------------
# The pipeline


class _Progress:
    """A tqdm bar over input bytes with tokens/s in its postfix (or nothing when disabled)."""

    def __init__(self, total_bytes: int, desc: str, enabled: bool):
        self.bar = None
        self.tokens = 0
        self.start = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def update(self, nbytes: int, ntokens: int) -> None:
        self.tokens += ntokens
        if self.bar is not None:
            self.bar.update(nbytes)
            rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens:,} tokens, {rate:,.0f} tokens/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Runner:
    """Runs tasks in this process or in one pool of ``num_workers`` spawned processes, shared by all phases.

    ``map`` returns results in the order of the tasks and feeds the workers' progress reports to a bar.
    """

    def __init__(self, num_workers: int):
        self.num_workers = num_workers
        self.pool = None
        self.queue = None

    def map(self, fn, tasks: list, progress: _Progress | None) -> list:
        global _PROGRESS
        if self.num_workers <= 1 or len(tasks) <= 1:
            _PROGRESS = _LocalProgress(progress)
            try:
                return [fn(t) for t in tasks]
            finally:
                _PROGRESS = None
        if self.pool is None:
            ctx = mp.get_context("spawn")
            self.queue = ctx.Queue()
            self.pool = ctx.Pool(self.num_workers, initializer=_init_worker, initargs=(self.queue,))
        res = self.pool.map_async(fn, tasks, chunksize=1)
        while not res.ready():
            self._drain(progress, timeout=0.1)
        self._drain(progress, timeout=None)
        return res.get()

    def _drain(self, progress: _Progress | None, timeout: float | None) -> None:
        while True:
            try:
                item = self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait()
            except queue_module.Empty:
                return
            if progress is not None:
                progress.update(*item)
            timeout = None  # after the first report, take what is there without waiting

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


class _LocalProgress:
    def __init__(self, progress: _Progress | None):
        self.progress = progress

    def put(self, item: tuple[int, int]) -> None:
        if self.progress is not None:
            self.progress.update(*item)


def remove_shards(folder: str | os.PathLike) -> int:
    """Delete the files this module writes in ``folder`` (manifest, shard files, temporaries); nothing else.

    Returns:
        The number of files removed.
    """
    folder = Path(folder)
    patterns = ["manifest.json", "shard-*.json", ".*.tmp-*"]
    patterns += [f"{split}-*.{kind}" for split in SPLITS for kind in ("ids", "ends", "docs", "wordstarts")]
    removed = 0
    for pattern in patterns:
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _read_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e}); remove the folder or choose another one") from None


def create_shards(
    config: ShardConfig,
    folder: str | os.PathLike,
    num_workers: int = 1,
    show_progress: bool = True,
) -> dict:
    """Build (or resume, or find complete) the shards of ``config`` in ``folder``; returns the manifest.

    Args:
        config: what to build; see :class:`ShardConfig`.
        folder: output folder; created if absent. A complete build with the same key is returned as is; a partial
            one is resumed (finished shards are skipped).
        num_workers: worker processes for scanning and building (1 = in this process).
        show_progress: tqdm bars (bytes, tokens/s, ETA).

    Returns:
        The manifest (also in ``folder/manifest.json``) with ``"cache_hit"`` added: True when nothing was built.

    Raises:
        DataError: the folder holds shards of another configuration; invalid UTF-8 (strict) naming file and line;
            a mostly-binary or empty input file; an empty corpus; a held-out fraction that leaves a split empty.
    """
    runner = _Runner(num_workers)
    try:
        return _create_shards(config, Path(folder), runner, show_progress)
    finally:
        runner.close()


def _create_shards(config: ShardConfig, folder: Path, runner: _Runner, show_progress: bool) -> dict:
    key = config.key()
    manifest = _read_manifest(folder)
    if manifest is not None:
        if manifest.get("key") != key:
            raise DataError(
                f"{folder}: holds shards of another configuration (key {manifest.get('key')}, this one {key}); "
                "choose another output folder or remove it"
            )
        if manifest.get("complete"):
            return {**manifest, "cache_hit": True}
    elif folder.is_dir() and any(folder.glob("shard-*.json")):
        raise DataError(f"{folder}: holds shard files without a manifest; choose another output folder or remove it")
    started = time.perf_counter()
    base = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "complete": False,
        "config": {
            **config.identity(),
            "sources": [asdict(s) for s in config.sources],
            "tokenizer": {"name": config.tokenizer.name, "sha256": config.tokenizer.sha256,
                          "vocab_size": config.tokenizer.vocab_size, "cls_token_id": config.tokenizer.cls_token_id,
                          "sep_token_id": config.tokenizer.sep_token_id, "pad_token_id": config.tokenizer.pad_token_id},
            "dtype": config.tokenizer.dtype.name,
        },
    }

    paths = [Path(s.path) for s in config.sources]
    chunks = plan_chunks(paths, config.chunk_bytes)
    total_bytes = sum(s.size for s in config.sources)
    bar = _Progress(total_bytes, "scan", show_progress)
    try:
        scans = runner.map(_scan, [(c, config.encoding_errors) for c in chunks], bar)
    finally:
        bar.close()
    tasks, per_source = _number_chunks(chunks, scans, config)
    num_documents = sum(s["documents"] for s in per_source)
    num_heldout = round(config.heldout_fraction * num_documents)
    if config.heldout_fraction > 0 and num_heldout == 0:
        raise DataError(
            f"heldout_fraction={config.heldout_fraction} holds out no document of {num_documents}; raise it or add text"
        )
    if num_heldout >= num_documents:
        raise DataError(f"heldout_fraction={config.heldout_fraction} leaves no training document of {num_documents}")

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp-*"):  # left by a killed run (one writer per folder at a time)
        stale.unlink(missing_ok=True)
    write_json_atomic(folder / "manifest.json", base)

    todo, done = [], {}
    for shard in range(config.num_shards):
        info = _shard_is_done(folder, shard, key, config.word_starts)
        if info is not None:
            done[shard] = info
        else:
            chunk_tasks = tuple(tasks[shard :: config.num_shards])
            todo.append(ShardTask(shard, str(folder), config, chunk_tasks, num_documents, num_heldout))
    todo_bytes = sum(ct.chunk.end - ct.chunk.start for t in todo for ct in t.chunks)
    bar = _Progress(todo_bytes, "tokenize", show_progress and bool(todo))
    try:
        for info in runner.map(build_shard, todo, bar):
            done[info["shard"]] = info
    finally:
        bar.close()
    shards = [done[s] for s in range(config.num_shards)]
    totals = {s: {k: sum(sh["splits"][s][k] for sh in shards) for k in ("sequences", "tokens", "content_tokens")}
              for s in SPLITS}
    content = sum(t["content_tokens"] for t in totals.values())
    if content == 0:
        raise DataError(f"empty corpus: no tokens in {', '.join(s.path for s in config.sources)}")
    sequences = sum(t["sequences"] for t in totals.values())
    tokens = sum(t["tokens"] for t in totals.values())
    stats = {
        "documents": num_documents,
        "documents_heldout": num_heldout,
        "documents_train": num_documents - num_heldout,
        "lines": sum(s["lines"] for s in per_source),
        "text_lines": sum(s["text_lines"] for s in per_source),
        "units": sum(sh["units"] for sh in shards),
        "split_units": sum(sh["split_units"] for sh in shards),
        "tokens": content,
        "tokens_with_special": tokens,
        "sequences": sequences,
        "padding_fraction": 1.0 - tokens / (sequences * config.max_seq_length),
        "replaced_bytes": sum(s["replaced_bytes"] for s in per_source),
        "splits": totals,
        "per_source": per_source,
        "shards": [{"shard": sh["shard"], **{s: sh["splits"][s] for s in SPLITS}} for sh in shards],
        "seconds": time.perf_counter() - started,
    }
    manifest = {**base, "complete": True, "stats": stats}
    write_json_atomic(folder / "manifest.json", manifest)
    return {**manifest, "cache_hit": False}


def _number_chunks(chunks: list[Chunk], scans: list, config: ShardConfig) -> tuple[list[ChunkTask], list[dict]]:
    """First line and document number of every chunk; per-source checks (UTF-8, binary, empty)."""
    per_source = [
        {"path": s.path, "lines": 0, "text_lines": 0, "documents": 0, "replaced_bytes": 0, "nontext_bytes": 0}
        for s in config.sources
    ]
    tasks = []
    document = 0
    for chunk, scan in zip(chunks, scans):
        src = per_source[chunk.source]
        if scan.error is not None:
            e = scan.error
            raise DataError(
                f"{e.path}:{src['lines'] + e.line}: not valid UTF-8 ({e.detail}); "
                "fix the file or pass encoding_errors='replace'"
            )
        tasks.append(ChunkTask(chunk, src["lines"] + 1, document))
        document += scan.documents
        src["lines"] += scan.lines
        src["text_lines"] += scan.text_lines
        src["documents"] += scan.documents
        src["replaced_bytes"] += scan.replaced_bytes
        src["nontext_bytes"] += scan.nontext_bytes
    for info, src in zip(config.sources, per_source):
        if info.size and src["nontext_bytes"] > BINARY_FRACTION * info.size:
            raise DataError(
                f"{info.path}: looks like a binary file ({src['nontext_bytes']:,} of {info.size:,} bytes are not text)"
            )
        if src["text_lines"] == 0:
            raise DataError(f"{info.path}: no text (the file is empty or holds only blank and heading lines)")
        if src["replaced_bytes"]:
            warnings.warn(
                f"{info.path}: replaced {src['replaced_bytes']:,} invalid UTF-8 byte(s) by U+FFFD", stacklevel=3
            )
    return tasks, per_source


# ----------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class ShardSplit:
    """The sequences of one split over all shards of a complete build, memory-mapped on first access.

    ``sequence(i)`` returns the framed token ids of sequence ``i`` (special tokens included, no padding) as a
    numpy array of the shard dtype; sequences are numbered shard by shard.
    """

    folder: Path
    split: str
    num_shards: int
    dtype: str
    word_starts: bool = False
    counts: list[int] = field(default_factory=list)
    _maps: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        self.folder = Path(self.folder)
        if not self.counts:
            self.counts = [
                shard_file(self.folder, self.split, s, "ends").stat().st_size // 8 for s in range(self.num_shards)
            ]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = None  # memory maps are reopened in each DataLoader worker
        return state

    def _open(self, shard: int) -> dict:
        if self._maps is None:
            self._maps = {}
        maps = self._maps.get(shard)
        if maps is None:
            kinds = {"ids": np.dtype(self.dtype), "ends": np.int64, "docs": np.int64}
            if self.word_starts:
                kinds["wordstarts"] = np.uint8
            maps = {}
            for k, dt in kinds.items():
                path = shard_file(self.folder, self.split, shard, k)
                maps[k] = np.memmap(path, dtype=dt, mode="r") if path.stat().st_size else np.empty(0, dtype=dt)
            self._maps[shard] = maps
        return maps

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return shard, index - int(self.offsets[shard])

    def _span(self, index: int) -> tuple[dict, int, int]:
        shard, local = self.locate(index)
        maps = self._open(shard)
        start = int(maps["ends"][local - 1]) if local else 0
        return maps, start, int(maps["ends"][local])

    def sequence(self, index: int) -> np.ndarray:
        maps, start, end = self._span(index)
        return np.asarray(maps["ids"][start:end])

    def word_start_flags(self, index: int) -> np.ndarray:
        maps, start, end = self._span(index)
        return np.asarray(maps["wordstarts"][start:end])

    def document(self, index: int) -> int:
        shard, local = self.locate(index)
        return int(self._open(shard)["docs"][local])


def open_split(folder: str | os.PathLike, split: str, manifest: dict | None = None) -> ShardSplit:
    """A :class:`ShardSplit` over a complete build in ``folder``.

    Raises:
        DataError: no complete manifest in ``folder`` or an unknown split.
    """
    folder = Path(folder)
    manifest = manifest or _read_manifest(folder)
    if manifest is None or not manifest.get("complete"):
        raise DataError(f"{folder}: no complete set of shards (manifest.json missing or unfinished)")
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    cfg = manifest["config"]
    counts = [sh[split]["sequences"] for sh in manifest["stats"]["shards"]]
    return ShardSplit(folder, split, cfg["num_shards"], cfg["dtype"], cfg["word_starts"], counts)
