"""Where drops live: a local directory or an S3 prefix, behind one small `DropSource` protocol.

Sources only list files and open them; deciding what a file means is `read_drop`'s job. Both refuse to read a
name that could leave the drop (`UnsafeNameError`), so a hostile listing can never make ingest read
`/etc/passwd` or another bucket prefix, whatever the caller does with the names.

Every file is read through `opener`: a function that opens it afresh as a stream, never the whole file in memory.
On S3 that stream is components.adapters.s3stream: ranged GETs read a buffer at a time, resumed at the byte offset
reached when a connection breaks, each pinned to the listed ETag; seeking costs one ranged GET, which is how
parquet (footer, then the "text" column chunks) is read in place, neither downloaded whole nor spilled to disk.
Objects of at most `S3Source.WHOLE_BELOW` bytes (1 MiB: `_drop.json`, small part files) are fetched once and
re-opened from memory, since ingest opens each file twice (the idempotency hash, then the scan's one pass:
components.ingest.drops.stream, plus parquet's footer) and on S3 every open is a request. Credentials come only
from boto3's chain (components.adapters.s3).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from components.adapters import s3 as s3_io
from components.adapters.s3stream import open_object, read_object
from components.core.config import S3Config
from components.ingest.drops.model import READY, DropRef, check_drop_id, unsafe_name_reason


class UnsafeNameError(ValueError):
    """A file name or symlink that would leave the drop; the file was not read."""


class DropSource(Protocol):
    location: str

    def list_drops(self) -> list[DropRef]:
        """Every drop, ready or pending, sorted by drop_id."""
        ...

    def list_files(self, drop_id: str) -> list[str]:
        """Relative names of every file in the drop, sorted; unsafe names are included so they can be reported."""
        ...

    def opener(self, drop_id: str, name: str) -> tuple[Callable[[], BinaryIO], int]:
        """A function opening the file as a stream at its first byte, and the file's size; raises UnsafeNameError
        (without reading) for a name that leaves the drop."""
        ...


def _refuse_unsafe(name: str) -> None:
    if reason := unsafe_name_reason(name):
        raise UnsafeNameError(f"unsafe name: {reason}")


def _visible(name: str) -> bool:
    return bool(name) and name[0] not in "_."  # _tmp, .staging: a producer's scratch space, not drops


class LocalSource:
    """Drops as sub-directories of a local directory (symlinked drop directories are followed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.location = str(self.root)

    def list_drops(self) -> list[DropRef]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"drop root {self.root} is not a directory")
        entries = sorted(os.scandir(self.root), key=lambda entry: entry.name)
        return [
            DropRef(e.name, os.path.exists(os.path.join(e.path, READY)), e.path)
            for e in entries
            if _visible(e.name) and e.is_dir()
        ]

    def _drop_dir(self, drop_id: str) -> Path:
        drop_dir = self.root / check_drop_id(drop_id)
        if not drop_dir.is_dir():
            raise FileNotFoundError(f"drop {drop_id!r} not found under {self.root}")
        return drop_dir

    def list_files(self, drop_id: str) -> list[str]:
        drop_dir = self._drop_dir(drop_id)
        names = []
        for dirpath, dirnames, filenames in os.walk(drop_dir, onerror=_raise):  # does not descend into symlinks
            rel = Path(dirpath).relative_to(drop_dir)
            linked_dirs = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            names += [(rel / leaf).as_posix() for leaf in filenames + linked_dirs]
        return sorted(names)

    def opener(self, drop_id: str, name: str) -> tuple[Callable[[], BinaryIO], int]:
        """A function opening the file for reading (a stream, never the whole file in memory) and its size; the
        name is checked once, before anything is read."""
        _refuse_unsafe(name)
        drop_dir = self._drop_dir(drop_id).resolve()
        target = (drop_dir / name).resolve()
        if not target.is_relative_to(drop_dir):
            raise UnsafeNameError(f"unsafe symlink: resolves outside the drop (to {target})")
        mode = target.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO would block the read forever; a directory cannot be read
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
            raise OSError(f"not a regular file but {kind}")
        return (lambda: open(target, "rb")), target.stat().st_size


def _raise(exc: OSError) -> None:
    raise exc  # os.walk would otherwise skip an unreadable sub-directory, and its documents, silently


class S3Source:
    """Drops as prefixes `s3://bucket/prefix/<drop_id>/` of any S3-compatible store."""

    WHOLE_BELOW = 1 << 20  # objects up to this size are fetched once and re-opened from memory

    def __init__(self, location: str, client: Any = None, s3: S3Config | None = None) -> None:
        self._listed: dict[str, tuple[int, str | None]] = {}  # key -> (size, ETag), from the last listing
        self.bucket, self.prefix = s3_io.split_s3_uri(location)
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.s3 = s3
        self.client = client if client is not None else s3_io.s3_client(s3)

    def list_drops(self) -> list[DropRef]:
        """A dead endpoint or a missing bucket is one S3Unavailable line here, before any drop is read."""
        with s3_io.explained(self.bucket, self.s3):
            ids = sorted(d for d in s3_io.list_subprefixes(self.client, self.bucket, self.prefix) if _visible(d))
            return [DropRef(d, self._ready(d), f"s3://{self.bucket}/{self.prefix}{d}") for d in ids]

    def _ready(self, drop_id: str) -> bool:
        return s3_io.object_exists(self.client, self.bucket, f"{self.prefix}{drop_id}/{READY}")

    def _drop_prefix(self, drop_id: str) -> str:
        return f"{self.prefix}{check_drop_id(drop_id)}/"

    def list_files(self, drop_id: str) -> list[str]:
        """The listing also keeps each object's size and ETag, so opening a listed file needs no HEAD request."""
        prefix = self._drop_prefix(drop_id)
        names = []
        for key, size, etag in s3_io.list_objects(self.client, self.bucket, prefix):
            if not key.endswith("/"):  # "x/": a console folder marker
                self._listed[key] = (size, etag)
                names.append(key[len(prefix) :])
        return sorted(names)

    def opener(self, drop_id: str, name: str) -> tuple[Callable[[], BinaryIO], int]:
        """A function opening the object as a buffered, seekable, resuming stream (see the module docstring)."""
        _refuse_unsafe(name)
        key = self._drop_prefix(drop_id) + name
        size, etag = self._listed.get(key) or self._head(key)
        attempts = (self.s3 or S3Config()).max_attempts
        if size > self.WHOLE_BELOW:
            return (lambda: open_object(self.client, self.bucket, key, size, etag, attempts)), size
        held: list[bytes] = []

        def open_small() -> BinaryIO:
            if not held:
                held.append(read_object(self.client, self.bucket, key, size, etag, attempts))
            return io.BytesIO(held[0])

        return open_small, size

    def _head(self, key: str) -> tuple[int, str | None]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return int(head["ContentLength"]), head.get("ETag")


def open_source(location: str, s3: S3Config | None = None) -> DropSource:
    """A local directory, or s3://bucket/prefix read through `s3_client(s3)`."""
    if location.startswith("s3://"):
        return S3Source(location, s3=s3)
    if "://" in location:
        raise ValueError(f"unsupported drop location {location!r}: use a local directory or s3://bucket/prefix")
    return LocalSource(location)
