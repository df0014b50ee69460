"""The train rows' write order, computed a range at a time from the cluster labels (components.ingest.rows).

The order is a stable sort of the train rows by cluster: clusters ascending, positions ascending inside each
(components.adapters.records.DropIndex needs every (drop, cluster) arm as one range of row ids). As an argsort it
costs 8 bytes a row for the whole commit; here only the labels (2 bytes a row) are kept, with each cluster's row
count, and any range [a, b) of the order is found by one scan of the labels (it stops once the range is complete),
SCAN_ROWS at a time: the clusters the
range covers are known from the counts, the first and the last of them are cut by rank (how many rows of that
cluster come before). The commit asks for ranges of `SEGMENT_ROWS` (components.ingest.rows.record_batches), so a
drop of n train rows is scanned n / SEGMENT_ROWS times: ~0.1 s a scan of 40 M labels, a few seconds for a drop of
5 GB of text at context_length 128, for the 8 bytes a row an argsort would hold.
"""

from __future__ import annotations

import numpy as np

SCAN_ROWS = 1 << 18  # labels compared at once (~4 MB of temporaries: positions, ranks)
SEGMENT_ROWS = 1 << 20  # rows of the order asked for at once by the commit (8 MB of positions)


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """`np.bincount(labels, minlength=minlength)` SCAN_ROWS at a time: bincount widens its input to int64 first,
    8 bytes a row for the whole array at once."""
    counts = np.zeros(minlength, dtype=np.int64)
    for start in range(0, len(labels), SCAN_ROWS):
        block = np.bincount(labels[start : start + SCAN_ROWS], minlength=minlength)
        if len(block) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(block) - len(counts), np.int64)])
        counts[: len(block)] += block
    return counts


class WriteOrder:
    """Positions of the train rows in write order; `order[a:b]` is an int64 array, the same as
    `np.argsort(labels, kind="stable")[a:b]`."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels)
        self.offsets = np.zeros(1, dtype=np.int64)
        if self.labels.size:
            self.offsets = np.concatenate([[0], np.cumsum(label_counts(self.labels))])  # cluster c: [off[c], off[c+1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a WriteOrder is read by ranges (order[a:b]) only")
        a, b, step = key.indices(len(self))
        if step != 1:
            raise IndexError("a WriteOrder takes slices of step 1 only")
        return self._range(a, b) if a < b else np.empty(0, dtype=np.int64)

    def _range(self, a: int, b: int) -> np.ndarray:
        off = self.offsets
        first = int(np.searchsorted(off, a, side="right")) - 1  # cluster of order[a]
        last = int(np.searchsorted(off, b - 1, side="right")) - 1  # cluster of order[b - 1]
        skip, stop = a - int(off[first]), b - int(off[last])  # rank window: first's ranks >= skip, last's < stop
        positions, labels = [], []
        seen_first = seen_last = found = 0
        for start in range(0, len(self.labels), SCAN_ROWS):
            block = self.labels[start : start + SCAN_ROWS]
            at = np.flatnonzero(block == first) if first == last else np.flatnonzero((block >= first) & (block <= last))
            lab = block[at]
            is_first, is_last = lab == first, lab == last
            rank_first = seen_first + np.cumsum(is_first) - 1
            rank_last = seen_last + np.cumsum(is_last) - 1
            keep = (~is_first | (rank_first >= skip)) & (~is_last | (rank_last < stop))
            seen_first += int(is_first.sum())
            seen_last += int(is_last.sum())
            positions.append(at[keep] + start)
            labels.append(lab[keep])
            found += len(positions[-1])
            if found == b - a:
                break  # every row of the range is found: the rest of the labels cannot hold one
        pos = np.concatenate(positions)
        if first != last:  # collected in position order: a stable sort by cluster gives (cluster, position)
            pos = pos[np.argsort(np.concatenate(labels), kind="stable")]
        if len(pos) != b - a:
            raise AssertionError(f"write order [{a}, {b}) found {len(pos)} rows")
        return pos
