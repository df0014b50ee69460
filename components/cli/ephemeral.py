"""The temporary Prefect API server of `amr refresh` / `amr demo` when PREFECT_API_URL is unset, tied to the CLI.

Prefect 3.8 starts that server lazily, on the first API call of a flow run, as a `python -m uvicorn` child of
whichever thread asks first (`SubprocessASGIServer` in prefect/server/api/server.py), and stops it from an atexit
hook. A SIGKILLed CLI (the OOM killer, `kill -9`, a killed container step) runs no atexit hook, so every such kill
left the server running as an orphan, holding its port and Prefect's SQLite database.

Prefect has no hook for the child's start-up, so `tethered_class()` is its server with one change: the uvicorn
command is started through `TETHER`, a few lines of Python that set PR_SET_PDEATHSIG on themselves and exec it,
so the kernel SIGKILLs the server when the CLI dies, however it dies. Not a Popen preexec_fn: that forces a full
fork() with the at-fork handlers of everything imported (lancedb warns, and may deadlock, in such a child) and is
unsafe with threads; the wrapper costs one interpreter start (~20 ms). The death signal follows the thread that
forked the child, not the process; hence `temporary_server` starts it from the CLI's main thread, before the
flow, and registers it as Prefect's default instance (the key `SubprocessASGIServer()` looks up, as Prefect's own
test harness does), so the flow's API calls find it running and start no second, untied one. On a normal exit
Prefect's atexit hook stops it, after its log and event workers have flushed (stopping it at the end of the block
lost their last lines). SIGKILL, not SIGTERM: nothing in it is worth a graceful stop once its only client is gone
(its SQLite database commits atomically).

A server that does not answer within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (amr's default: 120,
components/core/offline.py) ends the command with one line naming both ways out, instead of Prefect's traceback.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import prefect
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
)

# argv: parent pid, then the command to exec. 1 = PR_SET_PDEATHSIG, 9 = SIGKILL; a parent that died before the
# prctl (the child was reparented) is caught by comparing the parent pid.
TETHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ServerStartError(RuntimeError):
    """The temporary Prefect API server did not answer; the message is the one line the CLI prints."""


def tethered(args: list[str]) -> list[str]:
    """`args` (an absolute executable first) run so that the process dies with this one (unchanged off Linux)."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-c", TETHER, str(os.getpid()), *args]


@functools.cache
def tethered_class() -> type:
    """`Tethered`: Prefect's temporary server whose uvicorn process dies with the process that started it.

    Built on first use: importing prefect.server.api.server takes 2.5 s, wasted where PREFECT_API_URL is set.
    """
    from prefect.server.api.server import SubprocessASGIServer

    class Tethered(SubprocessASGIServer):
        def __new__(cls, port: int | None = None, *args: Any, **kwargs: Any) -> Tethered:
            return object.__new__(cls)  # not Prefect's per-port singleton: `temporary_server` registers it by hand

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            """Prefect 3.8's command and environment (tests/test_ephemeral.py checks they still match) + the hook."""
            args = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory"]
            args += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
            args += ["--log-level", "error", "--lifespan", "on"]
            env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            env = {**os.environ, **env, **get_current_settings().to_environment_variables(exclude_unset=True)}
            return subprocess.Popen(tethered(args), env=env)

    return Tethered


def needed() -> bool:
    """Whether a flow run here would start Prefect's temporary server (no API URL, ephemeral mode allowed)."""
    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


@contextmanager
def temporary_server() -> Iterator[str | None]:
    """Run the block with a tethered temporary server as Prefect's default (yields its API URL), or with none
    where PREFECT_API_URL names a server (yields None). Raises ServerStartError with the fix if it never answers."""
    if not needed():
        yield None
        return
    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    server = tethered_class()()
    server._instances[None] = server  # Prefect's servers by port (a dict shared with subclasses); None: the default
    try:
        server.start(timeout=timeout)
    except Exception as exc:  # Prefect raises RuntimeError on a timeout, httpx errors on a bad answer
        why = _why(server, timeout, exc)
        server.stop()  # kills the process and drops the default key
        raise ServerStartError(why) from None
    yield server.api_url  # it runs on until Prefect's atexit hook stops it (module docstring)


def _why(server, timeout: int, exc: Exception) -> str:
    proc = server.server_process
    code = proc.poll() if proc is not None else None
    what = f"exited with code {code}" if code is not None else f"did not answer within {timeout}s"
    if not isinstance(exc, RuntimeError) or "Timed out" not in str(exc):
        what += f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return (
        f"Prefect's temporary API server {what}. Set PREFECT_API_URL to a running Prefect server "
        "(`prefect server start`, or `make stack`), or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS "
        f"(now {timeout})."
    )
