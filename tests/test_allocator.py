"""components.core.allocator: freed heap memory really goes back to the system (RSS), on glibc."""

from __future__ import annotations

import platform

import psutil
import pytest

from components.core import allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / (1 << 20)


@glibc
def test_trim_returns_freed_heap_pages_that_malloc_keeps():
    """~200 MB of 64 kB blocks (below the mmap threshold: on the heap) interleaved with small blocks that stay, so
    the freed memory is not at the top of the heap and is kept by malloc when freed; trim() gives it back."""
    assert allocator.limit_retained()
    big, keep = [], []
    for _ in range(3200):
        big.append(bytearray(64 << 10))  # zero-filled: every page touched
        keep.append(bytearray(1024))
    loaded = _rss_mb()
    big.clear()
    freed = _rss_mb()
    assert allocator.trim()
    trimmed = _rss_mb()
    assert loaded - freed < 100, f"malloc gave most back without trim ({loaded:.0f} -> {freed:.0f} MB)"
    assert freed - trimmed > 150, f"trim() returned only {freed - trimmed:.0f} MB of ~200 MB freed"
    del keep
