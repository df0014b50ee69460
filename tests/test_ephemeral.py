"""`amr refresh` without PREFECT_API_URL: Prefect's temporary server dies with the CLI (even by SIGKILL), a server
that never answers is one line, and Prefect's and MLflow's INFO lines go to $AMR_HOME/logs/refresh.log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from components.adapters.locks import refresh_lock
from components.cli import ephemeral
from components.cli.logs import refresh_log

ROOT = Path(__file__).resolve().parents[1]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMR_", "PREFECT_", "MLFLOW_TRACKING"))}
    env |= {"AMR_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "300"}
    return env | extra


def amr(tmp_path: Path, *args: str, **extra: str) -> subprocess.Popen:
    """`amr refresh` on an empty drops directory, as a real process of its own."""
    (tmp_path / "drops").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "components.cli", "refresh", str(tmp_path / "drops"), *args]
    out = {"stdout": open(tmp_path / "out.txt", "wb"), "stderr": open(tmp_path / "err.txt", "wb")}  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(tmp_path, **extra), **out)


def servers(prefect_home: Path) -> list[psutil.Process]:
    """Prefect API server processes (tethered or not) that run on this test's PREFECT_HOME."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "prefect.server.api.server:create_app" in (proc.info["cmdline"] or []):
                if proc.environ().get("PREFECT_HOME") == str(prefect_home) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


def test_the_startup_timeout_defaults_to_two_minutes_and_a_users_value_wins():
    code = (
        "import components.cli.base, prefect.settings as s; print(s.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    default = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert default.stdout.strip() == "120", default.stderr
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "7"
    mine = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert mine.stdout.strip() == "7", mine.stderr


def test_the_tethered_server_runs_prefects_own_command(monkeypatch):
    """Prefect's command and environment, wrapped: an upgrade that changes them fails here, not in production."""
    from prefect.server.api.server import SubprocessASGIServer

    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kwargs: calls.append((args, kwargs)))
    tethered = ephemeral.tethered_class()()
    tethered.port = 8123
    prefects = SubprocessASGIServer(port=8123)
    try:
        tethered._run_uvicorn_command()
        prefects._run_uvicorn_command()
    finally:
        prefects.stop()
    (ours, our_kwargs), (theirs, their_kwargs) = calls
    assert ours == ephemeral.tethered(theirs) and ours[:2] == [sys.executable, "-c"] and ours[3] == str(os.getpid())
    assert our_kwargs == their_kwargs  # the same environment, nothing else (no preexec_fn: see the module)


def test_sigkill_of_the_cli_mid_flow_leaves_no_server(tmp_path):
    """The realistic case: the flow is running (queued behind a held refresh lock) when the CLI is SIGKILLed."""
    with refresh_lock(tmp_path / "home"):
        cli = amr(tmp_path, "--wait", "300")
        try:
            server = wait_for(lambda: servers(tmp_path / "prefect"), 90, "no Prefect server started")[0]
            assert cli.pid in [p.pid for p in server.parents()]
            log = refresh_log(tmp_path / "home")
            wait_for(lambda: log.exists() and "Beginning flow run" in log.read_text(), 120, "the flow did not start")
            time.sleep(1.0)  # inside the flow, waiting for the lock
            assert cli.poll() is None
            cli.send_signal(signal.SIGKILL)
            cli.wait(timeout=10)
            wait_for(lambda: not servers(tmp_path / "prefect"), 5, "the Prefect server outlived the SIGKILLed CLI")
        finally:
            if cli.poll() is None:
                cli.kill()
            for proc in servers(tmp_path / "prefect"):
                proc.kill()
    assert "Beginning flow run" not in (tmp_path / "err.txt").read_text() + (tmp_path / "out.txt").read_text()


def test_a_refresh_shows_its_own_lines_and_logs_prefects_to_the_file(tmp_path):
    cli = amr(tmp_path)
    assert cli.wait(timeout=240) == 0, (tmp_path / "err.txt").read_text()[-3000:]
    terminal = (tmp_path / "out.txt").read_text() + (tmp_path / "err.txt").read_text()
    log = refresh_log(tmp_path / "home").read_text()
    assert "no new drop in the memory" in terminal and "no new drop in the memory" in log  # the flow's own line
    for prefects in ("Starting temporary server", "Beginning flow run", "Finished in state"):
        assert prefects in log and prefects not in terminal, prefects
    assert str(refresh_log(tmp_path / "home")) in terminal
    assert not servers(tmp_path / "prefect")  # stopped by Prefect's atexit hook on a normal exit
    assert "Error logging to API" not in terminal  # the server outlived the log worker's last flush


def test_a_server_that_never_answers_is_one_line_with_the_fix(tmp_path):
    cli = amr(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    assert cli.wait(timeout=120) == 1
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "PREFECT_API_URL" in err and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (now 0)" in err
    assert not servers(tmp_path / "prefect")


@pytest.mark.parametrize("name", ["mlflow.store.db.utils", "prefect.client"])
def test_library_info_goes_to_the_file_and_warnings_stay_on_the_terminal(tmp_path, name):
    code = (
        "import logging, sys; from pathlib import Path; from components.cli.logs import library_logs_to\n"
        "library_logs_to(Path(sys.argv[1])); library_logs_to(Path(sys.argv[1]))  # twice: one file handler\n"
        "logger = logging.getLogger(sys.argv[2]); logger.info('an info line'); logger.warning('a warning line')\n"
    )
    log = tmp_path / "logs" / "refresh.log"
    run = subprocess.run([sys.executable, "-c", code, str(log), name], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "a warning line" in run.stderr and "an info line" not in run.stderr + run.stdout
    lines = log.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        f"INFO    {name} - an info line",
        f"WARNING {name} - a warning line",
    ]
