"""The train rows' write order, computed a range at a time from the cluster labels (components.ingest.rows).

The order is a stable sort of the train rows by cluster: clusters ascending, positions ascending inside each
(components.adapters.records.DropIndex needs every (drop, cluster) arm as one range of row ids). As an argsort it
costs 8 bytes a row for the whole commit; here only the labels are read (a DiskArray on disk during an ingest,
components.core.ondisk, or an ndarray), SCAN_ROWS at a time, and any range [a, b) of the order is found by a scan
of the labels that starts at the right checkpoint and stops once the range is complete. One pass when the order
is made records every cluster's row count before each SCAN_ROWS checkpoint (`checkpoints`, [n / SCAN_ROWS + 1, k]
int64: a few kB, 8 k bytes per SCAN_ROWS rows); a range's clusters are known from the totals, the first and the
last of them are cut by rank (how many rows of that cluster come before), and its scan starts at the last
checkpoint before the first row it needs (the rank `skip` of its first cluster, or any row of the later ones).
The commit asks for ranges of `SEGMENT_ROWS` (components.ingest.rows.record_batches) in order, so the whole order
costs about one pass over the labels per cluster interleaving (rows of one cluster spread over the drop are read
with the rows of the other clusters between them), not one pass from row 0 per range.
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
    `np.argsort(labels, kind="stable")[a:b]`; `clusters(a, b)` the labels of those rows (read from the totals)."""

    def __init__(self, labels) -> None:
        self.labels = labels  # an ndarray or a DiskArray (components.core.ondisk): read SCAN_ROWS at a time
        per_block = [np.bincount(labels[s : s + SCAN_ROWS]) for s in range(0, len(labels), SCAN_ROWS)]
        k = max((len(c) for c in per_block), default=0)
        checkpoints = np.zeros((len(per_block) + 1, k), dtype=np.int64)  # row j: counts before row j * SCAN_ROWS
        for j, counts in enumerate(per_block):
            checkpoints[j + 1, : len(counts)] = counts
        self.checkpoints = np.cumsum(checkpoints, axis=0)
        self.offsets = np.concatenate([[0], np.cumsum(self.checkpoints[-1])]).astype(np.int64)  # c: [off[c], off[c+1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a WriteOrder is read by ranges (order[a:b]) only")
        a, b, step = key.indices(len(self))
        if step != 1:
            raise IndexError("a WriteOrder takes slices of step 1 only")
        return self._range(a, b) if a < b else np.empty(0, dtype=np.int64)

    def clusters(self, a: int, b: int) -> np.ndarray:
        """The cluster of each of the rows order[a:b], in the labels' dtype (no read of the labels: each cluster is
        one run of the order)."""
        dtype = getattr(self.labels, "dtype", np.int64)
        if a >= b:
            return np.empty(0, dtype)
        off = self.offsets
        first, last = np.searchsorted(off, [a, b - 1], side="right") - 1
        runs = np.arange(first, last + 1)
        counts = np.minimum(off[runs + 1], b) - np.maximum(off[runs], a)
        return np.repeat(runs.astype(dtype), counts)

    def _start(self, first: int, last: int, skip: int) -> int:
        """The last checkpoint at or before the first row the range needs: rank `skip` of cluster `first`, or any
        row of the clusters (first, last]."""
        cp = self.checkpoints
        j = int(np.searchsorted(cp[:, first], skip, side="right")) - 1
        if last > first:
            later = cp[:, first + 1 : last + 1].sum(axis=1)
            j = min(j, int(np.searchsorted(later, 0, side="right")) - 1)
        return max(j, 0)

    def _range(self, a: int, b: int) -> np.ndarray:
        off = self.offsets
        first = int(np.searchsorted(off, a, side="right")) - 1  # cluster of order[a]
        last = int(np.searchsorted(off, b - 1, side="right")) - 1  # cluster of order[b - 1]
        skip, stop = a - int(off[first]), b - int(off[last])  # rank window: first's ranks >= skip, last's < stop
        j = self._start(first, last, skip)
        seen_first, seen_last = int(self.checkpoints[j, first]), int(self.checkpoints[j, last])
        positions, labels = [], []
        found = 0
        for start in range(j * SCAN_ROWS, len(self.labels), SCAN_ROWS):
            block = np.asarray(self.labels[start : start + SCAN_ROWS])
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
