"""Demo drops built at run time from real text on this machine, then the pipeline over them.

Four drops of visibly different kinds of text, each in another of the accepted formats, so the demo also
exercises every reader:

* `01-python-src`   Python standard-library modules, one JSONL document per module
* `02-python-docs`  the Python documentation topics (pydoc_data), a parquet `text` column
* `03-licenses`     the licence texts under /usr/share/common-licenses, one plain-text file each
* `04-c-headers`    C headers from /usr/include, JSONL

Sizes are capped (`budget_bytes` per drop) so the whole demo trains on a laptop CPU in minutes. The builder is
deterministic (sorted inputs), so rebuilding gives byte-identical drops and re-ingesting them writes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

STDLIB = Path(os.__file__).parent


def _files(root: Path, pattern: str) -> Iterator[Path]:
    for path in sorted(root.rglob(pattern)):
        if path.is_file() and "test" not in path.parts and "__pycache__" not in path.parts:
            yield path


def _read(paths: Iterable[Path]) -> Iterator[str]:
    for path in paths:
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def _cap(texts: Iterable[str], budget_bytes: int, max_doc: int = 20_000) -> list[str]:
    """Non-blank texts, each cut to `max_doc` characters, until `budget_bytes` are reached."""
    out, used = [], 0
    for text in texts:
        text = text[:max_doc]
        if not text.strip():
            continue
        out.append(text)
        used += len(text.encode())
        if used >= budget_bytes:
            break
    return out


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _publish(drop: Path, write) -> None:
    """Write a drop's files, then `_READY` last, as a producer must."""
    drop.mkdir(parents=True, exist_ok=True)
    write(drop)
    (drop / "_drop.json").write_text(json.dumps({"drop_id": drop.name, "source": "amr demo (local files)"}))
    (drop / "_READY").write_text("")


def _jsonl(name: str, texts: list[str]):
    def write(drop: Path) -> None:
        with open(drop / name, "w", encoding="utf-8") as fh:
            for text in texts:
                fh.write(json.dumps({"text": text}) + "\n")

    return write


def build_demo_drops(root: Path, budget_bytes: int = 400_000) -> list[Path]:
    """Create (or re-create identically) the demo drops under `root`; return their directories."""
    python_src = _cap(_read(_files(STDLIB, "*.py")), budget_bytes)
    docs = _cap(_pydoc_topics(), budget_bytes)
    licenses = _cap(_read(sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())), budget_bytes)
    headers = _cap(_read(_files(Path("/usr/include"), "*.h")), budget_bytes)

    def write_docs(drop: Path) -> None:
        pq.write_table(pa.table({"text": docs}), drop / "topics.parquet")

    def write_licenses(drop: Path) -> None:
        for i, text in enumerate(licenses):
            (drop / f"license-{i:02d}.txt").write_text(text, encoding="utf-8")

    plan = [
        ("01-python-src", _jsonl("modules.jsonl", python_src)),
        ("02-python-docs", write_docs),
        ("03-licenses", write_licenses),
        ("04-c-headers", _jsonl("headers.jsonl", headers)),
    ]
    dirs = []
    for name, write in plan:
        _publish(root / name, write)
        dirs.append(root / name)
    return dirs
