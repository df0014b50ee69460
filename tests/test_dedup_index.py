"""Exact deduplication through the BTREE index on documents.doc_hash (issue 11 item 3), on real LanceDB: lookups of
the new hashes only, rows the index does not cover yet, orphans, compaction, cleanup, rollback and old tables."""

from __future__ import annotations

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from components.adapters import documents as doc_index
from components.adapters.memory import Memory
from components.core.packing import doc_hash
from components.ingest import ingest_source
from components.versioning.retention import cleanup
from tests.helpers import jsonl, make_drop, python_docs, settings_for

BIG = 1 << 20


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    """Three drops of distinct real documents: a, b, c (five each)."""
    root = tmp_path / "drops"
    for i, name in enumerate("abc"):
        make_drop(root, name, {f"{name}.jsonl": jsonl(python_docs(5, offset=5 * i))})
    cfg = settings_for(tmp_path / "home")
    assert [r.status for r in ingest_source(cfg, str(root), show_progress=False)] == ["ingested"] * 3
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    return cfg


def docs_of(name: str) -> list[str]:
    return python_docs(5, offset=5 * "abc".index(name))


def hashes(name: str) -> list[str]:
    return [doc_hash(d) for d in docs_of(name)]


def ingest_repeat(cfg, name: str, old: list[str]):
    """Ingest drop `name`: `old` documents plus three never seen."""
    root = cfg.home.parent / "drops"
    make_drop(root, name, {f"{name}.jsonl": jsonl(old + python_docs(3, offset=40 + 3 * len(list(root.iterdir()))))})
    return next(r for r in ingest_source(cfg, str(root), show_progress=False) if r.drop_id == name)


def segments(db) -> list[dict]:
    return [i for i in db.open_table(doc_index.DOCUMENTS).to_lance().list_indices() if i["name"] == doc_index.INDEX]


def test_every_commit_is_indexed_and_a_lookup_is_an_index_search(cfg):
    memory = Memory.open(cfg)
    dataset = memory.db.open_table(doc_index.DOCUMENTS).to_lance()
    assert len(segments(memory.db)) == 2  # a: [5]; b merges it: [10]; c: [10, 5] (doc_index.merge_count)
    covered = {f for s in segments(memory.db) for f in s["fragment_ids"]}
    assert covered == {f.fragment_id for f in dataset.get_fragments()}
    assert dataset.schema.metadata[doc_index.SINCE.encode()] == str(memory.record("a").version).encode()
    plan = dataset.scanner(filter=f"doc_hash IN ('{hashes('b')[0]}') AND version IN (2)").explain_plan(True)
    assert "ScalarIndexQuery" in plan and doc_index.INDEX in plan
    got = memory.known_documents(hashes("b") + ["0" * 64])
    assert sorted(got) == sorted(hashes("b"))


def test_rows_the_index_does_not_cover_yet_are_still_found(cfg, monkeypatch):
    """A writer that died between the documents append and the index update: Lance searches those rows flat."""
    memory = Memory.open(cfg)
    monkeypatch.setattr(doc_index, "index", lambda docs: None)  # the append lands, its index update never runs
    ghost = pa.table({"drop_id": ["ghost"], "version": [0], "doc_hash": ["f" * 64], "split": ["train"]})
    doc_index.append(memory.db, ghost.cast(doc_index.SCHEMA), 999)
    covered = {f for s in segments(memory.db) for f in s["fragment_ids"]}
    fragments = memory.db.open_table(doc_index.DOCUMENTS).to_lance().get_fragments()
    assert {f.fragment_id for f in fragments} - covered  # the new fragment is not indexed
    live = {r.drop_id: r.version for r in memory.live()} | {"ghost": 999}
    assert doc_index.known(memory.db, live, None, ["f" * 64, hashes("a")[0]]) == {
        "f" * 64: "train",
        hashes("a")[0]: memory.known_documents(hashes("a"))[hashes("a")[0]],
    }
    monkeypatch.undo()
    result = ingest_repeat(cfg, "d", docs_of("c")[:2])  # the next commit indexes every uncovered fragment
    assert result.record.duplicates == 2
    covered = {f for s in segments(memory.db) for f in s["fragment_ids"]}
    assert covered == {f.fragment_id for f in memory.db.open_table(doc_index.DOCUMENTS).to_lance().get_fragments()}


def test_orphan_rows_of_a_writer_that_died_before_its_record_are_ignored(cfg):
    memory = Memory.open(cfg)
    orphan = doc_index.rows("ghost", [doc_hash(python_docs(1, offset=60)[0])], [False])
    doc_index.append(memory.db, orphan, memory.version + 5)  # indexed, but no record names its commit
    assert memory.known_documents([doc_hash(python_docs(1, offset=60)[0])]) == {}
    result = ingest_repeat(cfg, "d", python_docs(1, offset=60))  # recovery deletes the orphan; not a duplicate
    assert result.status == "ingested" and result.record.duplicates == 0
    table = Memory.open(cfg).db.open_table(doc_index.DOCUMENTS)
    assert table.count_rows("drop_id = 'ghost'") == 0


def test_after_compaction_and_cleanup_an_old_document_is_still_a_duplicate(cfg):
    memory = Memory.open(cfg)
    report = memory.compact(BIG)
    assert report.documents and len(segments(memory.db)) == 1
    assert len(memory.db.open_table(doc_index.DOCUMENTS).to_lance().get_fragments()) == 1
    result = ingest_repeat(cfg, "d", docs_of("a")[:2])
    assert result.status == "ingested" and result.record.duplicates == 2
    cleanup(cfg, 0.0)
    result = ingest_repeat(cfg, "e", docs_of("b")[1:4])
    assert result.status == "ingested" and result.record.duplicates == 3
    assert sorted(Memory.open(cfg).known_documents(hashes("c"))) == sorted(hashes("c"))


def test_a_rolled_back_drops_documents_are_new_again_and_duplicates_once_it_is_back(cfg):
    memory = Memory.open(cfg)
    live = {r.drop_id: r.version for r in memory.live()}
    with memory.writer() as mem:
        mem.set_drops({d: v for d, v in live.items() if d != "b"}, "back")
    assert Memory.open(cfg).known_documents(hashes("b")) == {}
    assert sorted(Memory.open(cfg).known_documents(hashes("a"))) == sorted(hashes("a"))
    with memory.writer() as mem:
        mem.set_drops(live, "forward")
    assert sorted(Memory.open(cfg).known_documents(hashes("b"))) == sorted(hashes("b"))
    result = ingest_repeat(cfg, "d", docs_of("b")[:3])
    assert result.status == "ingested" and result.record.duplicates == 3


def test_a_table_written_before_the_index_is_scanned_then_indexed_by_the_next_commit(cfg):
    memory = Memory.open(cfg)
    rows = memory.db.open_table(doc_index.DOCUMENTS).to_arrow().replace_schema_metadata(None)
    memory.db.drop_table(doc_index.DOCUMENTS)
    memory.db.create_table(doc_index.DOCUMENTS, data=rows, schema=doc_index.SCHEMA)  # as main wrote it
    assert sorted(Memory.open(cfg).known_documents(hashes("c"))) == sorted(hashes("c"))  # the old scan
    result = ingest_repeat(cfg, "d", docs_of("a")[:1] + docs_of("c")[:1])
    assert result.record.duplicates == 2
    dataset = memory.db.open_table(doc_index.DOCUMENTS).to_lance()
    first = pc.min(dataset.to_table(columns=["version"]).column("version")).as_py()
    assert dataset.schema.metadata[doc_index.SINCE.encode()] == str(first).encode() and segments(memory.db)
    assert sorted(Memory.open(cfg).known_documents(hashes("a"))) == sorted(hashes("a"))


def test_lookups_go_in_chunks_of_new_hashes(cfg, monkeypatch):
    monkeypatch.setattr(doc_index, "LOOKUP_CHUNK", 2)
    wanted = hashes("a") + hashes("c") + ["0" * 64]
    assert sorted(Memory.open(cfg).known_documents(wanted)) == sorted(hashes("a") + hashes("c"))


def test_segments_merge_like_a_binary_counter(tmp_path):
    """Equal drops: one segment per 1 bit of the number of drops, and every fragment indexed."""
    db = lancedb.connect(str(tmp_path / "db"))
    texts = python_docs(40)
    for n in range(1, 10):
        doc_index.append(db, doc_index.rows(f"d{n}", [doc_hash(t) for t in texts[4 * n - 4 : 4 * n]], [False] * 4), n)
        assert len(segments(db)) == bin(n).count("1"), n
        covered = {f for s in segments(db) for f in s["fragment_ids"]}
        assert covered == {f.fragment_id for f in db.open_table(doc_index.DOCUMENTS).to_lance().get_fragments()}
    live = {f"d{n}": n for n in range(1, 10)}
    assert sorted(doc_index.known(db, live, None, [doc_hash(t) for t in texts])) == sorted(
        doc_hash(t) for t in texts[:36]
    )


def test_a_commit_merges_the_segments_once_they_pile_up(cfg, monkeypatch):
    monkeypatch.setattr(doc_index, "MAX_SEGMENTS", 2)
    result = ingest_repeat(cfg, "d", docs_of("a")[:1])  # d finds two segments: all merged into one
    assert result.record.duplicates == 1 and len(segments(Memory.open(cfg).db)) == 1
    dataset = Memory.open(cfg).db.open_table(doc_index.DOCUMENTS).to_lance()
    assert set(segments(Memory.open(cfg).db)[0]["fragment_ids"]) == {f.fragment_id for f in dataset.get_fragments()}
