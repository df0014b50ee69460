"""No per-row metadata held whole: per-row values computed per block, the write order computed per range."""

from __future__ import annotations

import numpy as np
import pytest

from components.core.lazy import LazyArray
from components.ingest import write_order
from components.ingest.write_order import WriteOrder


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_write_order_ranges_equal_a_stable_argsort(monkeypatch, k):
    monkeypatch.setattr(write_order, "SCAN_ROWS", 37)  # ranges found across many scan blocks
    rng = np.random.default_rng(k)
    for n in (0, 1, 7, 300, 1000):
        labels = rng.integers(0, k, n).astype(np.uint16)  # with k > n some clusters are empty
        expected = np.argsort(labels, kind="stable")
        order = WriteOrder(labels)
        assert np.array_equal(order[:], expected)
        for a in range(0, n + 1, max(1, n // 13)):
            for b in range(a, n + 1, max(1, n // 7)):
                assert np.array_equal(order[a:b], expected[a:b]), (n, a, b)


def test_lazy_array_reads_like_the_array_it_computes():
    values = np.arange(50, dtype=np.int64) * 3
    lazy = LazyArray(len(values), lambda rows: values[rows], np.int32)
    assert lazy[7] == 21 and lazy[-1] == 147 and lazy[3:9].dtype == np.int32
    assert np.array_equal(lazy[[4, 0, 4]], [12, 0, 12]) and np.array_equal(np.asarray(lazy), values)
    assert lazy.sum() == values.sum() and list(lazy) == values.tolist()
    table = np.arange(200)[::-1]
    assert np.array_equal(lazy.map(table)[2:5], table[values[2:5]])
    with pytest.raises(IndexError):
        lazy[[0, 50]]
