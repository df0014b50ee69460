"""Host-local exclusive locks (flock) with a bounded wait and a message naming who holds them.

Used for the memory's writers (one commit at a time) and for every command that writes a model line or moves the
registry's aliases (`refresh_lock`: refresh, train, evaluate, rollback, cleanup, promote, rollback-model; one at
a time per AMR_HOME). A lock dies
with its process, so a crashed holder never blocks the next one. Across hosts these do not help: several
machines writing one S3 memory must go through one Prefect deployment with a concurrency limit of one.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path, wait_seconds: float, busy: Callable[[str], Exception], poll: float = 0.2) -> Iterator[None]:
    """Hold `path` exclusively; after `wait_seconds` of waiting raise `busy(holder)`, holder as the lock file says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise busy(handle.read().strip() or "an unknown process") from None
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]]) if sys.argv and sys.argv[0] else "python"
        handle.write(f"pid {os.getpid()} `{command}`, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


class RefreshBusy(RuntimeError):
    """Another writer holds this AMR_HOME: two commands never write the same lines or aliases at once."""


@contextmanager
def refresh_lock(home: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """One writer at a time per AMR_HOME: refresh, train, evaluate, rollback, cleanup, promote, rollback-model."""

    def busy(holder: str) -> RefreshBusy:
        return RefreshBusy(
            f"another refresh or training is writing {home} ({holder}); it must finish first. "
            "Wait for it, or pass --wait SECONDS to `amr refresh` to queue behind it."
        )

    with exclusive(Path(home) / "locks" / "refresh.lock", wait_seconds, busy, poll=0.5):
        yield
