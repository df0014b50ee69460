"""Data drops: list them, and read one into documents plus a list of everything wrong with it.

A drop is `<root>/<drop_id>/` on disk or under `s3://bucket/prefix/`. The producer writes the data, then
`_READY` last; a drop without `_READY` is pending and ingest does not read it. Bad data never raises here:
every problem becomes a `DropIssue` naming file, line, reason and fix, so ingest can quarantine the drop
with one complete message instead of making the producer fix one error per attempt.

Choices, where the format leaves room:
- Control files are exactly `_READY` and `_drop.json` at the top of the drop. Any other file with a path
  segment starting with `_` or `.` is ignored (Spark's `_SUCCESS`, `.DS_Store`, `.git/`): not read, not
  hashed. Drop directories starting with `_` or `.` are not listed (a producer's staging area).
- Files in sub-directories are documents too, named relative to the drop with '/'.
- JSON lines (`*.jsonl`, `*.ndjson`, `*.jsonlines`, `*.json` such as Spark's `part-*.json`, and any other file
  whose first line is a JSON object with a field "text") hold one JSON object per line with a string field
  "text" (other fields are ignored); blank lines are skipped; a file of only blank lines is empty. Any
  document file may be gzip- or zstd-compressed (recognised by its magic bytes; a `.gz`/`.zst` suffix is dropped
  to find the format) and is decompressed as a stream: see components.ingest.drops.codecs. `*.parquet` needs a
  string column "text" (large, view and dictionary-encoded strings are accepted). Suffixes match
  case-insensitively. Every other file is one plain-text document: UTF-8 without NUL bytes, kept exactly as
  written (no stripping) except that a leading UTF-8 byte-order mark is dropped (also before a JSONL file's first
  line); a text file of only whitespace counts as empty. An empty string in a "text" field or cell is a valid,
  empty document.
- A document's size is the raw (decompressed) JSONL line, the UTF-8 parquet cell or the whole text file, checked
  against `max_document_bytes` before parsing.
- Drop ids must match `DROP_ID_PATTERN` (they become LanceDB tags and file names, so Lance's tag rules apply).
  Names that could leave the drop ('..', '.' or empty segments, absolute paths, backslashes, control characters,
  non-UTF-8 names) and local symlinks resolving outside the drop are reported and never read; symlinks inside are
  followed.
  Local entries that are not regular files (FIFOs, symlinked directories) are reported, not read.
- A file's checking stops after `MAX_ISSUES_PER_FILE` issues, with one more issue saying so; a binary
  file is one issue, not one per line.
- `content_hash` covers the files read (documents and `_drop.json`), not `_READY` and not ignored files, so
  re-touching the marker or a Finder `.DS_Store` does not make the same data look new.
"""

from components.adapters.s3 import s3_client
from components.core.ids import DROP_ID_PATTERN
from components.ingest.drops.formats import parse_document_file, parse_jsonl, parse_manifest, parse_parquet, parse_text
from components.ingest.drops.model import (
    MANIFEST,
    MAX_ISSUES_PER_FILE,
    MAX_MESSAGE_ISSUES,
    READY,
    Document,
    DropContents,
    DropIssue,
    DropManifest,
    DropRef,
    check_drop_id,
    unsafe_name_reason,
)
from components.ingest.drops.reader import DropScan, content_hash, file_kind, hash_drop, invalid_id_issue, read_drop
from components.ingest.drops.sources import DropSource, LocalSource, S3Source, UnsafeNameError, open_source

__all__ = [
    "DROP_ID_PATTERN",
    "MANIFEST",
    "MAX_ISSUES_PER_FILE",
    "MAX_MESSAGE_ISSUES",
    "READY",
    "Document",
    "DropContents",
    "DropIssue",
    "DropManifest",
    "DropRef",
    "DropScan",
    "DropSource",
    "LocalSource",
    "S3Source",
    "UnsafeNameError",
    "check_drop_id",
    "content_hash",
    "file_kind",
    "hash_drop",
    "open_source",
    "parse_document_file",
    "parse_jsonl",
    "parse_manifest",
    "parse_parquet",
    "parse_text",
    "invalid_id_issue",
    "read_drop",
    "s3_client",
    "unsafe_name_reason",
]
