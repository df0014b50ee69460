"""Bookkeeping against memory size (issue 11 item 3): the lock file and refresh planning, stored vs rescanned.

For a memory of 1, 5 and 20 drops of real text (benchmarks/common.py), each a fresh ingest:
* lock: `build_manifest` from the row digests stored in the drop records, against the old way (re-hash every row
  of every drop: `drop_digests`, still what `amr memory lock --verify` and `amr memory --verify` do);
* plan: the replay arms over every past drop and the newest drop's train rows, from the drops' row-id indexes
  (`drop_indexes` + `indexed_arms`), against the old scan (`Memory.index` + `build_arms` + `new_rows`).
Times are the median of `--repeats` calls on a warm process (the OS page cache holds the files).

    .venv/bin/python benchmarks/bookkeeping.py [--drop-bytes 400000] [--sizes 1 5 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import machine_info, markdown_table, real_documents, write_drop, write_results

from components.adapters.manifest import build_manifest, drop_digests
from components.adapters.memory import Memory
from components.core.config import load_settings
from components.core.replay import build_arms
from components.ingest import ingest_source
from components.training.planner import indexed_arms, new_rows


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(memory: Memory, repeats: int) -> dict:
    drops = memory.ingested()
    past, new = drops[:-1], drops[-1]

    def indexed():
        idx = memory.drop_indexes(drops)
        return indexed_arms(idx, past, "drop"), idx[new].train()

    def scanned():
        index = memory.index(memory.version)
        return build_arms(index, past, "drop"), new_rows(index, new)

    return {
        "drops": len(drops),
        "rows": sum(r.sequences + r.holdout_sequences for r in memory.live()),
        "lock_stored_s": median_s(lambda: build_manifest(memory), repeats),
        "lock_rehash_s": median_s(lambda: drop_digests(memory, memory.version), repeats),
        "plan_indexed_s": median_s(indexed, repeats),
        "plan_scan_s": median_s(scanned, repeats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop-bytes", type=int, default=400_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    docs, _ = real_documents(args.drop_bytes * max(args.sizes))
    per = max(1, len(docs) // max(args.sizes))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            os.environ["AMR_HOME"] = str(Path(tmp) / f"home-{size}")
            src = Path(tmp) / f"drops-{size}"
            for i in range(size):
                write_drop(src, f"d{i:03d}", docs[i * per : (i + 1) * per])
            ingest_source(load_settings(None), str(src), show_progress=False)
            results.append(measure(Memory.open(load_settings(None)), args.repeats))
            print(results[-1], flush=True)
    rows = [
        [r["drops"], r["rows"]]
        + [f"{r[k] * 1000:.1f}" for k in ("lock_stored_s", "lock_rehash_s", "plan_indexed_s", "plan_scan_s")]
        for r in results
    ]
    headers = ["drops", "rows", "lock, stored (ms)", "lock, re-hash (ms)", "plan, indexed (ms)", "plan, scan (ms)"]
    cmd = f"python benchmarks/bookkeeping.py --drop-bytes {args.drop_bytes} --sizes {' '.join(map(str, args.sizes))}"
    md = f"# Bookkeeping against memory size\n\n`{cmd}`, median of {args.repeats} calls\n\n"
    md += markdown_table(headers, rows)
    payload = {"command": cmd, "results": results, "machine": machine_info(("lancedb", "pylance", "pyarrow"))}
    write_results(Path(__file__).parent / "results", "bookkeeping", payload, md)


if __name__ == "__main__":
    main()
