"""Atomic file writes: the one helper every writer of a state, lock, manifest or artifact file uses.

The data goes to a temporary file in the target's directory, is fsynced, renamed over the target and the directory
is fsynced, so a reader (or a process restarted after SIGKILL or a power cut) sees the old file or the new one,
never half of one. Files get mode 0644: MLflow, DVC and other services read what amr writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
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
