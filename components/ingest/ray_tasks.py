"""What the Ray engine's workers run (components.ingest.engine_ray is the driver's side): scan one file, and build,
label, hash or write a range of a drop's rows. Imported only by the Ray engine, in the driver and on the workers.

Tokens never pass through the driver. A file's scan returns one row: its metadata (digest, issues, document hashes
and token counts) and its tokens as one binary cell, which stays in Ray's object store as part of a block. Every
later task rebuilds the drop's layout from the same metadata (`RowsSpec`, put in the object store once, so the
layout is the one the driver planned: components.core.packing.split_layouts is deterministic) and reads the
documents' tokens from those blocks (`BlockFetch`), so rows are built next to the data, never on the driver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import ray

from components.core.config import S3Config
from components.core.digests import Digests
from components.core.packing import SplitPacked, doc_hash, split_layouts
from components.ingest.clustering import label_rows
from components.ingest.drops import DropScan, open_source
from components.ingest.rows import packed_digest, record_batches
from components.ingest.scan import TOKENIZE_BYTES, TOKENIZE_DOCS
from components.ingest.spill import TOKEN

# ---- scan: one row per file --------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _source(location: str, s3_json: str):
    """The drop source, opened on the worker itself (an S3 client from the worker's own environment)."""
    return open_source(location, S3Config.model_validate_json(s3_json))


def scan_file(row: dict, location: str, s3_json: str, drop_id: str, limit: int, tokenizer, parse: bool) -> dict:
    """Hash, read, check and (with `parse`, a `tokenizer` and no issues) tokenize one file of the drop:
    `DropScan.file_documents`, the same code the local engine runs over the whole drop. Documents repeated inside
    the file are tokenized once; repeats across files are deduplicated by the driver, which reads the metadata."""
    if isinstance(tokenizer, ray.ObjectRef):  # put once by the driver, got once per task
        tokenizer = ray.get(tokenizer)
    scan = DropScan(_source(location, s3_json), drop_id, limit, parse=parse)
    name = row["name"]
    hashes, tok_hashes, tok_lengths, chunks, batch, seen = [], [], [], [], [], set()
    n_documents, size = 0, 0

    def flush() -> None:
        for tokens in tokenizer.encode_batch(batch):
            data = np.asarray(tokens).astype(TOKEN, copy=False)
            tok_lengths.append(len(data))
            chunks.append(data.tobytes())
        batch.clear()

    for doc in scan.file_documents(name):
        n_documents += 1
        if not doc.text:
            continue
        h = doc_hash(doc.text)
        hashes.append(h)
        if tokenizer is None or h in seen or scan.contents.issues:  # a drop with issues is rejected: no tokens
            continue
        seen.add(h)
        tok_hashes.append(h)
        batch.append(doc.text)
        size += len(doc.text)
        if len(batch) >= TOKENIZE_DOCS or size >= TOKENIZE_BYTES:
            flush()
            size = 0
    if batch and not scan.contents.issues:
        flush()
    issues = [[i.file, i.line, i.reason, i.fix] for i in scan.contents.issues]
    manifest = scan.contents.manifest
    return {
        "index": row["index"],
        "name": name,
        "digest": scan.digests.get(name, ""),
        "n_bytes": scan.contents.n_bytes,
        "n_document_files": scan.n_document_files,
        "issues": json.dumps(issues),
        "manifest": manifest.model_dump_json() if manifest else "",
        "n_documents": n_documents,
        "hashes": hashes,
        "tok_hashes": tok_hashes[: len(tok_lengths)],
        "tok_lengths": tok_lengths,
        "tokens": b"".join(chunks),
    }


SCAN_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("name", pa.string()),
        ("digest", pa.string()),
        ("n_bytes", pa.int64()),
        ("n_document_files", pa.int64()),
        ("issues", pa.string()),
        ("manifest", pa.string()),
        ("n_documents", pa.int64()),
        ("hashes", pa.list_(pa.string())),
        ("tok_hashes", pa.list_(pa.string())),
        ("tok_lengths", pa.list_(pa.int64())),
        ("tokens", pa.large_binary()),
    ]
)


def scan_files(batch: pa.Table, **kwargs) -> pa.Table:
    """Ray Data's map_batches function: `scan_file` on each file (row) of the batch, with an explicit schema."""
    return pa.Table.from_pylist([scan_file(row, **kwargs) for row in batch.to_pylist()], schema=SCAN_SCHEMA)


@ray.remote
def metadata(block: pa.Table) -> pa.Table:
    """A scan block without its tokens: all the driver ever reads of it."""
    return block.drop_columns(["tokens"])


# ---- rows: rebuilt from the metadata, tokens read from the scan blocks ---------------------------------------------


@dataclass
class RowsSpec:
    """Everything a worker needs to rebuild the drop's SplitPacked exactly as the driver planned it."""

    drop_id: str
    lengths: np.ndarray  # tokens of each stored document (split_layouts input order)
    hashes: Digests  # the stored documents' hashes (components.core.digests)
    layout_args: tuple  # context_length, eos_id, pad_id, holdout_fraction, min_holdout_sequences
    where: np.ndarray  # [n_docs, 3] int64: block, row in the block, token offset in the row
    blocks: list  # ObjectRefs of the scan's blocks (kept alive by this spec)


class BlockFetch:
    """`fetch(doc)` for split_layouts: the document's tokens, sliced out of its scan block (zero-copy from the object
    store; each block is got once per task)."""

    def __init__(self, spec: RowsSpec) -> None:
        self.spec = spec
        self.cells: dict[int, list] = {}

    def __call__(self, doc: int) -> np.ndarray:
        block, row, offset = (int(v) for v in self.spec.where[doc])
        if block not in self.cells:
            self.cells[block] = ray.get(self.spec.blocks[block]).column("tokens").chunks
        cell = _cell(self.cells[block], row)
        n = int(self.spec.lengths[doc])
        return np.frombuffer(cell, dtype=TOKEN, count=n, offset=offset * TOKEN.itemsize)


def _cell(chunks: list, row: int):
    for chunk in chunks:
        if row < len(chunk):
            return chunk[row].as_buffer()
        row -= len(chunk)
    raise IndexError(f"row {row} is past the scan block")


def rebuild(spec: RowsSpec) -> SplitPacked:
    return split_layouts(spec.lengths, spec.hashes, *spec.layout_args, fetch=BlockFetch(spec))


@ray.remote
def sample_rows(spec: RowsSpec, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and lengths of the train rows the driver fits k-means on."""
    train = rebuild(spec).train
    return train.tokens[rows], train.lengths[rows]


@ray.remote
def labels(spec: RowsSpec, split: str, start: int, stop: int, centers: np.ndarray) -> np.ndarray:
    """Nearest center of the split's rows [start, stop)."""
    part = getattr(rebuild(spec), split)
    return label_rows(part, centers, np.arange(start, stop))


@ray.remote
def digest(spec: RowsSpec, clusters: tuple[np.ndarray, np.ndarray]) -> str:
    """The drop's row digest (components.ingest.rows.packed_digest): one sha256 stream, so one task."""
    return packed_digest(spec.drop_id, rebuild(spec), clusters)


@ray.remote
def write_rows(spec: RowsSpec, clusters, schema: pa.Schema, start: int, stop: int, target: dict) -> list[str]:
    """Write rows [start, stop) of the write order as Lance fragments of the memory's table (lance-ray), uncommitted;
    returns their metadata as JSON for the driver's one commit."""
    from lance_ray.fragment import write_fragment

    batches = record_batches(spec.drop_id, rebuild(spec), clusters, schema, lambda n: None, start, stop)
    written = write_fragment(
        (pa.Table.from_batches([b]) for b in batches),
        target["uri"],
        schema=schema,
        max_rows_per_file=max(1, stop - start),
        data_storage_version=target["data_storage_version"],
        storage_options=target["storage_options"],
    )
    return [json.dumps(fragment.to_json()) for fragment, _ in written]
