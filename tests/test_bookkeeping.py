"""Bookkeeping in O(new data) (issue 11 item 3): row digests and row-id indexes stored at ingest, on real LanceDB."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from components.adapters.manifest import build_manifest, content_hash, drop_digests, prove
from components.adapters.memory import Memory
from components.adapters.records import DropIndex
from components.cli import app
from components.core.replay import build_arms
from components.ingest import ingest_source
from components.training.planner import indexed_arms, new_rows
from tests.helpers import settings_for, three_drops

DROPS = ["d1-code", "d2-licenses", "d3-docs"]


@pytest.fixture
def memory(tmp_path, monkeypatch):
    three_drops(tmp_path / "drops")
    cfg = settings_for(tmp_path / "home")
    assert {r.status for r in ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)} == {"ingested"}
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return Memory.open(cfg)


def forget(memory: Memory, drop_ids, **blank) -> None:
    """Make drops look ingested before this change: their newest record without digest and index."""
    blank = blank or {"rows_hash": "", "fragments": "", "arm_rows": ""}
    with memory.writer() as mem:
        for rec in mem.live():
            if rec.drop_id in drop_ids:
                mem._append_record(replace(rec, **blank))


def test_stored_digests_equal_a_full_rehash_and_the_lock_is_unchanged(memory):
    rehashed = drop_digests(memory, memory.version)
    for rec in memory.live():
        assert (rec.sequences + rec.holdout_sequences, rec.rows_hash) == rehashed[rec.drop_id]
    lock = build_manifest(memory)
    assert lock["content_hash"] == content_hash(memory.meta(), rehashed)  # the bytes of an unchanged memory stay
    prove(memory, lock)


def test_row_ids_are_fragment_id_and_offset(memory):
    """The assumption DropIndex rests on: without stable row ids, `_rowid` = fragment id << 32 | offset."""
    for fragment in memory.table().to_lance().get_fragments():
        ids = fragment.to_table(columns=["position"], with_row_id=True).column("_rowid").to_numpy()
        assert ids.tolist() == ((fragment.fragment_id << 32) + np.arange(fragment.metadata.physical_rows)).tolist()


def scan_arms(memory: Memory, past: list[str], mode: str):
    return build_arms(memory.index(), past, mode)


@pytest.mark.parametrize("mode", ["drop", "cluster"])
def test_indexed_arms_and_new_rows_equal_a_full_scan(memory, mode):
    indexes = memory.drop_indexes(DROPS)
    assert indexes is not None and set(indexes) == set(DROPS)
    for past in (DROPS[:1], DROPS[:2], DROPS[::-1]):
        fast, scanned = indexed_arms(indexes, past, mode), scan_arms(memory, past, mode)
        assert fast.keys == scanned.keys and fast.drop_ids == scanned.drop_ids
        for a, b in zip(fast.row_ids, scanned.row_ids, strict=True):
            assert a.tolist() == b.tolist()
    index = memory.index()
    for drop in DROPS:
        assert indexes[drop].train().tolist() == sorted(new_rows(index, drop).tolist())


def test_the_index_survives_a_rollback_and_a_roll_forward(memory, tmp_path):
    live = {r.drop_id: r.version for r in memory.live()}
    with memory.writer() as mem:
        mem.set_drops({d: v for d, v in live.items() if d != "d3-docs"}, "test")  # back to after d2
    after = Memory.open(memory_settings(tmp_path))
    indexes = after.drop_indexes(DROPS)
    assert set(indexes) == {"d1-code", "d2-licenses"}
    fast = indexed_arms(indexes, ["d1-code", "d2-licenses"], "drop")
    assert [a.tolist() for a in fast.row_ids] == [
        a.tolist() for a in scan_arms(after, ["d1-code", "d2-licenses"], "drop").row_ids
    ]
    prove(after, build_manifest(after))
    with after.writer() as mem:
        mem.set_drops(live, "forward")
    back = Memory.open(memory_settings(tmp_path))
    assert indexed_arms(back.drop_indexes(DROPS), DROPS, "drop").keys == DROPS


def memory_settings(tmp_path):
    return settings_for(tmp_path / "home")


def test_drops_from_before_the_change_are_hashed_once_and_planning_falls_back_to_a_scan(memory, tmp_path):
    lock = build_manifest(memory)
    forget(memory, {"d2-licenses"})
    memory = Memory.open(memory_settings(tmp_path))
    assert memory.drop_indexes(DROPS) is None  # the planner scans instead
    assert build_manifest(memory) == lock  # hashed on demand: the same lock ...
    again = Memory.open(memory_settings(tmp_path))
    assert again.record("d2-licenses").rows_hash == lock["drops"][1]["rows_hash"]  # ... and stored, once
    prove(again, lock)


def test_lock_verify_names_a_drop_whose_rows_no_longer_match(memory, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["memory", "lock", "--verify"]).exit_code == 0
    forget(memory, {"d3-docs"}, rows_hash="0" * 64)  # what a changed data file looks like against its digest
    res = runner.invoke(app, ["memory", "lock", "--verify"])
    assert res.exit_code == 1 and "d3-docs" in "".join(res.output.splitlines())


def test_a_record_whose_fragments_disagree_with_the_table_is_refused(memory, tmp_path):
    rec = memory.record("d1-code")
    frags = DropIndex.of(rec).fragments
    forget(memory, {"d1-code"}, fragments=f"[[{frags[0][0]}, {frags[0][1] + 1}]]")
    with pytest.raises(Exception, match="holds fragments"):
        build_manifest(Memory.open(memory_settings(tmp_path)))
