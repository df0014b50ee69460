"""The memory's document index: which documents (by content hash) each drop commit stored, and in which split.

A table `documents` next to `sequences` (drop_id, version, doc_hash, split): one row per distinct document a drop
stored, appended by `Memory.commit_drop` after the drop's sequences and before its record (the commit point). It
is what exact deduplication across drops looks up; the `doc_hash` column of `sequences` cannot serve, as it names
only the document that starts each row, and a short document packed mid-row has no row of its own.

Live rows are those of a live drop commit (`version` in the live drops' commit versions): a row written by a writer
that died before its record carries a version no record ever names, so it is never seen (and `drop_orphans`
removes it at the next recovery); the rows of a rolled-back drop stop counting and count again when it comes back.

Cost, per drop: `known` reads the `version`, `doc_hash` and `split` columns of the whole index once, in record
batches, and keeps only the hits (memory: the new drop's hashes plus the hits; I/O: ~80 bytes per stored document,
so 1e7 documents read ~0.8 GB per drop). That is O(memory), not O(new data). The move to O(new data) (issue 11,
item 3) keeps this table and its writes: a Lance BTREE scalar index on `doc_hash` (`create_scalar_index`,
refreshed by `optimize` after each append) turns the scan into `doc_hash IN (...)` lookups of the new hashes.
Drops committed before this table existed have no rows; `known` falls back to the `doc_hash` column of their
sequences, so their documents that begin a row are found, shorter ones packed mid-row are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DOCUMENTS = "documents"
SCHEMA = pa.schema(
    [("drop_id", pa.string()), ("version", pa.int64()), ("doc_hash", pa.string()), ("split", pa.string())]
)
SCAN_BATCH = 65_536


def rows(drop_id: str, hashes: Sequence[str], in_holdout: np.ndarray) -> pa.Table:
    """The index rows of one drop (version filled in at commit); one per distinct hash."""
    splits = np.where(np.asarray(in_holdout, dtype=bool), "holdout", "train").tolist()
    unique = dict(zip(hashes, splits, strict=True))
    return pa.table(
        {
            "drop_id": pa.array([drop_id] * len(unique), pa.string()),
            "version": pa.array(np.zeros(len(unique), np.int64)),
            "doc_hash": pa.array(list(unique), pa.string()),
            "split": pa.array(list(unique.values()), pa.string()),
        },
        schema=SCHEMA,
    )


def append(db: Any, table: pa.Table, version: int) -> None:
    stamped = table.set_column(1, "version", pa.array(np.full(table.num_rows, version, np.int64)))
    if DOCUMENTS in db.list_tables().tables:
        db.open_table(DOCUMENTS).add(stamped)
    else:
        db.create_table(DOCUMENTS, data=stamped, schema=SCHEMA)


def _hits(batches: Iterable[pa.RecordBatch], wanted: pa.Array, found: dict[str, str], seen: set[int] | None) -> None:
    for batch in batches:
        if seen is not None:
            seen.update(pc.unique(batch.column("version")).to_pylist())
        hit = batch.filter(pc.is_in(batch.column("doc_hash"), value_set=wanted))
        found.update(zip(hit.column("doc_hash").to_pylist(), hit.column("split").to_pylist(), strict=True))


def known(db: Any, live: dict[str, int], sequences: Any, hashes: Sequence[str]) -> dict[str, str]:
    """doc_hash -> split of each of `hashes` that a live drop (`live`: drop id -> commit version) already stored.

    `sequences` is the sequences table checked out at the memory version (or None when there is none), read only
    for live drops without index rows (see the module docstring).
    """
    found: dict[str, str] = {}
    if not live or not hashes:
        return found
    wanted = pa.array(sorted(set(hashes)), pa.string())
    versions = ", ".join(str(v) for v in sorted(set(live.values())))
    seen: set[int] = set()
    if DOCUMENTS in db.list_tables().tables:
        scan = (
            db.open_table(DOCUMENTS)
            .to_lance()
            .to_batches(
                columns=["version", "doc_hash", "split"], filter=f"version IN ({versions})", batch_size=SCAN_BATCH
            )
        )
        _hits(scan, wanted, found, seen)
    legacy = sorted(d for d, v in live.items() if v not in seen)
    if legacy and sequences is not None:
        ids = ", ".join("'" + d + "'" for d in legacy)  # drop ids are plain names (components.core.ids)
        scan = sequences.to_lance().to_batches(
            columns=["doc_hash", "split"], filter=f"drop_id IN ({ids})", batch_size=SCAN_BATCH
        )
        _hits(scan, wanted, found, None)
    return found


def drop_orphans(db: Any, committed: set[int]) -> None:
    """Remove rows of commits no record names (a writer died between the index append and its record)."""
    if DOCUMENTS not in db.list_tables().tables:
        return
    table = db.open_table(DOCUMENTS)
    newest = max(committed, default=0)
    if table.count_rows(f"version > {newest}"):
        table.delete(f"version > {newest}")
