"""Test helpers: build drops from real text on this machine, read a memory's state."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.core.config import Settings, load_settings
from tests.conftest import STDLIB, real_texts

LICENSES = Path("/usr/share/common-licenses")


def settings_for(home: Path, **env_like) -> Settings:
    """Small, fast settings with all state under `home`."""
    overrides = {
        "ingest.context_length": 64,
        "ingest.clusters_per_drop": 2,
        "ingest.min_holdout_sequences": 2,
    } | env_like
    s = load_settings(None, **overrides)
    s.home = home
    return s


def python_docs(n: int = 12, offset: int = 0) -> list[str]:
    return real_texts("*.py", n + offset)[offset:]


def license_docs(n: int = 4) -> list[str]:
    return real_texts("*", n, root=LICENSES)


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def parquet(texts: list[str], path: Path) -> None:
    pq.write_table(pa.table({"text": texts}), path)


def make_drop(root: Path, name: str, files: dict[str, bytes | str], ready: bool = True) -> Path:
    drop = root / name
    drop.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = drop / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    if ready:
        (drop / "_READY").write_text("")
    return drop


def three_drops(root: Path) -> list[Path]:
    """Three small drops of different kinds of real text, one per format."""
    a = make_drop(root, "d1-code", {"code.jsonl": jsonl(python_docs(10))})
    b = make_drop(root, "d2-licenses", {f"l{i}.txt": t for i, t in enumerate(license_docs(4))})
    c = root / "d3-docs"
    c.mkdir(parents=True)
    parquet(python_docs(8, offset=30), c / "part-0.parquet")
    (c / "_READY").write_text("")
    return [a, b, c]


def stdlib_source(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")
