"""`ingest.engine: ray` (issue 11 item 4): on a real local Ray with 2 CPUs, the same memory as the local engine."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.adapters.memory import Memory
from components.adapters.s3 import s3_client
from components.core.text import load_tokenizer
from components.ingest import ingest_source
from components.ingest.drops import LocalSource
from components.ingest.pipeline import Bars, ingest_drop
from components.versioning.retention import cleanup
from tests.helpers import jsonl, license_docs, make_drop, python_docs, settings_for

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RECORD_FIELDS = (
    "status",
    "sequences",
    "holdout_sequences",
    "tokens",
    "clusters",
    "documents",
    "duplicates",
    "rows_hash",
    "content_hash",
    "arm_rows",
)


MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def ray_cluster(moto_endpoint):
    """A real local Ray, 2 CPUs; its workers get the moto server's dummy credentials from their environment, as
    workers on a cluster get theirs from a Secret (nothing is shipped from the driver)."""
    env = MOTO_CREDENTIALS | {"AWS_ENDPOINT_URL": moto_endpoint}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> Path:
    """Real text in every layout the scan reads: JSON lines (plain and gzip), text files in a sub-directory, a
    manifest, a document repeated inside a drop and across drops; big enough for several tasks per split."""
    root = tmp_path_factory.mktemp("drops")
    code = [t for t in python_docs(60) if len(t) < 60_000]
    paragraphs = [p.strip() for t in python_docs(30, offset=60) for p in t.split("\n\n") if len(p.strip()) > 40]
    make_drop(
        root,
        "a-code",
        {
            "a.jsonl": jsonl(code[:20]),
            "notes/l0.txt": license_docs(2)[0],
            "notes/l1.txt": license_docs(2)[1],
            "notes/para.jsonl": jsonl(list(dict.fromkeys(paragraphs))[:600]),  # several tokenize batches' rows
            "_drop.json": '{"source": "stdlib"}',
        },
    )
    make_drop(
        root,
        "b-more",
        {"b.jsonl.gz": gzip.compress(jsonl(code[20:40] + [code[3]])), "c.ndjson": jsonl(code[40:] + [code[21]])},
    )
    make_drop(root, "c-dup", {"dup.jsonl": jsonl(code[:3])})  # nothing new: `duplicate`, checked again on a re-run
    return root


def memory_rows(memory: Memory) -> dict[str, list]:
    """Every row of the memory version, in row-id order."""
    columns = ["drop_id", "split", "position", "length", "cluster", "doc_hash"]
    table = memory.table().to_lance().to_table(columns=[*columns, "tokens"])
    out = {c: table.column(c).to_pylist() for c in columns}
    out["tokens"] = table.column("tokens").combine_chunks().flatten().to_numpy()
    return out


def records(memory: Memory) -> list[tuple]:
    return [(r.drop_id, *(getattr(r, f) for f in RECORD_FIELDS)) for r in memory.drops()]


def ingest_both(tmp_path: Path, root: Path) -> tuple:
    local, remote = settings_for(tmp_path / "local"), settings_for(tmp_path / "ray", **{"ingest.engine": "ray"})
    return ingest_source(local, str(root), False), ingest_source(remote, str(root), False), local, remote


def test_ray_ingest_equals_local_and_a_rerun_writes_nothing(tmp_path, ray_cluster, drops):
    got_local, got_ray, local, remote = ingest_both(tmp_path, drops)
    assert [(r.drop_id, r.status, r.message) for r in got_ray] == [(r.drop_id, r.status, r.message) for r in got_local]
    assert [r.status for r in got_ray] == ["ingested", "ingested", "duplicate"]
    assert got_ray[1].record.duplicates == 2  # one repeat across drops, one inside the drop
    a, b = Memory.open(local), Memory.open(remote)
    assert records(b) == records(a)
    assert b.record("a-code").manifest == a.record("a-code").manifest != ""
    rows_a, rows_b = memory_rows(a), memory_rows(b)
    assert rows_b.keys() == rows_a.keys()
    for column in rows_a:
        assert np.array_equal(rows_b[column], rows_a[column]), column
    assert len(set(rows_b["cluster"])) == 2 and "holdout" in rows_b["split"]
    assert b.verify().rows == a.verify().rows
    # the workers wrote several fragments per drop, committed as one version each
    assert len(b.table().to_lance().get_fragments()) > len(a.table().to_lance().get_fragments())
    assert [v["version"] for v in b.versions() if v["drop_commit"]] == [r.version for r in b.live()]
    ids = np.array([0, 5, len(rows_a["length"]) - 1])
    assert np.array_equal(b.take(ids)[0], a.take(ids)[0])

    version, files = b.version, sorted(p.name for p in (remote.home / "memory").rglob("*") if p.is_file())
    again = ingest_source(remote, str(drops), False)
    assert [r.status for r in again] == ["present", "present", "duplicate"]  # re-checked, tokenizing nothing
    assert b.version == version
    assert sorted(p.name for p in (remote.home / "memory").rglob("*") if p.is_file()) == files

    with b.writer() as mem:  # roll every drop back: c-dup's documents are new again, found by a scan without tokens
        mem.set_drops({}, "test rollback")
    ref = next(r for r in LocalSource(drops).list_drops() if r.drop_id == "c-dup")
    result = ingest_drop(b, LocalSource(drops), ref, remote, load_tokenizer("byte"), Bars(False))
    assert result.status == "ingested", result.message
    assert set(memory_rows(Memory.open(remote))["drop_id"]) == {"c-dup"}


def test_workers_read_drops_from_s3_and_write_an_s3_memory(tmp_path, ray_cluster, s3_env):
    client = s3_client()
    client.create_bucket(Bucket="ray-drops")
    client.create_bucket(Bucket="ray-memory")
    files = {
        "a.jsonl.gz": gzip.compress(jsonl(python_docs(12))),
        "notes/l0.txt": license_docs(1)[0].encode(),
        "_READY": b"",
    }
    for name, data in files.items():
        client.put_object(Bucket="ray-drops", Key=f"in/s3-drop/{name}", Body=data)
    local = settings_for(tmp_path / "local")
    remote = settings_for(  # and one task at a time
        tmp_path / "ray", **{"ingest.engine": "ray", "memory.uri": "s3://ray-memory/memory", "ingest.workers": 1}
    )
    got_local, got_ray = (
        ingest_source(local, "s3://ray-drops/in", False),
        ingest_source(remote, "s3://ray-drops/in", False),
    )
    assert [r.status for r in got_ray] == [r.status for r in got_local] == ["ingested"]
    a, b = Memory.open(local), Memory.open(remote)
    assert records(b) == records(a)
    assert memory_rows(b)["doc_hash"] == memory_rows(a)["doc_hash"]
    assert client.list_objects_v2(Bucket="ray-memory", Prefix="memory/sequences.lance/data/")["KeyCount"] > 0


def test_a_bad_line_is_rejected_with_the_local_message(tmp_path, ray_cluster):
    root = tmp_path / "drops"
    make_drop(root, "bad", {"a.jsonl": jsonl(python_docs(4)) + b'{"text": 7}\nnot json\n', "b.txt": "fine text"})
    got_local, got_ray, _, remote = ingest_both(tmp_path, root)
    assert got_ray[0].status == got_local[0].status == "rejected"
    assert got_ray[0].message == got_local[0].message
    assert "bad/a.jsonl:5" in got_ray[0].message
    assert Memory.open(remote).record("bad").status == "rejected"


def test_every_task_reserves_max_memory_mb_and_refuses_a_bound_too_small_as_local_does(tmp_path, ray_cluster):
    """The workers' bound is the memory Ray reserved for their task (ingest.max_memory_mb): at 64 MB each task
    refuses, with the local engine's one-line message (here the driver's own check is left out: limits=None)."""
    root = tmp_path / "drops"
    make_drop(root, "d1", {"a.jsonl": jsonl(python_docs(4))})
    with pytest.raises(ValueError) as local:
        ingest_source(settings_for(tmp_path / "local", **{"ingest.max_memory_mb": 64}), str(root), False)
    remote = settings_for(tmp_path / "ray", **{"ingest.engine": "ray", "ingest.max_memory_mb": 64})
    ref = LocalSource(root).list_drops()[0]
    with pytest.raises(ValueError) as worker:
        ingest_drop(Memory.open(remote), LocalSource(root), ref, remote, load_tokenizer("byte"), Bars(False))
    message = str(worker.value)
    assert message.startswith("a Ray ingest task on node ") and "\n" not in message
    prefix, _, rest = message.partition(": ")
    assert re.sub(r"\d+", "N", rest) == re.sub(r"\d+", "N", str(local.value))  # numbers: each process's own
    assert "ingest.max_memory_mb = 64 is below" in rest and "Fix: set ingest.max_memory_mb to " in rest
    assert Memory.open(remote).drops() == []


def test_a_bound_no_node_can_reserve_is_refused_before_any_task(tmp_path, ray_cluster, drops):
    largest = int(max(n["Resources"]["memory"] for n in ray.nodes() if n["Alive"]) // 2**20)
    remote = settings_for(tmp_path / "ray", **{"ingest.engine": "ray", "ingest.max_memory_mb": largest + 64})
    results = ingest_source(remote, str(drops), False)
    assert [r.status for r in results] == ["failed"] * 3
    assert results[0].message == (
        f"ValueError: ingest.max_memory_mb = {largest + 64} is more than any Ray node can reserve for a task (the "
        f"largest offers {largest} MB of Ray's `memory` resource): Ray would never schedule the ingest's tasks. "
        f"Fix: set ingest.max_memory_mb to {largest} or less, or add nodes with more memory."
    )
    assert Memory.open(remote).drops() == []


@ray.remote
def _interval(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def test_ingest_workers_caps_the_tasks_running_at_once(ray_cluster):
    """`run_capped`, which every rows task goes through: with a cap of 1 the tasks never overlap, though the 2 CPUs
    (and their two worker processes, started by the uncapped call first) would run two at once."""
    from components.ingest.engine_ray import run_capped

    assert len(ray.get(run_capped([lambda: _interval.remote(0.5) for _ in range(2)], 0))) == 2
    done = []
    refs = run_capped([lambda: _interval.remote(0.3) for _ in range(4)], 1, done.append)
    spans = sorted(ray.get(refs))
    assert sum(done) == 4
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))


def test_a_driver_killed_after_the_workers_wrote_commits_the_drop_once_on_the_rerun(tmp_path, ray_cluster, drops):
    home, marker = tmp_path / "ray", tmp_path / "fragments-written"
    env = dict(
        os.environ,
        AMR_HOME=str(home),
        PYTHONPATH=str(ROOT),
        AMR_INGEST__CONTEXT_LENGTH="64",
        AMR_INGEST__CLUSTERS_PER_DROP="2",
        AMR_INGEST__ENGINE="ray",
        AMR_INGEST__RAY_ADDRESS=ray_cluster,
        AMR_TEST_HOLD_BEFORE_COMMIT=str(marker),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "ingest", str(drops), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300  # a CLI start, Ray's connect and the scan: minutes on 2 loaded cores
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1].decode()[-2000:]
    data = home / "memory" / "sequences.lance" / "data"
    written = sorted(p.name for p in data.iterdir())
    assert written, "the workers wrote no fragment before the commit point"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    remote = settings_for(home, **{"ingest.engine": "ray"})
    dead = Memory.open(remote)
    assert dead.live() == [] and dead.record("a-code") is None  # the fragments are no part of any version
    assert dead.table().count_rows() == 0
    results = ingest_source(remote, str(drops), False)
    assert [r.status for r in results] == ["ingested", "ingested", "duplicate"]
    memory = Memory.open(remote)
    assert [(r.drop_id, r.status) for r in memory.records()] == [  # each committed exactly once
        ("a-code", "ingested"),
        ("b-more", "ingested"),
        ("c-dup", "duplicate"),
    ]
    assert [t for v in memory.versions() for t in v["tags"]] == ["drop-a-code", "drop-b-more"]
    local = settings_for(tmp_path / "local")
    ingest_source(local, str(drops), False)
    assert records(memory) == records(Memory.open(local))
    assert memory_rows(memory)["drop_id"] == memory_rows(Memory.open(local))["drop_id"]
    assert set(written) < {p.name for p in data.iterdir()}  # the orphans are still there, unreferenced
    week_ago = time.time() - 8 * 86400  # Lance keeps unreferenced files younger than 7 days (a write in flight)
    for name in written:
        os.utime(data / name, (week_ago, week_ago))
    cleanup(remote)
    assert not set(written) & {p.name for p in data.iterdir()}
    assert Memory.open(remote).verify().rows == memory.verify().rows


def test_the_local_engine_never_imports_ray(tmp_path):
    root = tmp_path / "drops"
    make_drop(root, "d1", {"a.jsonl": jsonl(python_docs(4))})
    code = (
        "import sys; from pathlib import Path; from components.ingest import ingest_source; "
        "from tests.helpers import settings_for; "
        f"r = ingest_source(settings_for(Path({str(tmp_path / 'home')!r})), {str(root)!r}, False); "
        "assert r[0].status == 'ingested', r; assert 'ray' not in sys.modules and 'lance_ray' not in sys.modules"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
