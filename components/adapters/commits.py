"""Writing the memory: drop commits, recovery, rollback, and what a commit leaves besides rows (tags, fragments).

`Commits` is a base class of components.adapters.memory.Memory (which opens the memory and reads it); the module
functions read or set Lance table metadata and never read rows.

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
A compacted memory version is restored from its compaction (`compacted-<v>`, components.adapters.compaction); a
compaction whose writer died before tagging it is undone like any other commit without its record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from components.adapters import documents as doc_index
from components.adapters.locks import exclusive
from components.adapters.records import (
    DROPS,
    DROPS_SCHEMA,
    INGESTED,
    META_KEYS,
    NEW_COLUMNS,
    REJECTED,
    ROLLED_BACK,
    SEQUENCES,
    SEQUENCES_FILE_VERSION,
    TAG_PREFIXES,
    DropRecord,
    MemoryStoreError,
    check_drop_id,
    sequences_schema,
)

LOG_FRAGMENTS = 16  # the drops log is compacted past this many fragments, so reading it stays O(records), not O(files)


def wanted_tags(records: list[DropRecord]) -> dict[str, int]:
    """Every drop commit ever recorded keeps a tag: `drop-<id>` the newest, `superseded-<v>-<id>` older ones."""
    newest: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for rec in records:
        if rec.status == INGESTED:
            newest[rec.drop_id] = rec.version
            seen.add((rec.drop_id, rec.version))
    wanted = {f"drop-{d}": v for d, v in newest.items()}
    return wanted | {f"superseded-{v}-{d}": v for d, v in seen if newest[d] != v}


def sync_tags(table, records: list[DropRecord]) -> None:
    """Make the tags match the records: drop the orphan of a writer that died before its record, add missing."""
    wanted = wanted_tags(records)
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


def versions(table, records: list[DropRecord]) -> list[dict[str, Any]]:
    """Every Lance version of `table` with its tags and whether it is a complete memory version."""
    tags: dict[int, list[str]] = {}
    for name, info in table.tags.list().items():
        tags.setdefault(int(info["version"]), []).append(name)
    complete = {r.version for r in records if r.status == INGESTED}
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


def files(dataset) -> list[tuple]:
    """The data files of a Lance version: two versions with the same files hold the same rows."""
    return [
        (f.fragment_id, tuple(d.path for d in f.metadata.files), str(f.metadata.deletion_file))
        for f in dataset.get_fragments()
    ]


def fragment_ids(dataset) -> set[int]:
    return {f.fragment_id for f in dataset.get_fragments()}


def new_fragments(dataset, before: set[int], rows: int) -> str:
    """JSON [[fragment id, rows], ...] of the fragments not in `before` (read from the manifest, no data file);
    they must hold exactly the `rows` rows the commit wrote, else the commit fails before its record."""
    frags = dataset.get_fragments()
    new = sorted((f.fragment_id, f.metadata.physical_rows) for f in frags if f.fragment_id not in before)
    if sum(n for _, n in new) != rows:
        raise MemoryStoreError(f"the commit wrote {sum(n for _, n in new)} rows in fragments {new}, expected {rows}")
    return json.dumps([list(f) for f in new])


class Commits:
    """The writing half of `Memory` (see the module docstring); it uses the reading half's methods."""

    @contextmanager
    def writer(self, wait_seconds: float = 600.0) -> Iterator[Any]:
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
        complete = self.physical(self.version, table)  # a compaction not tagged yet (its writer died) is undone
        latest = table.to_lance()
        if table.version != complete and files(latest) != files(latest.checkout_version(complete)):
            table.restore(complete)
        sync_tags(table, self.records())
        doc_index.drop_orphans(self.db, {r.version for r in self.records() if r.status == INGESTED})

    def _ensure_sequences(self, meta: dict[str, Any]):
        if not self._has(SEQUENCES):
            schema = sequences_schema(meta)
            return self.db.create_table(SEQUENCES, schema=schema, data_storage_version=SEQUENCES_FILE_VERSION)
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
            missing = {name: sql for name, sql in NEW_COLUMNS.items() if name not in log.schema.names}
            if missing:  # a log written before issue 11 (components.adapters.records)
                log.add_columns(missing)
            log.add(row)
            if len(log.to_lance().get_fragments()) > LOG_FRAGMENTS:  # one tiny fragment per record: merge them
                log.to_lance().optimize.compact_files()
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
        then record it (the commit point). Call inside writer().

        A record with `arm_rows` set promises rows in DropIndex order; the record then also gets the fragments
        the commit wrote, so the drop's row ids never need a scan (components.adapters.records.DropIndex)."""
        check_drop_id(rec.drop_id)
        table = self._ensure_sequences(meta)
        before = fragment_ids(table.to_lance())
        table.add(rows)
        return self._record_commit(table, before, rec, documents)

    def sequences_for_fragments(self, meta: dict[str, Any]) -> tuple[str, int, str]:
        """(dataset uri, Lance version, data file version) that fragments written elsewhere (the Ray engine's
        workers) must target; creates the table on a memory's first drop. Call inside writer()."""
        dataset = self._ensure_sequences(meta).to_lance()
        return dataset.uri, int(dataset.version), str(dataset.data_storage_version)

    def commit_fragments(
        self, fragments: list, read_version: int, rec: DropRecord, meta: dict[str, Any], documents: pa.Table | None
    ) -> DropRecord:
        """`commit_drop` for rows already written as Lance fragments (lance.FragmentMetadata, in write order):
        one `Append` commit of them all on top of `read_version` (from `sequences_for_fragments`, under the same
        writer()), then tag, document index and record exactly as `commit_drop`. Call inside writer().

        Fragments whose commit never happens (the writer died first) are files no Lance version references:
        readers never see them, and `amr memory cleanup` deletes them once they are older than the 7 days Lance leaves
        to files of writes that may still be in flight."""
        import lance  # pylance, which lancedb uses underneath

        check_drop_id(rec.drop_id)
        table = self._ensure_sequences(meta)
        before = fragment_ids(table.to_lance())
        lance.LanceDataset.commit(
            table.to_lance().uri, lance.LanceOperation.Append(fragments), read_version, storage_options=self.options
        )
        table.checkout_latest()
        return self._record_commit(table, before, rec, documents)

    def _record_commit(self, table, before: set[int], rec: DropRecord, documents: pa.Table | None) -> DropRecord:
        """The half of a drop commit after its rows are in a Lance version: fragments, documents, tag, record."""
        rec.version = int(table.version)
        if rec.arm_rows:  # the caller wrote the rows in DropIndex order: record where they landed
            rec.fragments = new_fragments(table.to_lance(), before, rec.sequences + rec.holdout_sequences)
        if documents is not None:
            doc_index.append(self.db, documents, rec.version)
        tag = f"drop-{rec.drop_id}"
        if tag in table.tags.list():  # a rolled-back drop ingested again: its old commit is re-tagged below
            table.tags.update(tag, rec.version)
        else:
            table.tags.create(tag, rec.version)
        rec.status = INGESTED
        self._append_record(rec)
        sync_tags(table, self.records())
        return rec

    def reject_drop(self, rec: DropRecord, status: str = REJECTED) -> DropRecord:
        """Record a rejected (or all-duplicate) drop; the sequences table is not touched. Call inside writer()."""
        rec.status = status
        rec.version = self.version
        self._append_record(rec)
        return rec

    def store_digests(self, digests: dict[str, tuple[int, str]]) -> None:
        """Store row digests (drop id -> (commit version, digest)) hashed for drops ingested before records had
        them: each live commit's record is appended again with its digest, so it is hashed only once."""
        with self.writer() as mem:
            now = datetime.now(UTC).isoformat(timespec="seconds")
            for rec in mem.live():
                version, digest = digests.get(rec.drop_id, (None, ""))
                if version == rec.version and digest and not rec.rows_hash:
                    mem._append_record(replace(rec, rows_hash=digest, recorded_at=now))

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
