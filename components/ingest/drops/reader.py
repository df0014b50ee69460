"""`read_drop` and `DropScan`: every file of one drop hashed and parsed as a stream, all issues collected."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import BinaryIO

from components.core.ids import FIX_DROP_ID, drop_id_problem
from components.ingest.drops.formats import iter_document_file, parse_manifest
from components.ingest.drops.model import (
    FIX_ESCAPE,
    MANIFEST,
    READY,
    Document,
    DropContents,
    DropIssue,
    FileIssues,
    is_drop_id,
    unsafe_name_reason,
)
from components.ingest.drops.sources import DropSource, UnsafeNameError
from components.ingest.drops.stream import ScanStream, keep_bytes

HASH_CHUNK = 1 << 20
Opener = Callable[[], BinaryIO]  # a source's: opens the file afresh, at its first byte


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
    All documents are held in memory: ingest streams them instead (`DropScan`).
    """
    scan = DropScan(source, drop_id, max_document_bytes, progress)
    documents = list(scan.documents())
    scan.contents.documents = documents
    return scan.contents


class DropScan:
    """One drop read as a stream: `documents()` yields them file by file; `contents` (issues, manifest, content
    hash; `documents` left empty) is complete once the iterator is exhausted.

    Each file is read once, hashed as it is parsed (components.ingest.drops.stream), so no file is ever held whole
    (a plain-text document, at most max_document_bytes, aside) or downloaded twice by the scan. With `parse=False`
    only the content hash is computed: what ingest needs to know whether it saw this content before.
    """

    def __init__(self, source: DropSource, drop_id: str, limit: int, progress=None, parse: bool = True) -> None:
        self.source, self.drop_id, self.limit, self.parse = source, drop_id, limit, parse
        self.progress = progress or (lambda n: None)
        self.contents = DropContents(drop_id, [], content_hash({}), 0, None, [])
        self.digests: dict[str, str] = {}  # file name -> sha256 of its bytes
        self.n_document_files = 0

    def documents(self) -> Iterator[Document]:
        if not is_drop_id(self.drop_id):
            self.contents.issues.append(invalid_id_issue(self.drop_id))
            return
        for name in self.source.list_files(self.drop_id):
            yield from self.file_documents(name)
        self.finish()

    def file_documents(self, name: str) -> Iterator[Document]:
        """One file of the drop: hashed into `digests` once read, its issues (and the manifest) into `contents`. The Ray
        engine (components.ingest.engine_ray) runs this per file on its workers and merges them with `finish`."""
        contents = self.contents
        kind = file_kind(name)
        if kind in ("document", "unsafe"):  # an unsafe name was meant as data: the drop is not "empty"
            self.n_document_files += 1
        if kind in (READY, "ignored") or (opened := _open(self.source, self.drop_id, name, contents.issues)) is None:
            return
        opener, size = opened
        self.progress(size)
        contents.n_bytes += size
        if not self.parse:
            self.digests[name] = _sha256(opener)
            return
        with ScanStream(opener, size, keep_bytes(self.limit)) as stream:
            if kind == MANIFEST:
                contents.manifest, issues = parse_manifest(stream.read(), self.drop_id)
            else:
                issues = FileIssues(name)
                yield from iter_document_file(name, stream, self.limit, issues)
            self.digests[name] = stream.finish()
        contents.issues += issues

    def finish(self) -> None:
        """After every file: the empty-drop check, the content hash, and the drop id in every issue."""
        contents = self.contents
        if self.n_document_files == 0:
            fix = "add .jsonl, .parquet or text files"
            contents.issues.append(DropIssue("", None, "empty drop: no document files", fix))
        contents.content_hash = content_hash(self.digests)
        contents.issues = [replace(issue, drop_id=self.drop_id) for issue in contents.issues]


def hash_drop(source: DropSource, drop_id: str) -> str:
    """The drop's `content_hash`, from one sequential read of its files (nothing parsed)."""
    scan = DropScan(source, drop_id, 0, parse=False)
    for _ in scan.documents():
        pass
    return scan.contents.content_hash


def _sha256(opener: Opener) -> str:
    digest = hashlib.sha256()
    with opener() as raw:
        while chunk := raw.read(HASH_CHUNK):
            digest.update(chunk)  # releases the GIL for large buffers
    return digest.hexdigest()


def _open(source: DropSource, drop_id: str, name: str, issues: list[DropIssue]) -> tuple[Opener, int] | None:
    """An opener of the file and its size, or None with an issue when the name is unsafe or it cannot be read.

    Every source streams (`DropSource.opener`): a local file, or an S3 object through ranged GETs.
    """
    reason = unsafe_name_reason(name)
    if reason:
        issues.append(DropIssue(name, None, f"unsafe name: {reason}", FIX_ESCAPE))
        return None
    try:
        return source.opener(drop_id, name)
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
