"""The memory's document index: which documents (by content hash) each drop commit stored, and in which split.

A table `documents` next to `sequences` (drop_id, version, doc_hash, split): one row per distinct document a drop
stored, appended by `Memory.commit_drop` after the drop's sequences and before its record (the commit point). It
is what exact deduplication across drops looks up; the `doc_hash` column of `sequences` cannot serve, as it names
only the document that starts each row, and a short document packed mid-row has no row of its own.

Live rows are those of a live drop commit (`version` in the live drops' commit versions): a row written by a writer
that died before its record carries a version no record ever names, so it is never seen (and `drop_orphans`
removes it at the next recovery); the rows of a rolled-back drop stop counting and count again when it comes back.

Cost, per drop: a search per new hash instead of a scan (issue 11, item 3). A Lance BTREE scalar index on
`doc_hash` (`INDEX`) is created with the table and updated in the commit path, before the record. `known` asks
`doc_hash IN (<new hashes>) AND version IN (<live commits>)` in chunks of `LOOKUP_CHUNK` hashes: a search of each
index segment. Measured (benchmarks/results/bookkeeping.md) it grows far slower than the scan but is not flat: a
BTREE page holds 4096 hashes, and a drop whose hashes outnumber the pages reads most of them; the index wins once
the memory holds ~100x the new drop's documents. If the index lags (a writer died between the append and the
index update), Lance searches the unindexed fragments too (a flat filter over just those rows), and the next
append indexes them.

Segments: merging each append into one index would rewrite the whole index every time (measured linear in the
table's size), and one segment per append makes every lookup search them all (1e4 hashes in 3e6 documents: 538
ms CPU over 12 segments, 447 over 4; benchmarks/bookkeeping.py). So segments merge like a binary counter
(`merge_count`): the new rows' segment absorbs the newest segments while they are no bigger than what it holds so
far, which keeps about log2(drops) segments and rewrites each row about log2(drops) times; `MAX_SEGMENTS` caps
them. `compact` (with `amr memory compact`, once `memory.compact_fragments` have piled up) merges them into one and
compacts the table; `amr memory cleanup` prunes its old versions.

Legacy: drops committed before this table existed have no rows; the table's schema metadata records the first
commit version it covers (`SINCE`), and `known` looks those older drops up in the `doc_hash` column of their
sequences (their documents that begin a row are found, shorter ones packed mid-row are not). A table written before
the index existed (no `SINCE`) is scanned once per lookup, as it used to be, until its next append indexes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.core.digests import Digests

DOCUMENTS = "documents"
SCHEMA = pa.schema(
    [("drop_id", pa.string()), ("version", pa.int64()), ("doc_hash", pa.string()), ("split", pa.string())]
)
SCAN_BATCH = 65_536
INDEX = "doc_hash_idx"  # the BTREE index on doc_hash (LanceDB's default name for it)
SINCE = "amr.indexed_since"  # schema metadata: the first commit version whose documents the table holds
LOOKUP_CHUNK = 4096  # new hashes per `doc_hash IN (...)` query
MAX_SEGMENTS = 16  # index segments at which a commit merges them all (a lookup searches each one)


def rows(drop_id: str, hashes: Sequence[str] | Digests, in_holdout: np.ndarray) -> pa.Table:
    """The index rows of one drop (version filled in at commit); one per distinct hash, in order of first occurrence
    (built from the raw digests: no Python str per document)."""
    hashes = hashes if isinstance(hashes, Digests) else Digests(hashes)
    if len(hashes) != len(in_holdout):
        raise ValueError(f"{len(hashes)} hashes but {len(in_holdout)} split flags")
    _, first = np.unique(hashes.raw, return_index=True)
    first.sort()
    n = len(first)
    return pa.table(
        {
            "drop_id": pa.repeat(pa.scalar(drop_id, pa.string()), n),
            "version": pa.array(np.zeros(n, np.int64)),
            "doc_hash": hashes.take(first).to_arrow(),
            "split": pc.if_else(pa.array(np.asarray(in_holdout, dtype=bool)[first]), "holdout", "train"),
        },
        schema=SCHEMA,
    )


def append(db: Any, table: pa.Table, version: int) -> None:
    """Add one commit's rows and index them (see the module docstring); call before the commit's record."""
    stamped = table.set_column(1, "version", pa.array(np.full(table.num_rows, version, np.int64)))
    if DOCUMENTS in db.list_tables().tables:
        docs = db.open_table(DOCUMENTS)
        docs.add(stamped)
    else:
        docs = db.create_table(DOCUMENTS, data=stamped, schema=SCHEMA.with_metadata({SINCE: str(version)}))
    index(docs)


def index(docs: Any) -> None:
    """Index the rows no segment of `INDEX` covers yet: a new segment of just them, or the whole index when the
    table has none (created before the index existed, or its writer died before indexing: once)."""
    dataset = docs.to_lance()  # one Lance dataset object for every step: it follows its own commits
    if not _segments(dataset):
        if SINCE.encode() not in (dataset.schema.metadata or {}):  # a table from before: it covers from its first row
            first = pc.min(dataset.to_table(columns=["version"]).column("version")).as_py()
            dataset.update_schema_metadata({SINCE: str(first)})
        dataset.create_scalar_index("doc_hash", "BTREE", name=INDEX)
    else:
        dataset.optimize.optimize_indices(index_names=[INDEX], num_indices_to_merge=merge_count(dataset))


def merge_count(dataset: Any) -> int:
    """How many of the newest index segments the segment of the unindexed rows absorbs (Lance merges the newest
    ones): while the next is no bigger than the rows gathered so far; all of them at `MAX_SEGMENTS`."""
    rows = {f.fragment_id: f.metadata.physical_rows for f in dataset.get_fragments()}
    segments = sorted((i for i in dataset.list_indices() if i["name"] == INDEX), key=lambda i: i["version"])
    sizes = [sum(rows.get(f, 0) for f in s["fragment_ids"]) for s in segments]
    if len(sizes) >= MAX_SEGMENTS:
        return len(sizes)
    merged, gathered = 0, sum(rows.values()) - sum(sizes)
    while merged < len(sizes) and sizes[-1 - merged] <= gathered:
        gathered += sizes[-1 - merged]
        merged += 1
    return merged


def _segments(dataset: Any) -> int:
    return sum(1 for i in dataset.list_indices() if i["name"] == INDEX)


def compact(db: Any, min_fragments: int) -> bool:
    """Merge the index's per-drop segments into one and rewrite the table into few fragments, once either count
    has reached `min_fragments`; True if it did. Call inside the memory's writer().

    Merging comes first: Lance does not compact fragments that different index segments cover."""
    if DOCUMENTS not in db.list_tables().tables:
        return False
    dataset = db.open_table(DOCUMENTS).to_lance()
    if max(len(dataset.get_fragments()), _segments(dataset)) < min_fragments:
        return False
    if _segments(dataset):
        dataset.optimize.optimize_indices(index_names=[INDEX], num_indices_to_merge=_segments(dataset))
    dataset.optimize.compact_files(materialize_deletions=True)  # Lance remaps the index's row ids
    return True


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
    wanted = sorted(set(hashes))
    covered: set[int] = set()
    if DOCUMENTS in db.list_tables().tables:
        dataset = db.open_table(DOCUMENTS).to_lance()
        since = (dataset.schema.metadata or {}).get(SINCE.encode())
        if since is None:  # written before the index: scan it, as before
            covered = scan(dataset, live, wanted, found)
        else:
            covered = {v for v in live.values() if v >= int(since)}
            search(dataset, live, wanted, found)
    legacy = sorted(d for d, v in live.items() if v not in covered)
    if legacy and sequences is not None:
        ids = ", ".join("'" + d + "'" for d in legacy)  # drop ids are plain names (components.core.ids)
        batches = sequences.to_lance().to_batches(
            columns=["doc_hash", "split"], filter=f"drop_id IN ({ids})", batch_size=SCAN_BATCH
        )
        _hits(batches, pa.array(wanted, pa.string()), found, None)
    return found


def search(dataset: Any, live: dict[str, int], wanted: list[str], found: dict[str, str]) -> None:
    """Add the live hits among `wanted` to `found`: index lookups, `LOOKUP_CHUNK` hashes at a time."""
    versions = ", ".join(str(v) for v in sorted(set(live.values())))
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        values = ", ".join(_quote(h) for h in wanted[start : start + LOOKUP_CHUNK])
        hits = dataset.to_table(
            columns=["doc_hash", "split"], filter=f"doc_hash IN ({values}) AND version IN ({versions})"
        )
        found.update(zip(hits.column("doc_hash").to_pylist(), hits.column("split").to_pylist(), strict=True))


def scan(dataset: Any, live: dict[str, int], wanted: list[str], found: dict[str, str]) -> set[int]:
    """The same from one pass over the whole table (before the index: O(memory)); returns the versions seen."""
    versions = ", ".join(str(v) for v in sorted(set(live.values())))
    seen: set[int] = set()
    batches = dataset.to_batches(
        columns=["version", "doc_hash", "split"], filter=f"version IN ({versions})", batch_size=SCAN_BATCH
    )
    _hits(batches, pa.array(wanted, pa.string()), found, seen)
    return seen


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"  # doc hashes are hex; quoted for the SQL filter all the same


def drop_orphans(db: Any, committed: set[int]) -> None:
    """Remove rows of commits no record names (a writer died between the index append and its record)."""
    if DOCUMENTS not in db.list_tables().tables:
        return
    table = db.open_table(DOCUMENTS)
    newest = max(committed, default=0)
    if table.count_rows(f"version > {newest}"):
        table.delete(f"version > {newest}")
