"""A drop's rows as ingest writes them, and the bookkeeping computed from them once, at ingest.

Write order (components.adapters.records.DropIndex relies on it): the train rows grouped by cluster, clusters
ascending and positions ascending inside each cluster, then the holdout rows by position. Every replay arm (drop,
cluster) is then one contiguous range of row ids, so a refresh gets its arms and the new drop's rows from the drop
records (O(number of arms)) instead of scanning every stored row. The `position` column keeps each row's place in
the packed order, so what a row holds, the row digest and the lock file do not depend on the write order.

The row digest (`rows_hash` of the record) is sha256 over the rows in (split, position) order, as
components.adapters.manifest `rows_digest` computes it from a table: hashed here from the packed rows, built a block
at a time, it costs one pass over the drop's tokens and no copy of them all.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from components.adapters.manifest import columns_digest
from components.adapters.records import DropRecord
from components.core.packing import SplitPacked
from components.ingest.write_order import SEGMENT_ROWS, WriteOrder, label_counts

BATCH_ROWS = 4096


def train_order(train_clusters: np.ndarray) -> WriteOrder:
    """Positions of the train rows in write order: grouped by cluster, clusters ascending, positions ascending inside
    each (a stable sort), so every (drop, cluster) arm is one range of row ids (DropIndex). Read by ranges
    (`order[a:b]`), computed from the labels per range (components.ingest.write_order): no per-row array."""
    return WriteOrder(train_clusters)


def _rows(tokens, idx: np.ndarray) -> np.ndarray:
    """tokens[idx], read in position order: a LazyRows builds each run of consecutive rows with one call, and the
    rows of one cluster are mostly short runs, so reading them sorted keeps a long document to one fetch per batch."""
    sort = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), tokens.shape[1]), np.int32)
    out[sort] = tokens[idx[sort]]
    return out


def write_parts(packed: SplitPacked, clusters: tuple[np.ndarray, np.ndarray]) -> list[tuple]:
    """(split, part, cluster labels, doc hashes per row, positions in write order: read by ranges, None for the
    position order) of each split, in write order."""
    return [
        ("train", packed.train, clusters[0], packed.train_doc_hashes, train_order(clusters[0])),
        ("holdout", packed.holdout, clusters[1], packed.holdout_doc_hashes, None),
    ]


def record_batches(
    drop_id: str,
    packed: SplitPacked,
    clusters: tuple[np.ndarray, np.ndarray],
    schema: pa.Schema,
    advance,
    start: int = 0,
    stop: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """The drop's rows [start, stop) of the write order (see the module docstring) as record batches, so the commit
    streams; the Ray engine writes each range as its own fragments (components.ingest.engine_ray). The write order
    is read SEGMENT_ROWS positions at a time (a whole number of batches), the batches cut from that."""
    width = schema.field("tokens").type.list_size
    segment = batch_rows * max(1, SEGMENT_ROWS // batch_rows)
    offset = 0  # write-order index of the split's first row
    for split, part, cluster, hashes, order in write_parts(packed, clusters):
        n = len(part.lengths)
        lo, hi = max(start - offset, 0), min(n if stop is None else stop - offset, n)
        offset += n
        for seg in range(lo, hi, segment):
            end = min(seg + segment, hi)
            if order is None:  # position order: the labels are one slice (a DiskArray reads it with one pread)
                positions, labels = np.arange(seg, end), cluster[seg:end]
            elif isinstance(order, WriteOrder):  # grouped by cluster: each row's label is known from the totals
                positions, labels = order[seg:end], order.clusters(seg, end)
            else:  # any other order (an array of positions): the labels gathered
                positions = order[seg:end]
                labels = cluster[positions]
            args = (schema, width, batch_rows, advance)
            yield from _batches(drop_id, split, part, labels, hashes, positions, *args)


def _batches(drop_id, split, part, labels, hashes, positions, schema, width, batch_rows, advance):
    """Record batches of `batch_rows` of the split's rows at `positions` (in that order) with their `labels`
    (uint16, components.ingest.clustering); labels and lengths are cast to the schema's int32 per batch."""
    for first in range(0, len(positions), batch_rows):
        idx = positions[first : first + batch_rows]
        flat = pa.array(_rows(part.tokens, idx).reshape(-1).astype(np.int32), pa.int32())
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([drop_id] * len(idx), pa.string()),
                pa.array([split] * len(idx), pa.string()),
                pa.array(idx.astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(flat, width),
                pa.array(part.lengths[idx].astype(np.int32)),
                pa.array(np.asarray(labels[first : first + batch_rows]).astype(np.int32)),
                hashes.take(idx).to_arrow(),  # hex-encoded per batch (components.core.digests)
            ],
            schema=schema,
        )
        advance(len(idx))


def packed_digest(
    drop_id: str, packed: SplitPacked, clusters: tuple[np.ndarray, np.ndarray], batch_rows: int = BATCH_ROWS
) -> str:
    """The drop's row digest, equal to `rows_digest` of its stored rows sorted by (split, position)."""
    parts = sorted(  # (split, position) order: "holdout" sorts before "train"
        [
            ("train", packed.train, clusters[0], packed.train_doc_hashes),
            ("holdout", packed.holdout, clusters[1], packed.holdout_doc_hashes),
        ],
        key=lambda p: p[0],
    )
    n = sum(len(p[1].lengths) for p in parts)
    columns = {  # every per-row column a block at a time (repeats, ranges): no whole-drop copy
        "drop_id": [itertools.repeat(drop_id, n)],
        "split": [itertools.repeat(split, len(part.lengths)) for split, part, _, _ in parts],
        "position": (
            np.arange(start, min(start + batch_rows, len(part.lengths)))
            for _, part, _, _ in parts
            for start in range(0, len(part.lengths), batch_rows)
        ),
        "length": (  # computed per block (a LazyArray over the layout: components.core.lazy)
            part.lengths[start : start + batch_rows]
            for _, part, _, _ in parts
            for start in range(0, len(part.lengths), batch_rows)
        ),
        "cluster": (  # uint16 labels, widened to 8 bytes by the digest a block at a time
            cluster[start : start + batch_rows]
            for _, part, cluster, _ in parts
            for start in range(0, len(part.lengths), batch_rows)
        ),
        "doc_hash": [hashes for _, _, _, hashes in parts],  # hex-encoded a block at a time
        "tokens": (  # built block by block (part.tokens may be a LazyRows over the token spill): one pass
            part.tokens[start : start + batch_rows]
            for _, part, _, _ in parts
            for start in range(0, len(part.lengths), batch_rows)
        ),
    }
    return columns_digest(n, columns)


def bookkeeping(
    rec: DropRecord,
    packed: SplitPacked,
    clusters: tuple[np.ndarray, np.ndarray],
    digest: str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> None:
    """Fill the record's row digest (`digest` when a Ray worker hashed the rows) and train rows per cluster (its
    fragments are added by the commit)."""
    rec.rows_hash = digest or packed_digest(rec.drop_id, packed, clusters, batch_rows)
    rec.arm_rows = json.dumps(label_counts(clusters[0], minlength=rec.clusters).tolist())  # DropIndex
