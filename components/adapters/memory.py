"""The versioned LanceDB memory: every past training sequence, one table version per ingested drop.

Two tables live in one LanceDB database (a local directory or `s3://`):

* `sequences`: packed, tokenized sequences (`drop_id`, `split`, `position`, `tokens`, `length`, `cluster`,
  `doc_hash`). Its schema metadata pins the tokenizer and context length, so a memory never mixes them.
* `drops`: an append-only log of drop records (ingested, rejected, duplicate or rolled-back), newest record per
  drop wins.
* `documents`: the content hash and split of every document each drop commit stored, written before the record;
  exact deduplication across drops looks new documents up in it (components.adapters.documents).

Writing (the commit protocol, recovery, rollback and tags) is in components.adapters.commits, a base class of
`Memory`; compaction in components.adapters.compaction; the drop records, schemas and errors in
components.adapters.records.

Row ids are *ordinals* of a memory version: the live drops' rows in commit order, each drop in write order, numbered
from 0. `take` maps them to Lance row addresses (fragment id << 32 | offset) through the version's fragment list, read
from its manifest. Appends, restores and compaction (Lance `compact_files` merges adjacent fragments in place) all
keep that order, so an ordinal names the same row before and after a compaction, on every memory ever written.
Lance's stable row ids do the same but can only be switched on when a table is created (an existing memory would be
rewritten, losing its versions and tags) and a take by stable id measured no faster than by address.
A compacted memory version `v` is read from its compacted Lance version, tagged `compacted-<v>` (`physical`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.adapters import commits, compaction, integrity
from components.adapters import documents as doc_index
from components.adapters import s3 as s3_io
from components.adapters.commits import Commits
from components.adapters.records import (
    COMPACTED_PREFIX,
    DROPS,
    INGESTED,
    META_KEYS,
    SEQUENCES,
    DropIndex,
    DropRecord,
    MemoryCorrupted,
    MemoryStoreError,
    VerifyReport,
    storage_options,
    tokenizer_identity,
)
from components.core.config import Settings


class Memory(Commits):
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
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

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

    def tokenizer_identity(self) -> dict | None:
        """The identity (core.text) of the tokenizer the memory was built with; None if empty or written before it."""
        return tokenizer_identity(self.db.open_table(SEQUENCES).schema) if self._has(SEQUENCES) else None

    def physical(self, version: int, table=None) -> int:
        """The Lance version holding memory version `version`'s rows: its compaction if it has one, else itself."""
        table = self.db.open_table(SEQUENCES) if table is None else table
        tag = table.tags.list().get(f"{COMPACTED_PREFIX}{version}")
        return int(tag["version"]) if tag else version

    def table(self, version: int | None = None):
        """The sequences table checked out at `version` (default: the memory version), compacted if it was."""
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
            table.checkout(self.physical(version, table))
            self._tables[version] = table
        return self._tables[version]

    def _layout(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        """(fragment ids, first ordinal of each) of the version, in manifest order, plus the row count at the end."""
        table = self.table(version)
        if table.version not in self._layouts:  # keyed by the Lance version read, so it always matches the table
            frags = table.to_lance().get_fragments()
            ids = np.array([f.fragment_id for f in frags], np.uint64)
            starts = np.r_[0, np.cumsum([f.metadata.physical_rows for f in frags], dtype=np.int64)]
            self._layouts[table.version] = ids, starts
        return self._layouts[table.version]

    def addresses(self, ordinals: np.ndarray, version: int) -> np.ndarray:
        """Lance row addresses of the version's rows numbered `ordinals` (see the module docstring)."""
        ids, starts = self._layout(version)
        pos = np.asarray(ordinals, np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= starts[-1]):
            raise MemoryStoreError(f"row ids outside memory version {version}'s {starts[-1]} rows were asked for.")
        frag = np.searchsorted(starts, pos, side="right") - 1
        return ids[frag] << np.uint64(32) | (pos - starts[frag]).astype(np.uint64)

    def ordinals(self, addresses: np.ndarray, version: int) -> np.ndarray:
        """The inverse of `addresses`."""
        ids, starts = self._layout(version)
        addr = np.asarray(addresses, np.uint64)
        order = np.argsort(ids)
        frag = order[np.searchsorted(ids[order], addr >> np.uint64(32))]
        return (starts[frag] + (addr & np.uint64(0xFFFFFFFF)).astype(np.int64)).astype(np.uint64)

    def index(self, version: int | None = None, columns: tuple[str, ...] = ("drop_id", "split", "cluster")) -> pa.Table:
        """Small per-row metadata with row ids (`_rowid`: ordinals, see the module docstring), without the tokens."""
        version = self.version if version is None else version
        got = self.table(version).to_lance().to_table(columns=list(columns), with_row_id=True)
        ordinals = pa.array(self.ordinals(got.column("_rowid").to_numpy(), version), pa.uint64())
        return got.set_column(got.schema.get_field_index("_rowid"), "_rowid", ordinals)

    def drop_indexes(self, drops: list[str]) -> dict[str, DropIndex] | None:
        """The row-id index of each of `drops` that is live, from its record (no row is read); None when one of
        them was ingested before records had one (the caller scans `index()` instead)."""
        live, base = {}, 0
        for rec in self.live():  # a drop's first ordinal: the rows of the live drops committed before it
            live[rec.drop_id], base = (rec, base), base + rec.sequences + rec.holdout_sequences
        out = {d: DropIndex.of(*live[d]) for d in drops if d in live}
        return None if any(i is None for i in out.values()) else out

    def take(self, row_ids: np.ndarray, version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [n, L] and lengths [n] of the given row ids (ordinals), in the order given (repeats allowed)."""
        ids = np.asarray(row_ids, dtype=np.uint64)
        if ids.size == 0:
            length = (self.meta() or {}).get("context_length", 0)
            return np.zeros((0, length), np.int32), np.zeros(0, np.int32)
        version = self.version if version is None else version
        unique, inverse = np.unique(ids, return_inverse=True)
        addr = self.addresses(unique, version)  # not monotone in the ordinal once a compaction renumbered fragments
        sort = np.argsort(addr)
        addr = addr[sort]
        got = self.table(version).take_row_ids(addr.tolist()).select(["tokens", "length"]).with_row_id().to_arrow()
        if got.num_rows != unique.size:
            raise MemoryStoreError(f"{unique.size - got.num_rows} of the requested row ids are not in the memory.")
        order = sort[np.searchsorted(addr, got.column("_rowid").to_numpy())]
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
        return commits.versions(self.db.open_table(SEQUENCES), self.records())

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
            self._check_order(version, live)
        except integrity.CorruptData as exc:
            raise MemoryCorrupted(f"{exc}. Fix: {integrity.FIX_CORRUPT}.") from None
        except MemoryStoreError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. a version's manifest file is gone
            raise MemoryCorrupted(f"{self.uri}: {integrity.short_error(exc)}. Fix: {integrity.FIX_CORRUPT}.") from None
        return VerifyReport(version, sum(n for n, _ in rows.values()), {d: files for d, (_, files) in rows.items()})

    def _check_order(self, version: int, live: list[DropRecord]) -> None:
        """The version holds the live drops' rows in commit order, one run per drop (row ids depend on it)."""
        column = self.table(version).to_lance().to_table(columns=["drop_id"]).column("drop_id").combine_chunks()
        have = []
        if len(column):
            runs = pc.run_end_encode(column)
            counts = np.diff(np.r_[0, runs.run_ends.to_numpy()]).tolist()
            have = list(zip(runs.values.to_pylist(), counts, strict=True))
        want = [(r.drop_id, r.sequences + r.holdout_sequences) for r in live]
        if have != want:
            raise MemoryCorrupted(
                f"memory version {version} at {self.uri} holds drops in the order {have[:6]}, not the commit order "
                f"{want[:6]} its row ids assume. Fix: {integrity.FIX_CORRUPT}."
            )

    def compact(self, rows_per_fragment: int, min_fragments: int = 2) -> compaction.CompactReport:
        """Compact the memory version under the write lock (components.adapters.compaction)."""
        with self.writer() as mem:
            return compaction.compact(mem, rows_per_fragment, min_fragments)
