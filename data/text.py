"""Reading raw text: sources, documents, lines, chunks of work.

Text format (BERT's ``create_pretraining_data.py`` convention plus WikiText's): UTF-8, one sentence or paragraph
a line; a blank line starts a new document, and so does a WikiText top-level heading line `` = Title = ``.
Heading lines of every level (`` = = Section = = ``) are skipped, never tokenized.

A file whose first non-blank line is a top-level heading is WikiText-formatted: there blank lines surround every
paragraph and heading, so only top-level headings start documents (a document is an article, not a paragraph).

Files are read as bytes and cut into *chunks*: byte ranges that start on a document boundary (a blank line or a
top-level heading), so that chunks can be processed independently, in any process, and always give the same
documents. Nothing here holds more than one line at a time.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.errors import DataError

# A file is refused as binary when more than this fraction of its bytes are NUL, other control characters
# (tab, newline, carriage return and form feed excepted) or bytes that are not valid UTF-8.
BINARY_FRACTION = 0.3
# Bytes looked at before any other work, so that a large binary file is refused at once.
SNIFF_BYTES = 64 * 1024
ENCODING_ERRORS = ("strict", "replace")

_HEADING = re.compile(r"((?:= )+)(\S.*?)((?: =)+)")
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13))


def heading_level(line: str) -> int:
    """WikiText heading level of a stripped line: 1 for `` = Title = ``, 2 for `` = = Section = = ``; 0 if none."""
    m = _HEADING.fullmatch(line)
    if m is None or len(m.group(1)) != len(m.group(3)) or m.group(2).endswith(" ="):
        return 0
    return len(m.group(1)) // 2


def line_kind(line: str) -> str:
    """One of ``"blank"``, ``"title"`` (starts a document, skipped), ``"heading"`` (skipped) or ``"text"``."""
    if not line:
        return "blank"
    level = heading_level(line)
    if level == 1:
        return "title"
    return "heading" if level else "text"


def decode_line(raw: bytes, errors: str) -> tuple[str, int]:
    """Decode one line of UTF-8 and strip surrounding whitespace.

    Returns:
        (text, replaced): ``replaced`` counts the invalid bytes (``errors="replace"``; each run of them becomes
        one U+FFFD).

    Raises:
        UnicodeDecodeError: on invalid bytes with ``errors="strict"``.
    """
    try:
        return raw.decode("utf-8").strip(), 0
    except UnicodeDecodeError:
        if errors == "strict":
            raise
    pieces, replaced, pos = [], 0, 0
    while True:
        try:
            pieces.append(raw[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            pieces.append(raw[pos : pos + e.start].decode("utf-8") + "\ufffd")
            replaced += e.end - e.start
            pos += e.end
    return "".join(pieces).strip(), replaced


def count_control_bytes(block: bytes) -> int:
    """Bytes that are control characters other than tab, newline, form feed and carriage return."""
    return len(block) - len(block.translate(None, _CONTROL))


def _looks_binary(block: bytes) -> bool:
    if not block:
        return False
    bad = count_control_bytes(block)
    bad += len(block) - len(block.decode("utf-8", errors="ignore").encode("utf-8"))
    return bad > BINARY_FRACTION * len(block)


def sniff(path: Path) -> None:
    """Refuse a mostly-binary file from its first bytes.

    Raises:
        DataError: the file is unreadable or more than ``BINARY_FRACTION`` of its first bytes are not text.
    """
    try:
        with open(path, "rb") as f:
            block = f.read(SNIFF_BYTES)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    # A multi-byte character cut at the end of the block is not an error.
    if _looks_binary(block[: len(block) - 4] if len(block) == SNIFF_BYTES else block):
        raise DataError(
            f"{path}: looks like a binary file (over {BINARY_FRACTION:.0%} of its first bytes are not text)"
        )


def expand_path(name: str) -> list[Path]:
    """The text files named by ``name``: a glob expanded (sorted), or a single file.

    Raises:
        DataError: a glob that matches no file, a folder, or a name that is neither a file nor a glob.
    """
    if glob.has_magic(name):
        matches = sorted(m for m in glob.glob(os.path.expanduser(name), recursive=True) if os.path.isfile(m))
        if not matches:
            raise DataError(f"{name}: the pattern matches no file")
        return [Path(m) for m in matches]
    path = Path(name).expanduser()
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a text file (use a glob such as {path}/*.txt)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return [path]


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes (read in 1 MiB blocks).

    Raises:
        DataError: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


@dataclass(frozen=True)
class Chunk:
    """A byte range ``[start, end)`` of source file ``source`` (an index into the list of sources).

    ``start`` is 0 or the offset of a line that starts a document, so a chunk holds whole documents.
    """

    source: int
    path: str
    start: int
    end: int
    wikitext: bool = False


def starts_document(kind: str, wikitext: bool) -> bool:
    """Whether a line of this kind ends the current document (and a following text line starts a new one)."""
    return kind == "title" or (kind == "blank" and not wikitext)


def _kind_of_raw(raw: bytes) -> str:
    return line_kind(raw.decode("utf-8", errors="replace").strip())


def is_wikitext(path: Path) -> bool:
    """True when the first non-blank line of the file is a WikiText top-level heading (`` = Title = ``)."""
    with open(path, "rb") as f:
        for raw in f:
            kind = _kind_of_raw(raw)
            if kind != "blank":
                return kind == "title"
    return False


def plan_chunks(paths: Sequence[Path], chunk_bytes: int) -> list[Chunk]:
    """Cut every file into chunks of about ``chunk_bytes`` bytes that start on document boundaries.

    Reads only a few lines around each cut, so planning costs O(number of chunks) memory and little time.
    The result depends only on the files and ``chunk_bytes``.
    """
    if chunk_bytes < 1:
        raise DataError(f"chunk_bytes must be positive, got {chunk_bytes}")
    chunks: list[Chunk] = []
    for source, path in enumerate(paths):
        size = path.stat().st_size
        wikitext = is_wikitext(path)
        cuts = [0]
        with open(path, "rb") as f:
            target = chunk_bytes
            while target < size:
                f.seek(target)
                f.readline()  # the rest of the line the target falls into
                while True:
                    pos = f.tell()
                    raw = f.readline()
                    if not raw:
                        pos = size
                        break
                    if starts_document(_kind_of_raw(raw), wikitext):
                        break
                if pos >= size:
                    break
                if pos > cuts[-1]:
                    cuts.append(pos)
                target = max(pos, target) + chunk_bytes
        cuts.append(size)
        spans = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a or size == 0]
        chunks.extend(Chunk(source, str(path), a, b, wikitext) for a, b in spans)
    return chunks


class Utf8Error(DataError):
    """Invalid UTF-8 under ``encoding_errors="strict"``; keeps the file, line and detail apart for renumbering."""

    def __init__(self, path: str, line: int, detail: str):
        self.path, self.line, self.detail = path, line, detail
        super().__init__(f"{path}:{line}: not valid UTF-8 ({detail}); fix the file or pass encoding_errors='replace'")


@dataclass
class ChunkScan:
    """What one pass over a chunk found: counts, and the first error (kept, not raised, so the earliest wins)."""

    lines: int = 0
    documents: int = 0
    text_lines: int = 0
    replaced_bytes: int = 0
    nontext_bytes: int = 0
    total_bytes: int = 0
    error: Utf8Error | None = None


def iter_lines(chunk: Chunk, first_line: int, errors: str) -> Iterator[tuple[int, str, int]]:
    """Yield ``(line_number, stripped_text, replaced_bytes)`` for every line of a chunk (1-based line numbers).

    Raises:
        DataError: invalid UTF-8 with ``errors="strict"`` (names the file and line) or an unreadable file.
    """
    try:
        f = open(chunk.path, "rb")
    except OSError as e:
        raise DataError(f"{chunk.path}: cannot read ({e.strerror or e})") from None
    with f:
        f.seek(chunk.start)
        pos, number = chunk.start, first_line
        while pos < chunk.end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            try:
                text, replaced = decode_line(raw, errors)
            except UnicodeDecodeError as e:
                raise Utf8Error(chunk.path, number, f"byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None
            yield number, text, replaced
            number += 1


def scan_chunk(chunk: Chunk, errors: str) -> ChunkScan:
    """Count lines, documents and bad bytes of a chunk; the line number of ``error`` is relative to the chunk."""
    scan = ChunkScan()
    in_doc = False
    try:
        for _, text, replaced in iter_lines(chunk, 1, errors):
            scan.lines += 1
            scan.replaced_bytes += replaced
            kind = line_kind(text)
            if kind == "text":
                scan.text_lines += 1
                if not in_doc:
                    scan.documents += 1
                    in_doc = True
            elif starts_document(kind, chunk.wikitext):
                in_doc = False
    except Utf8Error as e:
        scan.error = e
        return scan
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        remaining = chunk.end - chunk.start
        while remaining > 0:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            remaining -= len(block)
            scan.total_bytes += len(block)
            scan.nontext_bytes += count_control_bytes(block)
    scan.nontext_bytes += scan.replaced_bytes
    return scan


def iter_documents_lines(
    chunk: Chunk, first_line: int, first_document: int, errors: str
) -> Iterator[tuple[int, int, str]]:
    """Yield ``(document_index, line_number, text)`` for the text lines of a chunk, documents numbered globally."""
    doc = first_document - 1
    in_doc = False
    for number, text, _ in iter_lines(chunk, first_line, errors):
        kind = line_kind(text)
        if kind == "text":
            if not in_doc:
                doc += 1
                in_doc = True
            yield doc, number, text
        elif starts_document(kind, chunk.wikitext):
            in_doc = False
