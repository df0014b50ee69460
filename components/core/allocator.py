"""Give freed heap memory back to the operating system, so a long ingest's RSS follows what it holds.

glibc's malloc keeps memory freed at the top of a heap unless more than its trim threshold is free, and raises that
threshold (up to 64 MB an arena) each time a large block is freed; with the many threads of Lance's writer and
numpy's temporaries of a few MB, an ingest's RSS then grows with the work it has done, not with what it holds:
the Lance commit of a 1 GB drop (7.4 M rows) held ~120 MB more at the end than that of a 50 MB drop, ~60 MB of it
free memory (benchmarks/results/ingest_rss.jsonl, "trim" rows). This is the allocator setting Dask's workers use
(distributed's MALLOC_TRIM_THRESHOLD_): a fixed trim threshold, which also stops the dynamic adjustment, set at
run time with `mallopt` (the environment variable is read only when a process starts), and `malloc_trim(0)`
between an ingest's phases, which returns the free pages inside the heaps too.

On other C libraries (macOS, musl) both are no-ops: the functions are looked up, never assumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
TRIM_THRESHOLD = 128 << 10  # glibc's own default before its dynamic adjustment


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def limit_retained(threshold: int = TRIM_THRESHOLD) -> bool:
    """Keep at most `threshold` bytes free at the top of each heap from now on; False where unsupported."""
    mallopt = getattr(_LIBC, "mallopt", None)
    return bool(mallopt and mallopt(M_TRIM_THRESHOLD, threshold))


def trim() -> bool:
    """Return every heap's free pages to the system now (glibc's malloc_trim); False where unsupported or none."""
    malloc_trim = getattr(_LIBC, "malloc_trim", None)
    return bool(malloc_trim and malloc_trim(0))
