"""Cluster arms planned from the drop records (issue 11 item 3): each drop's train rows are written grouped by
cluster, so `replay.arms: cluster` needs no scan; the digest and the lock do not depend on that order."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from components.adapters.lines import Line
from components.adapters.manifest import build_manifest, drop_digests, prove
from components.adapters.memory import Memory
from components.core.replay import build_arms
from components.ingest import ingest_source, rows
from components.training.planner import build_line_sampler, indexed_arms, new_rows, planning_rows
from tests.helpers import settings_for, three_drops

DROPS = ["d1-code", "d2-licenses", "d3-docs"]


def ingest(tmp_path, home: str, drops: list[str] = DROPS):
    """Ingest `drops` (of tmp_path/drops) into tmp_path/home."""
    src = tmp_path / f"src-{'-'.join(drops)}"
    for drop in drops:
        shutil.copytree(tmp_path / "drops" / drop, src / drop, dirs_exist_ok=True)
    cfg = settings_for(tmp_path / home)
    got = ingest_source(cfg, str(src), show_progress=False)
    assert [r.status for r in got] == ["ingested"] * len(drops)
    return cfg


@pytest.fixture
def drops_dir(tmp_path):
    three_drops(tmp_path / "drops")
    return tmp_path / "drops"


def stored(memory: Memory, drop: str):
    table = memory.table().to_lance().to_table(columns=["drop_id", "split", "position", "cluster"], with_row_id=True)
    ids = memory.ordinals(table.column("_rowid").to_numpy(), memory.version)
    table = table.take(np.argsort(ids))  # write order
    mine = np.asarray(table.column("drop_id").to_pylist()) == drop
    train = mine & (np.asarray(table.column("split").to_pylist()) == "train")
    return table.column("cluster").to_numpy()[train], table.column("position").to_numpy()[train]


def trained_on(tmp_path, memory: Memory, drops: list[str]) -> Line:
    line = Line(tmp_path / "home")
    versions = {d: memory.version for d in drops}
    line.state = line.state.model_copy(update={"trained": list(drops), "versions": versions})
    return line


def write_like_before(memory: Memory, drop_ids: set[str]) -> None:
    """Records as ingest wrote them before this change: one range of all train rows (rows in position order)."""
    with memory.writer() as mem:
        for rec in mem.live():
            if rec.drop_id in drop_ids:
                mem._append_record(replace(rec, arm_rows=json.dumps([rec.sequences])))


def test_train_rows_are_written_grouped_by_cluster_and_the_record_counts_them(tmp_path, drops_dir):
    memory = Memory.open(ingest(tmp_path, "home"))
    reordered = 0
    for rec in memory.live():
        cluster, position = stored(memory, rec.drop_id)
        assert json.loads(rec.arm_rows) == np.bincount(cluster).tolist() and rec.clusters == len(np.unique(cluster))
        assert (np.diff(cluster) >= 0).all()  # clusters ascending ...
        for c in np.unique(cluster):
            assert (np.diff(position[cluster == c]) > 0).all()  # ... positions ascending inside each
        reordered += int((np.diff(position) < 0).any())
    assert reordered, "no drop has interleaved clusters: the test data does not exercise the write order"


def test_the_digest_and_the_lock_do_not_depend_on_the_write_order(tmp_path, drops_dir, monkeypatch):
    new = Memory.open(ingest(tmp_path, "new"))
    monkeypatch.setattr(rows, "train_order", lambda clusters: np.arange(len(clusters)))  # the order before
    old = Memory.open(ingest(tmp_path, "old"))
    assert stored(old, "d1-code")[1].tolist() == sorted(stored(new, "d1-code")[1].tolist())
    assert stored(old, "d1-code")[1].tolist() != stored(new, "d1-code")[1].tolist()
    for memory in (new, old):
        rehashed = drop_digests(memory, memory.version)  # sorted by (split, position) from the table
        assert {r.drop_id: r.rows_hash for r in memory.live()} == {d: h for d, (_, h) in rehashed.items()}
    lock_new, lock_old = build_manifest(new), build_manifest(old)
    assert lock_new["content_hash"] == lock_old["content_hash"] and lock_new["drops"] == [
        d | {"version": o["version"]} for d, o in zip(lock_new["drops"], lock_old["drops"], strict=True)
    ]
    prove(new, lock_old)


@pytest.mark.parametrize("past", [DROPS[:2], DROPS[::-1], DROPS[1:]])
def test_cluster_arms_from_the_records_equal_a_full_scan(tmp_path, drops_dir, past):
    memory = Memory.open(ingest(tmp_path, "home"))
    line = trained_on(tmp_path, memory, past)
    planned = planning_rows(memory, memory.version, line, "d3-docs", "cluster")
    assert isinstance(planned, dict)  # from the records: no row read
    fast, scanned = indexed_arms(planned, past, "cluster"), build_arms(memory.index(), past, "cluster")
    assert fast.keys == scanned.keys and fast.drop_ids == scanned.drop_ids and len(fast.keys) > len(past)
    for a, b in zip(fast.row_ids, scanned.row_ids, strict=True):
        assert np.asarray(a).tolist() == b.tolist()
    assert planned["d3-docs"].train().tolist() == sorted(new_rows(memory.index(), "d3-docs").tolist())


def test_a_memory_mixing_old_and_new_drops_plans_the_arms_a_scan_would(tmp_path, drops_dir, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(rows, "train_order", lambda clusters: np.arange(len(clusters)))
        cfg = ingest(tmp_path, "home", ["d1-code", "d2-licenses"])
    write_like_before(Memory.open(cfg), {"d1-code", "d2-licenses"})
    ingest(tmp_path, "home", ["d3-docs"])
    memory = Memory.open(cfg)
    assert [memory.drop_indexes(DROPS)[d].by_cluster for d in DROPS] == [False, False, True]
    line = trained_on(tmp_path, memory, DROPS)
    for mode in ("cluster", "drop"):
        planned = planning_rows(memory, memory.version, line, "d3-docs", mode)
        assert isinstance(planned, dict) == (mode == "drop")  # cluster arms of old drops: the scan fallback
        settings = cfg.model_copy(update={"replay": cfg.replay.model_copy(update={"arms": mode})})
        arms = build_line_sampler(settings, planned, line, "uniform", 0).arms
        scanned = build_arms(memory.index(), DROPS, mode)
        assert arms.keys == scanned.keys and len(arms.keys) == (
            3 if mode == "drop" else sum(r.clusters for r in memory.live())
        )
        for a, b in zip(arms.row_ids, scanned.row_ids, strict=True):
            assert np.asarray(a).tolist() == b.tolist()
