"""Shared fixtures: real services on loopback, real text from this machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

STDLIB = Path(os.__file__).parent


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
