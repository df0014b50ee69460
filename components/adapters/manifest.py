"""The memory's manifest: its version, live drops and a content hash of every row, as of one git commit.

It is stored as `memory.lock.json`, a lock file in the sense of a package lock: it pins content (it is no mutex;
those are in components.adapters.locks). The DVC `ingest` stage writes it (`amr memory lock`) with `cache: false`, so
it lives in git and every commit records the memory it was built with. It holds no timestamps and no paths: the same
memory always writes the same bytes, so an unchanged memory leaves `dvc status` clean. The content hash is sha256
over every column of every row, per drop in (split, position) order, plus the tokenizer settings: two memories with
equal hashes hold the same training data, whatever their Lance version numbers. `amr rollback`
(components.versioning.rollback) proves a restored memory against it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.adapters.memory import Memory
from components.adapters.records import INGESTED, DropIndex, DropRecord
from components.core.files import atomic_write
from components.core.ids import is_drop_id

MANIFEST_FILE = "memory.lock.json"
MANIFEST_FORMAT = 1
HASH_COLUMNS = ("drop_id", "split", "position", "length", "cluster", "doc_hash", "tokens")
STRING_COLUMNS = ("drop_id", "split", "doc_hash")  # ids, split names, hex hashes: no value holds a NUL
HASH_BLOCK = 1 << 22  # values per sha256 update


class ManifestError(RuntimeError):
    """The memory does not match a lock file, or its rows and records disagree."""


def rows_digest(rows: pa.Table) -> str:
    """sha256 over the columns of `rows` in HASH_COLUMNS order, each as fixed-width little-endian values."""
    columns = {}
    for name in HASH_COLUMNS:
        col = rows.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            columns[name] = [col.flatten().to_numpy()]
        else:
            columns[name] = [col.to_pylist() if pa.types.is_string(col.type) else col.to_numpy()]
    return columns_digest(rows.num_rows, columns)


def columns_digest(num_rows: int, columns: dict[str, list[Sequence]]) -> str:
    """`rows_digest` of rows given column by column, each column as chunks in row order (lists of str, arrays).

    Ingest hashes a drop's rows from its packed arrays this way (components.ingest.rows), without building the
    sorted table; the bytes fed to sha256 are the same, so the digests are equal (tests/test_bookkeeping.py).
    """
    h = hashlib.sha256(str(num_rows).encode())
    for name in HASH_COLUMNS:
        h.update(b"\0" + name.encode() + b"\0")
        chunks = columns[name]
        if name in STRING_COLUMNS:  # "\0".join of all values (no value holds a NUL), fed a block at a time
            values = (v for chunk in chunks for v in chunk)
            sep = ""
            while block := list(itertools.islice(values, HASH_BLOCK // 64)):
                h.update((sep + "\0".join(block)).encode())
                sep = "\0"
            continue
        dtype = "<i4" if name == "tokens" else "<i8"
        for chunk in chunks:
            flat = np.asarray(chunk).reshape(-1)
            for start in range(0, flat.size, HASH_BLOCK):  # bounded copies: a drop's tokens are hashed in blocks
                h.update(flat[start : start + HASH_BLOCK].astype(dtype).tobytes())
    return h.hexdigest()


def drop_digests(memory: Memory, version: int) -> dict[str, tuple[int, str]]:
    """Rows and digest of every drop present in the table at `version`, each sorted by (split, position)."""
    dataset = memory.table(version).to_lance()
    drops = pc.unique(dataset.to_table(columns=["drop_id"]).column("drop_id")).to_pylist()
    out = {}
    for drop in sorted(drops):
        if not is_drop_id(drop):
            raise ManifestError(f"the memory holds rows of an invalid drop id {drop!r}; it was not written by amr")
        rows = dataset.to_table(columns=list(HASH_COLUMNS), filter=f"drop_id = '{drop}'")
        out[drop] = (rows.num_rows, rows_digest(rows.sort_by([("split", "ascending"), ("position", "ascending")])))
    return out


def content_hash(meta: dict | None, digests: dict[str, tuple[int, str]]) -> str:
    """One hash of the tokenizer settings and every drop's rows: equal hashes, equal memories."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for drop, (rows, digest) in sorted(digests.items()):
        h.update(f"\n{drop}\0{rows}\0{digest}".encode())
    return h.hexdigest()


def _hash_drop(memory: Memory, version: int, drop: str) -> tuple[int, str]:
    """Rows and digest of one drop read back from the table at `version` (reads that drop's rows)."""
    dataset = memory.table(version).to_lance()
    rows = dataset.to_table(columns=list(HASH_COLUMNS), filter=f"drop_id = '{drop}'")
    return rows.num_rows, rows_digest(rows.sort_by([("split", "ascending"), ("position", "ascending")]))


def stored_digests(memory: Memory, records: list[DropRecord], version: int) -> dict[str, tuple[int, str]]:
    """Rows and digest of each record's drop as stored in its record at ingest: O(number of drops), no row read.

    A drop ingested before its digest was recorded (issue 11 item 3) is hashed from the table at `version`, once:
    a live drop's digest is then stored (Memory.store_digests), so the next lock reads it from the record.
    """
    out = {r.drop_id: (r.sequences + r.holdout_sequences, r.rows_hash) for r in records if r.rows_hash}
    missing = [r for r in records if not r.rows_hash]
    if missing:
        for rec in missing:
            if not is_drop_id(rec.drop_id):
                raise ManifestError(f"the memory records an invalid drop id {rec.drop_id!r}; it was not written by amr")
            out[rec.drop_id] = _hash_drop(memory, version, rec.drop_id)
        memory.store_digests({r.drop_id: (r.version, out[r.drop_id][1]) for r in missing})
    return out


def check_fragments(memory: Memory, records: list[DropRecord], version: int) -> None:
    """The table at `version` holds the records' rows, read from the Lance manifest (no data file): the same row
    count in all, and every fragment a record names that the version still has holds the rows the record says
    (a compaction replaces fragments by bigger ones, so their identity is not required); skipped when a record
    predates its fragment list."""
    indexes = [DropIndex.of(r) for r in records]
    if any(i is None for i in indexes):
        return
    want = dict(f for i in indexes for f in i.fragments)
    have = {f.fragment_id: f.metadata.physical_rows for f in memory.table(version).to_lance().get_fragments()}
    differ = sorted((f, n, want[f]) for f, n in have.items() if f in want and want[f] != n)
    if differ or sum(have.values()) != sum(want.values()):
        raise ManifestError(
            f"memory version {version} at {memory.uri} holds fragments {sorted(have.items())[:8]} "
            f"({sum(have.values())} rows), but the records of {sorted(r.drop_id for r in records)} say "
            f"{sorted(want.items())[:8]} ({sum(want.values())} rows)"
        )


def build_manifest(memory: Memory) -> dict[str, Any]:
    """The lock of the memory as readers see it, from the digests stored in its drop records (no row read)."""
    version, live = memory.version, memory.live()
    if version > 0:
        check_fragments(memory, live, version)
    digests = stored_digests(memory, live, version) if version > 0 else {}
    meta = memory.meta()
    drops = [
        {
            "drop_id": r.drop_id,
            "version": r.version,
            "source_hash": r.content_hash,
            "rows": digests[r.drop_id][0],
            "rows_hash": digests[r.drop_id][1],
        }
        for r in live
    ]
    return {
        "format": MANIFEST_FORMAT,
        "memory_version": version,
        "rows": sum(rows for rows, _ in digests.values()),
        "content_hash": content_hash(meta, digests),
        "meta": meta,
        "drops": drops,
    }


def verify_digests(memory: Memory) -> list[str]:
    """Re-hash every live drop's rows (`amr memory lock --verify`); the drops whose rows no longer match the digest
    stored in their record (a full read of the memory version; the lock itself never needs it)."""
    version, live = memory.version, memory.live()
    if version == 0:
        return []
    hashed = drop_digests(memory, version)
    stored = {r.drop_id: (r.sequences + r.holdout_sequences, r.rows_hash) for r in live if r.rows_hash}
    extra = sorted(set(hashed) - {r.drop_id for r in live})
    return extra + sorted(d for d, digest in stored.items() if hashed.get(d) != digest)


def manifest_bytes(lock: dict[str, Any]) -> bytes:
    """Sorted keys and a final newline: the same lock is always the same bytes (and diffs well in git)."""
    return (json.dumps(lock, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(memory: Memory, path: Path) -> dict[str, Any]:
    """Write the memory's manifest to `path` atomically, so DVC and git never read half a file."""
    manifest = build_manifest(memory)
    atomic_write(path, manifest_bytes(manifest))
    return manifest


def prove(memory: Memory, lock: dict[str, Any]) -> None:
    """Raise unless the memory holds the lock's version with exactly the lock's rows.

    From the drop records (each commit's stored row digest) and the Lance manifest of that version (its fragments):
    O(number of drops). `amr memory --verify` re-reads the rows themselves.
    """
    version = int(lock["memory_version"])
    commits = {(r.drop_id, r.version): r for r in memory.records() if r.status == INGESTED}
    unknown = [f"{d['drop_id']}@{d['version']}" for d in lock["drops"] if (d["drop_id"], d["version"]) not in commits]
    if unknown:
        raise ManifestError(f"the memory at {memory.uri} never committed {unknown}: is it another memory?")
    if version == 0:
        return
    records = [commits[(d["drop_id"], d["version"])] for d in lock["drops"]]
    try:
        memory.table(version)  # raises MemoryStoreError when the version is gone
        check_fragments(memory, records, version)
        digests = stored_digests(memory, records, version)
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(f"memory version {version} cannot be read at {memory.uri}: {exc}") from exc
    if content_hash(lock["meta"], digests) != lock["content_hash"]:
        want = {d["drop_id"]: d["rows_hash"] for d in lock["drops"]}
        differ = sorted(d for d in set(want) | set(digests) if want.get(d) != digests.get(d, (0, None))[1])
        raise ManifestError(
            f"memory version {version} at {memory.uri} does not hold the recorded rows (differing drops: {differ}); "
            "is AMR_HOME / memory.uri the memory this repository was built with?"
        )
