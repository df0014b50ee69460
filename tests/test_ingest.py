"""Ingest into a real LanceDB memory on disk: versions, tags, idempotency, quarantine of bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from components.adapters.memory import Memory
from components.ingest import exit_code, ingest_source
from tests.helpers import jsonl, make_drop, parquet, python_docs, settings_for, stdlib_source, three_drops


@pytest.fixture
def cfg(tmp_path):
    return settings_for(tmp_path / "home")


def snapshot(memory: Memory) -> dict:
    """Everything a bad ingest must leave untouched."""
    if memory.version == 0:
        return {"version": 0}
    table = memory.table()
    return {
        "version": memory.version,
        "rows": table.count_rows(),
        "lance_versions": len(memory.versions()),
        "ingested": memory.ingested(),
    }


def test_three_drops_become_three_tagged_versions(tmp_path, cfg):
    three_drops(tmp_path / "drops")
    results = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert [r.status for r in results] == ["ingested"] * 3
    assert exit_code(results) == 0
    memory = Memory.open(cfg)
    assert memory.ingested() == ["d1-code", "d2-licenses", "d3-docs"]
    versions = {v["version"]: v for v in memory.versions()}
    for rec in memory.drops():
        assert versions[rec.version]["tags"] == [f"drop-{rec.drop_id}"]
        rows = memory.table(rec.version).to_lance().to_table(filter=f"drop_id = '{rec.drop_id}'")
        assert rows.num_rows == rec.sequences + rec.holdout_sequences
        assert rec.holdout_sequences >= cfg.ingest.min_holdout_sequences
        assert set(rows.column("split").to_pylist()) == {"train", "holdout"}
        assert 1 <= rec.clusters <= cfg.ingest.clusters_per_drop
        assert rec.tokens == int(np.sum(rows.column("length").to_numpy()))
    # the memory at an older drop's version holds only the drops up to it
    first = memory.drops()[0]
    assert set(memory.table(first.version).to_arrow().column("drop_id").to_pylist()) == {"d1-code"}
    assert memory.meta()["context_length"] == 64


def test_take_returns_rows_in_requested_order_with_repeats(tmp_path, cfg):
    three_drops(tmp_path / "drops")
    ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    memory = Memory.open(cfg)
    index = memory.index()
    ids = index.column("_rowid").to_numpy()
    pick = np.array([ids[5], ids[0], ids[-1], ids[5]], dtype=np.uint64)
    tokens, lengths = memory.take(pick)
    full = memory.table().to_lance().to_table(columns=["tokens", "length"], with_row_id=True)
    addresses = memory.addresses(np.arange(full.num_rows), memory.version)  # row ids are ordinals of the version
    by_id = {int(o): full.column("_rowid").to_pylist().index(a) for o, a in enumerate(addresses.tolist())}
    for row, rid in enumerate(pick.tolist()):
        assert tokens[row].tolist() == full.column("tokens")[by_id[rid]].as_py()
        assert lengths[row] == full.column("length")[by_id[rid]].as_py()
    assert np.array_equal(tokens[0], tokens[3])


def test_reingest_writes_nothing_and_changed_content_is_refused(tmp_path, cfg):
    drops = three_drops(tmp_path / "drops")
    ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    before = snapshot(Memory.open(cfg))
    again = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert [r.status for r in again] == ["present"] * 3 and exit_code(again) == 0
    assert snapshot(Memory.open(cfg)) == before
    with open(drops[0] / "code.jsonl", "ab") as fh:
        fh.write(jsonl(["one more document"]))
    changed = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert changed[0].status == "refused" and "immutable" in changed[0].message
    assert exit_code(changed) == 2
    assert snapshot(Memory.open(cfg)) == before


def test_pending_drop_is_listed_not_ingested(tmp_path, cfg):
    make_drop(tmp_path / "drops", "later", {"a.jsonl": jsonl(python_docs(5))}, ready=False)
    results = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert [(r.drop_id, r.status) for r in results] == [("later", "pending")]
    assert exit_code(results) == 0 and Memory.open(cfg).version == 0


def _symlink_out(drop_root):
    outside = drop_root.parent / "secret.txt"
    outside.write_text("outside the drop")
    os.symlink(outside, drop_root / "link.txt")


BAD_INPUTS = [
    # (case, files, post-create hook, expected file:line fragment, expected reason fragment)
    ("invalid-json", {"a.jsonl": b'{"text": "ok"}\n{"text": oops}\n'}, None, "a.jsonl:2", "JSON"),
    ("missing-text", {"a.jsonl": b'{"text": "ok"}\n{"body": "x"}\n'}, None, "a.jsonl:2", "text"),
    ("non-string-text", {"a.jsonl": b'{"text": 42}\n'}, None, "a.jsonl:1", "text"),
    ("invalid-utf8", {"a.jsonl": b'{"text": "ok"}\n{"text": "caf\xe9"}\n'}, None, "a.jsonl:2", "UTF-8"),
    ("binary-file", {"blob.bin": b"\x7fELF\x02\x01\x00\x00binary"}, None, "blob.bin", "binary"),
    ("empty-file", {"a.jsonl": b""}, None, "a.jsonl", "empty"),
    ("empty-drop", {}, None, "", "no document"),
    ("too-long-line", {"a.jsonl": jsonl(["x" * 5000])}, None, "a.jsonl:1", "max_document_bytes"),
    ("symlink-escape", {"ok.txt": b"fine text"}, _symlink_out, "link.txt", "outside"),
    ("bad-parquet", {"p.parquet": b"PAR1 this is not parquet"}, None, "p.parquet", "parquet"),
    ("bad-manifest", {"a.jsonl": jsonl(["ok"]), "_drop.json": b'{"drop_id": "other"}'}, None, "_drop.json", "drop_id"),
]


@pytest.mark.parametrize("case,files,hook,where,reason", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_quarantined(tmp_path, case, files, hook, where, reason):
    cfg = settings_for(tmp_path / "home", **{"ingest.max_document_bytes": 1000})
    root = tmp_path / "drops"
    make_drop(root, "a-good", {"g.jsonl": jsonl([t[:900] for t in python_docs(8)])})
    assert ingest_source(cfg, str(root), show_progress=False)[0].status == "ingested"
    before = snapshot(Memory.open(cfg))
    bad = make_drop(root, f"b-{case}", files)
    if hook:
        hook(bad)
    make_drop(root, "c-good", {"g.txt": stdlib_source("heapq.py")[:900], "h.txt": stdlib_source("bisect.py")[:900]})
    results = {r.drop_id: r for r in ingest_source(cfg, str(root), show_progress=False)}
    assert exit_code(list(results.values())) == 2
    rejected = results[f"b-{case}"]
    assert rejected.status == "rejected", rejected.message
    assert (f"b-{case}/{where}" if where else f"b-{case}:") in rejected.message
    assert reason.lower() in rejected.message.lower() and "Fix:" in rejected.message
    assert results["c-good"].status == "ingested", results["c-good"].message  # other drops of the same call go on
    memory = Memory.open(cfg)
    rec = memory.record(f"b-{case}")
    assert rec.status == "rejected" and rec.error == rejected.message
    rows = memory.table().to_lance().to_table(filter=f"drop_id = 'b-{case}'")
    assert rows.num_rows == 0
    assert memory.ingested() == before["ingested"] + ["c-good"]
    c_version = memory.record("c-good").version
    assert (
        memory.table(c_version).count_rows()
        == before["rows"] + memory.record("c-good").sequences + memory.record("c-good").holdout_sequences
    )


def test_rejected_drop_fixed_in_place_is_ingested(tmp_path, cfg):
    root = tmp_path / "drops"
    drop = make_drop(root, "d", {"a.jsonl": b'{"text": broken}\n'})
    assert ingest_source(cfg, str(root), show_progress=False)[0].status == "rejected"
    assert ingest_source(cfg, str(root), show_progress=False)[0].status == "rejected"  # same content, same verdict
    (drop / "a.jsonl").write_bytes(jsonl(python_docs(6)))
    assert ingest_source(cfg, str(root), show_progress=False)[0].status == "ingested"


def test_changed_tokenizer_settings_are_refused(tmp_path, cfg):
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(6))})
    ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    make_drop(tmp_path / "drops", "d2", {"a.jsonl": jsonl(python_docs(6, offset=10))})
    other = settings_for(cfg.home, **{"ingest.context_length": 32})
    result = ingest_source(other, str(tmp_path / "drops"), show_progress=False)[-1]
    assert result.status == "failed" and "context_length: memory has 64" in result.message


def test_parquet_and_text_documents_are_counted(tmp_path, cfg):
    root = tmp_path / "drops"
    drop = make_drop(root, "mixed", {"x.txt": stdlib_source("bisect.py"), "sub/y.md": stdlib_source("heapq.py")})
    parquet(python_docs(3), drop / "z.parquet")
    result = ingest_source(cfg, str(root), show_progress=False)[0]
    assert result.status == "ingested" and result.record.documents == 5
    assert json.loads(json.dumps(result.to_dict()))["sequences"] == result.record.sequences


BAD_IDS = [
    ("a..b", "'..'"),
    ("x.", "ends in '.'"),
    ("x.lock", "ends in '.lock'"),
    ("x\n", "'\\n'"),
]


@pytest.mark.parametrize("drop_id,why", BAD_IDS, ids=["dotdot", "trailing-dot", "dot-lock", "trailing-newline"])
def test_drop_id_that_lance_tags_refuse_is_rejected_and_nothing_is_written(tmp_path, cfg, drop_id, why):
    """Lance refuses these tag names; before, the rows went in, tagging failed and each ingest left an orphan."""
    root = tmp_path / "drops"
    make_drop(root, "a-good", {"g.jsonl": jsonl(python_docs(6))})
    assert ingest_source(cfg, str(root), show_progress=False)[0].status == "ingested"
    before = snapshot(Memory.open(cfg))
    make_drop(root, drop_id, {"g.jsonl": jsonl(python_docs(6, offset=20))})
    make_drop(root, "z-good", {"g.jsonl": jsonl(python_docs(6, offset=40))})
    for _ in range(2):  # a second ingest must not leave an orphan version either
        results = {r.drop_id: r for r in ingest_source(cfg, str(root), show_progress=False)}
        bad = results[drop_id]
        assert bad.status == "rejected" and exit_code(list(results.values())) == 2
        assert (
            f"invalid drop id {drop_id!r}" in bad.message and why in bad.message and "Fix: name the drop" in bad.message
        )
        assert results["z-good"].status in ("ingested", "present")
    memory = Memory.open(cfg)
    assert memory.record(drop_id) is None and memory.ingested() == ["a-good", "z-good"]
    assert len(memory.versions()) == before["lance_versions"] + 1  # z-good's commit, nothing else
    assert not any(drop_id in t for v in memory.versions() for t in v["tags"])
