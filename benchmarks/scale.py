"""The memory at scale (issue 11 items 2 and 3): replay takes and bookkeeping as drops pile up to 1e7+ rows.

One memory is built by real drop commits (`Memory.commit_drop`, records, tags, digests and row-id indexes as ingest
writes them) of `--rows-per-drop` synthetic sequences each (random tokens: tokenizing 1e7 sequences of real text
would take hours on this machine and the take does not depend on the values), up to the largest of `--drops`.
* bookkeeping, after each checkpoint's commit: the lock (`build_manifest`, from stored digests), its proof
  (`prove`), and planning a refresh (`drop_indexes` + `indexed_arms` + the new drop's rows), median of `--repeats`;
  and the time of that one drop commit;
* take, as written: `Memory.take` of `--take-rows` random row ids (uniform over the whole memory version) at each
  checkpoint's memory version, `--take-calls` calls after 30 warm-up calls (p50 / p95 / mean);
* take, compacted: the memory rolled back to each checkpoint's drops (`set_drops`), compacted
  (`Memory.compact`, `--rows-per-fragment`), and the same takes again; then rolled forward.
* format (`--format-rows`): pylance alone, one fragment, the same take in Lance file format 2.1 and 2.2.
Every directory is made under `--scratch` and deleted at the end. CPU seconds are reported beside wall seconds.

    python benchmarks/scale.py --drops 1 10 100 300 --rows-per-drop 33334 --context-length 64 \
        --scratch /work/scratch/compact/scale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
from common import latency_summary, machine_info, markdown_table, write_results

from components.adapters.manifest import build_manifest, prove, rows_digest
from components.adapters.memory import Memory
from components.adapters.records import DropRecord, sequences_schema
from components.training.planner import indexed_arms

VOCAB = 32000


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


def drop_rows(meta: dict, drop_id: str, n: int, seed: int) -> tuple[pa.Table, DropRecord]:
    """n rows in ingest's write order (train rows, then 10% holdout) and the record ingest would write."""
    rng = np.random.default_rng(seed)
    width, holdout = int(meta["context_length"]), max(1, n // 10)
    train = n - holdout
    docs = [hashlib.sha256(f"{drop_id}/{i}".encode()).hexdigest() for i in range(n // 8 + 1)]
    rows = pa.table(
        {
            "drop_id": [drop_id] * n,
            "split": ["train"] * train + ["holdout"] * holdout,
            "position": np.r_[np.arange(train), np.arange(holdout)].astype(np.int32),
            "tokens": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.integers(0, VOCAB, n * width, dtype=np.int32)), width
            ),
            "length": np.full(n, width, np.int32),
            "cluster": np.zeros(n, np.int32),
            "doc_hash": [docs[i // 8] for i in range(n)],
        },
        schema=sequences_schema(meta),
    )
    digest = rows_digest(rows.sort_by([("split", "ascending"), ("position", "ascending")]))
    rec = DropRecord(drop_id, "ingested", content_hash=drop_id, documents=len(docs), sequences=train)
    rec.holdout_sequences, rec.tokens, rec.rows_hash, rec.arm_rows = holdout, n * width, digest, json.dumps([train])
    return rows, rec


def take_summary(memory: Memory, version: int, rows: int, args) -> dict:
    rng = np.random.default_rng(7)
    for _ in range(30):  # warm-up: the version's manifest and the page cache
        memory.take(rng.integers(0, rows, args.take_rows), version)
    seconds, cpu = [], time.process_time()
    for _ in range(args.take_calls):
        ids = rng.integers(0, rows, args.take_rows)
        start = time.perf_counter()
        memory.take(ids, version)
        seconds.append(time.perf_counter() - start)
    fragments = len(memory.table(version).to_lance().get_fragments())
    out = latency_summary(seconds) | {"fragments": fragments, "cpu_s": round(time.process_time() - cpu, 2)}
    return out | {"wall_s": round(sum(seconds), 2)}


def bookkeeping(memory: Memory, commit_s: float, repeats: int) -> dict:
    drops = memory.ingested()

    def plan():
        idx = memory.drop_indexes(drops)
        return indexed_arms(idx, drops[:-1], "drop"), idx[drops[-1]].train()

    lock = build_manifest(memory)
    return {
        "lock_ms": median_ms(lambda: build_manifest(memory), repeats),
        "prove_ms": median_ms(lambda: prove(memory, lock), repeats),
        "plan_ms": median_ms(plan, repeats),
        "commit_ms": round(commit_s * 1e3, 1),
    }


def build(memory: Memory, meta: dict, args) -> tuple[list[dict], dict[int, int]]:
    """Commit drops up to the largest checkpoint; bookkeeping at each; returns it and checkpoint -> version."""
    results, versions = [], {}
    for i in range(max(args.drops)):
        rows, rec = drop_rows(meta, f"d{i:04d}", args.rows_per_drop, i)
        start = time.perf_counter()
        with memory.writer() as mem:
            mem.commit_drop(rows, rec, meta)
        commit_s = time.perf_counter() - start
        if i + 1 in args.drops:
            versions[i + 1] = memory.version
            total = sum(r.sequences + r.holdout_sequences for r in memory.live())
            results.append({"drops": i + 1, "rows": total} | bookkeeping(memory, commit_s, args.repeats))
            print(results[-1], flush=True)
    return results, versions


def takes(memory: Memory, versions: dict[int, int], args) -> list[dict]:
    records = {r.drop_id: r.version for r in memory.live()}
    out = []
    for drops, version in versions.items():
        rows = drops * args.rows_per_drop
        written = take_summary(memory, version, rows, args)
        with memory.writer() as mem:
            mem.set_drops({d: v for d, v in records.items() if v <= version}, "benchmark")
        start, cpu = time.perf_counter(), time.process_time()
        report = memory.compact(args.rows_per_fragment)
        compact_s, compact_cpu = time.perf_counter() - start, time.process_time() - cpu
        compacted = take_summary(memory, version, rows, args)
        out.append(
            {"drops": drops, "rows": rows, "as_written": written, "compacted": compacted}
            | {"compact_s": round(compact_s, 1), "compact_cpu_s": round(compact_cpu, 1), "note": report.note}
        )
        print(out[-1], flush=True)
    with memory.writer() as mem:
        mem.set_drops(records, "benchmark: forward")
    return out


def file_formats(scratch: Path, meta: dict, args) -> list[dict]:
    rows, _ = drop_rows(meta, "f", args.format_rows, 1)
    out = []
    for version in ("2.1", "2.2"):
        ds = lance.write_dataset(rows, str(scratch / f"format-{version}"), data_storage_version=version)
        rng, seconds = np.random.default_rng(3), []
        for call in range(args.take_calls + 10):
            ids = np.sort(rng.choice(args.format_rows, args.take_rows, replace=False))
            start = time.perf_counter()
            ds.take(ids.tolist(), columns=["tokens", "length"])
            if call >= 10:
                seconds.append(time.perf_counter() - start)
        out.append({"file_version": version, "rows": args.format_rows} | latency_summary(seconds))
        print(out[-1], flush=True)
    return out


def markdown(payload: dict) -> str:
    md = f"# The memory at scale\n\n`{payload['command']}`\n\nLoad average (1, 5, 15 min) at the end: "
    md += f"{payload['machine']['load_average_1_5_15']}; wall {payload['wall_s']} s, CPU {payload['cpu_s']} s.\n\n"
    md += "## Memory.take of 64 random rows (ms), as written and compacted\n\n"
    rows = [
        [t["drops"], t["rows"], t["as_written"]["fragments"], t["as_written"]["p50_ms"], t["as_written"]["p95_ms"]]
        + [t["compacted"]["fragments"], t["compacted"]["p50_ms"], t["compacted"]["p95_ms"], t["compact_s"]]
        for t in payload["take"]
    ]
    heads = ["drops", "rows", "fragments", "p50 written", "p95 written", "fragments", "p50 compacted"]
    md += markdown_table([*heads, "p95 compacted", "compaction (s)"], rows) + "\n\n"
    md += "## Bookkeeping against memory size (ms, median)\n\n"
    rows = [[b["drops"], b["rows"], b["lock_ms"], b["prove_ms"], b["plan_ms"], b["commit_ms"]] for b in payload["book"]]
    md += markdown_table(["drops", "rows", "lock", "proof", "planning (drop arms)", "one commit"], rows) + "\n\n"
    if payload["format"]:
        md += "## Lance file format, pylance alone, one fragment (ms)\n\n"
        rows = [[f["file_version"], f["rows"], f["p50_ms"], f["p95_ms"]] for f in payload["format"]]
        md += markdown_table(["file version", "rows", "p50", "p95"], rows) + "\n"
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drops", type=int, nargs="+", default=[1, 10, 100, 300])
    ap.add_argument("--rows-per-drop", type=int, default=33_334)
    ap.add_argument("--context-length", type=int, default=64)
    ap.add_argument("--rows-per-fragment", type=int, default=4_194_304)
    ap.add_argument("--take-rows", type=int, default=64)
    ap.add_argument("--take-calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--format-rows", type=int, default=1_000_000, help="0: skip the file format comparison")
    ap.add_argument("--scratch", type=Path, required=True, help="a directory outside any repository")
    ap.add_argument("--out", default="scale")
    args = ap.parse_args()
    meta = {"tokenizer": "synthetic", "vocab_size": VOCAB, "eos_id": 0, "pad_id": 0}
    meta["context_length"] = args.context_length
    scratch = args.scratch / f"run-{os.getpid()}"
    start, cpu = time.perf_counter(), time.process_time()
    try:
        memory = Memory(str(scratch / "memory"), scratch / "locks")
        book, versions = build(memory, meta, args)
        take = takes(memory, versions, args)
        formats = file_formats(scratch, meta, args) if args.format_rows else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cmd = "python benchmarks/scale.py " + " ".join(
        [f"--drops {' '.join(map(str, args.drops))} --rows-per-drop {args.rows_per_drop}"]
        + [f"--context-length {args.context_length} --rows-per-fragment {args.rows_per_fragment}"]
        + [f"--take-calls {args.take_calls} --format-rows {args.format_rows}"]
    )
    payload = {"command": cmd, "take": take, "book": book, "format": formats}
    payload |= {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1)}
    payload["machine"] = machine_info(("lancedb", "pylance", "pyarrow"))
    write_results(Path(__file__).parent / "results", args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
