"""The temporary Prefect server's start-up limit (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: amr's default
120 s, a user's value wins) reaches Prefect at every entry point, even where Prefect was imported first (Prefect 3.8
caches its settings at import), and a server slower than the limit ends `amr refresh` with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMR_", "PREFECT_", "MLFLOW_TRACKING"))}
    env |= {"AMR_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "300"}
    return env | extra


@pytest.mark.parametrize("entry", ["components.cli", "flows.refresh", "flows.ingest"])
@pytest.mark.parametrize(("user", "expected"), [(None, "120"), ("7", "7")])
def test_the_limit_reaches_prefect_imported_first(tmp_path, entry, user, expected):
    code = (
        "import prefect, prefect.settings as s\n"
        f"before = s.{KEY}.value()\n"
        f"import {entry}\n"
        f"print(before, s.{KEY}.value(), s.get_current_settings().server.ephemeral.startup_timeout_seconds)\n"
    )
    env = clean_env(tmp_path, **({KEY: user} if user else {}))
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    before, after, current = run.stdout.split()
    assert before == ("20" if user is None else user)  # what Prefect read at its import: its own default
    assert after == current == expected


# `amr refresh` in a process that imported Prefect first, with the server's start delayed by SLOW seconds: the real
# uvicorn command of the tethered server runs after a sleep (a server that is slow to answer, as on a loaded machine).
DRIVER = """
import subprocess, sys, time
import prefect  # first: Prefect reads its settings now
from components.cli import app, ephemeral

slow, elapsed_file = sys.argv[1], sys.argv[2]
cls = ephemeral.tethered_class()
start_uvicorn = cls._run_uvicorn_command
popen = subprocess.Popen
SLEEP = "import os, sys, time; time.sleep(float(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"

def delayed(self):
    global t0
    t0 = time.monotonic()  # the server process starts now: what the limit counts from (imports came before)
    subprocess.Popen = lambda args, **kw: popen([sys.executable, "-c", SLEEP, slow, *args], **kw)
    try:
        return start_uvicorn(self)
    finally:
        subprocess.Popen = popen

cls._run_uvicorn_command = delayed
t0 = None
try:
    app(sys.argv[3:])
finally:
    open(elapsed_file, "w").write(str(time.monotonic() - t0) if t0 is not None else "nan")
"""


def slow_refresh(tmp_path: Path, slow: float, **extra: str) -> tuple[int, str, float]:
    (tmp_path / "drops").mkdir()
    args = [sys.executable, "-c", DRIVER, str(slow), str(tmp_path / "elapsed"), "refresh", str(tmp_path / "drops")]
    run = subprocess.run(args, cwd=ROOT, env=clean_env(tmp_path, **extra), capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr, float((tmp_path / "elapsed").read_text())


@pytest.mark.slow
def test_a_start_slower_than_prefects_20s_passes_under_the_project_default(tmp_path):
    code, output, elapsed = slow_refresh(tmp_path, slow=24)
    assert code == 0, output[-3000:]
    assert "no new drop to train on" in output
    assert elapsed > 24  # the server took longer than Prefect's own 20 s limit, which would have ended the refresh


@pytest.mark.slow
def test_a_start_slower_than_the_limit_is_one_line_naming_the_setting(tmp_path):
    code, output, elapsed = slow_refresh(tmp_path, slow=60, **{KEY: "3"})
    assert code == 1
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert f"{KEY} (now 3)" in errors[0] and "did not answer within 3s" in errors[0] and "PREFECT_API_URL" in errors[0]
    assert 3 <= elapsed < 20, elapsed  # from the server's start: the user's limit, not Prefect's 20 s or amr's 120 s
