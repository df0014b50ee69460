"""What the Ray engine's workers run (components.ingest.engine_ray is the driver's side): scan one file, and build,
label, hash or write a range of a drop's rows. Imported only by the Ray engine, in the driver and on the workers.

Tokens never pass through the driver. A file's scan yields a row per tokenize batch (its documents' token counts
and tokens, one binary cell) and then the file's metadata row (digest, issues, document hashes as 32-byte binaries,
which documents it tokenized); the rows stay in Ray's object store as blocks. Every later task rebuilds the drop's
layout from the same metadata (`RowsSpec`, put in the object store once, so the layout is the one the driver
planned: components.core.packing.split_layouts is deterministic) and reads the documents' tokens from those blocks
(`BlockFetch`), so rows are built next to the data, never on the driver.

Memory: each task runs under the memory Ray reserved for it (ingest.max_memory_mb) and takes its batch sizes from
it (`task_limits`): a scan task holds one tokenize batch and the block Ray Data is filling (the driver caps blocks
at a batch's tokens), a rows task the drop's layout (the per-document and per-row metadata the driver's
`check_metadata` bounds), one featurized chunk or record batch, and at most BLOCKS_HELD scan blocks mapped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import psutil
import pyarrow as pa
import ray

from components.core.config import S3Config
from components.core.digests import Digests, digest
from components.core.packing import SplitPacked, split_layouts
from components.ingest.clustering import label_rows
from components.ingest.drops import DropScan, open_source
from components.ingest.limits import MB, Limits, derive_limits
from components.ingest.rows import packed_digest, record_batches
from components.ingest.scan import TOKENIZE_DOCS
from components.ingest.spill import TOKEN

BLOCKS_HELD = 4  # scan blocks a task keeps mapped at a time (rows are built in document order, mostly)


@lru_cache(maxsize=4)
def _source(location: str, s3_json: str):
    """The drop source, opened on the worker itself (an S3 client from the worker's own environment)."""
    return open_source(location, S3Config.model_validate_json(s3_json))


# ---- limits: what Ray reserved for this task -----------------------------------------------------------------------


def heap_mb() -> float:
    """This worker process's own memory: its RSS less the shared pages (the object store's blocks it maps, which Ray
    counts as object store memory, not the task's; and the shared libraries' code)."""
    info = psutil.Process().memory_info()
    return (info.rss - info.shared) / MB


def task_limits(context_length: int) -> Limits:
    """The batch sizes that keep this task under the memory Ray reserved for it (the `memory` option the driver
    sets from ingest.max_memory_mb: components.ingest.engine_ray), derived as the local engine derives them
    (components.ingest.limits) over this worker's own heap; a bound too small for a worker is refused with the local
    engine's one-line error, prefixed with where it ran."""
    context = ray.get_runtime_context()
    reserved = context.get_assigned_resources().get("memory", 0.0)
    if not reserved:
        raise RuntimeError("an ingest task ran without a memory request: every Ray ingest task reserves memory")
    try:
        return derive_limits(int(reserved // MB), 1, context_length, base_mb=heap_mb())
    except ValueError as exc:
        raise ValueError(f"a Ray ingest task on node {context.get_node_id()[:8]}: {exc}") from None


# ---- scan: a file's tokens as rows of one tokenize batch each, then its metadata row ------------------------------


def scan_file(row: dict, location: str, s3_json: str, drop_id: str, limit: int, tokenizer, parse: bool, context: int):
    """Hash, read, check and (with `parse`, a `tokenizer` and no issues) tokenize one file of the drop:
    `DropScan.file_documents`, the same code the local engine runs over the whole drop. Yields one table per tokenize
    batch (its documents' tokens), so a task holds one batch, not its file's tokens, then the file's metadata row.
    Every non-empty document is tokenized, repeats included: the driver decides which occurrence is stored
    (components.ingest.scan's docstring says why)."""
    batch_bytes = task_limits(context).tokenize_bytes
    if isinstance(tokenizer, ray.ObjectRef):  # put once by the driver, got once per task
        tokenizer = ray.get(tokenizer)
    scan = DropScan(_source(location, s3_json), drop_id, limit, parse=parse)
    index, name = row["index"], row["name"]
    hashes, batch = Digests(), []  # numpy arrays per document
    n_documents, size, part = 0, 0, 0

    def flush() -> pa.Table:
        data = [np.asarray(tokens).astype(TOKEN, copy=False) for tokens in tokenizer.encode_batch(batch)]
        batch.clear()
        lengths = pa.array([[len(d) for d in data]], pa.list_(pa.int64()))
        return _row(index, part, tok_lengths=lengths, tokens=b"".join(d.tobytes() for d in data))

    for doc in scan.file_documents(name):
        n_documents += 1
        if not doc.text:
            continue
        h = digest(doc.text)
        hashes.append(h)
        if tokenizer is None or scan.contents.issues:  # a drop with issues is rejected: no tokens
            continue
        batch.append(doc.text)
        size += len(doc.text)
        if len(batch) >= TOKENIZE_DOCS or size >= batch_bytes:
            yield flush()
            part, size = part + 1, 0
    if batch and not scan.contents.issues:
        yield flush()
        part += 1
    manifest = scan.contents.manifest
    yield _row(
        index,
        part,
        is_file=True,
        name=name,
        digest=scan.digests.get(name, ""),
        n_bytes=scan.contents.n_bytes,
        n_document_files=scan.n_document_files,
        issues=json.dumps([[i.file, i.line, i.reason, i.fix] for i in scan.contents.issues]),
        manifest=manifest.model_dump_json() if manifest else "",
        n_documents=n_documents,
        hashes=pa.ListArray.from_arrays(pa.array([0, len(hashes)], pa.int32()), fixed_binary(hashes.raw)),
    )


SCAN_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # the file's place in the drop
        ("part", pa.int64()),  # the row's place among the file's rows
        ("is_file", pa.bool_()),  # the file's metadata row (its last): the columns below up to `hashes`
        ("name", pa.string()),
        ("digest", pa.string()),
        ("n_bytes", pa.int64()),
        ("n_document_files", pa.int64()),
        ("issues", pa.string()),
        ("manifest", pa.string()),
        ("n_documents", pa.int64()),
        ("hashes", pa.list_(pa.binary(32))),  # every non-empty document's sha256, in file order
        ("tok_lengths", pa.list_(pa.int64())),  # a tokenize batch's row: its documents' token counts ...
        ("tokens", pa.large_binary()),  # ... and their tokens, one after the other
    ]
)
_EMPTY = {"is_file": False, "name": "", "digest": "", "n_bytes": 0, "n_document_files": 0, "issues": "[]"}
_EMPTY |= {"manifest": "", "n_documents": 0, "tokens": b""}


def _row(index: int, part: int, **values) -> pa.Table:
    """One row of SCAN_SCHEMA: `values` (list columns as one-row Arrow arrays), the rest empty."""
    values = _EMPTY | {"index": index, "part": part} | values
    columns = []
    for field in SCAN_SCHEMA:
        value = values.get(field.name)
        if value is None:  # an empty list
            value = pa.array([[]], field.type)
        elif not isinstance(value, pa.Array):
            value = pa.array([value], field.type)
        columns.append(value)
    return pa.Table.from_arrays(columns, schema=SCAN_SCHEMA)


def fixed_binary(raw: np.ndarray) -> pa.Array:
    """'S32' digests as an Arrow binary(32) array, byte for byte (numpy would strip an item's trailing zeros)."""
    raw = np.ascontiguousarray(raw, dtype="S32")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(raw), [None, pa.py_buffer(raw.tobytes())])


def scan_files(batch: pa.Table, **kwargs):
    """Ray Data's map_batches function (a generator): `scan_file` on each file (row) of the batch."""
    for row in batch.to_pylist():
        yield from scan_file(row, **kwargs)


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
    mask: np.ndarray | None = None  # each stored document's split, as the driver chose it (components.ingest.dedup)


class BlockFetch:
    """`fetch(doc)` for split_layouts: the document's tokens, sliced out of its scan block (zero-copy from the object
    store), with the BLOCKS_HELD blocks used last kept at hand."""

    def __init__(self, spec: RowsSpec) -> None:
        self.spec = spec
        self.cells: OrderedDict[int, list] = OrderedDict()

    def __call__(self, doc: int) -> np.ndarray:
        block, row, offset = (int(v) for v in self.spec.where[doc])
        if block in self.cells:
            self.cells.move_to_end(block)
        else:
            self.cells[block] = ray.get(self.spec.blocks[block]).column("tokens").chunks
            if len(self.cells) > BLOCKS_HELD:
                self.cells.popitem(last=False)
        cell = _cell(self.cells[block], row)
        n = int(self.spec.lengths[doc])
        return np.frombuffer(cell, dtype=TOKEN, count=n, offset=offset * TOKEN.itemsize)


def _cell(chunks: list, row: int):
    for chunk in chunks:
        if row < len(chunk):
            return chunk[row].as_buffer()
        row -= len(chunk)
    raise IndexError(f"row {row} is past the scan block")


def rebuild(spec: RowsSpec) -> tuple[SplitPacked, Limits]:
    """The drop's rows as the driver planned them, and this task's batch sizes (`task_limits`)."""
    limits = task_limits(spec.layout_args[0])
    packed = split_layouts(spec.lengths, spec.hashes, *spec.layout_args, fetch=BlockFetch(spec), mask=spec.mask)
    return packed, limits


@ray.remote
def sample_rows(spec: RowsSpec, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and lengths of the train rows the driver fits k-means on."""
    train = rebuild(spec)[0].train
    return train.tokens[rows], train.lengths[rows]


@ray.remote
def labels(spec: RowsSpec, split: str, start: int, stop: int, centers: np.ndarray) -> np.ndarray:
    """Nearest center of the split's rows [start, stop), featurized `chunk_tokens` at a time."""
    packed, limits = rebuild(spec)
    return label_rows(getattr(packed, split), centers, np.arange(start, stop), limits.chunk_tokens)


@ray.remote
def digest_rows(spec: RowsSpec, clusters: tuple[np.ndarray, np.ndarray]) -> str:
    """The drop's row digest (components.ingest.rows.packed_digest): one sha256 stream, so one task."""
    packed, limits = rebuild(spec)
    return packed_digest(spec.drop_id, packed, clusters, limits.batch_rows)


@ray.remote
def write_rows(spec: RowsSpec, clusters, schema: pa.Schema, start: int, stop: int, target: dict) -> list[str]:
    """Write rows [start, stop) of the write order as Lance fragments of the memory's table (lance-ray), uncommitted;
    returns their metadata as JSON for the driver's one commit."""
    from lance_ray.fragment import write_fragment

    packed, limits = rebuild(spec)
    batches = record_batches(spec.drop_id, packed, clusters, schema, lambda n: None, start, stop, limits.batch_rows)
    written = write_fragment(
        (pa.Table.from_batches([b]) for b in batches),
        target["uri"],
        schema=schema,
        max_rows_per_file=max(1, stop - start),
        data_storage_version=target["data_storage_version"],
        storage_options=target["storage_options"],
    )
    return [json.dumps(fragment.to_json()) for fragment, _ in written]
