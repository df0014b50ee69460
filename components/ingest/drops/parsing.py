"""What the document parsers share (components.ingest.drops.formats, .jsonl): the fix each common kind of issue
names, the byte-order mark they drop, the opener type, and the small helpers that word an issue."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from components.ingest.drops.model import Document, FileIssues
from components.ingest.drops.stream import ScanStream, in_memory

BOM = b"\xef\xbb\xbf"
FIX_UTF8 = "save the file as UTF-8"
FIX_BINARY = (
    "remove the binary file: only JSON lines (.jsonl, .ndjson, .json), .parquet and UTF-8 text files, each "
    "gzip- or zstd-compressed or not, belong in a drop"
)
FIX_COMPRESSED = "upload the file again: its compressed data is damaged or cut off"
FIX_EMPTY = "remove the empty file or put documents in it"
FIX_SIZE = "split the document, or raise ingest.max_document_bytes"
Parsed = tuple[list[Document], FileIssues]
Opener = Callable[[], AbstractContextManager[ScanStream]]  # the file again, at its first byte
# A streaming parser: (name, opener, size, limit, issues) -> the documents, its problems added to `issues`.
Reader = Callable[[str, Opener, int, int, FileIssues], Iterator[Document]]


def too_big(size: int, limit: int, what: str) -> str:
    return f"{what} is {size:,} bytes, over max_document_bytes={limit:,}"


def line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def nul_line(raw: ScanStream) -> int | None:
    """The 1-based line of the file's first NUL byte, None if it has none: the rest of the file is read for it."""
    raw.finish()
    return raw.nul_line


def parse_in_memory(reader: Reader, name: str, data: bytes, max_document_bytes: int) -> Parsed:
    """A file already in memory through a streaming `reader`: its documents and issues."""
    issues = FileIssues(name)
    stream = in_memory(data, max_document_bytes)
    documents = list(reader(name, stream.rewound, len(data), max_document_bytes, issues))
    return documents, issues
