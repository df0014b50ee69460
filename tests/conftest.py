"""Shared fixtures: real services on loopback, real text from this machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.core import offline

offline.apply()

STDLIB = Path(os.__file__).parent
# The longest test files, longest first (pytest --durations on the 2-core CI kind). `make test` runs two pytest-xdist
# workers, each taking the next whole file (--dist loadfile) as it frees up: started first, the longest files run
# beside the many short ones instead of leaving one worker alone with them at the end. Order only: every test
# stands on its own.
LONGEST_FIRST = (
    "test_refresh_kill.py",
    "test_loop.py",
    "test_pretrained.py",
    "test_refresh_flow.py",
    "test_ingest_ray.py",
    "test_prefect_startup.py",
    "test_dvc_pipeline.py",
    "test_modelfiles.py",
    "test_rollback.py",
    "test_ephemeral.py",
    "test_ingest_parallel.py",
    "test_dedup_index.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file and test order kept otherwise


MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real `moto_server` on loopback: the S3 endpoint that boto3, LanceDB and DVC all point at."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """Dummy credentials and the moto endpoint in the standard AWS variables (never real credentials)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


def real_texts(pattern: str, limit: int, root: Path = STDLIB) -> list[str]:
    """Real text from this machine (Python's own sources by default), sorted for reproducibility."""
    out = []
    for path in sorted(root.glob(pattern)):
        if path.is_file():
            try:
                out.append(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue
        if len(out) >= limit:
            break
    return out


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner and seven huey consumers (~1.8 GB)
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, root / "server.log")
        yield SimpleNamespace(url=url, artifacts=root / "artifacts", pid=proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this fixture started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


SMOLLM2_TOKENIZER = Path(__file__).parent / "fixtures" / "smollm2-tokenizer"


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory) -> Path:
    """The real SmolLM2 BPE tokenizer (49,152 tokens) as a Hugging Face directory, unpacked once per test run."""
    import gzip
    import shutil

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    with gzip.open(SMOLLM2_TOKENIZER / "tokenizer.json.gz", "rb") as src, open(out / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(SMOLLM2_TOKENIZER / "tokenizer_config.json", out / "tokenizer_config.json")
    return out
