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
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from components.adapters.memory import INGESTED, Memory
from components.core.files import atomic_write
from components.core.ids import is_drop_id

MANIFEST_FILE = "memory.lock.json"
MANIFEST_FORMAT = 1
HASH_COLUMNS = ("drop_id", "split", "position", "length", "cluster", "doc_hash", "tokens")


class ManifestError(RuntimeError):
    """The memory does not match a lock file, or its rows and records disagree."""


def rows_digest(rows: pa.Table) -> str:
    """sha256 over the columns of `rows` in HASH_COLUMNS order, each as fixed-width little-endian values."""
    h = hashlib.sha256(str(rows.num_rows).encode())
    for name in HASH_COLUMNS:
        col = rows.column(name).combine_chunks()
        h.update(b"\0" + name.encode() + b"\0")
        if pa.types.is_fixed_size_list(col.type):
            h.update(col.flatten().to_numpy().astype("<i4").tobytes())
        elif pa.types.is_string(col.type):
            h.update("\0".join(col.to_pylist()).encode())  # no value holds a NUL: ids, split names, hex hashes
        else:
            h.update(col.to_numpy().astype("<i8").tobytes())
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


def build_manifest(memory: Memory) -> dict[str, Any]:
    """The lock of the memory as readers see it, checked against its drop records."""
    version, live = memory.version, memory.live()
    digests = drop_digests(memory, version) if version > 0 else {}
    if sorted(digests) != sorted(r.drop_id for r in live):
        raise ManifestError(
            f"memory version {version} holds rows of {sorted(digests)} but its records say {memory.ingested()}"
        )
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


def manifest_bytes(lock: dict[str, Any]) -> bytes:
    """Sorted keys and a final newline: the same lock is always the same bytes (and diffs well in git)."""
    return (json.dumps(lock, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(memory: Memory, path: Path) -> dict[str, Any]:
    """Write the memory's manifest to `path` atomically, so DVC and git never read half a file."""
    manifest = build_manifest(memory)
    atomic_write(path, manifest_bytes(manifest))
    return manifest


def prove(memory: Memory, lock: dict[str, Any]) -> None:
    """Raise unless the memory holds the lock's version with exactly the lock's rows."""
    version = int(lock["memory_version"])
    commits = {(r.drop_id, r.version) for r in memory.records() if r.status == INGESTED}
    unknown = [f"{d['drop_id']}@{d['version']}" for d in lock["drops"] if (d["drop_id"], d["version"]) not in commits]
    if unknown:
        raise ManifestError(f"the memory at {memory.uri} never committed {unknown}: is it another memory?")
    if version == 0:
        return
    try:
        digests = drop_digests(memory, version)
    except Exception as exc:
        raise ManifestError(f"memory version {version} cannot be read at {memory.uri}: {exc}") from exc
    if content_hash(lock["meta"], digests) != lock["content_hash"]:
        want = {d["drop_id"]: d["rows_hash"] for d in lock["drops"]}
        differ = sorted(d for d in set(want) | set(digests) if want.get(d) != digests.get(d, (0, None))[1])
        raise ManifestError(
            f"memory version {version} at {memory.uri} does not hold the recorded rows (differing drops: {differ}); "
            "is AMR_HOME / memory.uri the memory this repository was built with?"
        )
