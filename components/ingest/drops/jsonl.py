"""JSON lines: a file of one JSON object per line with a string field "text", parsed a line at a time as the lines
stream out of the file (or its decompressor), so memory holds one line whatever the file's size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from components.ingest.drops.codecs import DECOMPRESS_ERRORS, lines
from components.ingest.drops.model import Document, FileIssues
from components.ingest.drops.parsing import (
    BOM,
    FIX_BINARY,
    FIX_COMPRESSED,
    FIX_EMPTY,
    FIX_SIZE,
    FIX_UTF8,
    Opener,
    Parsed,
    nul_line,
    parse_in_memory,
    too_big,
)
from components.ingest.drops.stream import ScanStream

FIX_JSONL = 'make each line one JSON object with a string field "text"'
JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def parse_jsonl(name: str, data: bytes, max_document_bytes: int) -> Parsed:
    return parse_in_memory(plain_jsonl, name, data, max_document_bytes)


def plain_jsonl(name: str, opener: Opener, size: int, limit: int, issues: FileIssues) -> Iterator[Document]:
    """A binary file named .jsonl is one issue, not one per line: the stream's NUL scan stops the parse at the line
    holding the first NUL, and then that issue replaces the file's others (documents before it were yielded, but
    a drop with issues is quarantined whole, so none of them is stored)."""
    if size == 0:
        issues.add(None, "empty file", FIX_EMPTY)
        return
    with opener() as raw:
        yield from jsonl_lines(name, raw, limit, None, issues, raw)
        if (nul := nul_line(raw)) is not None:
            issues.clear()
            issues.add(nul, "binary data (a NUL byte), not JSON lines text", FIX_BINARY)


def jsonl_lines(
    name: str, stream: BinaryIO, limit: int, codec: str | None, issues: FileIssues, plain: ScanStream | None = None
) -> Iterator[Document]:
    """Parse JSON lines as they stream out of `stream` (decompressed, for a compressed file); a `plain` file stops
    at the line holding its first NUL byte."""
    seen, number = False, 0
    try:
        for number, raw, size in lines(stream, limit):
            if plain is not None and plain.nul_line is not None:
                return
            if number == 1 and raw is not None:
                raw = raw.removeprefix(BOM)
            if raw is not None and not raw.strip():
                continue
            seen = True
            if issues.full:
                issues.stop(f"line {number} and later")
                break
            if raw is None:  # measured before parsing, so a huge line costs no JSON work
                issues.add(number, too_big(size, limit, "the line"), FIX_SIZE)
            elif b"\0" in raw:  # only possible in decompressed data; a plain file stopped above
                issues.add(number, "binary data (a NUL byte), not JSON lines text", FIX_BINARY)
                break
            elif (text := _jsonl_text(raw, number, issues)) is not None:
                yield Document(text, name, number)
    except DECOMPRESS_ERRORS as exc:
        where = f" after line {number}" if number else ""
        issues.add(None, f"damaged {codec} data{where}: {str(exc).rstrip('.')}", FIX_COMPRESSED)
        return
    if not seen:
        reason = f"no JSON lines after {codec} decompression" if codec else "only blank lines"
        issues.add(None, f"empty file: {reason}", FIX_EMPTY)


def _jsonl_text(raw: bytes, number: int, issues: FileIssues) -> str | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        issues.add(number, f"invalid UTF-8 at byte {exc.start + 1} of the line", FIX_UTF8)
        return None
    except json.JSONDecodeError as exc:
        issues.add(number, f"invalid JSON: {exc.msg} (column {exc.colno})", FIX_JSONL)
        return None
    except (ValueError, RecursionError) as exc:  # integers over 4300 digits, nesting deeper than the stack
        issues.add(number, f"invalid JSON: {exc}", FIX_JSONL)
        return None
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(obj, dict):
        issues.add(number, f"the line holds {_json_type(obj)}, not a JSON object", FIX_JSONL)
    elif "text" not in obj:
        issues.add(number, 'missing field "text"', FIX_JSONL)
    elif not isinstance(text, str):
        issues.add(number, f'field "text" is {_json_type(text)}, not a string', FIX_JSONL)
    elif not _encodable(text):  # "\ud800" is valid JSON but no UTF-8 string: the tokenizer would fail later
        fix = "write the text as UTF-8, or escape characters above U+FFFF as surrogate pairs"
        issues.add(number, 'field "text" holds an unpaired surrogate escape (\\ud800-\\udfff)', fix)
    else:
        return text
    return None


def _json_type(value: object) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
