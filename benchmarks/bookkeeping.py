"""Bookkeeping against memory size (issue 11 item 3): dedup lookup, refresh planning and the lock, indexed vs scanned.

One memory of real text drops (benchmarks/common.py; documents cut at line ends into pieces of at most
`--doc-bytes`, so a drop holds many documents) grows through `--sizes` drops; at each size:
* dedup: which documents of a new drop (half of them repeats of stored ones) the memory already holds, through
  the BTREE index on documents.doc_hash (`documents.search`: `doc_hash IN (...)` lookups of the new hashes)
  against the old full scan of the table (`documents.scan`);
* plan: the cluster arms over every past drop and the newest drop's train rows, from the drop records
  (`drop_indexes` + `indexed_arms`, `replay.arms: cluster`) against the scan (`Memory.index` + `build_arms` +
  `new_rows`);
* lock: `build_manifest` from the row digests stored in the drop records, against re-hashing every row
  (`drop_digests`, what `amr memory lock --verify` does).
Each figure is the median of `--repeats` calls on a warm process (the OS page cache holds the files), wall and
CPU (process) seconds.

The dedup lookup depends on the documents table alone, which grows by ~80 bytes per document: `--index-documents`
grows one further (no sequences) to millions of documents through the commit path's own call
(`documents.append`: rows, then the index segment), `--index-drop-docs` per drop; its hashes are sha256 of real
text lines numbered (the table holds only hashes). It times that call (mean over the drops appended since the
previous size: index merges included), and the lookup of a new drop's hashes, half of them stored, for a drop of
`--index-drop-docs` documents and one of ~100.

    .venv/bin/python benchmarks/bookkeeping.py [--drop-bytes 200000] [--doc-bytes 2000] [--sizes 1 10 100]
        [--index-documents 10000 100000 1000000] [--index-drop-docs 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import lancedb
from common import machine_info, markdown_table, real_documents, write_drop, write_results

from components.adapters import documents as doc_index
from components.adapters.manifest import build_manifest, drop_digests
from components.adapters.memory import Memory
from components.core.config import load_settings
from components.core.packing import doc_hash
from components.core.replay import build_arms
from components.ingest import ingest_source
from components.training.planner import indexed_arms, new_rows


def median_s(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def pieces(docs: list[str], size: int) -> list[str]:
    """The documents cut at line ends into pieces of at most about `size` bytes (real text, many documents)."""
    out: list[str] = []
    for doc in docs:
        piece: list[str] = []
        for line in doc.splitlines(keepends=True):
            piece.append(line)
            if sum(len(p) for p in piece) >= size:
                out.append("".join(piece))
                piece = []
        if piece:
            out.append("".join(piece))
    return [p for p in dict.fromkeys(out) if p.strip()]  # distinct, non-blank


def measure(memory: Memory, new_hashes: list[str], repeats: int) -> dict:
    drops = memory.ingested()
    past, new = drops[:-1], drops[-1]
    live = {r.drop_id: r.version for r in memory.live()}
    dataset = memory.db.open_table(doc_index.DOCUMENTS).to_lance()
    wanted = sorted(set(new_hashes))

    def indexed():
        idx = memory.drop_indexes(drops)
        return indexed_arms(idx, past, "cluster"), idx[new].train()

    def scanned():
        index = memory.index(memory.version)
        return build_arms(index, past, "cluster"), new_rows(index, new)

    hits_index, hits_scan = {}, {}
    doc_index.search(dataset, live, wanted, hits_index)
    doc_index.scan(dataset, live, wanted, hits_scan)
    assert hits_index == hits_scan and hits_index, "the index and the scan disagree"
    assert [a.size for a in indexed()[0].row_ids] == [len(a) for a in scanned()[0].row_ids]
    out = {
        "drops": len(drops),
        "rows": sum(r.sequences + r.holdout_sequences for r in memory.live()),
        "documents": dataset.count_rows(),
        "index_segments": sum(1 for i in dataset.list_indices() if i["name"] == doc_index.INDEX),
        "arms": len(indexed()[0].keys),
        "new_hashes": len(wanted),
        "hits": len(hits_index),
    }
    for name, fn in (
        ("dedup_index", lambda: doc_index.search(dataset, live, wanted, {})),
        ("dedup_scan", lambda: doc_index.scan(dataset, live, wanted, {})),
        ("plan_indexed", indexed),
        ("plan_scan", scanned),
        ("lock_stored", lambda: build_manifest(memory)),
        ("lock_rehash", lambda: drop_digests(memory, memory.version)),
    ):
        out[f"{name}_s"], out[f"{name}_cpu_s"] = median_s(fn, repeats)
    return out


def index_scale(sizes: list[int], per_drop: int, repeats: int, tmp: Path) -> list[dict]:
    """The documents table alone, grown to each of `sizes` documents (see the module docstring)."""
    lines = [ln for doc in real_documents(4_000_000)[0] for ln in doc.splitlines() if ln.strip()]
    hashes = [hashlib.sha256(f"{i}:{lines[i % len(lines)]}".encode()).hexdigest() for i in range(max(sizes) + per_drop)]
    db, out, stored, version = lancedb.connect(str(tmp / "index-only")), [], 0, 1
    spent = [0.0, 0.0, 0]  # wall, CPU seconds and count of the appends since the previous size
    for size in sorted(sizes):
        while stored < size:
            n = min(per_drop, size - stored)
            version += 1
            rows = doc_index.rows(f"d{version}", hashes[stored : stored + n], [False] * n)
            wall, cpu = time.perf_counter(), time.process_time()
            doc_index.append(db, rows, version)
            spent = [spent[0] + time.perf_counter() - wall, spent[1] + time.process_time() - cpu, spent[2] + 1]
            stored += n
        append, spent = (spent[0] / max(spent[2], 1), spent[1] / max(spent[2], 1)), [0.0, 0.0, 0]
        live = {f"d{v}": v for v in range(2, version + 1)}
        wanted = sorted(hashes[stored : stored + per_drop // 2] + hashes[0 : stored : max(1, 2 * stored // per_drop)])
        dataset = db.open_table(doc_index.DOCUMENTS).to_lance()
        hits_index, hits_scan = {}, {}
        doc_index.search(dataset, live, wanted, hits_index)
        doc_index.scan(dataset, live, wanted, hits_scan)
        assert hits_index == hits_scan and hits_index, "the index and the scan disagree"
        row = {"documents": stored, "drops": version - 1, "new_hashes": len(wanted), "hits": len(hits_index)}
        row["index_segments"] = sum(1 for i in dataset.list_indices() if i["name"] == doc_index.INDEX)
        row["append_s"], row["append_cpu_s"] = append
        small = wanted[:: max(1, len(wanted) // 100)]  # a drop of ~100 documents, about half of them stored
        for name, fn in (
            ("dedup_index_100", lambda d=dataset, lv=live, w=small: doc_index.search(d, lv, w, {})),
            ("dedup_index", lambda d=dataset, lv=live, w=wanted: doc_index.search(d, lv, w, {})),
            ("dedup_scan", lambda d=dataset, lv=live, w=wanted: doc_index.scan(d, lv, w, {})),
        ):
            row[f"{name}_s"], row[f"{name}_cpu_s"] = median_s(fn, repeats)
        out.append(row)
        print(row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop-bytes", type=int, default=200_000)
    ap.add_argument("--doc-bytes", type=int, default=2_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--index-documents", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--index-drop-docs", type=int, default=10_000)
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    docs = pieces(real_documents(args.drop_bytes * (sizes[-1] + 1))[0], args.doc_bytes)
    per = max(1, len(docs) // (sizes[-1] + 1))
    probe = docs[sizes[-1] * per :][: per // 2]  # never ingested; the other half repeats stored documents
    results, load = [], [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AMR_HOME"] = str(Path(tmp) / "home")
        src = Path(tmp) / "drops"
        done = 0
        for size in sizes:
            for i in range(done, size):
                write_drop(src, f"d{i:03d}", docs[i * per : (i + 1) * per])
            done = size
            ingest_source(load_settings(None), str(src), show_progress=False)
            memory = Memory.open(load_settings(None))
            repeats = [docs[j] for j in range(0, size * per, max(1, size * per // (per - len(probe))))]
            results.append(measure(memory, [doc_hash(d) for d in probe + repeats], args.repeats))
            load.append(os.getloadavg())
            print(results[-1], flush=True)
        scale = index_scale(args.index_documents, args.index_drop_docs, args.repeats, Path(tmp))
        load.append(os.getloadavg())
    write(args, results, scale, load)


def write(args, results: list[dict], scale: list[dict], load: list) -> None:
    def ms(r: dict, key: str) -> str:
        return f"{r[key + '_s'] * 1000:.1f} ({r[key + '_cpu_s'] * 1000:.1f})"

    keys = ("dedup_index", "dedup_scan", "plan_indexed", "plan_scan", "lock_stored", "lock_rehash")
    rows = [
        [r["drops"], r["rows"], r["documents"], r["index_segments"], r["arms"]] + [ms(r, k) for k in keys]
        for r in results
    ]
    headers = ["drops", "rows", "documents", "index segments", "cluster arms"] + [
        f"{k.replace('_', ', ')} (ms)" for k in keys
    ]
    cmd = (
        f"python benchmarks/bookkeeping.py --drop-bytes {args.drop_bytes} --doc-bytes {args.doc_bytes} "
        f"--sizes {' '.join(map(str, sorted(args.sizes)))} --repeats {args.repeats} "
        f"--index-documents {' '.join(map(str, args.index_documents))} --index-drop-docs {args.index_drop_docs}"
    )
    peak = max(x[0] for x in load)
    md = f"# Bookkeeping against memory size\n\n`{cmd}`: median wall ms (CPU ms) of {args.repeats} calls; "
    md += f"1-minute load average {min(x[0] for x in load):.2f}-{peak:.2f} during the run\n\n"
    md += markdown_table(headers, rows)
    if scale:
        md += "\n\nThe documents table alone (dedup lookup of a new drop's hashes; the commit's append + index, "
        md += "mean per drop):\n\n"
        keys = ("append", "dedup_index_100", "dedup_index", "dedup_scan")
        md += markdown_table(
            ["documents", "drops", "index segments", "new hashes"] + [f"{k.replace('_', ', ')} (ms)" for k in keys],
            [
                [r["documents"], r["drops"], r["index_segments"], r["new_hashes"]] + [ms(r, k) for k in keys]
                for r in scale
            ],
        )
    payload = {
        "command": cmd,
        "results": results,
        "documents_table": scale,
        "load_average_1_5_15": [[round(v, 2) for v in x] for x in load],
        "machine": machine_info(("lancedb", "pylance", "pyarrow")),
    }
    write_results(Path(__file__).parent / "results", "bookkeeping", payload, md)


if __name__ == "__main__":
    main()
