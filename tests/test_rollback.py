"""Data rollback and retention: the memory's record semantics, the lock file, line rewinds, and the whole
round trip through a real git repository, the real `dvc` CLI and an S3 remote on moto_server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pyarrow as pa
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from components.adapters.lines import Line
from components.adapters.locks import RefreshBusy
from components.adapters.manifest import build_manifest, content_hash, drop_digests, prove, rows_digest, write_manifest
from components.adapters.memory import Memory
from components.cli import app
from components.ingest import ingest_source
from components.refresh.steps import open_run, refresh_lock, register_step, train_step
from components.versioning.retention import cleanup, protected
from components.versioning.rollback import rewind_lines
from tests.helpers import jsonl, make_drop, python_docs, settings_for, three_drops

ROOT = Path(__file__).resolve().parents[1]
DROPS = ("d1-code", "d2-licenses", "d3-docs")
SMALL = {"AMR_INGEST__CONTEXT_LENGTH": "64", "AMR_INGEST__CLUSTERS_PER_DROP": "2"}


def ingest_one_by_one(all_drops: Path, src: Path, cfg) -> list[dict]:
    """Publish the drops into `src` one at a time, ingesting after each; the lock after each ingest."""
    locks = []
    for name in DROPS:
        shutil.copytree(all_drops / name, src / name)
        assert {r.status for r in ingest_source(cfg, str(src), show_progress=False)} <= {"ingested", "present"}
        locks.append(build_manifest(Memory.open(cfg)))
    return locks


def target(lock: dict) -> dict[str, int]:
    return {d["drop_id"]: d["version"] for d in lock["drops"]}


def consistent(memory: Memory) -> None:
    """The live drops are exactly the drops present at the memory version, in the same rows the lock counts."""
    present = set(drop_digests(memory, memory.version)) if memory.version > 1 else set()
    assert present == set(memory.ingested())


@pytest.fixture
def three(tmp_path):
    cfg = settings_for(tmp_path / "home")
    three_drops(tmp_path / "all")
    return cfg, ingest_one_by_one(tmp_path / "all", tmp_path / "src", cfg), tmp_path / "src"


# ---- memory semantics (no git, no DVC) ---------------------------------------------------------------------


def test_rows_digest_sees_one_token_change(three):
    cfg, _, _ = three
    rows = Memory.open(cfg).table().to_lance().to_table(filter="drop_id = 'd2-licenses'")
    tokens = rows.column("tokens").to_pylist()
    tokens[3][5] += 1
    field = rows.schema.field("tokens")
    changed = rows.set_column(rows.schema.get_field_index("tokens"), field, pa.array(tokens, field.type))
    assert rows_digest(rows) != rows_digest(changed)
    assert rows_digest(rows) == rows_digest(rows.slice(0))


def test_rollback_and_roll_forward_restore_exactly_the_recorded_memory(three):
    cfg, locks, _ = three
    memory = Memory.open(cfg)
    assert build_manifest(memory) == locks[2]
    with memory.writer() as mem:
        left, back = mem.set_drops(target(locks[1]), "test")
    assert (left, back) == (["d3-docs"], [])
    after = Memory.open(cfg)
    assert build_manifest(after) == locks[1] and after.ingested() == list(DROPS[:2])
    assert after.record("d3-docs").status == "rolled-back"
    latest = max(v["version"] for v in after.versions())
    assert content_hash(after.meta(), drop_digests(after, latest)) == locks[1]["content_hash"]  # the table itself
    tags = {t: v["version"] for v in after.versions() for t in v["tags"]}
    assert tags["drop-d3-docs"] == locks[2]["memory_version"]  # a rolled-back drop keeps its commit tag
    with after.writer() as mem:
        assert mem.set_drops(target(locks[2]), "forward") == ([], ["d3-docs"])
    assert build_manifest(Memory.open(cfg)) == locks[2]
    with after.writer():  # taking the lock again changes nothing: the latest version already has these files
        pass
    assert max(v["version"] for v in Memory.open(cfg).versions()) == max(v["version"] for v in after.versions())


def test_rolled_back_drop_is_new_again_and_both_commits_stay_tagged(three):
    cfg, locks, src = three
    with Memory.open(cfg).writer() as mem:
        mem.set_drops(target(locks[1]), "test")
    again = {r.drop_id: r.status for r in ingest_source(cfg, str(src), show_progress=False)}
    assert again == {"d1-code": "present", "d2-licenses": "present", "d3-docs": "ingested"}
    memory = Memory.open(cfg)
    old, new = locks[2]["memory_version"], memory.version
    assert new > old and build_manifest(memory)["content_hash"] == locks[2]["content_hash"]  # ingest is deterministic
    tags = {t: v["version"] for v in memory.versions() for t in v["tags"]}
    assert tags["drop-d3-docs"] == new and tags[f"superseded-{old}-d3-docs"] == old
    with memory.writer() as mem:  # forward to the first commit of d3: the tags swap
        assert mem.set_drops(target(locks[2]), "back to the first d3") == (["d3-docs"], ["d3-docs"])
    memory = Memory.open(cfg)
    assert build_manifest(memory) == locks[2]
    tags = {t: v["version"] for v in memory.versions() for t in v["tags"]}
    assert tags["drop-d3-docs"] == old and tags[f"superseded-{new}-d3-docs"] == new
    # the same id with other content after a rollback: ingested, not refused
    with memory.writer() as mem:
        mem.set_drops(target(locks[1]), "test")
    shutil.rmtree(src / "d3-docs")
    make_drop(src, "d3-docs", {"other.jsonl": jsonl(python_docs(6, offset=50))})
    assert {r.drop_id: r.status for r in ingest_source(cfg, str(src), show_progress=False)}["d3-docs"] == "ingested"
    assert build_manifest(Memory.open(cfg))["content_hash"] != locks[2]["content_hash"]


@pytest.mark.parametrize("start,goal", [(2, 0), (0, 2)], ids=["back-two", "forward-two"])
def test_a_crash_between_rollback_records_leaves_a_complete_memory(three, monkeypatch, start, goal):
    cfg, locks, _ = three
    with Memory.open(cfg).writer() as mem:
        mem.set_drops(target(locks[start]), "setup")
    real, calls = Memory._append_record, []

    class Killed(BaseException):
        pass

    def dies_after_one(self, rec):
        if calls:
            raise Killed("the process dies between two records")
        calls.append(rec.drop_id)
        real(self, rec)

    monkeypatch.setattr(Memory, "_append_record", dies_after_one)
    with pytest.raises(Killed), Memory.open(cfg).writer() as mem:
        mem.set_drops(target(locks[goal]), "crash")
    monkeypatch.setattr(Memory, "_append_record", real)
    memory = Memory.open(cfg)
    assert build_manifest(memory) == locks[1]  # one record in: exactly the middle memory, from either side
    consistent(memory)
    with memory.writer() as mem:  # running the rollback again finishes it
        mem.set_drops(target(locks[goal]), "again")
    assert build_manifest(Memory.open(cfg)) == locks[goal]


def test_prove_refuses_a_memory_that_differs_from_the_lock(three):
    cfg, locks, _ = three
    forged = json.loads(json.dumps(locks[1]))
    forged["content_hash"] = "0" * 64
    forged["drops"][1]["rows_hash"] = "0" * 64
    with pytest.raises(Exception, match="differing drops: \\['d2-licenses'\\]"):
        prove(Memory.open(cfg), forged)
    prove(Memory.open(cfg), locks[1])  # the real one passes


def test_protected_gives_every_kept_version_its_reasons():
    versions = [{"version": v, "tags": t} for v, t in [(1, []), (2, ["drop-a"]), (3, []), (4, []), (5, ["mine"])]]
    keep = protected(versions, {2: ["a"], 4: ["b"]}, {3: ["trained on by registered model m version 7"]}, 4)
    assert keep == {
        1: ["the empty table (read when every drop is rolled back)"],
        2: ["tag drop-a"],
        3: ["trained on by registered model m version 7"],
        4: ["drop commit of b", "the memory version readers see"],
        5: ["tag mine", "the latest version (writers append to it)"],
    }


# ---- model lines: rewind on rollback, the next run records it ------------------------------------------------

TINY = {"AMR_TRAIN__N_LAYER": "1", "AMR_TRAIN__N_EMBD": "32", "AMR_TRAIN__N_HEAD": "2"}
TINY |= {"AMR_TRAIN__BATCH_SIZE": "8", "AMR_TRAIN__MAX_STEPS": "3", "AMR_TRAIN__WARMUP_STEPS": "1"}


@pytest.mark.slow
def test_rollback_rewinds_the_line_and_the_next_run_records_it(tmp_path, monkeypatch):
    for key, value in (SMALL | TINY | {"AMR_HOME": str(tmp_path / "home")}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from components.core.config import load_settings

    cfg = load_settings(None)
    three_drops(tmp_path / "all")
    locks, src = [], tmp_path / "src"
    for name in DROPS:
        shutil.copytree(tmp_path / "all" / name, src / name)
        ingest_source(cfg, str(src), show_progress=False)
        locks.append(build_manifest(Memory.open(cfg)))
        line = Line(cfg.home)
        run_id = open_run(cfg, line, name)
        train_step(cfg, line, name, run_id)
        register_step(cfg, line, name, run_id)
    line = Line(cfg.home)
    assert sorted(p.name for p in (line.root / "models").iterdir()) == ["d2-licenses", "d3-docs"]  # d1 pruned

    def roll(lock: dict, note: str) -> dict[str, str]:
        with Memory.open(cfg).writer() as mem:
            mem.set_drops(target(lock), note)
        return rewind_lines(cfg, Memory.open(cfg).ingested(), note, True)

    assert roll(locks[1], "to two") == {"main": "rewound to after d2-licenses"}
    line = Line(cfg.home)
    assert line.trained == ["d1-code", "d2-licenses"] and not (line.root / "models" / "d3-docs").exists()
    # one further back: the weights after d1 were pruned from disk, the registry still has them (version 1)
    assert roll(locks[0], "to one") == {"main": "rewound to after d1-code (model from amr-model version 1)"}
    line = Line(cfg.home)
    registered = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/amr-model/1"))
    weights = next(registered.rglob("*.safetensors"))
    assert (line.model_dir / weights.name).read_bytes() == weights.read_bytes()
    # the next refresh trains only on restored data, and its run says so
    make_drop(tmp_path / "later", "d4-more", {"a.jsonl": jsonl(python_docs(12, offset=20))})
    ingest_source(cfg, str(tmp_path / "later"), show_progress=False)
    run_id = open_run(cfg, line, "d4-more")
    result = train_step(cfg, Line(cfg.home), "d4-more", run_id)
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["amr.data_rollback"] == "to one" and tags["amr.drops"] == "d1-code,d4-more"
    assert set(result.replay_by_drop) == {"d1-code"} and sum(result.replay_by_drop.values()) > 0
    assert "rolled_back_to" not in Line(cfg.home).state  # recorded once, on this run
    assert MlflowClient().get_run(open_run(cfg, Line(cfg.home), "d5")).data.tags.get("amr.data_rollback") is None


# ---- the round trip through git, DVC and S3 ----------------------------------------------------------------


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env |= {"GIT_AUTHOR_NAME": "amr test", "GIT_AUTHOR_EMAIL": "amr@test", "DVC_NO_ANALYTICS": "1"}
    return env | {"GIT_COMMITTER_NAME": "amr test", "GIT_COMMITTER_EMAIL": "amr@test"}


def sh(cwd: Path, *cmd: str, check: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=600)
    if check:
        said = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{said}"
    return proc.stdout


def amr(*args: str) -> str:
    """The `amr` CLI in this process (the commands' imports are paid once for the whole file)."""
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, f"amr {' '.join(args)} -> {res.exit_code}\n{res.output[-3000:]}\n{res.exception!r}"
    return res.stdout


def make_repo(root: Path, stages: tuple[str, ...] | None = None) -> Path:
    """A git + DVC project holding this project's code, params.yaml and dvc.yaml (optionally some stages only)."""
    repo = root / "repo"
    for name in ("components", "flows"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if stages:
        spec = {"stages": {name: spec["stages"][name] for name in stages}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")
    return repo


def commit_drop(repo: Path, drop: Path, tag: str, cfg) -> None:
    """Publish a drop, run the ingest stage's two commands (in this process: the same code, without paying the
    imports twice; tests/test_dvc_pipeline.py runs them through `dvc repro`), record the stage, commit, push."""
    shutil.copytree(drop, repo / "data" / "drops" / drop.name)
    sh(repo, "dvc", "add", "-q", "data/drops")
    results = {r.drop_id: r.status for r in ingest_source(cfg, str(repo / "data" / "drops"), show_progress=False)}
    assert results.pop(drop.name) == "ingested" and set(results.values()) <= {"present"}
    write_manifest(Memory.open(cfg), repo / "memory.lock.json")
    sh(repo, "dvc", "commit", "-q", "-f", "ingest")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", f"drop {drop.name}")
    sh(repo, "git", "tag", tag)
    sh(repo, "dvc", "push", "-q")  # every commit's data on the remote, as the workflow in README.md does


@pytest.mark.slow
def test_rollback_round_trip_through_git_dvc_and_s3(tmp_path, s3_env, monkeypatch):
    for key, value in (SMALL | {"AMR_HOME": str(tmp_path / "home")}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from components.core.config import load_settings

    cfg = load_settings(None)
    repo = make_repo(tmp_path, stages=("ingest",))
    boto3.client("s3").create_bucket(Bucket="amr-dvc")
    monkeypatch.chdir(repo)
    assert "endpointurl=" + s3_env in amr("dvc-remote", "s3://amr-dvc/cache")
    three_drops(tmp_path / "all")
    for i, name in enumerate(DROPS, start=1):
        commit_drop(repo, tmp_path / "all" / name, f"v{i}", cfg)
    locks = [json.loads(sh(repo, "git", "show", f"v{i}:memory.lock.json")) for i in (1, 2, 3)]
    assert [[d["drop_id"] for d in lock["drops"]] for lock in locks] == [list(DROPS[:n]) for n in (1, 2, 3)]
    pushed = boto3.client("s3").list_objects_v2(Bucket="amr-dvc", Prefix="cache/")["KeyCount"]
    assert pushed >= 8  # the drops' distinct files and the three directory listings
    sh(tmp_path, "git", "clone", "-q", str(repo), "clone")  # another machine: no DVC cache, no data, same memory
    repo = tmp_path / "clone"
    monkeypatch.chdir(repo)
    amr("dvc-remote", "s3://amr-dvc/cache")  # the endpoint is per machine (.dvc/config.local)

    report = json.loads(amr("rollback", "--to", "v2", "--json"))
    assert report["removed"] == ["d3-docs"] and report["drops"] == list(DROPS[:2]) and report["data"] == "pull"
    assert "data/drops.dvc" in report["files"] and "dvc.lock" in report["files"]
    memory = Memory.open(cfg)
    assert build_manifest(memory) == locks[1]  # rows, versions and content hash recorded at v2
    assert report["content_hash"] == locks[1]["content_hash"] and report["rows_after"] == locks[1]["rows"]
    assert sorted(p.name for p in (repo / "data" / "drops").iterdir()) == list(DROPS[:2])
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {}
    assert (repo / "memory.lock.json").read_text() == sh(repo, "git", "show", "v2:memory.lock.json")

    report = json.loads(amr("rollback", "--to", "v3", "--json"))
    assert report["returned"] == ["d3-docs"] and report["version_after"] == locks[2]["memory_version"]
    assert build_manifest(Memory.open(cfg)) == locks[2]
    assert sorted(p.name for p in (repo / "data" / "drops").iterdir()) == list(DROPS)
    assert json.loads(sh(repo, "dvc", "status", "--json")) == {}

    # retention: a crashed writer's commit and the rollbacks' restores go; drop commits and model versions stay
    table = memory.db.open_table("sequences")
    table.add(table.to_lance().to_table(filter="drop_id = 'd1-code'").cast(table.schema))  # dies before its record
    orphan = table.version
    restores = [v["version"] for v in Memory.open(cfg).versions() if not v["tags"] and 1 < v["version"] < orphan]
    assert len(restores) == 2  # one per rollback
    from components.adapters import registry

    registry.configure(cfg)
    client = MlflowClient()
    client.create_registered_model("amr-model")
    client.create_model_version("amr-model", "file:///nowhere", tags={"amr.memory_version": str(restores[0])})
    with refresh_lock(cfg), pytest.raises(RefreshBusy):
        cleanup(cfg, 0.0)
    dry = json.loads(amr("memory", "cleanup", "--older-than", "0", "--dry-run", "--json"))
    assert dry["removed"] == [restores[1], orphan] and orphan in {v["version"] for v in Memory.open(cfg).versions()}
    out = json.loads(amr("memory", "cleanup", "--older-than", "0", "--json"))
    kept = {k["version"]: k["reasons"] for k in out["kept"]}
    assert out["removed"] == [restores[1], orphan] and out["bytes_removed"] > 0
    assert kept[restores[0]] == ["trained on by registered model amr-model version 1"]
    for lock in locks:
        assert any(f"tag drop-{lock['drops'][-1]['drop_id']}" in r for r in kept[lock["memory_version"]])
        prove(Memory.open(cfg), lock)  # every recorded memory can still be rolled back to
    assert out["log_fragments"][1] == 1 < out["log_fragments"][0]
    assert build_manifest(Memory.open(cfg)) == locks[2]
