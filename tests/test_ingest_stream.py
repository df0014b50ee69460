"""Streaming ingest: files read as streams in bounded memory, rows laid out from metadata and built from a token
spill on disk, the spill removed however an ingest ends (a real SIGKILL included)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from components.adapters.memory import Memory
from components.core.packing import Layout, LazyRows, doc_hash, pack, split_and_pack
from components.core.text import load_tokenizer
from components.ingest import ingest_source
from components.ingest.drops import DropScan, LocalSource, hash_drop, read_drop
from components.ingest.spill import Spill, remove_leftovers
from tests.conftest import real_texts
from tests.helpers import jsonl, make_drop, python_docs, settings_for

ROOT = Path(__file__).resolve().parents[1]


def test_layout_builds_any_range_exactly_as_pack():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 250, size=n).astype(np.int32) for n in rng.integers(0, 90, size=60)]
    packed = pack(docs, 16, 256, 257)
    lay = Layout(np.arange(len(docs)), np.array([len(d) for d in docs]), 16, 256, 257, docs.__getitem__)
    n = len(packed)
    assert np.array_equal(lay.lengths, packed.lengths) and np.array_equal(lay.first, packed.first_doc)
    for _ in range(200):
        a = int(rng.integers(0, n))
        b = int(rng.integers(a, n + 1))
        assert np.array_equal(lay.rows(a, b), packed.tokens[a:b])
    rows = LazyRows(lay)
    pick = np.array([3, 4, 5, 0, n - 1, 7, 7])
    assert np.array_equal(rows[pick], packed.tokens[pick]) and np.array_equal(rows[2], packed.tokens[2])


def big_lines(n_bytes: int) -> list[str]:
    """Distinct documents of real text (the stdlib, cut into 2-8 kB pieces) totalling about `n_bytes`."""
    texts, out, size, i = real_texts("*.py", 400), [], 0, 0
    while size < n_bytes:
        text = texts[i % len(texts)]
        start = (i * 977) % max(1, len(text) - 8192)
        piece = f"# piece {i}\n" + text[start : start + 2048 + (i * 131) % 6144]
        out.append(piece)
        size += len(piece)
        i += 1
    return out


@pytest.mark.parametrize("codec", ["plain", "gzip", "zstd", "parquet"])
def test_one_file_larger_than_memory_use_is_read_as_a_stream(tmp_path, codec):
    """A 24 MB file is hashed and parsed while Python holds under 8 MB at any time (tracemalloc counts every
    Python and numpy allocation, and the bytes Arrow reads through a Python file): the file is never held whole,
    and neither are its documents. Parquet holds one row group (512 rows, ~2.5 MB, here) at a time."""
    texts = big_lines(24 << 20)
    data = jsonl(texts)
    name, body = "big.jsonl", data
    if codec == "gzip":
        name, body = "big.jsonl.gz", gzip.compress(data, compresslevel=1)
    elif codec == "zstd":
        name, body = "big.jsonl.zst", zstandard.ZstdCompressor(level=1).compress(data)
    make_drop(tmp_path, "d1", {} if codec == "parquet" else {name: body})
    if codec == "parquet":
        pq.write_table(pa.table({"text": texts}), tmp_path / "d1" / "big.parquet", row_group_size=512)
    source = LocalSource(tmp_path)
    tracemalloc.start()
    try:
        scan = DropScan(source, "d1", 1 << 20)
        count = hashed = 0
        for doc in scan.documents():
            count += 1
            hashed ^= hash(doc_hash(doc.text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.contents.ok, scan.contents.error_message()
    assert count == len(texts)
    assert hashed == np.bitwise_xor.reduce([hash(doc_hash(t)) for t in texts])
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MB"
    assert scan.contents.content_hash == hash_drop(source, "d1") == read_drop(source, "d1", 1 << 20).content_hash


def stored(memory: Memory, drop_id: str) -> dict[str, list[list[int]]]:
    """The drop's rows' real tokens by split, in position order."""
    table = memory.table().to_lance().to_table(filter=f"drop_id = '{drop_id}'").to_pylist()
    out: dict[str, list] = {"train": [], "holdout": []}
    for row in sorted(table, key=lambda r: (r["split"], r["position"])):
        out[row["split"]].append(row["tokens"][: row["length"]])
    return out


def test_streamed_ingest_stores_what_the_in_memory_packing_gives(tmp_path):
    """A mixed drop (plain, gzip, zstd JSON lines, parquet, a text file, repeats inside and across files) ingests
    to exactly the rows `split_and_pack` builds in memory from the same documents; the spill is gone after."""
    cfg = settings_for(tmp_path / "home")
    texts = python_docs(40)
    files = {
        "a.jsonl": jsonl(texts[:10]),
        "b.jsonl.gz": gzip.compress(jsonl(texts[10:20] + texts[:3])),
        "c.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl(texts[20:30])),
        "e.txt": texts[39],
    }
    drop = make_drop(tmp_path / "drops", "d1", files)
    pq.write_table(pa.table({"text": texts[30:39]}), drop / "d.parquet", row_group_size=2)
    [result] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert result.status == "ingested", result.message
    assert result.record.duplicates == 3
    docs = [d.text for d in read_drop(LocalSource(tmp_path / "drops"), "d1", 1 << 20).documents]
    unique = list(dict.fromkeys(docs))
    tok = load_tokenizer("byte")
    c = cfg.ingest
    expect = split_and_pack(
        tok.encode_batch(unique), [doc_hash(t) for t in unique], c.context_length, tok.eos_id, tok.pad_id,
        c.holdout_fraction, c.min_holdout_sequences,
    )  # fmt: skip
    got = stored(Memory.open(cfg), "d1")
    for split, part in (("train", expect.train), ("holdout", expect.holdout)):
        assert got[split] == [row[:n].tolist() for row, n in zip(part.tokens, part.lengths, strict=True)]
    assert not list((cfg.home / "tmp").iterdir())


def test_spill_is_removed_after_rejection_and_error(tmp_path):
    cfg = settings_for(tmp_path / "home")
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": b'{"text": "fine"}\n{"txt": 1}\n'})
    [result] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert result.status == "rejected" and "missing field" in result.message
    assert not list((cfg.home / "tmp").iterdir())
    with pytest.raises(RuntimeError), Spill(cfg.home, "d2") as spill:
        spill.append([np.arange(10)])
        assert spill.path.exists() and spill.tokens(0).tolist() == list(range(10))
        raise RuntimeError("the ingest failed")
    assert not spill.path.exists()


def test_a_killed_ingests_spill_is_removed_by_the_next(tmp_path):
    """SIGKILL while spilling: the process cannot clean up; the next ingest's Spill removes what it left."""
    home = tmp_path / "home"
    script = textwrap.dedent(f"""
        import numpy as np, sys, time
        from components.ingest.spill import Spill
        spill = Spill({str(home)!r}, "d1")
        spill.append([np.arange(100000)])
        print(spill.path, flush=True)
        while True:
            spill.append([np.arange(1000)])
            time.sleep(0.01)
    """)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    left = Path(proc.stdout.readline().strip())
    assert left.exists()
    assert remove_leftovers(home / "tmp") == []  # alive: not touched
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert left.exists()  # nobody cleaned up
    with Spill(home, "d2") as spill:
        assert not left.exists()
        names = sorted(p.name for p in (home / "tmp").iterdir())  # the d1 spill and its metadata array are gone
        assert spill.path.name in names and all(n.startswith("ingest-d2-") for n in names)
        assert all(n.endswith(f"-{os.getpid()}") for n in names) and len(names) == 2  # the tokens, the metadata
