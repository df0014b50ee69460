"""Bytes read per file, and CPU seconds, for what ingest reads before tokenizing: `hash_drop` then a `DropScan`.

    PYTHONPATH=. python benchmarks/ingest_passes.py [--mb 8] [--work DIR] [--out DIR] [--name ingest_passes]

One local drop of real text (common.real_documents), one file of about --mb MB per format: .jsonl, .jsonl.gz,
.jsonl.zst, a .txt document (max_document_bytes raised to hold it) and a two-column parquet file. Every byte a file
object of the drop returns is counted (an io.FileIO subclass behind each open). Run it against another checkout
(its PYTHONPATH) to compare: it uses only the public LocalSource / hash_drop / DropScan.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, markdown_table, real_documents, write_results  # noqa: E402

from components.ingest.drops import DropScan, LocalSource, hash_drop  # noqa: E402


class CountingFile(io.FileIO):
    counts: Counter = Counter()

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer) or 0
        self.counts[Path(self.name).name] += n
        return n


def write_files(drop: Path, mb: float) -> dict[str, int]:
    texts, _ = real_documents(int(5 * mb * 1e6), max_doc_bytes=4_000)
    k = len(texts) // 5
    part = [texts[i * k : (i + 1) * k] for i in range(5)]
    lines = [b"".join(json.dumps({"text": t}).encode() + b"\n" for t in p) for p in part[:3]]
    drop.mkdir(parents=True)
    (drop / "a.jsonl").write_bytes(lines[0])
    (drop / "b.jsonl.gz").write_bytes(gzip.compress(lines[1]))
    (drop / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines[2]))
    (drop / "d.txt").write_text("".join(part[3]), encoding="utf-8")
    pq.write_table(pa.table({"text": part[4], "origin": [t[::-1] for t in part[4]]}), drop / "e.parquet")
    (drop / "_READY").write_bytes(b"")
    return {p.name: p.stat().st_size for p in drop.iterdir() if p.name != "_READY"}


def counted_source(root: Path) -> LocalSource:
    source, original = LocalSource(root), LocalSource.opener

    def opener(drop_id: str, name: str):
        open_file, size = original(source, drop_id, name)
        with open_file() as file:
            path = file.name
        return (lambda: io.BufferedReader(CountingFile(path))), size

    source.opener = opener
    return source


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="ingest_passes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work))
    sizes = write_files(work / "d1", args.mb)
    source = counted_source(work)
    steps = {}
    for step in ("hash_drop", "scan"):
        wall, cpu = time.perf_counter(), time.process_time()
        if step == "hash_drop":
            digest = hash_drop(source, "d1")
        else:
            scan = DropScan(source, "d1", 20_000_000)
            n_docs = sum(1 for _ in scan.documents())
            assert scan.contents.content_hash == digest and not scan.contents.issues, scan.contents.issues[:3]
        steps[step] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    reads = {name: round(CountingFile.counts[name] / size, 3) for name, size in sorted(sizes.items())}
    payload = {
        "machine": machine_info(("pyarrow",)),
        "load_avg": os.getloadavg(),
        "sizes": sizes,
        "reads_per_size": reads,
        "documents": n_docs,
        "steps": steps,
    }
    rows = [[name, f"{sizes[name]:,}", reads[name]] for name in sorted(sizes)]
    md = (
        f"# Bytes read per file by hash_drop + DropScan ({args.name})\n\n"
        + markdown_table(["file", "bytes", "bytes read / size"], rows)
        + "\n\n"
        + markdown_table(["step", "wall s", "CPU s"], [[k, v["wall_s"], v["cpu_s"]] for k, v in steps.items()])
        + f"\n\nload average {payload['load_avg']}\n"
    )
    write_results(args.out, args.name, payload, md)
    print(md)


if __name__ == "__main__":
    main()
