"""Typed 1-D arrays in files, read by blocks, so per-row and per-document metadata does not grow the process's RSS.

An ingest's metadata grows with its drop: a cluster label per row, an offset, a length and a place in the layout
per document. Held in memory that is tens of MB a GB of text; in a `DiskArray` it is a file on the local disk,
written once by `append` and read back a slice at a time with `os.pread` (never a memory map: mapped pages count in
the RSS, which is what ingest.max_memory_mb bounds). The page cache keeps recently read blocks fast; what the
process holds is the block being read and, per array, a sample of every SAMPLE-th value (for `searchsorted`).

Files live in a directory owned by the ingest (`Arrays`, in `$AMR_HOME/tmp`, beside the token spill:
components.ingest.spill) and are named `<prefix>a<k>-<pid>`, with the driver's pid, so they are removed when
closed and, after a SIGKILL, by the next ingest's `remove_leftovers` (whose process is gone is whose files go).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from components.core.lazy import Blocked

BLOCK = 1 << 18  # values read at once by `blocks`, `sum`, `max` (2 MB of int64)
SAMPLE = 1 << 10  # every SAMPLE-th value is kept in memory for searchsorted (0.1 % of the array's bytes)
GATHER = 1 << 10  # values read per pread when a gather's indices are spread out
CACHE = 1 << 12  # a small read is served from the aligned block of CACHE values around it, kept until the next
_counter = itertools.count()


class DiskArray(Blocked):
    """A typed 1-D array in a file: `append(values)` while written, then read like a read-only ndarray.

    Reads: `len`, `dtype`, `arr[i]` (a scalar), `arr[a:b]` (one pread), `arr[indices]` (a gather reading the
    blocks that cover them), `blocks(n)`, `sum`, `max`, and `searchsorted(values, side)` for a sorted array (the
    in-memory sample, then one read of at most SAMPLE values per distinct place). `np.asarray` reads it whole: for
    tests and small arrays only. `close()` removes the file.
    """

    def __init__(self, path: Path, dtype) -> None:
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._n = 0
        self._sample: list[np.ndarray] = []
        self._cache: tuple[int, np.ndarray] = (0, np.empty(0, self.dtype))  # the block of the last small read
        self.ndim = 1

    @property
    def shape(self) -> tuple[int]:
        return (self._n,)

    def __len__(self) -> int:
        return self._n

    def __enter__(self) -> DiskArray:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, values) -> None:
        data = np.ascontiguousarray(np.asarray(values).astype(self.dtype, copy=False).reshape(-1))
        first = -self._n % SAMPLE  # index in `data` of the next multiple of SAMPLE
        if first < len(data):
            self._sample.append(data[first::SAMPLE].copy())
            if len(self._sample) > 64:  # few array objects, whatever the number of appends
                self._sample = [np.concatenate(self._sample)]
        os.pwrite(self._fd, data.tobytes(), self._n * self.dtype.itemsize)
        self._n += len(data)
        self._cache = (0, np.empty(0, self.dtype))

    def _read(self, a: int, b: int) -> np.ndarray:
        """Values [a, b), read-only. Small reads (a row's documents, a searchsorted's interval) come from the cached
        block around them: the layout reads nearby places over and over (components.core.packing.Layout.rows)."""
        if b - a > CACHE // 2:
            return self._pread(a, b)
        start, block = self._cache
        if not (start <= a and b <= start + len(block)):
            start = a - a % CACHE
            block = self._pread(start, min(self._n, max(start + CACHE, b)))
            self._cache = (start, block)
        return block[a - start : b - start]

    def _pread(self, a: int, b: int) -> np.ndarray:
        size = self.dtype.itemsize
        data = os.pread(self._fd, (b - a) * size, a * size)
        if len(data) != (b - a) * size:
            raise OSError(f"{self.path}: shorter than written (removed while in use?)")
        return np.frombuffer(data, dtype=self.dtype)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._n if key < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"index {int(key)} is out of bounds for {self._n} values ({self.path.name})")
            return self._read(i, i + 1)[0]
        if isinstance(key, slice):
            a, b, step = key.indices(self._n)
            if step == 1:
                return self._read(a, b) if a < b else np.empty(0, self.dtype)
            key = np.arange(a, b, step)
        idx = np.asarray(key, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"indices out of bounds for {self._n} values ({self.path.name})")
        return self._gather(np.where(idx < 0, idx + self._n, idx))

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Values at `idx`: one read of their span when it is dense enough, else one read per GATHER block."""
        if not idx.size:
            return np.empty(0, self.dtype)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= max(GATHER, 4 * idx.size):
            return self._read(lo, hi)[idx - lo]
        blocks, where = np.unique(idx // GATHER, return_inverse=True)
        table = np.zeros((len(blocks), GATHER), dtype=self.dtype)
        for j, block in enumerate(blocks.tolist()):
            a = block * GATHER
            values = self._read(a, min(a + GATHER, self._n))
            table[j, : len(values)] = values
        return table[where, idx % GATHER]

    def blocks(self, n: int = BLOCK) -> Iterator[np.ndarray]:
        for start in range(0, self._n, n):
            yield self._read(start, min(start + n, self._n))

    def max(self):
        if not self._n:
            raise ValueError(f"max of an empty array ({self.path.name})")
        return super().max()

    def searchsorted(self, values, side: str = "left") -> np.ndarray:
        """`np.searchsorted(self, values, side)` for a non-decreasing array, reading one block per sample interval
        the values fall in."""
        values = np.asarray(values)
        flat = values.reshape(-1)
        if len(self._sample) != 1:
            self._sample = [np.concatenate(self._sample) if self._sample else np.empty(0, self.dtype)]
        j = np.searchsorted(self._sample[0], flat, side=side)  # the answer is in ((j - 1) * SAMPLE, j * SAMPLE]
        if len(flat) == 1:  # one value (a layout's row range): no grouping
            a = max(0, (int(j[0]) - 1) * SAMPLE)
            block = self._read(a, min(self._n, int(j[0]) * SAMPLE + 1))
            return (a + np.searchsorted(block, flat, side=side)).reshape(values.shape)
        order = np.argsort(j, kind="stable")
        js = j[order]
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(js)) + 1, [len(js)]])
        out = np.empty(len(flat), dtype=np.int64)
        for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            place, sel = int(js[s]), order[s:e]
            a, b = max(0, (place - 1) * SAMPLE), min(self._n, place * SAMPLE + 1)
            out[sel] = a + np.searchsorted(self._read(a, b), flat[sel], side=side)
        return out.reshape(values.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._read(0, self._n).copy() if self._n else np.empty(0, self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class Arrays:
    """The DiskArrays of one owner (an ingest), files `<prefix>a<k>-<pid>` in `root`; `close()` removes them all.

    Creating it removes the left-overs of dead processes with the same prefix family (`remove_leftovers`)."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix = Path(root), prefix
        self.root.mkdir(parents=True, exist_ok=True)
        self._arrays: list[DiskArray] = []

    def new(self, dtype) -> DiskArray:
        array = DiskArray(self.root / f"{self.prefix}a{next(_counter)}-{os.getpid()}", dtype)
        self._arrays.append(array)
        return array

    def release(self, array: DiskArray) -> None:
        """Close one array before the others (its file is removed now)."""
        array.close()
        self._arrays = [a for a in self._arrays if a is not array]

    def __enter__(self) -> Arrays:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for array in self._arrays:
            array.close()
        self._arrays = []


def remove_leftovers(root: Path, prefix: str) -> list[Path]:
    """Remove the files `<prefix>...-<pid>` in `root` whose process is gone (killed before it could clean up)."""
    removed = []
    for path in Path(root).glob(f"{prefix}*-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
