"""Crash and concurrency safety of ingest, and the `amr ingest` / `amr memory` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from components.adapters.memory import Memory
from components.adapters.records import DropRecord
from components.cli import app
from components.ingest import ingest_source
from tests.helpers import jsonl, make_drop, python_docs, settings_for, three_drops

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"AMR_INGEST__CONTEXT_LENGTH": "64", "AMR_INGEST__CLUSTERS_PER_DROP": "2"}


def amr_env(home: Path) -> dict[str, str]:
    return dict(os.environ, AMR_HOME=str(home), PYTHONPATH=str(ROOT), **SMALL)


def amr(*args: str, home: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "components.cli", *args],
        cwd=cwd,
        env=amr_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def consistent(memory: Memory) -> None:
    """Every ingested drop is fully there at the memory version, and nothing else is."""
    rows = memory.table().to_lance().to_table(columns=["drop_id"]).column("drop_id").to_pylist()
    counts = {d: rows.count(d) for d in set(rows)}
    expected = {r.drop_id: r.sequences + r.holdout_sequences for r in memory.drops() if r.status == "ingested"}
    assert counts == expected


def data_files(home: Path) -> int:
    data = home / "memory" / "sequences.lance" / "data"
    return len(list(data.iterdir())) if data.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_write_leaves_the_previous_version(tmp_path):
    home, root = tmp_path / "home", tmp_path / "drops"
    make_drop(root, "a-first", {"a.jsonl": jsonl(python_docs(6))})
    cfg = settings_for(home)
    ingest_source(cfg, str(root), show_progress=False)
    before = Memory.open(cfg)
    version, rows = before.version, before.table().count_rows()
    # a large drop, written in many record batches: the kill lands while Lance writes its data files
    big = [t for t in python_docs(400, offset=6) if len(t) < 200_000][:300]
    make_drop(root, "b-big", {f"part-{i}.jsonl": jsonl(big[i::4]) for i in range(4)})
    files_before = data_files(home)
    proc = amr("ingest", str(root), home=home, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while data_files(home) == files_before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed mid-write"
    after = Memory.open(cfg)
    assert after.version == version and after.table().count_rows() == rows
    assert after.record("b-big") is None and after.ingested() == ["a-first"]
    consistent(after)
    # the next ingest recovers (restores the table to the memory version) and writes the drop exactly once
    result = {r.drop_id: r.status for r in ingest_source(cfg, str(root), show_progress=False)}
    assert result == {"a-first": "present", "b-big": "ingested"}
    final = Memory.open(cfg)
    consistent(final)
    assert [t for v in final.versions() for t in v["tags"]] == ["drop-a-first", "drop-b-big"]


def test_a_commit_without_its_record_is_invisible_and_rolled_back(tmp_path):
    """The window between Lance's commit and the drop record: readers never see it; the next writer undoes it."""
    cfg = settings_for(tmp_path / "home")
    three_drops(tmp_path / "drops")
    ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    memory = Memory.open(cfg)
    version, rows = memory.version, memory.table().count_rows()
    table = memory.db.open_table("sequences")
    orphan = table.to_lance().to_table(filter="drop_id = 'd1-code'").replace_schema_metadata(table.schema.metadata)
    table.add(orphan.cast(table.schema))  # the process "dies" here, before tagging and recording
    table.tags.create("drop-ghost", table.version)
    reader = Memory.open(cfg)
    assert reader.version == version and reader.table().count_rows() == rows
    with reader.writer():
        pass  # recovery happens on taking the write lock
    latest = reader.db.open_table("sequences")
    assert latest.count_rows() == rows and "drop-ghost" not in latest.tags.list()
    consistent(Memory.open(cfg))


@pytest.mark.slow
def test_two_ingests_at_once_never_corrupt_the_memory(tmp_path):
    home = tmp_path / "home"
    three_drops(tmp_path / "shared")
    make_drop(tmp_path / "other", "x-extra", {"a.jsonl": jsonl(python_docs(8, offset=60))})
    procs = [
        amr("ingest", "--json", str(tmp_path / src), home=home, cwd=tmp_path) for src in ("shared", "shared", "other")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [(o.decode()[-1500:], e.decode()[-1500:]) for o, e in outs]
    statuses = [sorted((r["drop_id"], r["status"]) for r in json.loads(o)["results"]) for o, _ in outs[:2]]
    for drop in ("d1-code", "d2-licenses", "d3-docs"):  # each shared drop ingested by exactly one process
        assert sorted(dict(s)[drop] for s in statuses) == ["ingested", "present"]
    memory = Memory.open(settings_for(home))
    assert sorted(memory.ingested()) == ["d1-code", "d2-licenses", "d3-docs", "x-extra"]
    assert len([r for r in memory.records() if r.status == "ingested"]) == 4
    consistent(memory)


def test_cli_exit_codes_and_memory_json(tmp_path, monkeypatch):
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "drops"
    three_drops(root)
    make_drop(root, "later", {"a.jsonl": jsonl(python_docs(4))}, ready=False)
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "--json", str(root)])
    assert res.exit_code == 0, res.output
    assert {r["status"] for r in json.loads(res.stdout)["results"]} == {"ingested", "pending"}
    make_drop(root, "z-bad", {"a.jsonl": b'{"text": 1}\n'})
    res = runner.invoke(app, ["ingest", "--json", str(root)])
    assert res.exit_code == 2
    assert runner.invoke(app, ["ingest", str(tmp_path / "missing")]).exit_code == 1
    res = runner.invoke(app, ["memory", "--json", "--source", str(root)])
    data = json.loads(res.stdout)
    assert data["version"] == 4
    keys = {
        "drop_id",
        "status",
        "documents",
        "duplicates",
        "sequences",
        "holdout_sequences",
        "tokens",
        "clusters",
        "version",
        "error",
    }
    assert all(set(d) == keys for d in data["drops"])
    status = {d["drop_id"]: d["status"] for d in data["drops"]}
    assert status == {
        "d1-code": "ingested",
        "d2-licenses": "ingested",
        "d3-docs": "ingested",
        "z-bad": "rejected",
        "later": "pending",
    }
    bad = next(d for d in data["drops"] if d["drop_id"] == "z-bad")
    assert "z-bad/a.jsonl:1" in bad["error"] and bad["version"] == 4
    versions = json.loads(runner.invoke(app, ["memory", "versions", "--json"]).stdout)
    assert [v["tags"] for v in versions if v["drop_commit"]] == [
        ["drop-d1-code"],
        ["drop-d2-licenses"],
        ["drop-d3-docs"],
    ]
    res = runner.invoke(app, ["ingest", str(root)], env={"AMR_INGEST__CONTEXT_LENGTH": "zero"})
    assert res.exit_code == 1 and "ingest.context_length = 'zero'" in res.output


def test_record_schema_round_trip(tmp_path):
    cfg = settings_for(tmp_path / "home")
    memory = Memory.open(cfg)
    with memory.writer() as mem:
        mem.reject_drop(DropRecord("q", "", "abc", error="q/a.jsonl:3: bad. Fix: fix it"))
    rec = Memory.open(cfg).record("q")
    assert (rec.status, rec.version, rec.error) == ("rejected", 0, "q/a.jsonl:3: bad. Fix: fix it")
    assert pa.Table.from_pylist([vars(rec)]).num_rows == 1
