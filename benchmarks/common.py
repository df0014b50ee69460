"""Shared helpers for the benchmark scripts: real text from this machine, isolated phases, result files.

Benchmarks run as scripts (`python benchmarks/<name>.py`), so this module is imported as `common`. It knows nothing
about ingest, training or sampling: it builds corpora and drops of real text (never random bytes, whose
tokenization, packing and clustering behave nothing like data), runs a phase in a fresh process so its peak memory
is its own, and writes every result twice: JSON for machines, a markdown table for the README and the notes.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

STDLIB = Path(os.__file__).parent  # the interpreter's own standard library sources


def _files(root: Path, pattern: str, skip: tuple[str, ...] = ()) -> Iterator[Path]:
    seen: set[Path] = set()
    for path in sorted(root.rglob(pattern)):
        real = path.resolve()
        if real in seen or not real.is_file() or any(part in skip for part in path.parts):
            continue
        seen.add(real)  # symlinked duplicates (man page aliases, multiarch headers) count once
        yield path


def _gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


# Kinds of real text on this machine, each a sorted (so reproducible) stream of (name, raw bytes).
TEXT_SOURCES: dict[str, Callable[[], Iterator[tuple[str, bytes]]]] = {
    "python": lambda: ((str(p), p.read_bytes()) for p in _files(STDLIB, "*.py", skip=("site-packages",))),
    "c-headers": lambda: ((str(p), p.read_bytes()) for p in _files(Path("/usr/include"), "*.h")),
    "man-pages": lambda: ((str(p), _gunzip(p)) for p in _files(Path("/usr/share/man"), "*.gz")),
    "licenses": lambda: ((str(p), p.read_bytes()) for p in _files(Path("/usr/share/common-licenses"), "*")),
}

MAN = Path("/usr/share/man")


def _man_pages(lang: str | None) -> Iterator[tuple[str, bytes]]:
    """Man pages (raw roff) of one language: `None` for the English sections man1..man8, else e.g. "de"."""
    if lang is None:
        skip = tuple(d.name for d in MAN.iterdir() if not d.name.startswith("man"))  # the translations
        return ((str(p), _gunzip(p)) for p in _files(MAN, "*.gz", skip=skip))
    return ((str(p), _gunzip(p)) for p in _files(MAN / lang, "*.gz"))


def _pydoc_topics() -> Iterator[tuple[str, bytes]]:
    from pydoc_data.topics import topics  # the Python reference's prose, as `help()` shows it

    return ((f"pydoc:{name}", topics[name].encode("utf-8")) for name in sorted(topics))


DOC = Path("/usr/share/doc")
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _doc_files(pattern: str) -> Iterator[tuple[str, bytes]]:
    """Package documentation in /usr/share/doc/<package>/ (gzipped files decompressed)."""
    for p in _files(DOC, pattern):
        yield str(p), _gunzip(p) if p.suffix == ".gz" else p.read_bytes()


# More kinds, for streams of clearly different drops (benchmarks/forgetting.py). Not in the default mix of
# `real_documents`: "man-pages" above already covers every language, and the mix stays what it was.
EXTRA_SOURCES: dict[str, Callable[[], Iterator[tuple[str, bytes]]]] = {
    "man-en": lambda: _man_pages(None),
    "man-de": lambda: _man_pages("de"),
    "pydoc-topics": _pydoc_topics,
    "man-fr": lambda: _man_pages("fr"),
    "man-es": lambda: _man_pages("es"),
    "man-ru": lambda: _man_pages("ru"),
    "man-it": lambda: _man_pages("it"),
    "doc-copyright": lambda: _doc_files("copyright"),  # Debian machine-readable copyright files
    "doc-changelog": lambda: _doc_files("changelog*.gz"),  # Debian and upstream changelogs
    "c-linux": lambda: ((str(p), p.read_bytes()) for p in _files(Path("/usr/include/linux"), "*.h")),
    "python-site": lambda: ((str(p), p.read_bytes()) for p in _files(SITE, "*.py")),  # third-party code
}


def _texts(kind: str, max_doc_bytes: int) -> Iterator[str]:
    """Documents of one kind: valid UTF-8 only, no NUL, not blank, cut (at a character boundary) to max_doc_bytes."""
    for _, raw in (TEXT_SOURCES | EXTRA_SOURCES)[kind]():
        if b"\0" in raw or not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        yield raw[:max_doc_bytes].decode("utf-8", errors="ignore")  # the cut may split the last character


def real_documents(
    target_bytes: int, kinds: tuple[str, ...] = tuple(TEXT_SOURCES), max_doc_bytes: int = 200_000
) -> tuple[list[str], dict[str, int]]:
    """About `target_bytes` of UTF-8 text mixed from `kinds`, always topping up the kind with the fewest bytes.

    Mixing by bytes (not by document) keeps the kinds balanced although a man page is far shorter than a C
    header. Returns the documents and the bytes taken from each kind; a kind that runs out simply stops.
    """
    streams = {kind: _texts(kind, max_doc_bytes) for kind in kinds}
    taken = dict.fromkeys(kinds, 0)
    docs: list[str] = []
    total = 0
    while total < target_bytes and streams:
        kind = min(streams, key=lambda k: taken[k])
        text = next(streams[kind], None)
        if text is None:
            del streams[kind]
            continue
        size = len(text.encode("utf-8"))
        docs.append(text)
        taken[kind] += size
        total += size
    return docs, taken


def write_drop(root: Path, drop_id: str, texts: list[str], shard_bytes: int = 8_000_000) -> Path:
    """A ready drop `root/drop_id/` of JSONL shards (`{"text": ...}` per line) with `_READY` written last."""
    drop = root / drop_id
    drop.mkdir(parents=True, exist_ok=False)
    shard, size, lines = 0, 0, []
    for text in texts + [None]:
        if text is not None:
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            lines.append(line)
            size += len(line)
        if lines and (text is None or size >= shard_bytes):
            (drop / f"part-{shard:04d}.jsonl").write_text("".join(lines), encoding="utf-8")
            shard, size, lines = shard + 1, 0, []
    (drop / "_READY").write_text("")
    return drop


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident set now (Linux /proc), unlike the high-water mark of `peak_rss_mb`."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measured(fn: Callable[..., dict[str, Any]], args: tuple) -> dict[str, Any]:
    before = rss_mb()  # interpreter + imports, before the phase does any work
    result = fn(*args)
    return result | {"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `fn(*args)` in a fresh spawned process; return its result plus that process's own peak RSS.

    Why a fresh process per phase: a high-water mark never goes down, so phases sharing a process (or read
    together through RUSAGE_CHILDREN, the maximum over every child ever waited for) would hide each other's peak.
    `fn` must be a module-level function returning a picklable dict.
    """
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measured, (fn, args))


def latency_summary(seconds: list[float] | np.ndarray, items_per_call: int = 1) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds, and items per second at the median."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {
        "calls": int(ms.size),
        "p50_ms": round(p50, 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "items_per_s_at_p50": round(items_per_call / (p50 / 1e3), 1),
    }


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the figures depend on: cores, CPU model, memory, Python and the versions of `packages`."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(pages / 1e9, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work on the machine skews timings
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {name: metadata.version(name) for name in packages},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.md` under `out_dir`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path, md_path


def append_result(path: str | Path, row: dict[str, Any]) -> None:
    """Print one result as a JSON line and append it to `path` (a .jsonl that keeps every run's row)."""
    line = json.dumps(row)
    print(line)
    with open(path, "a") as f:
        f.write(line + "\n")


@contextmanager
def timed(store: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to `store[key]` (perf_counter)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start
