"""components.core.allocator: freed heap memory really goes back to the system (RSS), on glibc."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")

# Run in a fresh process: its heap holds nothing else, so what malloc keeps after the free is this test's alone
# (a pytest worker's heap, with its own free chunks, serves and returns blocks in ways no test can predict).
SCENARIO = """
import json, psutil
from components.core import allocator
rss = lambda: psutil.Process().memory_info().rss / (1 << 20)
assert allocator.limit_retained()
big, keep = [], []
for _ in range(3200):
    big.append(bytearray(64 << 10))  # zero-filled: every page touched
    keep.append(bytearray(1024))
loaded = rss()
big.clear()
freed = rss()
assert allocator.trim()
print(json.dumps({"loaded": loaded, "freed": freed, "trimmed": rss()}))
"""


@glibc
def test_trim_returns_freed_heap_pages_that_malloc_keeps():
    """~200 MB of 64 kB blocks (below the mmap threshold: on the heap) interleaved with small blocks that stay, so
    the freed memory is not at the top of the heap and is kept by malloc when freed; trim() gives it back."""
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    rss = json.loads(out.stdout)
    loaded, freed, trimmed = rss["loaded"], rss["freed"], rss["trimmed"]
    assert loaded - freed < 100, f"malloc gave most back without trim ({loaded:.0f} -> {freed:.0f} MB)"
    assert freed - trimmed > 150, f"trim() returned only {freed - trimmed:.0f} MB of ~200 MB freed"
