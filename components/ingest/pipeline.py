"""Ingest: every ready drop of a source becomes one commit of tokenized, packed, clustered sequences.

Per drop: hash (one sequential read) -> scan: read + validate as a stream (components.ingest.drops), tokenize
into a token spill on disk (components.ingest.scan, .spill) -> split by document hash and lay out the rows
(components.core.packing) -> k-means arms (components.ingest.clustering) -> one LanceDB commit
(components.adapters.memory), with its row digest and row-id index (components.ingest.rows).

* Engines (components.ingest.engine_local): `ingest.engine` local runs the heavy work in this process; ray runs the
  read, tokenize, labelling and writes on Ray Data workers and commits their fragments once
  (components.ingest.engine_ray). What happens to a drop (below) is decided here, the same way for both.

* Bounded memory: no drop's texts or tokens are held whole; memory holds per-document and per-row metadata and a
  batch at a time (components.ingest.scan), so a drop, or one file of it, larger than memory ingests. The batch
  sizes and the scan's worker processes (ingest.workers, components.ingest.parallel) are derived from
  ingest.max_memory_mb (components.ingest.limits), which bounds the peak RSS.

* Idempotent: a drop already ingested with the same content hash is reported `present` and nothing is written.
  The same id with other content is `refused` (drops are immutable; publish a new drop id instead).
* Atomic: the heavy work happens outside the write lock; the commit is one Lance version plus one record.
* Bad input is quarantined: the drop is recorded `rejected` with every issue (file, line, reason, fix); the
  sequences are untouched and the other drops of the call go on.
* Exact deduplication: a document (sha256 of its text) is stored once. Documents a live drop already stored, and
  repeats inside the drop, are left out before the split (counted in the record's `duplicates`), so a document
  keeps the split it got first, for good, and no held-out document is ever trained on by a later drop. The lookup
  reads the memory's document index (components.adapters.documents: its cost per drop and how it scales). It runs
  before the write lock and again under it when another writer committed meanwhile, so two ingests at once never
  store one document twice.
* A drop whose every document is already in the memory is recorded `duplicate` (0 sequences, no memory version
  written) and reported as such, exit code 0: a producer re-sending data is no error. It is not final: each ingest
  checks it again (read and hash, no tokenizing), since a rollback can remove the drops that held its documents;
  an unchanged verdict writes nothing. A drop left with too few new documents for a split is rejected as too small,
  and the message says how many of its documents were duplicates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from components.adapters import documents as doc_index
from components.adapters.integrity import short_error
from components.adapters.memory import Memory
from components.adapters.records import DUPLICATE, DropRecord
from components.core import allocator
from components.core.config import Settings
from components.core.ids import is_drop_id
from components.core.text import Tokenizer, TokenizerMismatch, describe_identity, load_tokenizer, same_tokenizer
from components.ingest.drops import DropRef, DropSource, invalid_id_issue, open_source
from components.ingest.engine_local import open_engine
from components.ingest.limits import Limits, derive_limits
from components.ingest.scan import TOKENIZE_DOCS, Plan, Scanned, new_documents


@dataclass
class IngestResult:
    drop_id: str
    status: str  # ingested | present | duplicate | refused | rejected | pending | failed
    message: str = ""
    record: DropRecord | None = None

    def to_dict(self) -> dict:
        rec = self.record
        return {
            "drop_id": self.drop_id,
            "status": self.status,
            "message": self.message,
            "version": rec.version if rec else None,
            "sequences": rec.sequences if rec else None,
            "duplicates": rec.duplicates if rec else None,
        }


class Bars:
    """Rich progress bars for read, tokenize and write (quiet when disabled, e.g. --json)."""

    def __init__(self, enabled: bool, console: Console | None = None):
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
            transient=False,
        )

    def __enter__(self) -> Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def counter(self, description: str, total: int | None) -> Callable[[int], None]:
        task = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task, n)


def tokenize(tokenizer: Tokenizer, texts: list[str], advance: Callable[[int], None]) -> list[np.ndarray]:
    """In-memory tokenizing in batches of TOKENIZE_DOCS (benchmarks/ingest.py; ingest itself streams: .scan)."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), TOKENIZE_DOCS):
        chunk = texts[start : start + TOKENIZE_DOCS]
        out.extend(tokenizer.encode_batch(chunk))
        advance(len(chunk))
    return out


def check_tokenizer(memory: Memory, settings: Settings, tokenizer: Tokenizer) -> None:
    """Refuse, before any drop is read, a tokenizer whose ids differ from those the memory was built with."""
    recorded = memory.meta()
    if recorded is None or not recorded["vocab_size"]:
        return
    have = memory.tokenizer_identity()
    if not same_tokenizer(recorded, have, settings.ingest.tokenizer, tokenizer.identity):
        had = describe_identity(have) if have else f"{recorded['tokenizer']!r}, vocabulary {recorded['vocab_size']}"
        raise TokenizerMismatch(
            f"ingest.tokenizer = {settings.ingest.tokenizer!r} ({describe_identity(tokenizer.identity)}) is not the "
            f"tokenizer the memory at {memory.uri} was built with ({had}): the same ids would mean other text. Fix: "
            "set ingest.tokenizer back to the memory's tokenizer, or point memory.uri at a new memory."
        )


def memory_meta(settings: Settings, tokenizer: Tokenizer, recorded: dict | None = None) -> dict:
    """The memory's schema metadata; a tokenizer moved or re-saved (same identity) keeps the recorded spec."""
    spec = settings.ingest.tokenizer
    if recorded and recorded.get("tokenizer_id") == tokenizer.identity:
        spec = recorded["tokenizer"]
    return {
        "tokenizer_id": tokenizer.identity,
        "tokenizer": spec,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "context_length": settings.ingest.context_length,
    }


def _prior(memory: Memory, drop_id: str, content_hash: str) -> IngestResult | None:
    """What an earlier ingest already decided for this content, if anything."""
    rec = memory.record(drop_id)
    if rec is None:
        return None
    if rec.status == "ingested" and rec.content_hash == content_hash:
        return IngestResult(rec.drop_id, "present", f"already ingested at memory version {rec.version}", rec)
    if rec.status == "ingested":
        return IngestResult(
            rec.drop_id,
            "refused",
            f"drop {rec.drop_id} was ingested at version {rec.version} with content {rec.content_hash[:12]}, but the "
            f"source now holds {content_hash[:12]}. Drops are immutable: publish the new data under a new id.",
            rec,
        )
    if rec.status == "rejected" and rec.content_hash == content_hash:
        return IngestResult(rec.drop_id, "rejected", rec.error, rec)
    return None  # rejected before, content changed since: try again


def ingest_drop(
    memory: Memory,
    source: DropSource,
    ref: DropRef,
    settings: Settings,
    tokenizer: Tokenizer,
    bars: Bars,
    limits: Limits | None = None,
) -> IngestResult:
    """Hash the drop (one sequential read) and stop if its content was decided before; else scan it (tokens into a
    local spill or, with engine ray, Ray's object store: components.ingest.engine_local), plan, and commit. What the
    engine holds (the spill, the object refs) is released however this ends."""
    with open_engine(source, ref, settings, tokenizer, bars, limits) as engine:
        content = engine.content_hash()
        prior = _prior(memory, ref.drop_id, content)
        if prior is not None:
            return prior
        last = memory.record(ref.drop_id)
        recheck = last is not None and (last.status, last.content_hash) == (DUPLICATE, content)  # no tokenizing
        scanned = engine.scan(content, tokenize=not recheck)
        return _decide(memory, ref, scanned, settings, tokenizer, engine, content)


def _decide(memory: Memory, ref: DropRef, scanned: Scanned, settings, tokenizer, engine, content) -> IngestResult:
    contents, hashes = scanned.contents, scanned.hashes
    rec = DropRecord(ref.drop_id, "", contents.content_hash, documents=scanned.n_documents, source=ref.location)
    rec.manifest = contents.manifest.model_dump_json() if contents.manifest else ""
    if not contents.ok:
        rec.error = contents.error_message()
        return _reject(memory, rec)
    try:  # planned before taking the write lock, so another ingest can commit while this one tokenizes and packs
        plan = engine.plan(memory, scanned, content)
    except ValueError as exc:  # the memory bound (components.ingest.limits): no lock can change it
        if "ingest.max_memory_mb" in str(exc):
            raise
        plan = None
    except Exception:  # e.g. read while another writer was creating the document index: planned again, locked,
        plan = None  # where a real error is raised again
    with memory.writer() as mem:
        prior = _prior(mem, ref.drop_id, contents.content_hash)  # another process may have committed it meanwhile
        if prior is not None:
            return prior
        if plan is None or (mem.version != plan.version and not _same_keep(mem, scanned, settings, engine, plan)):
            plan = engine.plan(mem, scanned, content)  # a drop committed meanwhile
        rec.duplicates = len(hashes) - len(plan.keep)
        if not len(plan.keep):
            return _all_duplicates(mem, rec)
        if plan.too_small:
            rec.error = f"{ref.drop_id}: {plan.too_small}"
            if rec.duplicates:
                rec.error += f" ({rec.duplicates} of its {len(hashes)} documents are already in the memory, left out)"
            mem.reject_drop(rec)
            return IngestResult(rec.drop_id, "rejected", rec.error, rec)
        return _commit(mem, rec, plan, settings, tokenizer, engine, hashes.take(plan.keep))


def _same_keep(mem: Memory, scanned: Scanned, settings: Settings, engine, plan: Plan) -> bool:
    keep = new_documents(mem, scanned.hashes, settings, scanned.contents.drop_id, getattr(engine, "limits", None))
    return bool(np.array_equal(keep, plan.keep))


def _commit(mem: Memory, rec: DropRecord, plan: Plan, settings: Settings, tokenizer, engine, hashes) -> IngestResult:
    packed, clusters = plan.packed, plan.clusters
    rec.sequences = len(packed.train.lengths)
    rec.holdout_sequences = len(packed.holdout.lengths)
    rec.tokens = int(packed.train.lengths.sum() + packed.holdout.lengths.sum())
    rec.clusters = int(clusters[0].max()) + 1
    meta = memory_meta(settings, tokenizer, (mem.meta() or {}) | {"tokenizer_id": mem.tokenizer_identity()})
    engine.write(mem, rec, plan, meta, doc_index.rows(rec.drop_id, hashes, packed.doc_in_holdout))
    message = f"{rec.sequences} train + {rec.holdout_sequences} holdout"
    if rec.duplicates:
        message += f", {rec.duplicates} duplicate document{'' if rec.duplicates == 1 else 's'} left out"
    return IngestResult(rec.drop_id, "ingested", message, rec)


def _all_duplicates(mem: Memory, rec: DropRecord) -> IngestResult:
    """Record the verdict (0 sequences, no memory version written) unless the newest record already says so."""
    message = f"all {rec.duplicates} documents are already in the memory: nothing new to store"
    last = mem.record(rec.drop_id)
    same = last is not None and (last.status, last.content_hash, last.duplicates) == (
        DUPLICATE,
        rec.content_hash,
        rec.duplicates,
    )
    if not same:
        mem.reject_drop(rec, status=DUPLICATE)
    return IngestResult(rec.drop_id, "duplicate", message, last if same else rec)


def _reject(memory: Memory, rec: DropRecord) -> IngestResult:
    with memory.writer() as mem:
        prior = _prior(mem, rec.drop_id, rec.content_hash)
        if prior is not None:
            return prior
        mem.reject_drop(rec)
    return IngestResult(rec.drop_id, "rejected", rec.error, rec)


def ingest_source(settings: Settings, location: str, show_progress: bool = True) -> list[IngestResult]:
    """Ingest every ready drop of `location` (a directory or s3://bucket/prefix), in drop id order."""
    allocator.limit_retained()  # RSS follows what ingest holds, not the memory it freed (components.core.allocator)
    source = open_source(location, settings.s3)
    memory = Memory.open(settings)
    tokenizer = load_tokenizer(settings.ingest.tokenizer)
    check_tokenizer(memory, settings, tokenizer)
    cfg = settings.ingest
    limits = derive_limits(cfg.max_memory_mb, cfg.workers, cfg.context_length, byte=cfg.tokenizer == "byte")
    results: list[IngestResult] = []
    with Bars(show_progress) as bars:
        for ref in source.list_drops():
            if not ref.ready:
                results.append(IngestResult(ref.drop_id, "pending", f"{ref.location} has no _READY marker yet"))
                continue
            if not is_drop_id(ref.drop_id):  # LanceDB would refuse its tag: rejected, nothing read or written
                results.append(IngestResult(ref.drop_id, "rejected", str(invalid_id_issue(ref.drop_id))))
                continue
            try:
                results.append(ingest_drop(memory, source, ref, settings, tokenizer, bars, limits))
            except Exception as exc:  # one broken drop must not stop the others; the CLI exits 1
                results.append(IngestResult(ref.drop_id, "failed", f"{type(exc).__name__}: {short_error(exc)}"))
    return results


def exit_code(results: list[IngestResult]) -> int:
    """0: every ready drop ingested or present; 2: a drop rejected or refused; 1: any other failure."""
    statuses = {r.status for r in results}
    if "failed" in statuses:
        return 1
    if statuses & {"rejected", "refused"}:
        return 2
    return 0
