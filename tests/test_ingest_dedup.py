"""Issue 11: a document is stored once across drops and keeps its split; producer layouts ingest as documents."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import zstandard
from typer.testing import CliRunner

from components.adapters.memory import Memory
from components.cli import app
from components.core.packing import doc_hash
from components.core.text import load_tokenizer
from components.ingest import exit_code, ingest_source
from tests.helpers import jsonl, license_docs, make_drop, python_docs, settings_for


def stored(memory: Memory) -> dict[tuple[str, str], list[str]]:
    """(drop, split) -> the documents its rows hold, read back from the tokens (byte tokenizer: eos splits them)."""
    table = memory.table().to_lance().to_table(columns=["drop_id", "split", "position", "tokens", "length"])
    tok, out = load_tokenizer("byte"), {}
    keys = list(zip(table.column("drop_id").to_pylist(), table.column("split").to_pylist(), strict=True))
    for key in sorted(set(keys)):
        part = table.filter(np.array([k == key for k in keys])).sort_by("position")
        width = part.schema.field("tokens").type.list_size
        rows = part.column("tokens").combine_chunks().flatten().to_numpy().reshape(-1, width)
        stream = np.concatenate([r[:n] for r, n in zip(rows, part.column("length").to_numpy(), strict=True)])
        cuts = np.flatnonzero(stream == tok.eos_id) + 1
        out[key] = [tok.decode(chunk[:-1]) for chunk in np.split(stream, cuts)[:-1]]
    return out


def where(memory: Memory) -> dict[str, list[tuple[str, str]]]:
    """Each stored document -> every (drop, split) holding it."""
    found: dict[str, list[tuple[str, str]]] = {}
    for key, docs in stored(memory).items():
        for doc in docs:
            found.setdefault(doc, []).append(key)
    return found


def test_a_document_of_a_small_drop_is_never_stored_again_nor_in_another_split(tmp_path):
    """The issue's example: drop A is small, so its holdout takes more documents than the fraction; drop B repeats
    A's documents. Before, one of them was in A's holdout (24 rows) and in B's train (24 rows)."""
    cfg = settings_for(tmp_path / "home")
    root = tmp_path / "drops"
    a_docs = python_docs(3)
    b_docs = python_docs(8, offset=3)
    make_drop(root, "a", {"a.jsonl": jsonl(a_docs)})
    make_drop(root, "b", {"b.jsonl": jsonl(b_docs[:4] + a_docs + [b_docs[0]]), "more.ndjson": jsonl(b_docs[4:])})
    results = ingest_source(cfg, str(root), show_progress=False)
    assert [r.status for r in results] == ["ingested", "ingested"] and exit_code(results) == 0
    assert "4 duplicate documents left out" in results[1].message
    memory = Memory.open(cfg)
    placed = where(memory)
    assert sorted(placed) == sorted(a_docs + b_docs)
    assert all(len(keys) == 1 for keys in placed.values()), {d[:30]: k for d, k in placed.items() if len(k) > 1}
    assert {placed[d][0][0] for d in a_docs} == {"a"} and {placed[d][0][0] for d in b_docs} == {"b"}
    assert any(placed[d][0][1] == "holdout" for d in a_docs)
    a, b = memory.record("a"), memory.record("b")
    assert (a.duplicates, b.duplicates, b.documents) == (0, 4, 12)
    index = memory.db.open_table("documents").to_arrow()
    assert sorted(index.column("doc_hash").to_pylist()) == sorted(doc_hash(d) for d in a_docs + b_docs)
    again = ingest_source(cfg, str(root), show_progress=False)  # idempotent: same content, nothing written
    assert [r.status for r in again] == ["present", "present"]
    assert Memory.open(cfg).version == memory.version

    res = CliRunner().invoke(app, ["memory", "--json"], env={"AMR_HOME": str(cfg.home)})
    assert {d["drop_id"]: d["duplicates"] for d in json.loads(res.stdout)["drops"]} == {"a": 0, "b": 4}


def test_a_drop_of_only_duplicates_is_recorded_once_and_checked_again_after_a_rollback(tmp_path):
    cfg = settings_for(tmp_path / "home")
    root = tmp_path / "drops"
    docs = python_docs(6)
    make_drop(root, "a", {"a.jsonl": jsonl(python_docs(6, offset=6))})
    make_drop(root, "b", {"b.jsonl": jsonl(docs)})
    make_drop(root, "c", {"again.txt": docs[1], "again.jsonl": jsonl(docs[2:4])})
    results = {r.drop_id: r for r in ingest_source(cfg, str(root), show_progress=False)}
    assert results["c"].status == "duplicate" and exit_code(list(results.values())) == 0
    assert "all 3 documents are already in the memory" in results["c"].message
    memory = Memory.open(cfg)
    rec = memory.record("c")
    assert (rec.status, rec.duplicates, rec.sequences, rec.version) == ("duplicate", 3, 0, memory.version)
    n_records = len(memory.records())
    again = {r.drop_id: r.status for r in ingest_source(cfg, str(root), show_progress=False)}
    assert again == {"a": "present", "b": "present", "c": "duplicate"}
    assert len(Memory.open(cfg).records()) == n_records  # an unchanged verdict writes nothing
    with memory.writer() as mem:  # roll drop b back: c's documents are no longer in the memory
        mem.set_drops({"a": mem.record("a").version}, "test rollback")
    shutil.rmtree(root / "b")  # (a rollback restores the drops too: b is gone from the source)
    after = {r.drop_id: r for r in ingest_source(cfg, str(root), show_progress=False)}
    assert after["c"].status == "ingested", after["c"].message
    assert sorted(where(Memory.open(cfg))) == sorted(python_docs(6, offset=6) + docs[1:4])


def test_drops_ingested_before_the_document_index_are_still_deduplicated(tmp_path):
    cfg = settings_for(tmp_path / "home")
    root = tmp_path / "drops"
    docs = python_docs(5)
    make_drop(root, "a", {"a.jsonl": jsonl(docs)})
    ingest_source(cfg, str(root), show_progress=False)
    Memory.open(cfg).db.drop_table("documents")  # as a memory written before issue 11
    make_drop(root, "b", {"b.jsonl": jsonl(docs[:2] + python_docs(5, offset=5))})
    result = ingest_source(cfg, str(root), show_progress=False)[1]
    assert result.status == "ingested" and result.record.duplicates == 2  # long documents: each begins a row


def test_spark_ndjson_gzip_and_zstd_layouts_ingest_as_documents(tmp_path):
    cfg = settings_for(tmp_path / "home")
    code, licenses = python_docs(6, offset=20), license_docs(3)
    zstd = zstandard.ZstdCompressor()
    make_drop(
        tmp_path / "drops",
        "spark",
        {
            "part-00000-5e1f.c000.json": jsonl(code[:2]),
            "part-00001-5e1f.c000.json.gz": gzip.compress(jsonl(code[2:4]), mtime=0),
            ".part-00000-5e1f.c000.json.crc": b"crc",
            "_SUCCESS": b"",
            "extra.ndjson": jsonl(code[4:5]),
            "more.jsonl.zst": zstd.compress(jsonl(code[5:] + licenses[:1])),
            "licenses.jsonl.gz": gzip.compress(jsonl(licenses[1:]), mtime=0),
        },
    )
    result = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)[0]
    assert result.status == "ingested", result.message
    assert result.record.documents == 9 and result.record.duplicates == 0
    placed = where(Memory.open(cfg))
    assert sorted(placed) == sorted(code + licenses)
    assert not any(doc.startswith('{"text"') for doc in placed)
