"""`read_drop`: every file of one drop read once, hashed and parsed from the same bytes, all issues collected."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

from components.core.ids import FIX_DROP_ID, drop_id_problem
from components.ingest.drops.formats import parse_document_file, parse_manifest
from components.ingest.drops.model import (
    FIX_ESCAPE,
    MANIFEST,
    READY,
    DropContents,
    DropIssue,
    is_drop_id,
    unsafe_name_reason,
)
from components.ingest.drops.sources import DropSource, UnsafeNameError


def file_kind(name: str) -> str:
    """'unsafe', '_READY', '_drop.json', 'ignored' (a segment starting with '_' or '.') or 'document'."""
    if unsafe_name_reason(name):
        return "unsafe"
    if name in (READY, MANIFEST):
        return name
    if any(part[0] in "_." for part in name.split("/")):
        return "ignored"
    return "document"


def invalid_id_issue(drop_id: str) -> DropIssue:
    """The issue of a drop whose id LanceDB's tags (or a file system) would refuse; nothing of it is read."""
    return DropIssue("", None, f"invalid drop id {drop_id!r}: {drop_id_problem(drop_id)}", FIX_DROP_ID, drop_id)


def read_drop(
    source: DropSource, drop_id: str, max_document_bytes: int, progress: Callable[[int], None] | None = None
) -> DropContents:
    """Read and check one drop; `progress(n)` gets each file's byte count as it is read.

    Bad data becomes issues, never exceptions. What is no data problem does raise: a local drop directory
    that does not exist (FileNotFoundError) and S3 errors such as access denied (botocore ClientError).
    """
    contents = DropContents(drop_id, [], content_hash({}), 0, None, [])
    if not is_drop_id(drop_id):
        contents.issues.append(invalid_id_issue(drop_id))
        return contents
    digests: dict[str, str] = {}
    n_document_files = 0
    for name in source.list_files(drop_id):
        kind = file_kind(name)
        if kind in ("document", "unsafe"):  # an unsafe name was meant as data: the drop is not "empty"
            n_document_files += 1
        if kind in (READY, "ignored"):
            continue
        data = _read(source, drop_id, name, contents.issues)
        if data is None:
            continue
        if progress is not None:
            progress(len(data))
        digests[name] = hashlib.sha256(data).hexdigest()
        contents.n_bytes += len(data)
        if kind == MANIFEST:
            contents.manifest, issues = parse_manifest(data, drop_id)
        else:
            documents, issues = parse_document_file(name, data, max_document_bytes)
            contents.documents += documents
        contents.issues += issues
    if n_document_files == 0:
        fix = "add .jsonl, .parquet or text files"
        contents.issues.append(DropIssue("", None, "empty drop: no document files", fix))
    contents.content_hash = content_hash(digests)
    contents.issues = [replace(issue, drop_id=drop_id) for issue in contents.issues]
    return contents


def _read(source: DropSource, drop_id: str, name: str, issues: list[DropIssue]) -> bytes | None:
    """The file's bytes, or None with an issue when the name is unsafe or the file cannot be read."""
    reason = unsafe_name_reason(name)
    if reason:
        issues.append(DropIssue(name, None, f"unsafe name: {reason}", FIX_ESCAPE))
        return None
    try:
        return source.read_bytes(drop_id, name)
    except UnsafeNameError as exc:
        issues.append(DropIssue(name, None, str(exc), FIX_ESCAPE))
    except OSError as exc:  # S3 errors (auth, network) are not OSError: they propagate, as they are no data problem
        reason = f"cannot read: {exc.strerror or exc}"
        issues.append(DropIssue(name, None, reason, "make it a readable regular file inside the drop"))
    return None


def content_hash(digests: dict[str, str]) -> str:
    """sha256 over the sorted (relative name, sha256 of bytes) pairs: the drop's identity for idempotent ingest."""
    total = hashlib.sha256()
    for name in sorted(digests):
        total.update(f"{name}\0{digests[name]}\n".encode())
    return total.hexdigest()
