"""Ingest: every ready drop of a source becomes one commit of tokenized, packed, clustered sequences.

Per drop: read + validate (components.ingest.drops) -> tokenize (components.core.text) -> split by document hash
and pack (components.core.packing) -> k-means arms (components.ingest.clustering) -> one LanceDB commit
(components.adapters.memory).

* Idempotent: a drop already ingested with the same content hash is reported `present` and nothing is written.
  The same id with other content is `refused` (drops are immutable; publish a new drop id instead).
* Atomic: the heavy work happens outside the write lock; the commit is one Lance version plus one record.
* Bad input is quarantined: the drop is recorded `rejected` with every issue (file, line, reason, fix); the
  sequences are untouched and the other drops of the call go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from components.adapters.integrity import short_error
from components.adapters.memory import DropRecord, Memory, sequences_schema
from components.core.config import Settings
from components.core.ids import is_drop_id
from components.core.packing import DropTooSmall, SplitPacked, doc_hash, split_and_pack
from components.core.text import Tokenizer, load_tokenizer
from components.ingest.clustering import assign_clusters
from components.ingest.drops import DropContents, DropRef, DropSource, invalid_id_issue, open_source, read_drop

BATCH_ROWS = 4096
TOKENIZE_CHUNK = 256


@dataclass
class IngestResult:
    drop_id: str
    status: str  # ingested | present | refused | rejected | pending | failed
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
    out: list[np.ndarray] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start : start + TOKENIZE_CHUNK]
        out.extend(tokenizer.encode_batch(chunk))
        advance(len(chunk))
    return out


def record_batches(
    drop_id: str, packed: SplitPacked, clusters: tuple[np.ndarray, np.ndarray], schema: pa.Schema, advance
) -> Iterator[pa.RecordBatch]:
    """The drop's rows as record batches, so the single Lance commit streams and shows progress."""
    width = schema.field("tokens").type.list_size
    for split, part, cluster, hashes in (
        ("train", packed.train, clusters[0], packed.train_doc_hashes),
        ("holdout", packed.holdout, clusters[1], packed.holdout_doc_hashes),
    ):
        for start in range(0, len(part.lengths), BATCH_ROWS):
            stop = min(start + BATCH_ROWS, len(part.lengths))
            flat = pa.array(part.tokens[start:stop].reshape(-1).astype(np.int32), pa.int32())
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([drop_id] * (stop - start), pa.string()),
                    pa.array([split] * (stop - start), pa.string()),
                    pa.array(np.arange(start, stop, dtype=np.int32)),
                    pa.FixedSizeListArray.from_arrays(flat, width),
                    pa.array(part.lengths[start:stop].astype(np.int32)),
                    pa.array(cluster[start:stop].astype(np.int32)),
                    pa.array(hashes[start:stop], pa.string()),
                ],
                schema=schema,
            )
            advance(stop - start)


def memory_meta(settings: Settings, tokenizer: Tokenizer) -> dict:
    return {
        "tokenizer": settings.ingest.tokenizer,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "context_length": settings.ingest.context_length,
    }


def _prior(memory: Memory, contents: DropContents) -> IngestResult | None:
    """What an earlier ingest already decided for this content, if anything."""
    rec = memory.record(contents.drop_id)
    if rec is None:
        return None
    if rec.status == "ingested" and rec.content_hash == contents.content_hash:
        return IngestResult(rec.drop_id, "present", f"already ingested at memory version {rec.version}", rec)
    if rec.status == "ingested":
        return IngestResult(
            rec.drop_id,
            "refused",
            f"drop {rec.drop_id} was ingested at version {rec.version} with content {rec.content_hash[:12]}, but the "
            f"source now holds {contents.content_hash[:12]}. Drops are immutable: publish the new data under a new id.",
            rec,
        )
    if rec.status == "rejected" and rec.content_hash == contents.content_hash:
        return IngestResult(rec.drop_id, "rejected", rec.error, rec)
    return None  # rejected before, content changed since: try again


def ingest_drop(
    memory: Memory, source: DropSource, ref: DropRef, settings: Settings, tokenizer: Tokenizer, bars: Bars
) -> IngestResult:
    cfg = settings.ingest
    contents = read_drop(
        source, ref.drop_id, cfg.max_document_bytes, progress=bars.counter(f"read {ref.drop_id}", None)
    )
    prior = _prior(memory, contents)
    if prior is not None:
        return prior
    rec = DropRecord(ref.drop_id, "", contents.content_hash, documents=len(contents.documents), source=ref.location)
    rec.manifest = contents.manifest.model_dump_json() if contents.manifest else ""
    if not contents.ok:
        rec.error = contents.error_message()
        return _reject(memory, contents, rec)
    texts = [d.text for d in contents.documents if d.text]  # an empty document would pack as a lone separator
    tokens = tokenize(tokenizer, texts, bars.counter(f"tokenize {ref.drop_id}", len(texts)))
    try:
        packed = split_and_pack(
            tokens,
            [doc_hash(t) for t in texts],
            cfg.context_length,
            tokenizer.eos_id,
            tokenizer.pad_id,
            cfg.holdout_fraction,
            cfg.min_holdout_sequences,
        )
    except DropTooSmall as exc:
        rec.error = f"{ref.drop_id}: {exc}"
        return _reject(memory, contents, rec)
    del tokens, texts  # the packed copy is all that is needed from here; frees ~1x the drop's tokens
    clusters = assign_clusters(packed.train, packed.holdout, cfg.clusters_per_drop, cfg.seed)
    rec.sequences = len(packed.train.lengths)
    rec.holdout_sequences = len(packed.holdout.lengths)
    rec.tokens = int(packed.train.lengths.sum() + packed.holdout.lengths.sum())
    rec.clusters = int(clusters[0].max()) + 1
    meta = memory_meta(settings, tokenizer)
    schema = sequences_schema(meta)
    advance = bars.counter(f"write {ref.drop_id}", rec.sequences + rec.holdout_sequences)
    with memory.writer() as mem:
        prior = _prior(mem, contents)  # another process may have committed it while we packed
        if prior is not None:
            return prior
        reader = pa.RecordBatchReader.from_batches(
            schema, record_batches(ref.drop_id, packed, clusters, schema, advance)
        )
        mem.commit_drop(reader, rec, meta)
    return IngestResult(ref.drop_id, "ingested", f"{rec.sequences} train + {rec.holdout_sequences} holdout", rec)


def _reject(memory: Memory, contents: DropContents, rec: DropRecord) -> IngestResult:
    with memory.writer() as mem:
        prior = _prior(mem, contents)
        if prior is not None:
            return prior
        mem.reject_drop(rec)
    return IngestResult(rec.drop_id, "rejected", rec.error, rec)


def ingest_source(settings: Settings, location: str, show_progress: bool = True) -> list[IngestResult]:
    """Ingest every ready drop of `location` (a directory or s3://bucket/prefix), in drop id order."""
    source = open_source(location, settings.s3)
    memory = Memory.open(settings)
    tokenizer = load_tokenizer(settings.ingest.tokenizer)
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
                results.append(ingest_drop(memory, source, ref, settings, tokenizer, bars))
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
