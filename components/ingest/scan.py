"""One drop scanned as a stream into metadata plus a token spill, and the plan of what its commit writes.

The scan reads the drop file by file (components.ingest.drops.DropScan: one pass per file, parsed line by line or
row group by row group and hashed as it streams), hashes each document and tokenizes every non-empty document in
batches of at most TOKENIZE_DOCS documents or TOKENIZE_BYTES bytes of text (less under a small
ingest.max_memory_mb: components.ingest.limits), appending the tokens to the spill (components.ingest.spill).
With ingest.workers > 1 a local drop's files are scanned by worker processes instead, with the same result
(components.ingest.parallel); the Ray engine's workers do the same into their token blocks.
No text is kept: memory holds the documents' hashes (32-byte digests in one numpy array, components.core.digests),
the spill's offsets and one batch. A document's spill index is its index in `Scanned.hashes`.
Why every document, repeats included: tokenizing only the first occurrence of each hash needs the set of the
digests seen so far (~110 bytes a distinct document, growing with the drop: issue 11 wants memory flat in the drop
size) and a rank map afterwards. Repeats inside a drop are rare in what producers send; each costs its
tokenization (the scan's CPU) and its tokens' bytes on the spill's disk, never memory, and only its first
occurrence is stored (components.ingest.dedup decides which, partitioned on disk).
The plan (deduplication, split, every row's place) is decided from that metadata
(components.core.packing.split_layouts); rows are built from the spill only when hashed, clustered and written.

Documents the memory already holds are tokenized too: the lookup reads the whole document index
(components.adapters.documents), once per drop, so it runs after the scan. The one case where that would be all
waste, the re-check of a drop recorded `duplicate` with the same content, scans without tokenizing, and tokenizes
in a second scan only if some of its documents are new again (a rollback removed the drops that held them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from components.adapters.memory import Memory
from components.core.config import Settings
from components.core.digests import Digests, digest
from components.core.holdout import DropTooSmall
from components.core.packing import SplitPacked, split_layouts
from components.core.text import Tokenizer
from components.ingest import dedup
from components.ingest.clustering import assign_clusters
from components.ingest.drops import DropContents, DropRef, DropScan, DropSource, LocalSource, content_hash
from components.ingest.limits import Limits, check_metadata
from components.ingest.parallel import ScanJob, scan_parallel
from components.ingest.spill import Spill

TOKENIZE_DOCS = 256
TOKENIZE_BYTES = 8 << 20


@dataclass
class Scanned:
    contents: DropContents  # issues, manifest, content hash; `documents` stays empty
    n_documents: int = 0  # every document read, empty ones included
    hashes: Digests = field(default_factory=Digests)  # every non-empty document's hash, in drop order
    tokenized: bool = False  # every document is in the spill, at its index in `hashes`


def scan_drop(
    source: DropSource,
    ref: DropRef,
    settings: Settings,
    tokenizer: Tokenizer,
    bars,
    spill: Spill | None,
    limits: Limits | None = None,
) -> Scanned:
    """Read, check and hash every document; with a `spill`, tokenize each non-empty one into it.

    With `limits.workers` > 1 a local drop's files are scanned by worker processes (components.ingest.parallel,
    the same result); otherwise, and for drops too small for a pool, in this process, tokenizing batches of at
    most TOKENIZE_DOCS documents or `limits.tokenize_bytes` of text.
    """
    batch_bytes = TOKENIZE_BYTES if limits is None else limits.tokenize_bytes
    if limits is not None and limits.workers > 1 and isinstance(source, LocalSource):
        job = ScanJob(limits.workers, settings.ingest.max_document_bytes, batch_bytes, TOKENIZE_DOCS)
        scanned = Scanned(DropContents(ref.drop_id, [], content_hash({}), 0, None), tokenized=spill is not None)
        if scan_parallel(source, ref, settings.ingest.tokenizer, tokenizer, spill, job, bars, scanned):
            return scanned
    scan = DropScan(source, ref.drop_id, settings.ingest.max_document_bytes, bars.counter(f"read {ref.drop_id}", None))
    out = Scanned(scan.contents, tokenized=spill is not None)
    advance = bars.counter(f"tokenize {ref.drop_id}", None)
    batch: list[str] = []
    size = 0
    for doc in scan.documents():
        out.n_documents += 1
        if not doc.text:  # an empty document would pack as a lone separator
            continue
        h = digest(doc.text)
        out.hashes.append(h)
        if spill is None or scan.contents.issues:  # a drop with issues is rejected
            continue
        batch.append(doc.text)
        size += len(doc.text)
        if len(batch) >= TOKENIZE_DOCS or size >= batch_bytes:
            spill.append(tokenizer.encode_batch(batch))
            advance(len(batch))
            batch, size = [], 0
    if batch:
        spill.append(tokenizer.encode_batch(batch))
        advance(len(batch))
    return out


@dataclass
class Plan:
    """What one drop will write, decided against the memory at `version`."""

    version: int
    keep: np.ndarray  # indices (into Scanned.hashes) of the documents to store, ascending
    packed: SplitPacked | None = None
    clusters: tuple[np.ndarray, np.ndarray] | None = None
    too_small: str = ""
    at: np.ndarray | None = None  # token-store index of each stored document (split_layouts input order)


def new_documents(memory: Memory, hashes: Digests, settings: Settings, drop_id: str, limits: Limits | None = None):
    """Indices of the documents to store, ascending: the first of each hash that no live drop stored yet, decided
    bucket by bucket on disk (components.ingest.dedup), buckets of at most a tokenize batch's bytes."""
    return dedup.new_documents(memory, hashes, settings.home / "tmp", drop_id, bucket_bytes(limits))


def bucket_bytes(limits: Limits | None) -> int:
    return TOKENIZE_BYTES if limits is None else limits.tokenize_bytes


def unchanged(scanned: Scanned, content: str, drop_id: str) -> Scanned:
    """The scan, unless the drop's content changed since it was hashed (then a producer broke the drop contract)."""
    if scanned.contents.content_hash != content:
        raise RuntimeError(
            f"drop {drop_id} changed while it was read (content {content[:12]}, then "
            f"{scanned.contents.content_hash[:12]}): a producer must write _READY last and never change a drop after"
        )
    return scanned


def plan_drop(
    memory: Memory,
    scanned: Scanned,
    settings: Settings,
    tokenizer: Tokenizer,
    spill: Spill,
    rescan: Callable,
    cluster: bool = True,
    limits: Limits | None = None,
) -> Plan:
    """Deduplicate against the memory, then split, lay out and (unless `cluster` is False: the Ray engine clusters
    on its workers) cluster only the new documents. `spill` is any token store with `lengths_at(indices)` and
    `tokens(i)`.

    `rescan()` gives a Scanned with tokens, for a scan that skipped them (see the module docstring). With `limits`,
    a drop whose metadata alone would pass ingest.max_memory_mb is refused here (ValueError), before the layout.
    """
    cfg = settings.ingest
    drop_id = scanned.contents.drop_id
    plan = Plan(memory.version, new_documents(memory, scanned.hashes, settings, drop_id, limits))
    if not len(plan.keep):
        return plan
    if not scanned.tokenized:
        scanned.tokenized = rescan().tokenized
    keep_hashes = scanned.hashes.take(plan.keep)
    at = plan.at = plan.keep  # spill index == index in hashes (module docstring)
    lengths = spill.lengths_at(at)  # read from disk for the kept documents only (no whole-drop copy)
    if limits is not None:
        n_rows = int((lengths.sum() + lengths.size) // cfg.context_length) + 2  # both splits' last rows
        check_metadata(limits, drop_id, len(scanned.hashes), n_rows)
    try:
        needed = (cfg.min_holdout_sequences - 1) * cfg.context_length + 1  # as split_layouts
        where, size = settings.home / "tmp", bucket_bytes(limits)
        mask = dedup.choose_holdout(lengths + 1, keep_hashes, cfg.holdout_fraction, needed, where, drop_id, size)
        plan.packed = split_layouts(
            lengths,
            keep_hashes,
            cfg.context_length,
            tokenizer.eos_id,
            tokenizer.pad_id,
            cfg.holdout_fraction,
            cfg.min_holdout_sequences,
            fetch=lambda doc: spill.tokens(int(at[doc])),
            mask=mask,
            arrays=getattr(spill, "arrays", None),  # the layout's per-document arrays on disk
        )
    except DropTooSmall as exc:
        plan.too_small = str(exc)
        return plan
    if cluster:
        chunk = {} if limits is None else {"chunk_tokens": limits.chunk_tokens}
        args = (plan.packed.train, plan.packed.holdout, cfg.clusters_per_drop, cfg.seed)
        plan.clusters = assign_clusters(*args, **chunk, arrays=getattr(spill, "arrays", None))  # labels on disk
    return plan
