"""Compressed files and JSON-lines detection: which format a document file holds, and its lines as a stream.

Choices:
- Compression is recognised by content (the gzip or zstd magic bytes), whatever the name, so `part-0.json.gz`,
  `a.jsonl.zst` and a gzip file a producer named `a.jsonl` all read; a `.gz` / `.zst` / `.zstd` suffix is then
  dropped to find the inner format (`a.jsonl.gz` is JSON lines, `notes.txt.gz` one text document). A file named
  `.gz` that is not compressed is read as what its inner name says. zstd frames of several parts (`zstd -B`,
  Spark's codec) are read to the end.
- Decompression streams: lines come out of the decompressor one at a time and a line longer than
  `max_document_bytes` is skipped in chunks, never held, so a decompression bomb costs time, not memory. The
  compressed bytes are read as a stream too (`decompress` over an open file), never whole.
- JSON lines by name: `.jsonl`, `.ndjson`, `.jsonlines` and `.json` (Spark's `df.write.json()` writes JSON lines
  as `part-*.json`, next to `_SUCCESS`, which is ignored like every `_` name). By content: any other file whose
  first non-blank line is a JSON object with a field "text" (Spark part files without a suffix, `.txt` exports of
  JSON lines); a plain-text document practically never starts that way, and one that did would be rejected with
  the line named, not silently ingested as JSON source text.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CODEC_SUFFIXES = (".gz", ".zst", ".zstd")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines", ".json")
CHUNK = 1 << 20
# What a corrupt or truncated stream raises: gzip's BadGzipFile is an OSError, a cut-off member EOFError.
DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


def codec_of(data: bytes) -> str | None:
    """'gzip', 'zstd' or None, from the magic bytes."""
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    if data.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def inner_name(name: str) -> str:
    """The name without its compression suffix: 'part-0.json.gz' -> 'part-0.json'."""
    path = PurePosixPath(name)
    return name[: -len(path.suffix)] if path.suffix.lower() in CODEC_SUFFIXES else name


def open_stream(data: bytes, codec: str | None) -> BinaryIO:
    """A buffered stream of the (decompressed) bytes of `data`."""
    return decompress(io.BytesIO(data), codec)


def decompress(raw: BinaryIO, codec: str | None) -> BinaryIO:
    """A buffered stream of the decompressed bytes of the open file `raw`, read from it a step at a time."""
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if codec == "zstd":
        return io.BufferedReader(ZstdFrames(raw), CHUNK)
    return raw


class ZstdFrames(io.RawIOBase):
    """Every zstd frame of the open file `raw`, decompressed a small input step at a time.

    Not zstandard's `stream_reader`: it ends quietly at a frame cut off mid-way, which would ingest half a file as
    if it were whole; here a cut-off frame raises ZstdError. Small input steps bound what one step can inflate to.
    """

    STEP = 1 << 13

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw, self._pending = raw, b""
        self._dctx, self._obj = zstandard.ZstdDecompressor(), None
        self._out, self._out_pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._out_pos >= len(self._out):
            if not self._pending:
                self._pending = self._raw.read(self.STEP)
            if not self._pending:
                if self._obj is not None and not self._obj.eof:
                    raise zstandard.ZstdError("the data ends inside a zstd frame (file cut off)")
                return 0
            if self._obj is None or self._obj.eof:
                self._obj = self._dctx.decompressobj()
            step, self._pending = self._pending, b""
            self._out, self._out_pos = self._obj.decompress(step), 0
            if self._obj.eof:  # the next frame starts in what this one left over
                self._pending = self._obj.unused_data
        n = min(len(buffer), len(self._out) - self._out_pos)
        buffer[:n] = self._out[self._out_pos : self._out_pos + n]
        self._out_pos += n
        return n


def lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(1-based number, line without its '\\n' or None when over `limit`, the line's size in bytes)."""
    number = 0
    while chunk := stream.readline(limit + 1):
        number += 1
        if chunk.endswith(b"\n"):
            yield number, chunk[:-1], len(chunk) - 1
        elif len(chunk) <= limit:  # the last line, without a newline
            yield number, chunk, len(chunk)
        else:  # over the limit: skip the rest of the line in chunks, only counting it
            size = len(chunk)
            while (more := stream.readline(CHUNK)) and not more.endswith(b"\n"):
                size += len(more)
            size += len(more) - more.endswith(b"\n")
            yield number, None, size


def looks_like_jsonl(first_line: bytes) -> bool:
    """A JSON object with a field "text": what a JSON-lines document file starts with."""
    line = first_line.strip()
    if not line.startswith(b"{"):
        return False
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return isinstance(obj, dict) and "text" in obj


def first_line(stream: BinaryIO, limit: int) -> bytes:
    """The first non-blank line (byte-order mark dropped), b'' if there is none or it is over `limit`."""
    for number, line, _ in lines(stream, limit):
        if line is None:
            return b""
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if line.strip():
            return line
    return b""


def document_format(name: str, data: bytes, codec: str | None, limit: int) -> str:
    """'jsonl', 'parquet' or 'text' for a document file (see the module docstring)."""
    return format_of(name, lambda: io.BytesIO(data), codec, limit)


def format_of(name: str, opener: Callable[[], BinaryIO], codec: str | None, limit: int) -> str:
    """`document_format` of a file that `opener()` opens; reads at most its first non-blank line."""
    suffix = PurePosixPath(inner_name(name)).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    with opener() as raw:
        try:
            head = first_line(decompress(raw, codec), limit)
        except DECOMPRESS_ERRORS:
            return "text"  # the text parser reports the damage
    return "jsonl" if looks_like_jsonl(head) else "text"
