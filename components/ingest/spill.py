"""The token spill of one ingest: every new document's tokens on disk, not in memory, until the commit.

A drop can be larger than the machine's memory, so ingest never holds its texts or tokens: a scan tokenizes the
documents in small batches and appends their tokens here (little-endian uint32, one flat file); what stays in
memory is the metadata, an offset and a length per document. The packing (components.core.packing.split_layouts)
then builds any range of rows from it with `os.pread`, which needs no shared file position, so readers never
interfere and nothing is mapped into the process (a memory map would count the drop's pages in its RSS).

With `ingest.workers` > 1 each file of the drop is tokenized by a worker process into a part file of its own
(`part_path(k)`, written by `write_part`); the driver `adopt`s the parts' documents in file order, so a document's
index, and the tokens read back for it, are the same as with one process.

Where: `$AMR_HOME/tmp/ingest-<drop_id>-<pid>` (parts: `ingest-<drop_id>-part<k>-<pid>`, the driver's pid), on the
same disk as the memory's local state. They are removed when the ingest of the drop ends, committed, rejected or
failed (`with Spill(...)`). A killed ingest (SIGKILL, power loss) cannot clean up: the next `Spill` removes every
left-over whose process is gone.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

PREFIX = "ingest-"
TOKEN = np.dtype("<u4")


class Spill:
    def __init__(self, home: Path, drop_id: str) -> None:
        root = Path(home) / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)
        self.path = root / f"{PREFIX}{drop_id}-{os.getpid()}"
        self._file = open(self.path, "w+b")  # noqa: SIM115 - closed by close(), which __exit__ calls
        self._offsets, self._lengths, self._parts = array("q"), array("q"), array("i")
        self._files = [self._file]  # part 0: this file; then the adopted part files
        self._part_paths: list[Path] = []
        self._end = 0

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._lengths)

    def append(self, token_lists) -> None:
        """Append documents' tokens; each becomes the next index (0, 1, ...)."""
        for tokens in token_lists:
            data = np.asarray(tokens).astype(TOKEN, copy=False)
            self._file.write(data.tobytes())
            self._offsets.append(self._end)
            self._lengths.append(len(data))
            self._parts.append(0)
            self._end += len(data)
        self._file.flush()  # pread reads the file, not Python's buffer

    @property
    def n_parts(self) -> int:
        """Files holding the tokens: this one and the part files adopted from workers."""
        return len(self._files)

    def part_path(self, k: int) -> Path:
        """Where a worker writes the tokens of the drop's file number `k` (removed with the spill)."""
        drop_id = self.path.name[len(PREFIX) :].rsplit("-", 1)[0]
        path = self.path.with_name(f"{PREFIX}{drop_id}-part{k}-{os.getpid()}")
        self._part_paths.append(path)
        return path

    def adopt(self, path: Path, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents a worker wrote to the part file `path` (token offsets and counts in it)."""
        part = len(self._files)
        self._files.append(open(path, "rb"))  # noqa: SIM115 - closed by close()
        self._offsets.extend(np.asarray(offsets, dtype=np.int64).tolist())
        self._lengths.extend(np.asarray(lengths, dtype=np.int64).tolist())
        self._parts.extend([part] * len(lengths))

    def lengths(self) -> np.ndarray:
        return np.frombuffer(self._lengths, dtype=np.int64).copy()  # a view would pin the array: no more appends

    def tokens(self, index: int) -> np.ndarray:
        """Document `index`'s tokens, read back with one pread."""
        n = self._lengths[index]
        fd = self._files[self._parts[index]].fileno()
        data = os.pread(fd, n * TOKEN.itemsize, self._offsets[index] * TOKEN.itemsize)
        if len(data) != n * TOKEN.itemsize:
            raise OSError(f"{self.path}: the token spill is shorter than written (removed while ingest ran?)")
        return np.frombuffer(data, dtype=TOKEN)

    def close(self) -> None:
        for file in self._files:
            if not file.closed:
                file.close()
        self.path.unlink(missing_ok=True)
        for part in self._part_paths:
            part.unlink(missing_ok=True)


def write_part(path: Path, token_lists, at: int) -> tuple[list[int], list[int], int]:
    """Append documents' tokens to a worker's part file; returns their offsets, lengths and the new end."""
    offsets, lengths = [], []
    with open(path, "ab") as out:
        for tokens in token_lists:
            data = np.asarray(tokens).astype(TOKEN, copy=False)
            out.write(data.tobytes())
            offsets.append(at)
            lengths.append(len(data))
            at += len(data)
    return offsets, lengths, at


def remove_leftovers(root: Path) -> list[Path]:
    """Remove the spills of ingests whose process is gone (killed before they could); returns what was removed."""
    removed = []
    for path in root.glob(f"{PREFIX}*-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
