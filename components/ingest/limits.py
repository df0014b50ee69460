"""`ingest.max_memory_mb`: the bound on an ingest's peak RSS, and the batch sizes and worker count derived from it.

What an ingest holds (measured on the byte tokenizer, context_length 512; benchmarks/results/scale_ingest.md):
  * the loaded libraries (LanceDB, pyarrow, scikit-learn, the tokenizer): ~285 MB, measured as the process's RSS
    when the ingest starts (`base_mb`);
  * the k-means fit: up to FIT_SAMPLE rows, their tokens and hashed features (`fit_mb`: 430 MB at context_length
    512, 3.4 GB at 4096, for a drop of FIT_SAMPLE rows or more);
  * one batch at a time of each stream: the texts being tokenized (TOKEN_COST bytes per byte of text), the rows
    being featurized for the cluster assignment (FEATURE_COST bytes per token) and the rows of a record batch
    being written (ROW_COST bytes per token);
  * per-document metadata, which grows with the drop (benchmarks/ingest_metadata.py, tracemalloc, a 50 MB drop at
    context_length 128: benchmarks/results/ingest_metadata.md). A document's hash is 32 raw bytes in one numpy
    array (components.core.digests, grown in parts: no doubling copy; ~39 bytes kept after the scan) and the plan
    adds ~20 bytes (the split mask, the kept documents' indices and token counts); its spill offset, length and
    part (20 bytes) and its place in a layout (16 bytes) are on disk (components.core.ondisk, read by blocks). The
    scan keeps no set of digests (every document is tokenized: components.ingest.scan), and the deduplication and
    holdout choice run bucket by bucket on disk (components.ingest.dedup): ~12 bytes a document above a fixed
    10-30 MB (benchmarks/dedup_memory.py, benchmarks/results/dedup_memory.md; ~90-115 bytes with np.unique over
    the whole drop and ~110 more for the scan's set before). With the spill's token counts read whole while
    planning (8 bytes), the peak is ~DOC_COST bytes a document (~60 kept + ~30 transient, rounded up);
  * per row, nothing in memory (ROW_META_COST): the cluster labels are written to a file in the ingest's spill
    directory as they are computed (components.core.ondisk.DiskArray, read back by blocks with pread, never mapped)
    and renumbered block by block; the write order keeps only each cluster's row count every SCAN_ROWS rows
    (components.ingest.write_order: 8 bytes a cluster per 262,144 rows, ~0.03 bytes a row at 1,024 clusters). A
    row's length, first document and document hash are computed per block from the per-document arrays
    (components.core.lazy, components.core.packing.Layout); the row digest and the commit copy per batch. The
    labels were 2 bytes a row in memory before (4 while renumbered: 60-120 MB for the 30 M rows of a 4 GB drop at
    context_length 128). So the metadata of a drop of ~8 kB documents is ~0.012 MB per MB of text (by these
    constants: a 2,048 MB bound leaves room for the metadata of ~100 GB of text at context_length 128), of 1 kB
    documents ~0.1 MB per MB (~13 GB). `check_metadata` refuses a larger drop before it is planned, with the fix.
  * with `ingest.workers` > 1, during the scan only, each worker process: ~WORKER_MB of imports (no LanceDB,
    no scikit-learn, no transformers for the byte tokenizer; WORKER_MB_HF with a Hugging Face tokenizer) plus its
    tokenize batch.

What grew with the drop once the metadata was on disk was the commit (benchmarks/results/ondisk.md, byte
tokenizer, context_length 128, one process): the high-water RSS before the commit was 382 / 402 MB at 50 / 1,000
MB of text, the Lance write of the rows added 140 / 238 MB on top; most of that growth was memory malloc kept
after it was freed, not memory held. With a fixed trim threshold and malloc_trim between the phases
(components.core.allocator) the end-of-ingest peak is 477 / 549 MB (374 / 393 before the commit;
benchmarks/results/ingest_rss.jsonl): +72 MB from 50 MB to 1 GB of text, ~20 MB of it the per-document metadata
above and ~17 MB Lance's writer (measured alone: +64 MB at 0.5 M rows, +81 MB at 7 M), inside HEADROOM_MB.

Each batch gets at most a quarter of what the bound leaves after the libraries and the fit (never more than the
sizes measured as fast: 8 MB of text, 1 M tokens, 4,096 rows), the metadata the rest; workers are started only
as far as the bound allows. Results never depend on these sizes: the same rows and digests for any bound.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import psutil

from components.ingest.clustering import CHUNK_TOKENS, FIT_SAMPLE, N_FEATURES

MB = 1 << 20
TOKEN_COST = 12  # bytes per byte of text in a tokenize batch: the str, its UTF-8 copy, int32 ids, spill bytes
FEATURE_COST = 80  # bytes per token while featurizing: 64-bit keys, sorted buckets, run starts, CSR
ROW_COST = 16  # bytes per token of a record batch: built rows, the int32 copy, the Arrow array
DOC_COST = 100  # bytes per document at the metadata's peak (module docstring; ~60 kept + ~30; was 200, then 120)
ROW_META_COST = 0.05  # bytes per row: the write order's checkpoints (labels on disk; was 4, and 40 before that)
WORKER_MB = 110  # a scan worker's RSS before its batch, byte tokenizer (the readers and numpy; measured 97 MB)
WORKER_MB_HF = 450  # ... with a Hugging Face tokenizer (transformers, the tokenizer; ~420 MB measured, SmolLM2)
HEADROOM_MB = 160  # allocator slack and the commit: Lance's writer and batches in flight (+110-145 MB measured)
MAX_TOKENIZE_BYTES, MIN_TOKENIZE_BYTES = 8 * MB, 256 << 10
MAX_BATCH_ROWS, MIN_BATCH_ROWS = 4096, 64
MIN_CHUNK_TOKENS = 1 << 16
MIN_FIT_ROWS = 2048  # the fit the smallest bound must allow; a drop's own fit is checked when it is planned
MIN_META_MB = 16  # ... and the metadata of a small drop (~45 MB of text at context_length 128)


@dataclass(frozen=True)
class Limits:
    max_memory_mb: int
    base_mb: float
    context_length: int
    workers: int
    tokenize_bytes: int
    chunk_tokens: int
    batch_rows: int

    @property
    def room_mb(self) -> float:
        """What is left for the drop's metadata and the k-means fit once the libraries and batches are counted."""
        batches = self.tokenize_bytes * TOKEN_COST + self.chunk_tokens * FEATURE_COST
        return self.max_memory_mb - self.base_mb - HEADROOM_MB - batches / MB


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def fit_mb(context_length: int, rows: int = FIT_SAMPLE) -> float:
    """The k-means fit's memory for `rows` sampled rows (at most FIT_SAMPLE): their tokens, the padding-masked copy
    and np.unique's, and their features (float32 values and int32 indices, twice while the chunks are stacked)."""
    per_row = context_length * 4 * 3 + min(2 * context_length - 1, N_FEATURES) * 8 * 2
    return min(rows, FIT_SAMPLE) * per_row / MB


def suggested_mb(need: float) -> int:
    """The bound a refusal names: `need` rounded up past 32 MB of slack to a multiple of 64 MB, since the libraries'
    RSS at start (part of `need`) moves by a few MB from one process to the next."""
    return 64 * math.ceil((need + 32) / 64)


def derive_limits(
    max_memory_mb: int, workers: int, context_length: int, base_mb: float | None = None, byte: bool = True
) -> Limits:
    """The batch sizes and worker count that keep an ingest under `max_memory_mb` (module docstring); raises
    ValueError, one line naming the key and the fix, for a bound too small for even the smallest batches and a
    small drop's fit (MIN_FIT_ROWS rows; a larger drop is checked against its own fit by `check_metadata`)."""
    base = rss_mb() if base_mb is None else base_mb
    small_fit = fit_mb(context_length, MIN_FIT_ROWS)
    smallest = (
        MIN_TOKENIZE_BYTES * TOKEN_COST + MIN_CHUNK_TOKENS * FEATURE_COST + MIN_BATCH_ROWS * context_length * ROW_COST
    )
    need = base + small_fit + MIN_META_MB + HEADROOM_MB + smallest / MB
    if max_memory_mb < need:
        raise ValueError(
            f"ingest.max_memory_mb = {max_memory_mb} is below the {need:.0f} MB an ingest needs at the least "
            f"({base:.0f} MB of loaded libraries, {small_fit + MIN_META_MB:.0f} MB for a small drop's metadata and "
            f"k-means fit at context_length {context_length}, {HEADROOM_MB + smallest / MB:.0f} MB for the smallest "
            "batches and the commit). "
            f"Fix: set ingest.max_memory_mb to {suggested_mb(need)} or more."
        )
    quarter = (max_memory_mb - base - fit_mb(context_length) - HEADROOM_MB) * MB / 4  # room beside a full fit
    tokenize = int(min(MAX_TOKENIZE_BYTES, max(MIN_TOKENIZE_BYTES, quarter / TOKEN_COST)))
    chunk = int(min(CHUNK_TOKENS, max(MIN_CHUNK_TOKENS, quarter / FEATURE_COST)))
    rows = int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, quarter / (context_length * ROW_COST))))
    wanted = workers or os.cpu_count() or 1
    per_worker = (WORKER_MB if byte else WORKER_MB_HF) + tokenize * TOKEN_COST / MB
    fits = int((max_memory_mb - base - HEADROOM_MB) // per_worker)  # the scan: driver + workers, no fit yet
    return Limits(max_memory_mb, base, context_length, max(1, min(wanted, fits)), tokenize, chunk, rows)


def check_metadata(limits: Limits, drop_id: str, n_documents: int, n_rows: int) -> None:
    """Refuse, before it is planned, a drop whose metadata and k-means fit would pass the bound (module docstring)."""
    meta = (n_documents * DOC_COST + n_rows * ROW_META_COST) / MB
    need = meta + fit_mb(limits.context_length, n_rows)
    if need > limits.room_mb:
        raise ValueError(
            f"drop {drop_id}: its {n_documents:,} documents and {n_rows:,} rows need ~{need:.0f} MB of metadata "
            f"and k-means sample, more than the {limits.room_mb:.0f} MB that ingest.max_memory_mb = "
            f"{limits.max_memory_mb} leaves. Fix: raise ingest.max_memory_mb to "
            f"{suggested_mb(limits.max_memory_mb + need - limits.room_mb)} or more, or publish the data as smaller "
            "drops."
        )
