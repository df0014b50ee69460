"""The scan of one drop with its files read, checked, hashed and tokenized in parallel worker processes.

`scan_parallel` gives the same `Scanned` as components.ingest.scan.scan_drop (documents, their order, issues with
file and line, the content hash, and each document's tokens behind the same spill index: its index in the drop).
Each file is one task for a `ProcessPoolExecutor` on the forkserver context: workers fork from
a server process that imported this module alone (~100 MB: no LanceDB, scikit-learn or torch), never from the
driver (whose threads and LanceDB handles a fork would copy), and unlike spawn they do not re-import the driver's
`__main__` (the CLI, which imports everything; see `_bare_main`). A worker loads the tokenizer
once, parses its file as a stream, hashes and tokenizes every document into a spill part file of its own
(components.ingest.spill) and returns the file's metadata only. The driver adopts the results in file order; which
occurrence of a repeated document is stored is decided later, from the hashes (components.ingest.dedup), so the
workers keep no set of hashes and the driver none across files.

A file is the unit of work. A big file is not split into byte ranges: compressed files (gzip, zstd: what producers
write most) cannot be entered in the middle, and a plain JSON-lines file would need a pass counting newlines
before each range for the line numbers of its issues, and a per-file rule (BOM, blank-only, first-line format
check) spread across workers. A drop of one huge file therefore scans on one core; Spark-style drops of many part
files, the common large case, use every worker.

Tokenizer threads: the Rust tokenizer behind a BPE tokenizer already runs `encode_batch` on a rayon thread pool of
one thread per core. Each worker gets cores // workers rayon threads (RAYON_NUM_THREADS, set before the tokenizer
is loaded), so processes times threads never exceed the cores. Only local sources are scanned in parallel (a
worker opens the file by path); S3 drops and sources without an `opener` use the in-process scan.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from components.core.digests import digest
from components.core.text import Tokenizer, encode_bytes, load_tokenizer
from components.ingest.drops import DropRef, LocalSource
from components.ingest.drops.formats import iter_document_file, parse_manifest
from components.ingest.drops.model import (
    MANIFEST,
    READY,
    DropIssue,
    DropManifest,
    FileIssues,
    is_drop_id,
)
from components.ingest.drops.reader import _open, content_hash, file_kind
from components.ingest.drops.stream import ScanStream, keep_bytes
from components.ingest.spill import Spill, write_part

PARALLEL_MIN_BYTES = 16 << 20  # below this a drop scans in process: starting workers (~3 s each) costs more
_TOKENIZER = None  # the worker's tokenizer, loaded once by _init_worker


@dataclass(frozen=True)
class ScanJob:
    """How a drop is scanned: processes, max_document_bytes, and a tokenize batch's most text and documents."""

    workers: int
    limit: int
    batch_bytes: int
    batch_docs: int


@dataclass
class FileScan:
    """What a worker returns for one file: metadata only (its tokens are in its part file)."""

    digest: str
    issues: list[DropIssue] = field(default_factory=list)
    manifest: DropManifest | None = None
    n_documents: int = 0
    hashes: list[bytes] = field(default_factory=list)  # every non-empty document's sha256 digest, in file order
    offsets: list[int] = field(default_factory=list)  # ... their tokens' place in the part file
    lengths: list[int] = field(default_factory=list)


class _Bytes:
    """The byte tokenizer's encoder alone (its offset from the driver's ByteTokenizer): no transformers import."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return encode_bytes(texts, self.offset)


def _init_worker(spec: str, identity_sha: str, threads: int, byte_offset: int | None) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when the tokenizer's thread pool starts: set it first
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    global _TOKENIZER
    if byte_offset is not None:
        _TOKENIZER = _Bytes(byte_offset)
        return
    _TOKENIZER = load_tokenizer(spec)
    if _TOKENIZER.identity["sha256"] != identity_sha:
        raise RuntimeError(f"tokenizer {spec!r} changed on disk while ingest ran: the worker loaded other ids")


def scan_file(root: str, drop_id: str, name: str, part: str | None, job: ScanJob) -> FileScan:
    """Read, check and hash one file; with a `part` path, tokenize each non-empty document into it."""
    opener, size = LocalSource(root).opener(drop_id, name)
    with ScanStream(opener, size, keep_bytes(job.limit)) as stream:  # read once: hashed as it is parsed
        if name == MANIFEST:
            out = FileScan("")
            out.manifest, out.issues = parse_manifest(stream.read(), drop_id)
        else:
            out = _scan_documents(name, stream, part, job)
        out.digest = stream.finish()
    return out


def _scan_documents(name: str, stream: ScanStream, part: str | None, job: ScanJob) -> FileScan:
    out = FileScan("")
    issues = FileIssues(name)
    batch: list[str] = []
    pending, at = 0, 0
    for doc in iter_document_file(name, stream, job.limit, issues):
        out.n_documents += 1
        if not doc.text:
            continue
        h = digest(doc.text)
        out.hashes.append(h)
        if part is None or issues:  # a file with issues rejects the drop: no tokens needed
            continue
        batch.append(doc.text)
        pending += len(doc.text)
        if pending >= job.batch_bytes or len(batch) >= job.batch_docs:
            at = _flush(part, batch, out, at)
            batch, pending = [], 0
    if batch and not issues:
        _flush(part, batch, out, at)
    out.issues = list(issues)
    return out


def _flush(part: str, batch: list[str], out: FileScan, at: int) -> int:
    offsets, lengths, at = write_part(Path(part), _TOKENIZER.encode_batch(batch), at)
    out.offsets += offsets
    out.lengths += lengths
    return at


def scan_parallel(
    source: LocalSource, ref: DropRef, spec: str, tokenizer: Tokenizer, spill: Spill | None, job, bars, scanned
) -> bool:
    """`scan_drop` with one task per file on `job.workers` processes (see the module docstring), filling the empty
    `scanned` (components.ingest.scan.Scanned); False, with nothing read, when the drop is too small for a pool to
    pay off (under PARALLEL_MIN_BYTES or fewer than two files to read)."""
    drop_id = ref.drop_id
    if not is_drop_id(drop_id):
        return False
    contents = scanned.contents
    jobs, n_document_files = [], 0
    for name in source.list_files(drop_id):
        kind = file_kind(name)
        if kind in ("document", "unsafe"):
            n_document_files += 1
        issues: list[DropIssue] = []
        if kind in (READY, "ignored") or (opened := _open(source, drop_id, name, issues)) is None:
            jobs.append((name, issues, 0))
            continue
        jobs.append((name, None, opened[1]))
    if sum(size for *_, size in jobs) < PARALLEL_MIN_BYTES or sum(early is None for _, early, _ in jobs) < 2:
        return False
    read, tokenized = bars.counter(f"read {drop_id}", None), bars.counter(f"tokenize {drop_id}", None)
    cores = os.cpu_count() or 1
    threads = max(1, cores // job.workers)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the server imports this module once, never the driver's __main__
    init = (spec, tokenizer.identity["sha256"], threads, getattr(tokenizer, "offset", None) if spec == "byte" else None)
    digests: dict[str, str] = {}
    with ProcessPoolExecutor(job.workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        futures = {}
        with _bare_main():  # the workers start on the first submits
            for k in sorted(range(len(jobs)), key=lambda k: -jobs[k][2]):  # biggest first: the pool ends together
                name, early, _ = jobs[k]
                if early is None:
                    part = None if spill is None else str(spill.part_path(k))
                    futures[k] = pool.submit(scan_file, str(source.root), drop_id, name, part, job)
        for k, (name, early, size) in enumerate(jobs):  # merged in file order, as the one-process scan reads
            if early is not None:
                contents.issues += early
                continue
            result = futures.pop(k).result()
            digests[name] = result.digest
            contents.n_bytes += size
            read(size)
            if name == MANIFEST:
                contents.manifest = result.manifest
            _merge(scanned, result, spill, k, tokenized)
            contents.issues += result.issues
    if n_document_files == 0:
        fix = "add .jsonl, .parquet or text files"
        contents.issues.append(DropIssue("", None, "empty drop: no document files", fix))
    contents.content_hash = content_hash(digests)
    contents.issues = [replace(issue, drop_id=drop_id) for issue in contents.issues]
    return True


@contextmanager
def _bare_main():
    """Start processes as if `__main__` were empty: multiprocessing would have each worker import the driver's main
    module (the `amr` CLI, a benchmark script: LanceDB, scikit-learn, ~3 CPU s and ~100 MB each, measured) only to
    run one function of this module."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _merge(scanned, result: FileScan, spill: Spill | None, k: int, tokenized) -> None:
    """Append a file's documents and adopt their tokens: document i of the drop is spill index i."""
    scanned.n_documents += result.n_documents
    scanned.hashes += result.hashes
    if spill is None or not scanned.tokenized or scanned.contents.issues or result.issues:
        return
    if len(result.offsets) != len(result.hashes):
        n, m = len(result.offsets), len(result.hashes)
        raise RuntimeError(f"a scan worker tokenized {n} of its file's {m} documents")
    if result.offsets:
        spill.adopt(spill.part_path(k), np.asarray(result.offsets), np.asarray(result.lengths))
    tokenized(len(result.offsets))
