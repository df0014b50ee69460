"""Atomic file and directory writes: the helpers every writer of a state, lock, manifest, artifact or model uses.

The data goes to a temporary file in the target's directory, is fsynced, renamed over the target and the directory
is fsynced, so a reader (or a process restarted after SIGKILL or a power cut) sees the old file or the new one,
never half of one. Files get mode 0644: MLflow, DVC and other services read what amr writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Replace `path` with `data` (bytes, text as UTF-8, or a function writing into a binary file) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: Path, data: Any, **dump_options: Any) -> Path:
    """`atomic_write` of `json.dumps(data, indent=2, **dump_options)`."""
    return atomic_write(path, json.dumps(data, indent=2, **dump_options))


TMP_DIR_MARK = ".tmp-"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `target`; on success it is fsynced and renamed to `target`.

    A reader sees no `target` or a complete one, never half of one: a process killed while writing leaves only
    `.<name>.tmp-<pid>`, which the next `atomic_dir` for the same target removes (when that pid is gone). An
    existing `target` is refused here; callers that replace one remove it first, on purpose.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}{TMP_DIR_MARK}*"):
        if not _pid_alive(stale.name.rsplit(TMP_DIR_MARK, 1)[1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}{TMP_DIR_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        os.rename(tmp, target)  # fails if `target` appeared meanwhile: never merges into another's directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
