"""Parsers: one file in (its bytes, or an opener of a stream), its documents and issues out, as a stream.

`iter_document_file` detects the format and hands the file to its reader: JSON lines (components.ingest.drops.jsonl,
re-exported here), parquet or one text document (here); `parse_manifest` reads `_drop.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from components.ingest.drops.codecs import (
    DECOMPRESS_ERRORS,
    ZSTD_MAGIC,
    codec_of,
    decompress,
    format_of,
)
from components.ingest.drops.jsonl import jsonl_lines, parse_jsonl, plain_jsonl
from components.ingest.drops.model import MANIFEST, MAX_ISSUES_PER_FILE, Document, DropManifest, FileIssues
from components.ingest.drops.parsing import (
    BOM,
    FIX_BINARY,
    FIX_COMPRESSED,
    FIX_EMPTY,
    FIX_SIZE,
    FIX_UTF8,
    Opener,
    Parsed,
    line_of,
    nul_line,
    parse_in_memory,
    too_big,
)
from components.ingest.drops.stream import ScanStream, in_memory

__all__ = ["iter_document_file", "parse_document_file", "parse_jsonl", "parse_manifest", "parse_parquet", "parse_text"]

FIX_COMPRESSED_PARQUET = "write the parquet file uncompressed outside; parquet compresses its pages itself"
FIX_PARQUET = 'write a parquet file with a string column "text"'
FIX_MANIFEST = "make _drop.json one JSON object with only drop_id, description, source, license, created_at, tags"
PARQUET_BATCH = 1024


def parse_document_file(name: str, data: bytes, max_document_bytes: int) -> Parsed:
    """JSON lines, parquet or one text document, gzip/zstd-compressed or not (components.ingest.drops.codecs)."""
    issues = FileIssues(name)
    stream = in_memory(data, max_document_bytes)
    documents = list(iter_document_file(name, stream, max_document_bytes, issues))
    return documents, issues


def iter_document_file(name: str, stream: ScanStream, limit: int, issues: FileIssues) -> Iterator[Document]:
    """The documents of the file `stream` reads (components.ingest.drops.stream), as a stream; its problems go to
    `issues`. The caller's `stream.finish()` afterwards gives the file's sha256.

    Memory is bounded whatever the file's size: JSON lines are parsed a line at a time, parquet a batch of rows at
    a time, compressed data is decompressed as it is read; only a plain-text document (at most
    `max_document_bytes`) is held whole. The file is read once: the bytes format detection reads (magic bytes,
    first line) are replayed to the parser, and the NUL check of plain files runs on the bytes as they are parsed.
    """
    codec = codec_of(stream.read(len(ZSTD_MAGIC)))
    opener = stream.rewound
    kind = format_of(name, opener, codec, limit)
    stream.stop_keeping()
    if codec is None:
        parser = {"jsonl": plain_jsonl, "parquet": _parquet_rows}.get(kind, _text_file)
        yield from parser(name, opener, stream.size, limit, issues)
    elif kind == "parquet":
        issues.add(None, f"{codec}-compressed parquet file", FIX_COMPRESSED_PARQUET)
    elif kind == "jsonl":
        with opener() as raw:
            yield from jsonl_lines(name, decompress(raw, codec), limit, codec, issues)
    else:
        with opener() as raw:
            documents, found = _compressed_text(name, decompress(raw, codec), limit, codec)
        issues += found
        yield from documents


def parse_text(name: str, data: bytes, max_document_bytes: int) -> Parsed:
    """The whole file is one document, kept as written apart from a leading byte-order mark."""
    issues = FileIssues(name)
    if not data.strip():
        issues.add(None, "empty file: only whitespace" if data else "empty file", FIX_EMPTY)
        return [], issues
    if len(data) > max_document_bytes:
        issues.add(None, too_big(len(data), max_document_bytes, "the file"), FIX_SIZE)
    if (nul := data.find(b"\0")) >= 0:
        issues.add(line_of(data, nul), "binary data (a NUL byte), not text", FIX_BINARY)
        return [], issues
    body = data.removeprefix(BOM)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = body[exc.start]
        issues.add(line_of(body, exc.start), f"invalid UTF-8 (byte 0x{bad:02x})", FIX_UTF8)
        return [], issues
    return ([] if issues else [Document(text, name, None)]), issues


def _text_file(name: str, opener: Opener, size: int, limit: int, issues: FileIssues) -> Iterator[Document]:
    """One plain-text document; a file over the limit is never read whole (only scanned for NUL bytes)."""
    if size > limit:
        issues.add(None, too_big(size, limit, "the file"), FIX_SIZE)
        with opener() as raw:
            if (nul := nul_line(raw)) is not None:
                issues.add(nul, "binary data (a NUL byte), not text", FIX_BINARY)
        return
    with opener() as raw:
        documents, found = parse_text(name, raw.read(), limit)
    issues += found
    yield from documents


def _compressed_text(name: str, stream: BinaryIO, max_document_bytes: int, codec: str) -> Parsed:
    """One text document from a compressed file, decompressed at most one byte past the size limit."""
    try:
        body = stream.read(max_document_bytes + 1)
    except DECOMPRESS_ERRORS as exc:
        issues = FileIssues(name)
        issues.add(None, f"damaged {codec} data: {str(exc).rstrip('.')}", FIX_COMPRESSED)
        return [], issues
    if len(body) > max_document_bytes:
        issues = FileIssues(name)
        reason = f"the decompressed file is over max_document_bytes={max_document_bytes:,} bytes"
        issues.add(None, reason, FIX_SIZE)
        return [], issues
    return parse_text(name, body, max_document_bytes)


def parse_parquet(name: str, data: bytes, max_document_bytes: int) -> Parsed:
    return parse_in_memory(_parquet_rows, name, data, max_document_bytes)


def _parquet_rows(name: str, opener: Opener, size: int, limit: int, issues: FileIssues) -> Iterator[Document]:
    """Column "text", read a row group at a time (never the whole column), parsed PARQUET_BATCH rows at a time."""
    if size == 0:
        issues.add(None, "empty file", FIX_EMPTY)
        return
    with opener() as raw:
        try:  # the footer from a side read, so the column chunks stream through `raw` in file order
            with raw.side() as side:
                metadata = pq.read_metadata(side)
            parquet = pq.ParquetFile(raw, metadata=metadata)
            names = parquet.schema_arrow.names
            if "text" not in names:
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                issues.add(None, f'no column "text" (columns: {shown or "none"})', FIX_PARQUET)
                return
            if parquet.metadata.num_rows == 0:
                issues.add(None, "empty file: no rows", FIX_EMPTY)
                return
            row = 0
            for batch in _row_groups(parquet):
                column = _text_column(batch.column(0), issues)
                if column is None:
                    return
                for text, cell_size in zip(column.to_pylist(), pc.binary_length(column).to_pylist(), strict=True):
                    row += 1
                    if issues.full:
                        issues.stop(f"row {row} and later")
                        return
                    if text is None:
                        issues.add(row, 'null in column "text"', 'put a string in every row of column "text"')
                    elif cell_size > limit:
                        issues.add(row, too_big(cell_size, limit, "the cell"), FIX_SIZE)
                    else:
                        yield Document(text, name, row)
        except (pa.ArrowException, OSError, ValueError) as exc:
            issues.add(None, f"unreadable parquet: {str(exc).rstrip('.')}", FIX_PARQUET)


def _row_groups(parquet: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    """Not `iter_batches`: reading through a Python file it kept ~half of a 48 MB file's pages alive; one row group
    at a time holds at most one (the producer chooses its size: Spark's default is 128 MB)."""
    for group in range(parquet.num_row_groups):
        yield from parquet.read_row_group(group, columns=["text"], use_threads=False).to_batches(PARQUET_BATCH)


def _text_column(column: pa.Array, issues: FileIssues) -> pa.Array | None:
    """A batch of column "text" as large_string, or None with an issue saying why it cannot be read."""
    if pa.types.is_dictionary(column.type):  # pandas categoricals round-trip as dictionaries
        column = column.cast(column.type.value_type)
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        issues.add(None, f'column "text" has type {kind}, not string', FIX_PARQUET)
        return None
    column = column.cast(pa.large_string())
    column.validate(full=True)  # full validation checks that every cell is UTF-8
    return column


def parse_manifest(data: bytes, drop_id: str) -> tuple[DropManifest | None, FileIssues]:
    """`_drop.json` validated by pydantic; each error names its field."""
    issues = FileIssues(MANIFEST)
    body = data.removeprefix(BOM)
    try:
        obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        issues.add(line_of(body, exc.start), "invalid UTF-8", FIX_MANIFEST)
        return None, issues
    except json.JSONDecodeError as exc:
        issues.add(exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})", FIX_MANIFEST)
        return None, issues
    except (ValueError, RecursionError) as exc:
        issues.add(None, f"invalid JSON: {exc}", FIX_MANIFEST)
        return None, issues
    try:
        return DropManifest.model_validate(obj, context={"drop_id": drop_id}), issues
    except ValidationError as exc:
        for err in exc.errors()[:MAX_ISSUES_PER_FILE]:
            where = ".".join(str(part) for part in err["loc"])
            issues.add(None, f'field "{where}": {err["msg"]}' if where else err["msg"], FIX_MANIFEST)
        return None, issues
