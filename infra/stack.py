"""The stack of infra/docker-compose.yml as plain local processes, without Docker: `make stack` / `make stack-down`.

    python infra/stack.py up       start Prefect server, MLflow server (SQLite, artifacts on S3) and moto_server (S3)
    python infra/stack.py status   health of each (exit 0 when all answer)
    python infra/stack.py env      the variables that point amr at the stack (also written to <dir>/env)
    python infra/stack.py down     stop them

Everything listens on 127.0.0.1. State, logs and pid files live under AMR_STACK_DIR (default .amr/stack); the
ports come from AMR_STACK_PREFECT_PORT (4200), AMR_STACK_MLFLOW_PORT (5000) and AMR_STACK_S3_PORT (9000). moto keeps
its buckets in memory, so the memory and MLflow's artifacts on it are gone after `down`; the SQLite databases of
MLflow and Prefect stay. Each server runs in a session of its own, so `down` stops it with everything it spawned
(uvicorn workers) by process group, and only if the pid still names the process `up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
BUCKETS = ("amr-memory", "amr-drops", "amr-mlflow")
# moto accepts any credentials: these are placeholders for its fake S3, never real secrets
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
# MLflow 3.x starts a job runner and seven huey consumers beside its web server (about 1.8 GB RSS) for GenAI
# jobs (scorers, trace rollups) that amr never submits; off, the server is one launcher and one uvicorn worker.
# A value exported by the user wins.
MLFLOW_SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
}


@dataclass(frozen=True)
class Stack:
    root: Path
    prefect_port: int
    mlflow_port: int
    s3_port: int

    @classmethod
    def from_env(cls) -> Stack:
        env = os.environ.get
        return cls(
            Path(env("AMR_STACK_DIR", ".amr/stack")).resolve(),
            int(env("AMR_STACK_PREFECT_PORT", "4200")),
            int(env("AMR_STACK_MLFLOW_PORT", "5000")),
            int(env("AMR_STACK_S3_PORT", "9000")),
        )

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def client_env(self) -> dict[str, str]:
        """What a shell (or `make demo-stack`) exports to run amr against the stack."""
        return {
            "PREFECT_API_URL": f"http://{HOST}:{self.prefect_port}/api",
            "MLFLOW_TRACKING_URI": f"http://{HOST}:{self.mlflow_port}",
            "AWS_ENDPOINT_URL": self.s3_url,
            **S3_ENV,
            "AMR_MEMORY__URI": "s3://amr-memory/memory",
        }

    def services(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """name -> (command, extra environment); started in this order (MLflow's artifacts go to the S3 store)."""
        mlflow = [_exe("mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
        mlflow += ["--artifacts-destination", "s3://amr-mlflow/artifacts", "--host", HOST]
        mlflow += ["--port", str(self.mlflow_port), "--workers", "1"]
        prefect = [_exe("prefect"), "server", "start", "--host", HOST, "--port", str(self.prefect_port)]
        return {
            "s3": ([_exe("moto_server"), "-H", HOST, "-p", str(self.s3_port)], {}),
            "mlflow": (mlflow, S3_ENV | MLFLOW_SERVER_ENV | {"MLFLOW_S3_ENDPOINT_URL": self.s3_url}),
            "prefect": (prefect, {"PREFECT_HOME": str(self.root / "prefect")}),
        }

    def healthy(self, name: str) -> bool:
        try:
            if name == "s3":
                _s3(self).list_buckets()
                return True
            port, path = (self.prefect_port, "/api/health") if name == "prefect" else (self.mlflow_port, "/health")
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as resp:
                return resp.status == 200
        except Exception:  # not up yet: refused, reset, 5xx, botocore errors alike
            return False


def _exe(name: str) -> str:
    """The tool from this interpreter's environment (the project's .venv), else from PATH."""
    sibling = Path(sys.executable).with_name(name)
    found = str(sibling) if sibling.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH; run `make setup`")
    return found


def _s3(stack: Stack):
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=stack.s3_url, config=config, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


# ---- processes -----------------------------------------------------------------------------------------------


def _started_at(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/<pid>/stat): tells our process from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, IndexError):
        return None


def _ours(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is still the one we started, else None."""
    try:
        record = json.loads(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    started = _started_at(record["pid"])
    return record["pid"] if started is not None and started == record["started"] else None


def _start(stack: Stack, name: str, cmd: list[str], extra_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_API_URL"))}
    env |= QUIET | extra_env
    with open(stack.root / f"{name}.log", "ab") as log:
        out = {"stdout": log, "stderr": subprocess.STDOUT}
        proc = subprocess.Popen(cmd, env=env, cwd=stack.root, start_new_session=True, **out)
    (stack.root / f"{name}.pid").write_text(json.dumps({"pid": proc.pid, "started": _started_at(proc.pid)}))


def _stop(stack: Stack, name: str, grace: float = 15.0) -> bool:
    """SIGTERM the service's process group, SIGKILL it after `grace` seconds; True if something was stopped."""
    pid_file = stack.root / f"{name}.pid"
    pid = _ours(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _started_at(pid) is not None:
        _reap(pid)
        time.sleep(0.2)
    try:  # whatever of the group outlived its leader (or the leader itself, past the grace period)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _reap(pid: int) -> None:
    try:  # a child of this very process (up, then down, in one run) must be waited for to disappear
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ---- commands ------------------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def up(stack: Stack, timeout: float) -> int:
    stack.root.mkdir(parents=True, exist_ok=True)
    ports = {"s3": stack.s3_port, "mlflow": stack.mlflow_port, "prefect": stack.prefect_port}
    todo = {name: svc for name, svc in stack.services().items() if _ours(stack.root / f"{name}.pid") is None}
    busy = [f"{name} ({ports[name]})" for name in todo if not _port_free(ports[name])]
    if busy:  # something else answers there: its health would be mistaken for ours
        print(f"ports in use: {', '.join(busy)}; set AMR_STACK_*_PORT to free ones", file=sys.stderr)
        return 1
    for name, (cmd, extra) in todo.items():
        _start(stack, name, cmd, extra)
    deadline = time.monotonic() + timeout
    waiting = set(stack.services())
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            if _ours(stack.root / f"{name}.pid") is None:
                return _fail(stack, f"{name} exited during start-up")
            if stack.healthy(name):
                waiting.discard(name)
        time.sleep(0.5)
    if waiting:
        return _fail(stack, f"no health answer from {sorted(waiting)} within {timeout:.0f}s")
    s3 = _s3(stack)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in set(BUCKETS) - existing:
        s3.create_bucket(Bucket=bucket)
    (stack.root / "env").write_text(_exports(stack))
    print(f"stack up under {stack.root}; point amr at it with:\n\n  set -a; . {stack.root / 'env'}; set +a\n")
    print(_exports(stack))
    return 0


def _fail(stack: Stack, why: str) -> int:
    for name in stack.services():
        log = stack.root / f"{name}.log"
        if log.exists():
            print(f"--- {log} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    down(stack)
    print(f"stack failed to start: {why}", file=sys.stderr)
    return 1


def down(stack: Stack) -> int:
    stopped = [name for name in reversed(list(stack.services())) if _stop(stack, name)]
    print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def status(stack: Stack) -> int:
    ok = True
    for name in stack.services():
        pid, healthy = _ours(stack.root / f"{name}.pid"), stack.healthy(name)
        ok &= healthy
        print(f"{name:8} {'healthy' if healthy else 'down':8} pid {pid or '-'}")
    return 0 if ok else 3


def _exports(stack: Stack) -> str:
    return "".join(f"export {k}={v}\n" for k, v in stack.client_env().items())


def main(argv: list[str]) -> int:
    commands = {"up", "down", "status", "env"}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    stack = Stack.from_env()
    if argv[0] == "up":
        return up(stack, float(os.environ.get("AMR_STACK_TIMEOUT", "120")))
    if argv[0] == "env":
        print(_exports(stack), end="")
        return 0
    return down(stack) if argv[0] == "down" else status(stack)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
