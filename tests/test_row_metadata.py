"""No per-row metadata held whole: per-row values computed per block, the write order computed per range."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from components.adapters import manifest
from components.adapters.memory import Memory
from components.adapters.records import sequences_schema
from components.core.lazy import LazyArray
from components.core.ondisk import Arrays, DiskArray
from components.core.text import load_tokenizer
from components.ingest import rows as rows_module
from components.ingest import write_order
from components.ingest.clustering import _bucket_tables
from components.ingest.drops import LocalSource
from components.ingest.engine_local import LocalEngine
from components.ingest.pipeline import Bars, memory_meta
from components.ingest.rows import packed_digest, record_batches
from components.ingest.scan import plan_drop
from components.ingest.write_order import WriteOrder
from tests.helpers import jsonl, make_drop, python_docs, settings_for


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_write_order_ranges_equal_a_stable_argsort(monkeypatch, tmp_path, k, on_disk):
    monkeypatch.setattr(write_order, "SCAN_ROWS", 37)  # ranges found across many scan blocks
    rng = np.random.default_rng(k)
    arrays = Arrays(tmp_path, "ingest-t-")
    for n in (0, 1, 7, 300, 1000):
        labels = rng.integers(0, k, n).astype(np.uint16)  # with k > n some clusters are empty
        if k == 5:
            labels = np.sort(labels)  # clusters in long runs: ranges start past the first checkpoints
        expected = np.argsort(labels, kind="stable")
        if on_disk:
            stored = arrays.new(np.uint16)
            stored.append(labels)
        order = WriteOrder(stored if on_disk else labels)
        assert np.array_equal(order[:], expected)
        assert np.array_equal(order.clusters(0, n), labels[expected])
        for a in range(0, n + 1, max(1, n // 13)):
            for b in range(a, n + 1, max(1, n // 7)):
                assert np.array_equal(order[a:b], expected[a:b]), (n, a, b)
                assert np.array_equal(order.clusters(a, b), labels[expected[a:b]]), (n, a, b)


def test_lazy_array_reads_like_the_array_it_computes():
    values = np.arange(50, dtype=np.int64) * 3
    lazy = LazyArray(len(values), lambda rows: values[rows], np.int32)
    assert lazy[7] == 21 and lazy[-1] == 147 and lazy[3:9].dtype == np.int32
    assert np.array_equal(lazy[[4, 0, 4]], [12, 0, 12]) and np.array_equal(np.asarray(lazy), values)
    assert lazy.sum() == values.sum() and list(lazy) == values.tolist()
    table = np.arange(200)[::-1]
    assert np.array_equal(lazy.map(table)[2:5], table[values[2:5]])
    with pytest.raises(IndexError):
        lazy[[0, 50]]


def _plan_and_write(home, context_length: int, drops) -> tuple[int, int, int, str]:
    """(rows, bytes kept by the plan with its labels, peak bytes above that while the digest and every record batch
    are built, rows_hash) of one drop of real text, traced by tracemalloc (numpy's buffers included)."""
    cfg = settings_for(home, **{"ingest.context_length": context_length})
    cfg.ingest.clusters_per_drop = 4
    memory, tok = Memory.open(cfg), load_tokenizer("byte")
    source = LocalSource(drops)
    [ref] = source.list_drops()
    with Bars(False) as bars, LocalEngine(source, ref, cfg, tok, bars, None) as engine:
        content = engine.content_hash()
        scanned = engine.scan(content)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        plan = plan_drop(memory, scanned, cfg, tok, engine.spill, lambda: engine.scan(content))
        _bucket_tables.cache_clear()  # the features' lookup tables (up to ~0.7 MB, by the largest token id seen)
        kept = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        digest = packed_digest("d1", plan.packed, plan.clusters, batch_rows=256)
        schema = sequences_schema(memory_meta(cfg, tok, {}))
        for _ in record_batches("d1", plan.packed, plan.clusters, schema, lambda n: None, batch_rows=256):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rows = len(plan.packed.train.lengths) + len(plan.packed.holdout.lengths)
    return rows, kept - base, peak - kept, digest


def test_a_drop_holds_almost_nothing_a_row_however_many_rows_it_packs_into(tmp_path, monkeypatch):
    """The same documents packed at context_length 8 and 64 (8x the rows): the difference in what the plan keeps,
    and in the peak of the row digest and the commit's batches, is per row. With every per-row value stored (a
    length, a first document, a hash index, an int32 label: ~28 B) and the write order as an argsort (8 B) this was
    over 30 bytes a row; then the uint16 label (2 B); now the labels are on disk (components.core.ondisk) and the
    write order keeps per-cluster counts every SCAN_ROWS rows."""
    monkeypatch.setattr(rows_module, "SEGMENT_ROWS", 4096)  # ranges far smaller than the drop, as at scale
    monkeypatch.setattr(write_order, "SCAN_ROWS", 1 << 14)
    monkeypatch.setattr(manifest, "HASH_BLOCK", 1 << 14)  # the digest's blocks too (256 hex strings, not 65,536)
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(50))})
    drops = tmp_path / "drops"
    _plan_and_write(tmp_path / "warm", 64, drops)  # first-call allocations (imports, library caches) left out
    many, kept_many, peak_many, _ = _plan_and_write(tmp_path / "many", 8, drops)
    few, kept_few, peak_few, _ = _plan_and_write(tmp_path / "few", 64, drops)
    assert many > 100_000 and many > 7 * few
    per_row_kept = (kept_many - kept_few) / (many - few)
    per_row_peak = (peak_many - peak_few) / (many - few)
    assert per_row_kept < 0.25, per_row_kept  # was 2 (the uint16 label in memory)
    assert per_row_peak < 1.0, per_row_peak  # nothing per row while hashing and writing


def test_labels_on_disk_give_the_rows_and_digest_of_labels_in_memory(tmp_path):
    """The local engine's labels are DiskArrays in the ingest's spill directory (removed with it); the row digest
    and every record batch are those of the same labels as ndarrays."""
    cfg = settings_for(tmp_path, **{"ingest.context_length": 16})
    cfg.ingest.clusters_per_drop = 5
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(30))})
    memory, tok = Memory.open(cfg), load_tokenizer("byte")
    source = LocalSource(tmp_path / "drops")
    [ref] = source.list_drops()
    schema = sequences_schema(memory_meta(cfg, tok, {}))
    with Bars(False) as bars, LocalEngine(source, ref, cfg, tok, bars, None) as engine:
        scanned = engine.scan(engine.content_hash())
        plan = plan_drop(memory, scanned, cfg, tok, engine.spill, lambda: None)
        train, holdout = plan.clusters
        assert isinstance(train, DiskArray) and isinstance(holdout, DiskArray) and train.path.exists()
        assert train.path.parent == engine.spill.path.parent and len(set(np.asarray(train).tolist())) > 1
        in_memory = (np.asarray(train), np.asarray(holdout))
        assert packed_digest("d1", plan.packed, plan.clusters) == packed_digest("d1", plan.packed, in_memory)
        batches = list(record_batches("d1", plan.packed, plan.clusters, schema, lambda n: None, batch_rows=100))
        expected = list(record_batches("d1", plan.packed, in_memory, schema, lambda n: None, batch_rows=100))
        assert len(batches) == len(expected) and all(a.equals(b) for a, b in zip(batches, expected, strict=True))
    assert not train.path.exists() and not holdout.path.exists()
