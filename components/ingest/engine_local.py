"""The ingest engines: where one drop's heavy work runs. The pipeline (components.ingest.pipeline) decides what
happens to a drop, the same way for both; an engine hashes and scans it, plans its rows and writes them.

* `local` (LocalEngine, here): this process reads and tokenizes into a token spill on local disk
  (components.ingest.scan, .spill), clusters, and appends the rows in the commit.
* `ray` (components.ingest.engine_ray): Ray Data workers read and tokenize the files, build, label and write the
  rows as Lance fragments; this process plans from metadata and commits the fragments once.

`open_engine` is the one place that chooses; the Ray engine's module, and so `ray`, is imported only when chosen.
"""

from __future__ import annotations

import pyarrow as pa

from components.adapters.memory import Memory
from components.adapters.records import DropRecord, sequences_schema
from components.core import allocator
from components.core.config import Settings
from components.core.text import Tokenizer
from components.ingest.drops import DropRef, DropSource, hash_drop
from components.ingest.limits import Limits
from components.ingest.rows import BATCH_ROWS, bookkeeping, record_batches
from components.ingest.scan import Plan, Scanned, plan_drop, scan_drop, unchanged
from components.ingest.spill import Spill


class LocalEngine:
    """Everything in this process (or, with `limits.workers` > 1, the scan on worker processes:
    components.ingest.parallel); the drop's tokens wait in a spill on local disk, removed on exit. `limits`
    (components.ingest.limits, from ingest.max_memory_mb) sets the batch sizes."""

    def __init__(
        self, source: DropSource, ref: DropRef, settings: Settings, tokenizer: Tokenizer, bars, limits: Limits | None
    ) -> None:
        self.source, self.ref, self.settings, self.tokenizer, self.bars = source, ref, settings, tokenizer, bars
        self.limits = limits
        self.spill = Spill(settings.home, ref.drop_id)

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.spill.close()
        allocator.trim()

    def content_hash(self) -> str:
        return hash_drop(self.source, self.ref.drop_id)

    def scan(self, content: str, tokenize: bool = True) -> Scanned:
        spill = self.spill if tokenize else None
        scanned = scan_drop(self.source, self.ref, self.settings, self.tokenizer, self.bars, spill, self.limits)
        allocator.trim()  # the phases' temporaries freed: their pages back to the system (components.core.allocator)
        return unchanged(scanned, content, self.ref.drop_id)

    def plan(self, memory: Memory, scanned: Scanned, content: str) -> Plan:
        def rescan() -> Scanned:
            return self.scan(content)

        plan = plan_drop(memory, scanned, self.settings, self.tokenizer, self.spill, rescan, limits=self.limits)
        allocator.trim()
        return plan

    def write(self, mem: Memory, rec: DropRecord, plan: Plan, meta: dict, documents: pa.Table) -> None:
        """Digest and row index from the packed rows, then one `commit_drop` streaming them (under writer())."""
        rows = self.limits.batch_rows if self.limits else BATCH_ROWS
        bookkeeping(rec, plan.packed, plan.clusters, batch_rows=rows)
        allocator.trim()
        schema = sequences_schema(meta)
        advance = self.bars.counter(f"write {rec.drop_id}", rec.sequences + rec.holdout_sequences)
        batches = record_batches(rec.drop_id, plan.packed, plan.clusters, schema, advance, batch_rows=rows)
        mem.commit_drop(pa.RecordBatchReader.from_batches(schema, batches), rec, meta, documents)


def open_engine(source: DropSource, ref: DropRef, settings: Settings, tokenizer: Tokenizer, bars, limits=None):
    """The engine `ingest.engine` names; `limits` bound this process (with engine ray, the driver; each Ray task
    reserves ingest.max_memory_mb for itself: components.ingest.engine_ray)."""
    if settings.ingest.engine == "ray":
        from components.ingest.engine_ray import RayEngine  # only here: the local path never imports ray

        return RayEngine(source, ref, settings, tokenizer, bars, limits)
    return LocalEngine(source, ref, settings, tokenizer, bars, limits)
