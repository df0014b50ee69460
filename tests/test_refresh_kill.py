"""`amr refresh` killed with SIGKILL at each phase boundary of a drop in turn, then rerun, ends exactly as an
uninterrupted refresh: one FINISHED run and one model version with a gate decision per drop, the same champion and
decisions, the memory untouched, and no process of the killed command left behind.

The test drives the real CLI in subprocesses (Prefect's temporary server, MLflow on SQLite, LanceDB on disk) and
watches the line's state file from outside: when a drop reaches the phase, the command is killed at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.helpers import three_drops

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "AMR_TRAIN__N_LAYER": "1",
    "AMR_TRAIN__N_EMBD": "32",
    "AMR_TRAIN__N_HEAD": "2",
    "AMR_TRAIN__BATCH_SIZE": "8",
    "AMR_TRAIN__MAX_STEPS": "8",
    "AMR_TRAIN__CHECKPOINT_EVERY": "2",
    "AMR_TRAIN__WARMUP_STEPS": "2",
    "AMR_INGEST__CONTEXT_LENGTH": "64",
    "AMR_INGEST__CLUSTERS_PER_DROP": "2",
}
DROPS = ["d1-code", "d2-licenses", "d3-docs"]
# (drop, what to wait for): a phase recorded in the line's state, or "checkpoint" (a training checkpoint on disk)
KILLS = [
    ("d1-code", "run_opened"),
    ("d1-code", "checkpoint"),
    ("d1-code", "trained"),
    ("d2-licenses", "evaluated"),
    ("d2-licenses", "registered"),
    ("d2-licenses", "gated"),
]


def _env(home: Path, marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMR_", "MLFLOW_", "PREFECT_API"))}
    env |= TINY | {"AMR_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "AMR_KILL_TEST": marker}
    return env | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _refresh(drops: Path, home: Path, marker: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "components.cli", "refresh", str(drops)]
    log = open(home.parent / f"{home.name}-{marker[:8]}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(home, marker), stdout=log, stderr=subprocess.STDOUT)


def _reached(home: Path, drop: str, what: str) -> bool:
    line = home / "lines" / "main"
    if what == "checkpoint":
        return any((line / "checkpoints" / drop).glob("step-*/state.json"))
    try:
        state = json.loads((line / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    from components.adapters.lines import PHASES

    phase = state.get("progress", {}).get(drop, {}).get("phase")
    return phase is not None and PHASES.index(phase) >= PHASES.index(what)


def _survivors(marker: str) -> list[str]:
    """Processes started by the killed command (they carry its marker in their environment)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("AMR_KILL_TEST") == marker:
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _kill_at(drops: Path, home: Path, drop: str, what: str) -> None:
    marker = uuid.uuid4().hex
    proc = _refresh(drops, home, marker)
    deadline = time.monotonic() + 600
    try:
        while not _reached(home, drop, what):
            assert proc.poll() is None, f"the refresh ended ({proc.returncode}) before {drop} reached {what}"
            assert time.monotonic() < deadline, f"{drop} never reached {what}"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    for _ in range(100):  # what the command started must die with it
        if not _survivors(marker):
            break
        time.sleep(0.1)
    assert not _survivors(marker), f"orphans after killing the refresh at {drop}/{what}: {_survivors(marker)}"


def _finish(drops: Path, home: Path) -> None:
    marker = uuid.uuid4().hex
    proc = _refresh(drops, home, marker)
    assert proc.wait(timeout=900) == 0, sorted(home.parent.glob(f"{home.name}-{marker[:8]}-*.log"))[0].read_text()


def _outcome(home: Path) -> dict:
    from components.adapters.manifest import build_manifest
    from components.adapters.memory import Memory
    from components.core.config import load_settings

    client = MlflowClient(
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}", registry_uri=f"sqlite:///{home / 'mlflow.db'}"
    )
    runs = client.search_runs([client.get_experiment_by_name("amr").experiment_id], max_results=1000)
    versions = client.search_model_versions("name = 'amr-model'")
    by_drop = {
        d: {
            "runs": sorted(r.info.status for r in runs if r.data.tags.get("amr.drop") == d),
            "versions": [v.tags.get("amr.gate") for v in versions if v.tags.get("amr.drop") == d],
        }
        for d in DROPS
    }
    champion = client.get_model_version_by_alias("amr-model", "champion")
    settings = load_settings(None)
    settings.home = home
    manifest = build_manifest(Memory.open(settings))
    return {"by_drop": by_drop, "champion": champion.tags["amr.drop"], "memory": manifest["content_hash"]}


def test_a_refresh_killed_at_every_phase_boundary_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    drops = tmp_path / "drops"
    three_drops(drops)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(drops, straight)
    for drop, what in KILLS:
        _kill_at(drops, killed, drop, what)
    _finish(drops, killed)

    expected, got = _outcome(straight), _outcome(killed)
    for drop in DROPS:
        assert got["by_drop"][drop]["runs"] == ["FINISHED"], (drop, got["by_drop"][drop])
        assert len(got["by_drop"][drop]["versions"]) == 1 and got["by_drop"][drop]["versions"][0] in (
            "promoted",
            "rejected",
        )
    assert got == expected
