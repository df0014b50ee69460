"""Per-row values computed from the row numbers when read, so a drop of any size holds no per-row array.

A packed drop's rows are decided by per-document arrays and the context length (components.core.packing.Layout):
row r holds tokens [r * L, (r + 1) * L) of the concatenated documents, so its length is L except for the split's
last row, and its first document is the one whose start is the last at or below r * L (a binary search over the
documents' starts). Stored per row, those values cost ~30 bytes a row (~0.25 MB per MB of text at context_length
128); computed a block at a time, when a batch of rows is featurized, hashed or written, they cost nothing that
grows with the drop (components.ingest.limits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

BLOCK = 1 << 20  # rows computed at once when a LazyArray is summed, iterated or converted whole


class Blocked:
    """What a 1-D array read a block at a time (`blocks()`) gives without ever being whole: iteration, sum, max
    (LazyArray here, components.core.ondisk.DiskArray)."""

    def blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        for values in self.blocks():
            yield from values

    def sum(self, dtype=np.int64):
        return sum((values.sum(dtype=dtype) for values in self.blocks()), dtype(0))

    def max(self):
        return max(values.max() for values in self.blocks())


class LazyArray(Blocked):
    """A read-only 1-D array of `n` values, `values(rows) -> ndarray` computing those of an int64 array of rows.

    Indexing by an int gives a scalar, by a slice (step 1 or not) or an array of row numbers an ndarray of `dtype`;
    `map(table)` gives the LazyArray of `table[self[rows]]` (an index through another index, still computed per
    block). `np.asarray` builds the whole array: for tests and small drops only, never on the ingest path.
    """

    def __init__(self, n: int, values: Callable[[np.ndarray], np.ndarray], dtype) -> None:
        self.n, self.values, self.dtype = int(n), values, np.dtype(dtype)
        self.shape = (self.n,)
        self.ndim = 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.n if key < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(f"index {int(key)} is out of bounds for {self.n} rows")
            return self.values(np.array([i], dtype=np.int64))[0]
        if isinstance(key, slice):
            rows = np.arange(*key.indices(self.n), dtype=np.int64)
        else:
            rows = np.asarray(key, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < 0 or rows.max() >= self.n):
                raise IndexError(f"row numbers out of bounds for {self.n} rows")
        if not rows.size:
            return np.empty(0, dtype=self.dtype)
        return np.asarray(self.values(rows)).astype(self.dtype, copy=False)

    def blocks(self, block: int = BLOCK) -> Iterator[np.ndarray]:
        for start in range(0, self.n, block):
            yield self[start : start + block]

    def map(self, table) -> LazyArray:
        """`table[self[rows]]` per block; `table` an ndarray or a LazyArray."""
        return LazyArray(self.n, lambda rows: table[self.values(rows)], table.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[0 : self.n]
        return whole if dtype is None else whole.astype(dtype)
