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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from components.core import ondisk

PREFIX = "ingest-"
TOKEN = np.dtype("<u4")
META = np.dtype([("offset", "<i8"), ("length", "<i8"), ("part", "<i4")])  # per document, in a DiskArray
META_BLOCK = 4096  # documents' metadata read at once by `tokens` (80 kB)


class Spill:
    def __init__(self, home: Path, drop_id: str) -> None:
        root = Path(home) / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)
        self.path = root / f"{PREFIX}{drop_id}-{os.getpid()}"
        self._file = open(self.path, "w+b")  # noqa: SIM115 - closed by close(), which __exit__ calls
        # The ingest's per-row and per-document arrays on disk (components.core.ondisk), removed with the spill.
        self.arrays = ondisk.Arrays(root, f"{PREFIX}{drop_id}-")
        self._meta = self.arrays.new(META)  # per document: where its tokens are (20 bytes, on disk)
        self._block: tuple[int, np.ndarray] = (-1, np.empty(0, META))  # the block of _meta last read (`tokens`)
        self._files = [self._file]  # part 0: this file; then the adopted part files
        self._part_paths: list[Path] = []
        self._end = 0

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._meta)

    def append(self, token_lists) -> None:
        """Append documents' tokens; each becomes the next index (0, 1, ...)."""
        meta = np.zeros(len(token_lists), META)
        for i, tokens in enumerate(token_lists):
            data = np.asarray(tokens).astype(TOKEN, copy=False)
            self._file.write(data.tobytes())
            meta[i] = (self._end, len(data), 0)
            self._end += len(data)
        self._file.flush()  # pread reads the file, not Python's buffer
        self._meta.append(meta)

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
        meta = np.zeros(len(lengths), META)
        meta["offset"], meta["length"], meta["part"] = offsets, lengths, part
        self._meta.append(meta)

    def lengths(self) -> np.ndarray:
        """Every document's token count, whole (8 bytes a document in memory): `length_blocks` or `lengths_at`
        read them without a per-document array."""
        return np.concatenate([*self.length_blocks(), np.empty(0, np.int64)])

    def length_blocks(self, n: int = ondisk.BLOCK) -> Iterator[np.ndarray]:
        """The documents' token counts (int64), `n` documents at a time, in index order."""
        for block in self._meta.blocks(n):
            yield block["length"].astype(np.int64)

    def lengths_at(self, indices: np.ndarray) -> np.ndarray:
        """Token counts (int64) of the documents at `indices` (a gather of the blocks covering them)."""
        return self._meta[np.asarray(indices, dtype=np.int64)]["length"].astype(np.int64)

    def _where(self, index: int) -> np.void:
        """Document `index`'s (offset, length, part), from the block of META_BLOCK documents last read: documents
        are fetched in runs (a layout's rows in order), so this is one metadata read per META_BLOCK documents."""
        start, block = self._block
        if not start <= index < start + len(block):
            if not 0 <= index < len(self._meta):
                raise IndexError(f"document {index} is not in the token spill of {len(self._meta)} documents")
            start = index - index % META_BLOCK
            block = self._meta[start : start + META_BLOCK]
            self._block = (start, block)
        return block[index - start]

    def tokens(self, index: int) -> np.ndarray:
        """Document `index`'s tokens, read back with one pread (and its metadata from the cached block)."""
        offset, n, part = self._where(int(index)).tolist()
        fd = self._files[part].fileno()
        data = os.pread(fd, n * TOKEN.itemsize, offset * TOKEN.itemsize)
        if len(data) != n * TOKEN.itemsize:
            raise OSError(f"{self.path}: the token spill is shorter than written (removed while ingest ran?)")
        return np.frombuffer(data, dtype=TOKEN)

    def close(self) -> None:
        self.arrays.close()
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
    """Remove the spills (and on-disk arrays) of ingests whose process is gone; returns what was removed."""
    return ondisk.remove_leftovers(root, PREFIX)
