"""What the memory stores besides the rows: drop records, table schemas, storage options and errors.

The `drops` table is an append-only log of `DropRecord`s (components.adapters.memory explains the commit protocol).
Columns added after a log was first written (`duplicates`, `rows_hash`, `fragments`, `arm_rows`) are added to an
old log, with their empty value, on its next append (`NEW_COLUMNS`); records read from an older log get the
dataclass defaults.

Per-drop bookkeeping written in the drop's own commit record (issue 11, item 3), so that the lock file and refresh
planning cost O(number of drops), not O(rows ever ingested):

* `rows_hash`: the drop's row digest (components.adapters.manifest `rows_digest`, over its rows in (split, position)
  order), computed once at ingest from the rows as written. Its row count is `sequences + holdout_sequences`.
* `fragments` and `arm_rows`: a row-id index of the drop (see `DropIndex`).

An empty value means "written before issue 11 item 3": readers fall back to hashing or scanning that drop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from components.core.config import S3Config
from components.core.ids import FIX_DROP_ID, is_drop_id

SEQUENCES = "sequences"
DROPS = "drops"
INGESTED, REJECTED, ROLLED_BACK, DUPLICATE = "ingested", "rejected", "rolled-back", "duplicate"
TAG_PREFIXES = ("drop-", "superseded-")  # the tags this module owns; others (a user's) are left alone
COMPACTED_PREFIX = "compacted-"  # compacted-<v>: the compaction of memory version v (components.adapters.compaction)
SEQUENCES_FILE_VERSION = "2.1"  # Lance file format of a new sequences table (why: components.adapters.compaction)
META_KEYS = ("tokenizer", "vocab_size", "eos_id", "pad_id", "context_length")
TOKENIZER_ID = "amr.tokenizer_id"  # JSON of core.text's identity; absent in memories written before issue 13

NEW_COLUMNS = {"duplicates": "CAST(0 AS BIGINT)"} | {
    c: "CAST('' AS STRING)" for c in ("rows_hash", "fragments", "arm_rows")
}

DROPS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("drop_id", pa.string()),
        ("status", pa.string()),
        ("content_hash", pa.string()),
        ("documents", pa.int64()),
        ("sequences", pa.int64()),
        ("holdout_sequences", pa.int64()),
        ("tokens", pa.int64()),
        ("clusters", pa.int32()),
        ("version", pa.int64()),
        ("error", pa.string()),
        ("source", pa.string()),
        ("manifest", pa.string()),
        ("recorded_at", pa.string()),
        ("duplicates", pa.int64()),  # added by issue 11: older logs get it (0) on their next append
        ("rows_hash", pa.string()),  # issue 11 item 3, like the next two: "" in older logs
        ("fragments", pa.string()),
        ("arm_rows", pa.string()),
    ]
)


class MemoryStoreError(RuntimeError):
    """The memory cannot do what was asked (mismatched tokenizer, unknown version, bad drop id, store down)."""


class MemoryCorrupted(MemoryStoreError):
    """A data file of the memory is missing, unreadable or holds values amr never writes; names the file."""


@dataclass(frozen=True)
class VerifyReport:
    version: int
    rows: int
    files: dict[str, list[str]]  # drop id -> the data files holding its rows at the memory version


@dataclass
class DropRecord:
    drop_id: str
    status: str  # "ingested" | "rejected" | "rolled-back" | "duplicate" (every document already in the memory)
    content_hash: str = ""
    documents: int = 0
    sequences: int = 0
    holdout_sequences: int = 0
    tokens: int = 0
    clusters: int = 0
    version: int = 0
    error: str = ""
    source: str = ""
    manifest: str = ""
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    seq: int = 0
    duplicates: int = 0  # documents not stored: already in the memory, or earlier in the same drop
    rows_hash: str = ""  # the digest of the drop's rows (see the module docstring); "" before issue 11 item 3
    fragments: str = ""  # JSON [[fragment id, rows], ...] of the fragments its commit wrote (DropIndex)
    arm_rows: str = ""  # JSON [train rows of cluster 0, 1, ...] in write order (DropIndex; older: [train rows])


def sequences_schema(meta: dict[str, Any]) -> pa.Schema:
    length = int(meta["context_length"])
    return pa.schema(
        [
            ("drop_id", pa.string()),
            ("split", pa.string()),
            ("position", pa.int32()),
            ("tokens", pa.list_(pa.int32(), length)),
            ("length", pa.int32()),
            ("cluster", pa.int32()),
            ("doc_hash", pa.string()),
        ],
        metadata={f"amr.{k}": str(meta[k]) for k in META_KEYS}
        | ({TOKENIZER_ID: json.dumps(meta["tokenizer_id"], sort_keys=True)} if meta.get("tokenizer_id") else {}),
    )


def tokenizer_identity(schema: pa.Schema) -> dict | None:
    """The tokenizer identity a sequences table was created with (None: written before identities existed)."""
    raw = (schema.metadata or {}).get(TOKENIZER_ID.encode())
    return json.loads(raw) if raw else None


def check_drop_id(drop_id: str) -> str:
    if not is_drop_id(drop_id):
        raise MemoryStoreError(
            f"drop id {drop_id!r} is not allowed (it becomes a LanceDB tag and a file name). Fix: {FIX_DROP_ID}."
        )
    return drop_id


def storage_options(uri: str, s3: S3Config) -> dict[str, str] | None:
    """Object-store options for an s3:// memory, from the same settings and AWS variables as boto3.

    Retries are the object store's own (lance's `client_max_retries` / `client_retry_timeout` storage options):
    with lance's default of 3 retries a restarting endpoint failed a commit after ~0.4 s; backoff starts at 0.1 s
    and grows slowly, so the time bound (`s3.memory_retry_timeout`) is what rides out a restart.
    """
    if not uri.startswith("s3://"):
        return None
    opts = {"region": s3.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    opts["client_max_retries"] = str(s3.memory_max_retries)
    opts["client_retry_timeout"] = str(s3.memory_retry_timeout)
    endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint"] = endpoint
        opts["allow_http"] = str(endpoint.startswith("http://")).lower()
        opts["virtual_hosted_style_request"] = "false"
    # Credentials stay in the environment, where the object store reads them itself; they are never copied here.
    return opts


@dataclass(frozen=True)
class DropIndex:
    """Where a drop's rows are, read from its record alone: row ids without scanning the table.

    Ingest writes a drop's train rows first, grouped by cluster (clusters ascending, positions ascending inside
    each), then its holdout rows; `arm_rows` counts the train rows of each cluster, so every (drop, cluster) arm is
    one contiguous range of write positions. Row ids are ordinals of the memory version (components.adapters.memory):
    the drop's rows are `base` (the rows of the live drops committed before it) plus their write position, whatever
    fragments hold them, so they survive compaction. `fragments` (the fragments its commit wrote, with row counts)
    serve the lock proof of an uncompacted version (components.adapters.manifest).

    A drop recorded before its train rows were grouped by cluster has `arm_rows` = [all its train rows] (one range,
    in position order) although it has several clusters: `by_cluster` is False and its cluster arms need a scan.
    """

    fragments: tuple[tuple[int, int], ...]  # (fragment id, rows) in write order
    arm_rows: tuple[int, ...]  # train rows per cluster (or, when not `by_cluster`, all of them)
    base: int = 0  # the drop's first ordinal in the memory version
    by_cluster: bool = True  # arm_rows counts each cluster's rows (False: one range, rows in position order)

    @classmethod
    def of(cls, rec: DropRecord, base: int = 0) -> DropIndex | None:
        """The record's index; None for a drop ingested before issue 11 item 3 (scan it instead)."""
        if not rec.fragments or not rec.arm_rows:
            return None
        frags = tuple((int(f), int(n)) for f, n in json.loads(rec.fragments))
        arm_rows = tuple(int(n) for n in json.loads(rec.arm_rows))
        # Ingest labels train rows 0..clusters-1, each cluster with >= 1 of them (components.ingest.clustering):
        # one count per cluster, or a single cluster whose one range is the same thing.
        return cls(frags, arm_rows, base, len(arm_rows) == max(rec.clusters, 1))

    def train_range(self) -> tuple[int, int]:
        """[start, stop) of the row ids of the drop's train rows."""
        return self.base, self.base + sum(self.arm_rows)

    def train(self) -> np.ndarray:
        """Row ids of the drop's train rows."""
        return np.arange(*self.train_range(), dtype=np.uint64)

    def arm_ranges(self) -> list[tuple[int, tuple[int, int]]]:
        """(cluster, [start, stop) of its row ids) of every cluster that has train rows, clusters ascending."""
        if not self.by_cluster:
            raise ValueError("this drop's train rows are not grouped by cluster (ingested before): scan for its arms")
        edges = (self.base + np.r_[0, np.cumsum(self.arm_rows)]).tolist()
        return [(c, (edges[c], edges[c + 1])) for c in range(len(self.arm_rows)) if self.arm_rows[c]]

    def arms(self) -> list[tuple[int, np.ndarray]]:
        """(cluster, row ids) of every cluster that has train rows, clusters ascending."""
        return [(c, np.arange(a, b, dtype=np.uint64)) for c, (a, b) in self.arm_ranges()]
