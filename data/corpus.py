"""A packed, cached, train/held-out corpus for distillation and pre-training: :func:`load_corpus`.

``load_corpus`` builds the shards of :mod:`data.shards` into a folder of the cache named by the configuration's
key (input files' content hashes, tokenizer hash, length, held-out fraction, seed, format version), or finds them
there, and opens them memory-mapped. A second call with the same inputs only hashes the files and reads the manifest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.errors import DataError
from data.shards import (
    DEFAULT_CHUNK_BYTES,
    ShardConfig,
    ShardSplit,
    create_shards,
    describe_sources,
    open_split,
    tokenizer_spec,
)
from data.sources import default_cache_dir, resolve_inputs


class PackedSequences(Dataset):
    """Map-style dataset over one split of packed shards.

    Item ``i`` is ``{"input_ids": LongTensor (max_seq_length,), "attention_mask": LongTensor (max_seq_length,)}``:
    the framed sequence (``[CLS] ... [SEP]``) padded on the right with ``pad_token_id``; ``attention_mask`` is 1 on
    real tokens, 0 on padding. With ``return_word_starts=True`` (shards built with ``word_starts``) also
    ``"word_starts"``: LongTensor (max_seq_length,), 1 where a word starts, 0 elsewhere and on padding.

    Safe with ``DataLoader(num_workers>0)``: memory maps are reopened in each worker.
    """

    def __init__(self, split: ShardSplit, max_seq_length: int, pad_token_id: int, return_word_starts: bool = False):
        if return_word_starts and not split.word_starts:
            raise DataError("return_word_starts=True needs shards built with word_starts=True")
        self.split = split
        self.max_seq_length = max_seq_length
        self.pad_token_id = pad_token_id
        self.return_word_starts = return_word_starts

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += len(self)
        ids = self.split.sequence(index)
        n = len(ids)
        input_ids = torch.full((self.max_seq_length,), self.pad_token_id, dtype=torch.long)
        input_ids[:n] = torch.from_numpy(ids.astype(np.int64))
        attention_mask = torch.zeros(self.max_seq_length, dtype=torch.long)
        attention_mask[:n] = 1
        item = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.return_word_starts:
            starts = torch.zeros(self.max_seq_length, dtype=torch.long)
            starts[:n] = torch.from_numpy(self.split.word_start_flags(index).astype(np.int64))
            item["word_starts"] = starts
        return item

    def document(self, index: int) -> int:
        """Global document number (order of the input files) of sequence ``index``."""
        return self.split.document(index)


class RankSampler(Sampler[int]):
    """Indices of one data-parallel rank: a seeded permutation per epoch, dealt round-robin to ``world_size`` ranks.

    Unlike ``torch.utils.data.DistributedSampler`` it neither repeats nor drops sequences: over the ranks every
    index appears exactly once per epoch, and rank lengths differ by at most one (use ``Join`` or stop at the
    shortest rank in DDP when they differ). DataLoader workers then split each rank's indices among themselves.
    Call ``set_epoch`` before each epoch for a new order.
    """

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.n, self.rank, self.world_size, self.shuffle, self.seed = dataset_size, rank, world_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


@dataclass
class PackedCorpus:
    """The result of :func:`load_corpus`.

    Attributes:
        train, heldout: :class:`PackedSequences` of the two splits (documents never shared between them).
        stats: ``documents``, ``lines`` (all input lines), ``text_lines``, ``tokens`` (content tokens, special ones
            excluded), ``sequences``, ``padding_fraction`` (padding / (sequences × max_seq_length)),
            ``replaced_bytes``, and per split ``train``/``heldout``: ``documents``, ``sequences``, ``tokens``.
        cache_hit: True when the shards were already in the cache.
        cache_path: the folder of the shards (``manifest.json`` inside).
        manifest: the full manifest.
    """

    train: PackedSequences
    heldout: PackedSequences
    stats: dict[str, Any]
    cache_hit: bool
    cache_path: Path
    manifest: dict[str, Any]


def summarize(manifest: dict) -> dict[str, Any]:
    """The flat statistics of a manifest (see :class:`PackedCorpus`)."""
    st = manifest["stats"]
    out = {k: st[k] for k in ("documents", "lines", "text_lines", "tokens", "sequences", "padding_fraction",
                              "replaced_bytes")}
    for split in ("train", "heldout"):
        out[split] = {
            "documents": st[f"documents_{split}"],
            "sequences": st["splits"][split]["sequences"],
            "tokens": st["splits"][split]["content_tokens"],
        }
    return out


def make_shard_config(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    tokenizer: Any,
    cache_root: Path,
    text_column: str = "text",
    rows: str = "lines",
    show_progress: bool = True,
    **options: Any,
) -> ShardConfig:
    """Resolve inputs (globs, `datasets` exports into ``cache_root``), hash them and describe the tokenizer.

    ``options`` are the remaining :class:`ShardConfig` fields (``max_seq_length``, ``heldout_fraction``, ...).

    Raises:
        DataError: see :func:`load_corpus`.
    """
    spec = tokenizer_spec(tokenizer)
    files = resolve_inputs(paths, cache_root, text_column=text_column, rows=rows, show_progress=show_progress)
    sources = describe_sources(files, memo=cache_root / "file-hashes.json")
    return ShardConfig(sources=sources, tokenizer=spec, **options)


def load_corpus(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    tokenizer: Any,
    max_seq_length: int = 128,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    encoding_errors: str = "strict",
    num_workers: int = 1,
    num_shards: int | None = None,
    sentence_split: bool = False,
    word_starts: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    text_column: str = "text",
) -> PackedCorpus:
    """Text files → packed, cached train/held-out sequences of ``max_seq_length`` token ids.

    Args:
        paths: text files or globs; a name that is neither an existing file nor a glob, of the form ``name``,
            ``owner/name``, ``name:config`` or ``name:config:split``, is a Hugging Face ``datasets`` name (its
            ``text_column`` exported once to the cache); local ``.jsonl``/``.parquet``/``.arrow`` files likewise.
        tokenizer: a transformers fast tokenizer (BERT WordPiece, RoBERTa BPE, ...) with CLS, SEP and PAD tokens.
        max_seq_length: tokens per sequence including the two special tokens.
        heldout_fraction: fraction of documents held out, in (0, 1); exactly ``round(fraction × documents)``.
        seed: chooses the held-out documents.
        cache_dir: where shard folders live; None → ``$BORT_CACHE_DIR`` or ``~/.cache/bort``.
        show_progress: tqdm bars while building.
        encoding_errors: ``"strict"`` (invalid UTF-8 → DataError naming file and line) or ``"replace"``.
        num_workers: processes for building (1 = this process).
        num_shards: shards written (None → ``num_workers``).
        sentence_split: split lines into sentences (blingfire) before packing.
        word_starts: also store whole-word masking metadata; items then carry ``word_starts`` for
            ``MaskingCollator(whole_word_mask=True)``.
        chunk_bytes: bytes of input per unit of scanning work.
        text_column: column of `datasets` inputs holding the text.

    Returns:
        A :class:`PackedCorpus`.

    Raises:
        DataError: a missing/unreadable file, a glob matching nothing, invalid UTF-8 (strict), a binary or empty
            file, an empty corpus, a tokenizer without the needed special tokens, a held-out fraction that leaves
            a split empty. Nothing is left in the cache on these errors.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must be in (0, 1) so that both splits hold text, got {heldout_fraction}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    config = make_shard_config(
        paths, tokenizer, cache_root, max_seq_length=max_seq_length, heldout_fraction=heldout_fraction, seed=seed,
        num_shards=num_shards or max(1, num_workers), chunk_bytes=chunk_bytes, encoding_errors=encoding_errors,
        sentence_split=sentence_split, word_starts=word_starts, text_column=text_column, show_progress=show_progress,
    )
    spec = config.tokenizer
    folder = cache_root / f"corpus-{config.key()}"
    existed = folder.exists()
    try:
        manifest = create_shards(config, folder, num_workers=num_workers, show_progress=show_progress)
        stats = summarize(manifest)
        for split in ("train", "heldout"):
            if stats[split]["sequences"] == 0:
                raise DataError(
                    f"heldout_fraction={heldout_fraction}: the {split} split holds no tokens "
                    f"({stats['documents']} documents in all); change the fraction or add text"
                )
    except DataError:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return PackedCorpus(
        train=PackedSequences(open_split(folder, "train", manifest), max_seq_length, spec.pad_token_id, word_starts),
        heldout=PackedSequences(open_split(folder, "heldout", manifest), max_seq_length, spec.pad_token_id,
                                word_starts),
        stats=stats,
        cache_hit=manifest["cache_hit"],
        cache_path=folder,
        manifest=manifest,
    )
