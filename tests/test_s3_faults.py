"""S3 faults: a memory on moto_server rides out an endpoint restart; a dead endpoint or missing bucket is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.adapters.memory import Memory
from components.adapters.s3 import list_keys, s3_client
from components.cli import app
from tests.conftest import free_port
from tests.helpers import settings_for, three_drops

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"AMR_INGEST__CONTEXT_LENGTH": "64", "AMR_INGEST__CLUSTERS_PER_DROP": "2"}


def start_proxy(port: int, target: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "tcp_proxy.py"), str(port), str(target)], stdout=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"ready"
    return proc


@pytest.fixture
def bucket(s3_env):
    name = f"mem-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


@pytest.mark.slow
def test_ingest_rides_out_an_endpoint_restart(tmp_path, bucket, s3_env):
    """The endpoint (a proxy in front of moto) is SIGKILLed mid-commit and back on the same port 5 s later."""
    moto_port, port = int(s3_env.rsplit(":", 1)[1]), free_port()
    proxy = start_proxy(port, moto_port)
    three_drops(tmp_path / "drops")
    env = dict(os.environ, PYTHONPATH=str(ROOT), AMR_HOME=str(tmp_path / "home"), **SMALL)
    env |= {"AMR_MEMORY__URI": f"s3://{bucket}/memory", "AMR_S3__ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    ingest = subprocess.Popen(
        [sys.executable, "-m", "components.cli", "ingest", "--json", str(tmp_path / "drops")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    direct = s3_client()  # straight to moto, past the proxy
    outage: dict[str, float] = {}

    def restart_endpoint() -> None:
        nonlocal proxy
        deadline = time.monotonic() + 120
        while not any("sequences.lance/data/" in k for k in list_keys(direct, bucket, "memory/")):
            assert time.monotonic() < deadline and ingest.poll() is None, "the ingest never wrote data"
            time.sleep(0.05)
        proxy.send_signal(signal.SIGKILL)
        proxy.wait()
        outage["start"] = time.monotonic()
        time.sleep(5)
        proxy = start_proxy(port, moto_port)
        outage["end"] = time.monotonic()

    thread = threading.Thread(target=restart_endpoint)
    thread.start()
    try:
        out, err = ingest.communicate(timeout=300)
        thread.join()
    finally:
        proxy.kill()
        proxy.wait()
    assert outage["end"] - outage["start"] >= 5
    assert ingest.returncode == 0, err.decode()[-3000:]
    assert {r["status"] for r in json.loads(out)["results"]} == {"ingested"}
    cfg = settings_for(tmp_path / "home", **{"memory.uri": f"s3://{bucket}/memory", "s3.endpoint_url": s3_env})
    memory = Memory.open(cfg)
    assert memory.ingested() == ["d1-code", "d2-licenses", "d3-docs"]
    report = memory.verify()  # every file of the memory version reads back and matches the records
    assert report.rows == sum(r.sequences + r.holdout_sequences for r in memory.live())


def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), env=env)
    return res.exit_code, "".join(res.output.splitlines())  # rich wraps at the runner's 80 columns


def test_unreachable_endpoint_is_one_line_naming_it(tmp_path, s3_env):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"AMR_HOME": str(tmp_path / "home"), "AMR_MEMORY__URI": "s3://some-bucket/memory", **SMALL}
    env |= {"AMR_S3__ENDPOINT_URL": dead, "AMR_S3__MAX_ATTEMPTS": "2"}
    three_drops(tmp_path / "drops")
    for args in (["memory"], ["memory", "--verify"], ["ingest", str(tmp_path / "drops")]):
        started = time.monotonic()
        code, output = cli(*args, env=env)
        assert code == 1, output
        assert f"S3 endpoint {dead} did not answer" in output and "Fix: start the S3 server" in output
        assert "Traceback" not in output and time.monotonic() - started < 30


def test_missing_bucket_is_one_line_naming_it(tmp_path, s3_env):
    env = {"AMR_HOME": str(tmp_path / "home"), "AMR_MEMORY__URI": "s3://no-such-bucket-amr/memory", **SMALL}
    three_drops(tmp_path / "drops")
    for args in (["memory"], ["ingest", str(tmp_path / "drops")], ["ingest", "s3://no-such-bucket-amr/drops"]):
        code, output = cli(*args, env=env)
        assert code == 1, output
        assert "bucket 'no-such-bucket-amr' does not exist" in output and "Fix: create it" in output
        assert "Traceback" not in output
