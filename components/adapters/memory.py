"""The versioned LanceDB memory: every past training sequence, one table version per ingested drop.

Two tables live in one LanceDB database (a local directory or `s3://`):

* `sequences`: packed, tokenized sequences (`drop_id`, `split`, `position`, `tokens`, `length`, `cluster`,
  `doc_hash`). Its schema metadata pins the tokenizer and context length, so a memory never mixes them.
* `drops`: an append-only log of drop records (ingested, rejected, duplicate or rolled-back), newest record per
  drop wins.
* `documents`: the content hash and split of every document each drop commit stored, written before the record;
  exact deduplication across drops looks new documents up in it (components.adapters.documents).

Commit protocol (why a crash never leaves half a drop): a drop is appended to `sequences` in one Lance commit,
tagged `drop-<id>`, and only then recorded in `drops` with that version. A drop is *live* when its newest record
is `ingested`; the *memory version* is the newest version named by a live drop's record, and every reader checks
`sequences` out at that version, so rows written by a process that died before its record are invisible. The next
writer restores `sequences` to the memory version (a new Lance version with the old contents, unless the latest
version already has exactly its data files) and drops the orphan tag before it writes. Writers on one host are
serialized by a file lock under `$AMR_HOME/locks`; several hosts writing one S3 memory must go through one Prefect
flow with a concurrency limit of one (see flows/).

Rollback (`set_drops`, used by `amr rollback`) is the same protocol: it appends records, never rewrites history.
Drops that leave get a `rolled-back` record (newest first), drops that come back get their old `ingested` record
again with their original commit version (oldest first); after every single record the live drops are exactly the
contents of the memory version, so a crash mid-rollback leaves a complete, older or newer, memory. Every drop commit
keeps a tag, so retention never removes what a rollback may need: `drop-<id>` names the drop's newest commit and an
older commit of a drop that was rolled back and ingested again keeps `superseded-<version>-<id>`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from components.adapters import documents as doc_index
from components.adapters import integrity
from components.adapters import s3 as s3_io
from components.adapters.locks import exclusive
from components.core.config import S3Config, Settings
from components.core.ids import FIX_DROP_ID, is_drop_id

SEQUENCES = "sequences"
DROPS = "drops"
INGESTED, REJECTED, ROLLED_BACK, DUPLICATE = "ingested", "rejected", "rolled-back", "duplicate"
TAG_PREFIXES = ("drop-", "superseded-")  # the tags this module owns; others (a user's) are left alone
META_KEYS = ("tokenizer", "vocab_size", "eos_id", "pad_id", "context_length")

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
        metadata={f"amr.{k}": str(meta[k]) for k in META_KEYS},
    )


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


class Memory:
    """Read and append the memory. Readers see only complete drops; see the module docstring."""

    def __init__(self, uri: str, lock_dir: Path, options: dict[str, str] | None = None):
        self.uri = uri
        self.options = options
        if not uri.startswith("s3://"):
            Path(uri).mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(uri, storage_options=options)
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.lock_path = lock_dir / f"memory-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"
        self._tables: dict[int, Any] = {}

    @classmethod
    def open(cls, settings: Settings) -> Memory:
        """Open the memory; an S3 memory's endpoint and bucket are checked first, so failing is one clear line."""
        uri = settings.memory_uri
        if uri.startswith("s3://"):
            s3_io.check_bucket(s3_io.split_s3_uri(uri)[0], settings.s3)  # raises S3Unavailable
        try:
            return cls(uri, settings.home / "locks", storage_options(uri, settings.s3))
        except (OSError, RuntimeError, ValueError) as exc:  # LanceDB's errors: ValueError, RuntimeError, OSError
            raise MemoryStoreError(f"cannot open the memory at {uri}: {integrity.short_error(exc)}") from None

    # ---- reading -------------------------------------------------------------------------------------------

    def _has(self, name: str) -> bool:
        return name in self.db.list_tables().tables

    def records(self) -> list[DropRecord]:
        """Every drop record ever written, oldest first."""
        if not self._has(DROPS):
            return []
        rows = self.db.open_table(DROPS).to_arrow().sort_by("seq").to_pylist()
        return [DropRecord(**row) for row in rows]  # a log from before issue 11 lacks `duplicates`: 0

    def drops(self) -> list[DropRecord]:
        """The newest record of each drop, in the order the drops first appeared."""
        latest: dict[str, DropRecord] = {}
        for rec in self.records():
            latest[rec.drop_id] = rec
        return list(latest.values())

    def live(self) -> list[DropRecord]:
        """The records of the live drops (newest record `ingested`), in commit order (the order training sees)."""
        return sorted((r for r in self.drops() if r.status == INGESTED), key=lambda r: r.version)

    def ingested(self) -> list[str]:
        """Ids of the live drops, in ingest order (the order training sees them)."""
        return [r.drop_id for r in self.live()]

    def known_documents(self, hashes: list[str]) -> dict[str, str]:
        """doc_hash -> split of those `hashes` a live drop already stored (cost: components.adapters.documents)."""
        live = {r.drop_id: r.version for r in self.live()}
        sequences = self.table() if live else None
        return doc_index.known(self.db, live, sequences, hashes)

    def record(self, drop_id: str) -> DropRecord | None:
        return next((r for r in reversed(self.records()) if r.drop_id == drop_id), None)

    @property
    def version(self) -> int:
        """The last complete memory version (0: nothing was ever written)."""
        versions = [r.version for r in self.live()]
        if versions:
            return max(versions)
        return 1 if self._has(SEQUENCES) else 0  # version 1 is the empty table

    def meta(self) -> dict[str, Any] | None:
        """Tokenizer and context length the memory was built with, or None for an empty memory."""
        if not self._has(SEQUENCES):
            return None
        raw = self.db.open_table(SEQUENCES).schema.metadata or {}
        out: dict[str, Any] = {k: raw.get(f"amr.{k}".encode(), b"").decode() for k in META_KEYS}
        for k in ("vocab_size", "eos_id", "pad_id", "context_length"):
            out[k] = int(out[k])
        return out

    def table(self, version: int | None = None):
        """The sequences table checked out at `version` (default: the memory version)."""
        version = self.version if version is None else version
        if version not in self._tables:
            if not self._has(SEQUENCES):
                raise MemoryStoreError(f"the memory at {self.uri} is empty: run `amr ingest SOURCE` first.")
            table = self.db.open_table(SEQUENCES)
            known = {v["version"] for v in table.list_versions()}
            if version not in known:
                raise MemoryStoreError(
                    f"memory version {version} does not exist at {self.uri} (it has {sorted(known)})."
                )
            table.checkout(version)
            self._tables[version] = table
        return self._tables[version]

    def index(self, version: int | None = None, columns: tuple[str, ...] = ("drop_id", "split", "cluster")) -> pa.Table:
        """Small per-row metadata with LanceDB row ids (`_rowid`), without the tokens."""
        return self.table(version).to_lance().to_table(columns=list(columns), with_row_id=True)

    def take(self, row_ids: np.ndarray, version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [n, L] and lengths [n] of the given row ids, in the order given (repeats allowed)."""
        ids = np.asarray(row_ids, dtype=np.uint64)
        if ids.size == 0:
            length = (self.meta() or {}).get("context_length", 0)
            return np.zeros((0, length), np.int32), np.zeros(0, np.int32)
        unique, inverse = np.unique(ids, return_inverse=True)
        got = self.table(version).take_row_ids(unique.tolist()).select(["tokens", "length"]).with_row_id().to_arrow()
        if got.num_rows != unique.size:
            raise MemoryStoreError(f"{unique.size - got.num_rows} of the requested row ids are not in the memory.")
        order = np.searchsorted(unique, got.column("_rowid").to_numpy())
        width = got.schema.field("tokens").type.list_size
        tokens = np.empty((unique.size, width), np.int32)
        tokens[order] = got.column("tokens").combine_chunks().flatten().to_numpy().reshape(-1, width)
        lengths = np.empty(unique.size, np.int32)
        lengths[order] = got.column("length").to_numpy()
        return tokens[inverse], lengths[inverse]

    def versions(self) -> list[dict[str, Any]]:
        """Every Lance version of the sequences table with its tags and whether it is a complete memory version."""
        if not self._has(SEQUENCES):
            return []
        table = self.db.open_table(SEQUENCES)
        tags: dict[int, list[str]] = {}
        for name, info in table.tags.list().items():
            tags.setdefault(int(info["version"]), []).append(name)
        complete = {r.version for r in self.records() if r.status == INGESTED}
        return [
            {
                "version": int(v["version"]),
                "timestamp": v["timestamp"].isoformat(timespec="seconds"),
                "rows": int(v["metadata"].get("total_rows", 0)),
                "tags": sorted(tags.get(int(v["version"]), [])),
                "drop_commit": int(v["version"]) in complete,
            }
            for v in table.list_versions()
        ]

    def verify(self) -> VerifyReport:
        """Read every row of the memory version and of the drop log; raise MemoryCorrupted naming the bad file.

        See components.adapters.integrity for what is checked (Lance data files carry no checksums, so bytes that
        still decode are judged by their values and by each live drop's recorded row count).
        """
        try:
            if self._has(DROPS):
                integrity.read_all(self.db.open_table(DROPS).to_lance())
            version = self.version
            if version == 0:
                return VerifyReport(0, 0, {})
            live = self.live()
            rows = integrity.check_sequences(self.table(version).to_lance(), self.meta() or {}, live)
        except integrity.CorruptData as exc:
            raise MemoryCorrupted(f"{exc}. Fix: {integrity.FIX_CORRUPT}.") from None
        except MemoryStoreError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. a version's manifest file is gone
            raise MemoryCorrupted(f"{self.uri}: {integrity.short_error(exc)}. Fix: {integrity.FIX_CORRUPT}.") from None
        return VerifyReport(version, sum(n for n, _ in rows.values()), {d: files for d, (_, files) in rows.items()})

    # ---- writing -------------------------------------------------------------------------------------------

    @contextmanager
    def writer(self, wait_seconds: float = 600.0) -> Iterator[Memory]:
        """Exclusive write access on this host; recovers from a writer that died mid-commit."""

        def busy(holder: str) -> MemoryStoreError:
            return MemoryStoreError(f"{holder} has held {self.lock_path} for {wait_seconds:.0f}s; is an ingest stuck?")

        with exclusive(self.lock_path, wait_seconds, busy):
            try:
                self._tables.clear()
                self._recover()
                yield self
            finally:
                self._tables.clear()

    def _recover(self) -> None:
        if not self._has(SEQUENCES):
            return
        table = self.db.open_table(SEQUENCES)
        complete = self.version
        latest = table.to_lance()
        if table.version != complete and _files(latest) != _files(latest.checkout_version(complete)):
            table.restore(complete)
        self._sync_tags(table)
        doc_index.drop_orphans(self.db, {r.version for r in self.records() if r.status == INGESTED})

    def _wanted_tags(self) -> dict[str, int]:
        """Every drop commit ever recorded keeps a tag: `drop-<id>` the newest, `superseded-<v>-<id>` older ones."""
        newest: dict[str, int] = {}
        commits: set[tuple[str, int]] = set()
        for rec in self.records():
            if rec.status == INGESTED:
                newest[rec.drop_id] = rec.version
                commits.add((rec.drop_id, rec.version))
        wanted = {f"drop-{d}": v for d, v in newest.items()}
        return wanted | {f"superseded-{v}-{d}": v for d, v in commits if newest[d] != v}

    def _sync_tags(self, table) -> None:
        """Make the tags match the records: drop the orphan of a writer that died before its record, add missing."""
        wanted = self._wanted_tags()
        have = {name: int(info["version"]) for name, info in table.tags.list().items()}
        for name in have:
            if name.startswith(TAG_PREFIXES) and name not in wanted:
                table.tags.delete(name)
        existing = {int(v["version"]) for v in table.list_versions()}
        for name, version in wanted.items():
            if version not in existing:
                continue  # cannot happen through amr (drop commits are never cleaned up); nothing to tag
            if name not in have:
                table.tags.create(name, version)
            elif have[name] != version:
                table.tags.update(name, version)

    def _ensure_sequences(self, meta: dict[str, Any]):
        if not self._has(SEQUENCES):
            return self.db.create_table(SEQUENCES, schema=sequences_schema(meta))
        have = self.meta()
        wrong = {k: (have[k], meta[k]) for k in META_KEYS if str(have[k]) != str(meta[k])}
        if wrong:
            detail = ", ".join(f"{k}: memory has {a!r}, ingest uses {b!r}" for k, (a, b) in wrong.items())
            raise MemoryStoreError(
                f"the memory at {self.uri} was built with other settings ({detail}). Set ingest.tokenizer and "
                "ingest.context_length back, or point memory.uri at a new memory."
            )
        return self.db.open_table(SEQUENCES)

    def _append_record(self, rec: DropRecord) -> None:
        rec.seq = len(self.records())
        row = pa.Table.from_pylist([asdict(rec)], schema=DROPS_SCHEMA)
        if self._has(DROPS):
            log = self.db.open_table(DROPS)
            if "duplicates" not in log.schema.names:  # a log written before issue 11
                log.add_columns({"duplicates": "CAST(0 AS BIGINT)"})
            log.add(row)
        else:
            self.db.create_table(DROPS, data=row)

    def commit_drop(
        self,
        rows: pa.Table | pa.RecordBatchReader,
        rec: DropRecord,
        meta: dict[str, Any],
        documents: pa.Table | None = None,
    ) -> DropRecord:
        """Append one drop's rows as one version, tag it, index its `documents` (components.adapters.documents),
        then record it (the commit point). Call inside writer()."""
        check_drop_id(rec.drop_id)
        table = self._ensure_sequences(meta)
        table.add(rows)
        rec.version = int(table.version)
        if documents is not None:
            doc_index.append(self.db, documents, rec.version)
        tag = f"drop-{rec.drop_id}"
        if tag in table.tags.list():  # a rolled-back drop ingested again: its old commit is re-tagged below
            table.tags.update(tag, rec.version)
        else:
            table.tags.create(tag, rec.version)
        rec.status = INGESTED
        self._append_record(rec)
        self._sync_tags(table)
        return rec

    def reject_drop(self, rec: DropRecord, status: str = REJECTED) -> DropRecord:
        """Record a rejected (or all-duplicate) drop; the sequences table is not touched. Call inside writer()."""
        rec.status = status
        rec.version = self.version
        self._append_record(rec)
        return rec

    def set_drops(self, target: dict[str, int], note: str) -> tuple[list[str], list[str]]:
        """Make exactly `target` (drop id -> commit version) the live drops; returns (left, came back).

        The rollback / roll-forward commit (see the module docstring for the record order); the caller proves the
        content first (components.versioning.rollback). Call inside writer(); afterwards the table is restored to the
        target.
        """
        commits = {(r.drop_id, r.version): r for r in self.records() if r.status == INGESTED}
        unknown = sorted(f"{d}@{v}" for d, v in target.items() if (d, v) not in commits)
        if unknown:
            raise MemoryStoreError(
                f"the memory at {self.uri} never committed {', '.join(unknown)}: is it another memory?"
            )
        live = {r.drop_id: r for r in self.live()}
        leaving = sorted((r for d, r in live.items() if target.get(d) != r.version), key=lambda r: -r.version)
        coming = sorted((v, d) for d, v in target.items() if d not in live or live[d].version != v)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for rec in leaving:
            self._append_record(replace(rec, status=ROLLED_BACK, error=note, recorded_at=now))
        for version, drop_id in coming:
            self._append_record(replace(commits[(drop_id, version)], recorded_at=now))
        self._tables.clear()
        self._recover()
        return [r.drop_id for r in leaving], [d for _, d in coming]


def _files(dataset) -> list[tuple]:
    """The data files of a Lance version: two versions with the same files hold the same rows."""
    return [
        (f.fragment_id, tuple(d.path for d in f.metadata.files), str(f.metadata.deletion_file))
        for f in dataset.get_fragments()
    ]
