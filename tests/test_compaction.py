"""Compaction of the memory (issue 11 item 2) on real LanceDB: rows, row ids, tags, lock, rollback, recovery after a
real SIGKILL, retention, the CLI and the refresh threshold, and a checkpoint resumed across a compaction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from components.adapters.manifest import build_manifest, manifest_bytes, prove
from components.adapters.memory import Memory
from components.adapters.records import DROPS, SEQUENCES
from components.cli import app
from components.ingest import ingest_source
from components.refresh.steps import compact_step
from components.training.planner import new_rows
from components.versioning.retention import cleanup
from tests.helpers import jsonl, make_drop, python_docs, settings_for, three_drops

ROOT = Path(__file__).resolve().parents[1]
DROP_IDS = ["d1-code", "d2-licenses", "d3-docs"]
BIG = 1 << 20  # rows per compacted fragment: every test memory fits one


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    three_drops(tmp_path / "drops")
    cfg = settings_for(tmp_path / "home")
    assert {r.status for r in ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)} == {"ingested"}
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return cfg


def snapshot(memory: Memory, version: int | None = None) -> tuple:
    """What readers see of a version: the index with row ids, and every row's tokens taken by row id."""
    index = memory.index(version)
    tokens, lengths = memory.take(index.column("_rowid").to_numpy(), version)
    return index.to_pylist(), tokens.tolist(), lengths.tolist()


def fragments(memory: Memory, version: int) -> int:
    return len(memory.table(version).to_lance().get_fragments())


def test_compaction_keeps_rows_row_ids_tags_and_the_lock(cfg):
    memory = Memory.open(cfg)
    version, before = memory.version, snapshot(memory)
    lock, tags = manifest_bytes(build_manifest(memory)), memory.db.open_table(SEQUENCES).tags.list()
    assert fragments(memory, version) >= 3  # one or more per drop commit
    report = memory.compact(BIG)
    assert report.version == version and report.compacted > version and report.rows == len(before[0])
    after = Memory.open(cfg)
    assert after.version == version and after.physical(version) == report.compacted
    assert fragments(after, version) == 1
    assert snapshot(after) == before  # same rows under the same row ids, in the same order
    have = after.db.open_table(SEQUENCES).tags.list()
    assert {k: v["version"] for k, v in have.items()} == {k: v["version"] for k, v in tags.items()} | {
        f"compacted-{version}": report.compacted
    }
    assert manifest_bytes(build_manifest(after)) == lock  # the lock names v, and its bytes do not change
    prove(after, json.loads(lock))
    after.verify()
    indexes = after.drop_indexes(DROP_IDS)  # the row-id index from the records equals a scan of the compacted rows
    for drop in DROP_IDS:
        assert indexes[drop].train().tolist() == new_rows(after.index(), drop).tolist()
    again = after.compact(BIG)
    assert again.compacted == report.compacted and "nothing to compact" in again.note


def test_rollback_and_roll_forward_across_a_compaction(cfg):
    memory = Memory.open(cfg)
    records = {r.drop_id: r.version for r in memory.live()}
    two = {d: records[d] for d in DROP_IDS[:2]}
    with memory.writer() as mem:
        mem.set_drops(two, "back to two")
    at_two = Memory.open(cfg)
    expected_two = snapshot(at_two)
    with at_two.writer() as mem:
        mem.set_drops(records, "forward")
    full = Memory.open(cfg)
    expected_full = snapshot(full)
    report = full.compact(BIG)  # compact the memory of three drops, then roll back before and forward after it
    with full.writer() as mem:
        mem.set_drops(two, "back to two after the compaction")
    back = Memory.open(cfg)
    assert back.ingested() == DROP_IDS[:2] and snapshot(back) == expected_two
    back.verify()
    with back.writer() as mem:
        mem.set_drops(records, "forward again")
    forward = Memory.open(cfg)
    assert forward.physical(forward.version) == report.compacted and fragments(forward, forward.version) == 1
    assert snapshot(forward) == expected_full
    latest = forward.db.open_table(SEQUENCES)  # writers append to the restored compaction, not to the drop commits
    assert len(latest.to_lance().get_fragments()) == 1


def test_a_drop_ingested_after_a_compaction_keeps_every_row_id(cfg, tmp_path):
    memory = Memory.open(cfg)
    before = snapshot(memory)
    memory.compact(BIG)
    make_drop(tmp_path / "drops", "d4-more", {"a.jsonl": jsonl(python_docs(6, offset=40))})
    statuses = {r.drop_id: r.status for r in ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)}
    assert statuses == dict.fromkeys(DROP_IDS, "present") | {"d4-more": "ingested"}
    after = Memory.open(cfg)
    index, tokens, lengths = snapshot(after)
    n = len(before[0])
    assert (index[:n], tokens[:n], lengths[:n]) == before  # the old rows keep their ids; the new drop follows
    assert {row["drop_id"] for row in index[n:]} == {"d4-more"}
    assert after.drop_indexes(["d4-more"])["d4-more"].train().tolist() == new_rows(after.index(), "d4-more").tolist()
    after.verify()
    prove(after, build_manifest(after))


def test_a_compaction_killed_before_its_tag_is_undone(cfg):
    """A real SIGKILL right after Lance committed the compaction, before amr tagged it: the next writer restores."""
    memory = Memory.open(cfg)
    version, before = memory.version, snapshot(memory)
    script = (
        "import os, signal, lancedb\n"
        f"t = lancedb.connect({memory.uri!r}).open_table('sequences')\n"
        f"t.to_lance().optimize.compact_files(target_rows_per_fragment={BIG})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    table = memory.db.open_table(SEQUENCES)
    assert len(table.to_lance().get_fragments()) == 1  # the orphan compaction is the latest Lance version
    with memory.writer():
        pass  # the next writer recovers
    after = Memory.open(cfg)
    assert after.physical(version) == version and snapshot(after) == before
    assert "compacted-" not in "".join(after.db.open_table(SEQUENCES).tags.list())
    assert len(after.db.open_table(SEQUENCES).to_lance().get_fragments()) == fragments(after, version)


def test_cleanup_keeps_the_compaction_and_every_drop_commit(cfg):
    memory = Memory.open(cfg)
    version, lock = memory.version, build_manifest(memory)
    with memory.writer() as mem:  # a restore (kept until cleanup), then the compaction
        mem.set_drops({r.drop_id: r.version for r in mem.live()[:1]}, "back")
        mem.set_drops({d["drop_id"]: d["version"] for d in lock["drops"]}, "forward")
    before = snapshot(Memory.open(cfg))
    report = Memory.open(cfg).compact(BIG)
    out = cleanup(cfg, 0.0)
    assert out.removed and f"tag compacted-{version}" in out.kept[report.compacted]
    after = Memory.open(cfg)
    assert snapshot(after) == before and after.physical(version) == report.compacted
    prove(after, lock)


def test_cli_and_the_refresh_threshold(cfg, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("AMR_MEMORY__COMPACT_FRAGMENTS", "100")
    from components.core.config import load_settings

    busy = load_settings(None)
    assert "nothing to compact" in compact_step(busy)  # fewer small fragments than the threshold
    version = Memory.open(cfg).version
    assert Memory.open(cfg).physical(version) == version
    result = runner.invoke(app, ["memory", "compact", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["fragments_after"] == 1 < report["fragments_before"]
    monkeypatch.setenv("AMR_MEMORY__COMPACT_FRAGMENTS", "2")
    assert "nothing to compact" in compact_step(load_settings(None))  # already compacted
    result = runner.invoke(app, ["memory", "versions", "--json"])
    assert any(f"compacted-{version}" in v["tags"] for v in json.loads(result.output))


def test_the_drops_log_is_compacted_as_it_grows(cfg):
    memory = Memory.open(cfg)
    with memory.writer() as mem:
        for _ in range(20):  # each appended record is a fragment until the log is compacted
            mem._append_record(replace(mem.live()[0]))
    log = memory.db.open_table(DROPS).to_lance()
    assert len(log.get_fragments()) <= 17
    assert [r.drop_id for r in memory.live()] == DROP_IDS and len(memory.records()) == 23


@pytest.mark.slow
def test_a_checkpoint_resumed_on_the_compacted_memory_equals_an_uninterrupted_run(tmp_path):
    """Training killed (real SIGKILL) after a checkpoint, the memory compacted, training resumed: its weights and
    sampler equal a run never interrupted, so the checkpoint's row ids still name the same rows."""
    from safetensors.numpy import load_file

    from components.adapters.lines import Line
    from components.evaluation import evaluate_line
    from components.training.loop import train_drop

    tiny = {"train.n_layer": 1, "train.n_embd": 32, "train.n_head": 2, "train.batch_size": 8}
    tiny |= {"train.warmup_steps": 2, "train.max_steps": 40, "train.checkpoint_every": 4}
    three_drops(tmp_path / "drops")
    runs = {}
    for name in ("straight", "killed"):
        run = settings_for(tmp_path / name, **tiny)
        ingest_source(run, str(tmp_path / "drops"), show_progress=False)
        train_drop(run, Memory.open(run), Line(run.home, "main"), "d1-code", "amr")
        evaluate_line(run, Memory.open(run), Line(run.home, "main"))
        runs[name] = run
    straight, killed = runs["straight"], runs["killed"]
    train_drop(straight, Memory.open(straight), Line(straight.home, "main"), "d2-licenses", "amr")
    env = dict(os.environ, AMR_HOME=str(killed.home), PYTHONPATH=str(ROOT))
    env |= {f"AMR_{k.replace('.', '__').upper()}": str(v) for k, v in (tiny | {"ingest.context_length": 64}).items()}
    env |= {"AMR_INGEST__CLUSTERS_PER_DROP": "2", "AMR_INGEST__MIN_HOLDOUT_SEQUENCES": "2"}
    # the CLI runs outside the repo (no params.yaml there): give it the replay settings the in-process runs used
    env |= {f"AMR_REPLAY__{k.upper()}": str(v) for k, v in straight.replay.model_dump().items()}
    cmd = [sys.executable, "-m", "components.cli", "train", "--strategy", "amr"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = killed.home / "lines" / "main" / "checkpoints" / "d2-licenses"
    deadline = time.monotonic() + 180
    while not any(ckpts.glob("step-*/state.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(ckpts.glob("step-*/state.json")), proc.stderr.read().decode()[-2000:]
    memory = Memory.open(killed)
    assert "tagged compacted-" in memory.compact(BIG).note
    resumed = train_drop(killed, Memory.open(killed), Line(killed.home, "main"), "d2-licenses", "amr")
    assert resumed.resumed_from_step > 0
    a = load_file(str(Line(straight.home, "main").model_dir / "model.safetensors"))
    b = load_file(str(Line(killed.home, "main").model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert Line(straight.home, "main").state.sampler == Line(killed.home, "main").state.sampler
