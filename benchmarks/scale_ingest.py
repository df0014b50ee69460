"""Ingest at scale (not in CI): peak RSS, MB/s and CPU seconds against drop size, and against the tokenizer alone.

    python benchmarks/scale_ingest.py [--sizes 50,200,500] [--workers 1,2] [--bpe DIR --bpe-max-mb 50] [--work DIR]
                                      [--max-memory-mb 2048] [--context-length 512] [--out DIR]
                                      [--name scale_ingest]

Drops of real text from this machine (stdlib sources, C headers, man pages, licences) re-cut into distinct
2-16 kB documents (each starts with its own number, so none is a duplicate), written as JSON lines in files of a
third of the drop each: one plain, one gzip, one zstd. So every drop holds single files far larger than the batches
ingest works in: the streaming read is what keeps memory flat.

Per size and tokenizer, each in a fresh process (its own peak RSS, its own CPU seconds):
  ingest     `ingest_source` into a fresh memory (hash, scan, tokenize into the spill, plan, cluster, commit), once
             per --workers value (ingest.workers); peak RSS and CPU seconds are those of the whole process tree
             (the ingest, the forkserver and its scan workers), sampled with psutil every 0.2 s (`tree_*` in the
             JSON; a worker's last 0.2 s of CPU can be missed), beside the ingest process's own high-water mark;
  tokenizer  `encode_batch` alone over the same documents, read back from the drop's files as a stream;
  floor      what ingest must do besides tokenizing: hash the files, parse every document, sha256 it and write
             4 bytes per token (`scan_drop` with the byte tokenizer, no commit).
Generated drops live under --work and are deleted after each size.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import zstandard
from common import TEXT_SOURCES, _measured, machine_info, markdown_table, run_isolated, write_results

from components.core.config import load_settings
from components.core.text import load_tokenizer
from components.ingest import ingest_source
from components.ingest.drops import DropScan, LocalSource, hash_drop
from components.ingest.pipeline import Bars
from components.ingest.scan import scan_drop
from components.ingest.spill import Spill

DROP = "scale"
NOTES = """Notes. The machine is shared by four sessions on 2 cores (load average 4-10 beside every row), so wall
seconds are inflated and vary from run to run; CPU seconds are the steadier figure (with workers: the ingest
process plus the forkserver and its workers, sampled). Peak RSS: the ingest process's high-water mark / the process
tree's (ingest, forkserver, workers; sampled every 0.2 s, so it can miss a short peak); ~260 MB of it are imports
before any work (`rss_before_mb`). Every row ran under the default ingest.max_memory_mb = 2048 and stayed under it.
The rows are the same for workers 1 and 2 (`rows_hash` in the JSON), and the same as before this change: main's
code gave the same rows_hash on the 50 MB drop (65.0 s wall there, against 15.4 s).

Byte path, before -> after (the previous table, same drops): 50 MB 69.4 / 18.6 s -> 15.4 / 7.4 s; 500 MB 508 /
153 s -> 98 / 40 s (5.2x wall, 3.8x CPU). A cProfile of a 20 MB drop put 16 of 19.5 s in clustering; changed:
the hashed n-gram features are counted per row from sorted bucket ids (scipy's COO->CSR sum and index sort built
the same matrix, bit for bit, at 3-4x the cost), buckets come from lookup tables when token ids are under 1,024
(2x more), the nearest center is one sparse-dense product instead of pairwise_distances_argmin (20x; not one
label different), and the row digest hashes string columns in blocks (it joined a 65-byte string per row into
one: 260 MB at 4 M rows).

The 0.5x target with the byte tokenizer is not met and cannot be: the tokenizer alone is one numpy pass over the
UTF-8 bytes (0.13 CPU s for 50 MB, 1.5 s for 500 MB), while the floor, what any ingest must do besides it (hash
every file, parse every JSON line, sha256 every document, write 4 bytes per token to the spill), takes 0.7 / 7.8
CPU s, 5x the tokenizer: an ingest doing nothing else would be at 0.2x. The rest of the 40 CPU s at 500 MB is
the k-means fit (3-4 s, fixed: 20 k sampled rows), the features of every row for the assignment, the row digest
(sha256 over 2 GB of int32 tokens), the rows built from the spill, the Lance write (2 GB) and ~2.5 s of imports
(transformers, for the ByT5 vocabulary). With the SmolLM2 BPE tokenizer the ingest runs at 0.99x (wall) / 0.82x
(CPU) of the tokenizer alone with one worker, 1.6x / 0.75x with two: met.

Workers: with the byte tokenizer the scan they share out is ~10% of the ingest (0.7 of 7.4 CPU s at 50 MB), so
they barely pay: 83 against 98 s wall at 500 MB for the same CPU, slower at 50 MB (the pool's start), and ~70-140
MB more RSS. With BPE the tokenizer is the work: two workers (one rayon thread each, so 2 x 1 threads on 2 cores,
no oversubscription) ran the 50 MB drop in 36 s against 59 s for one process (whose rayon pool already uses both
cores for encode_batch but not for reading, parsing and hashing), for 10% more CPU and ~580 MB more RSS (each worker
loads transformers and the tokenizer). A first run, before the workers' batches were capped at 256 documents and
at load 9 against 6, went the other way (194 against 118 s): on 2 shared cores the figure follows the load. A file
is the unit of work, so this drop's three equal files split 2 + 1.

2 GB (one run, byte tokenizer, workers 2: the default on 2 cores): 209 s wall, 137 CPU s, 9.8 MB/s, 3.79 M rows;
peak RSS 881 MB (ingest) / 967 MB (tree), under the 2,048 MB bound. From 500 MB to 2 GB (workers 2) the ingest's
peak grew 699 -> 881 MB: the per-document and per-row metadata, ~0.12 MB per MB of text at context_length 512,
under the 0.19 MB/MB components.ingest.limits assumes. Its floor: 28.7 CPU s against the tokenizer's 3.9.

Context 128, no per-row array but the uint16 labels (rows with context 128; workers 2; default 2,048 MB bound):
500 MB 606 / 703 MB peak RSS (ingest / tree), 95 s wall, 75 CPU s (load 5.1); 4,096 MB (4.3 G tokens, 30.3 M
train rows) 864 / 960 MB, 544 s wall, 612 CPU s, 7.5 MB/s (load 1.3). Main's code refuses that drop
(check_metadata: ~1,500 MB of metadata against 1,453 MB left; ~33.7 M rows at 40 B). An earlier 4,096 MB run at
71484f9 (labels counted by np.bincount, which widens them to 8 B a row): 930 / 997 MB, 948 s wall at load 3-6.
Same rows_hash at 500 MB from both (0e5c7092), and 40cec0db at 4,096 MB from both."""


def documents(target_bytes: int):
    """Distinct documents of 2-16 kB cut from real text, cycling over the sources, about `target_bytes` in all."""
    n = size = 0
    while True:
        for kind, stream in TEXT_SOURCES.items():
            for _, raw in stream():
                text = raw.decode("utf-8", errors="ignore").replace("\0", "")
                at = 0
                while at < len(text) - 2048:
                    cut = 2048 + (n * 2654435761) % 14336
                    doc = f"[{kind} {n}]\n" + text[at : at + cut]
                    yield doc
                    n, at, size = n + 1, at + cut, size + len(doc)
                    if size >= target_bytes:
                        return


def write_drop(root: Path, mb: int) -> Path:
    drop = root / DROP
    drop.mkdir(parents=True)
    third = (mb << 20) // 3
    opens = [
        lambda: open(drop / "part-0.jsonl", "wb"),
        lambda: gzip.open(drop / "part-1.jsonl.gz", "wb", compresslevel=3),
        lambda: zstandard.ZstdCompressor(level=3).stream_writer(open(drop / "part-2.jsonl.zst", "wb")),
    ]
    out, index, written = opens[0](), 0, 0
    for doc in documents(mb << 20):
        line = (json.dumps({"text": doc}) + "\n").encode()
        out.write(line)
        written += len(line)
        if written >= third * (index + 1) and index < 2:
            out.close()
            index += 1
            out = opens[index]()
    out.close()
    (drop / "_READY").write_text("")
    return drop


def settings(home: str, tokenizer: str, workers: int = 1, max_memory_mb: int = 2048, context_length: int = 512):
    s = load_settings(None, **{"ingest.tokenizer": tokenizer, "ingest.context_length": context_length})
    s.ingest.workers, s.ingest.max_memory_mb = workers, max_memory_mb
    s.home = Path(home)
    return s


class TreeSampler(threading.Thread):
    """Peak RSS summed over this process and its descendants, and each descendant's last CPU seconds."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.peak_mb, self.cpu, self.stop = every, 0.0, {}, threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(self.every):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                    if proc.pid != me.pid:
                        t = proc.cpu_times()
                        self.cpu[proc.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def phase_ingest(root: str, home: str, tokenizer: str, workers: int, max_memory_mb: int, context_length: int) -> dict:
    sampler = TreeSampler()
    sampler.start()
    cpu, t0 = _cpu(), time.perf_counter()
    cfg = settings(home, tokenizer, workers, max_memory_mb, context_length)
    [result] = ingest_source(cfg, root, show_progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu
    sampler.stop.set()
    sampler.join()
    assert result.status == "ingested", result.message
    rec = result.record
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "tree_cpu_s": round(cpu + sum(sampler.cpu.values()), 2),
        "tree_peak_rss_mb": round(sampler.peak_mb, 1),
        "sequences": rec.sequences,
        "rows_hash": rec.rows_hash,
    }


def phase_tokenizer(root: str, tokenizer: str) -> dict:
    tok = load_tokenizer(tokenizer)
    docs = DropScan(LocalSource(root), DROP, 1 << 24).documents()
    cpu, wall, tokens, batch = 0.0, 0.0, 0, []
    for doc in itertools.chain(docs, [None]):  # streamed; the read is not timed: only encode_batch is
        if doc is not None:
            batch.append(doc.text)
        if batch and (doc is None or len(batch) == 256):
            c, t = _cpu(), time.perf_counter()
            tokens += sum(len(x) for x in tok.encode_batch(batch))
            cpu, wall, batch = cpu + _cpu() - c, wall + time.perf_counter() - t, []
    return {"wall_s": wall, "cpu_s": cpu, "tokens": tokens}


def phase_floor(root: str, home: str) -> dict:
    s = settings(home, "byte")
    tok = load_tokenizer("byte")
    cpu, t0 = _cpu(), time.perf_counter()
    ref = LocalSource(root).list_drops()[0]
    hash_drop(LocalSource(root), DROP)
    with Spill(s.home, DROP) as spill, Bars(False) as bars:
        scanned = scan_drop(LocalSource(root), ref, s, tok, bars, spill)
    assert scanned.contents.ok
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - cpu}


def run_isolated_tree(fn, *args) -> dict:
    """`run_isolated` in a process that may start processes of its own (a Pool's workers are daemons, which may
    not): the ingest's scan workers."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(_measured, fn, args).result()


def run_size(
    work: Path, mb: int, bpe: str | None, bpe_max_mb: int, workers: list[int], max_memory_mb: int, context_length: int
) -> list:
    root = work / f"drops-{mb}"
    shutil.rmtree(root, ignore_errors=True)
    drop = write_drop(root, mb)
    size_mb = sum(p.stat().st_size for p in drop.iterdir()) / 2**20
    text_mb = mb  # the documents' UTF-8 bytes (before JSON escaping and compression)
    rows = []
    tokenizers = ["byte"] + ([bpe] if bpe and mb <= bpe_max_mb else [])
    for tokenizer in tokenizers:
        home = work / f"home-{mb}"
        alone = run_isolated(phase_tokenizer, str(root), tokenizer)
        floor = None
        if tokenizer == "byte":
            shutil.rmtree(home, ignore_errors=True)
            floor = run_isolated(phase_floor, str(root), str(home))
        for w in workers:
            shutil.rmtree(home, ignore_errors=True)
            load = os.getloadavg()
            ingest = run_isolated_tree(phase_ingest, str(root), str(home), tokenizer, w, max_memory_mb, context_length)
            row = {
                "text_mb": text_mb,
                "files_mb": round(size_mb, 1),
                "tokenizer": "byte" if tokenizer == "byte" else "SmolLM2 BPE",
                "workers": w,
                "max_memory_mb": max_memory_mb,
                "context_length": context_length,
                "load_avg_1m": round(load[0], 2),
                "load_avg_1m_after": round(os.getloadavg()[0], 2),
                "ingest": ingest,
                "tokenizer_alone": alone,
                "ingest_mb_s": round(text_mb / ingest["wall_s"], 2),
                "tokenizer_mb_s": round(text_mb / alone["wall_s"], 2),
                "ratio_wall": round(alone["wall_s"] / ingest["wall_s"], 3),
                "ratio_cpu": round(alone["cpu_s"] / ingest["tree_cpu_s"], 3),
            }
            if floor is not None:
                row["floor"] = floor
                row["floor_mb_s"] = round(text_mb / floor["wall_s"], 2)
            shutil.rmtree(home, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    table = [
        [
            r["text_mb"],
            r["tokenizer"],
            r.get("context_length", 512),
            r.get("workers", 1),
            f"{r['ingest']['peak_rss_mb']} / {r['ingest'].get('tree_peak_rss_mb', '-')}",
            r["ingest_mb_s"],
            f"{r['ingest']['wall_s']:.1f} / {r['ingest'].get('tree_cpu_s', r['ingest']['cpu_s']):.1f}",
            r["tokenizer_mb_s"],
            f"{r['ratio_wall']} / {r['ratio_cpu']}",
            r.get("floor_mb_s", "-"),
            r["load_avg_1m"],
        ]
        for r in rows
    ]
    headers = ["MB", "tokenizer", "context", "workers", "peak RSS MB (ingest / tree)", "ingest MB/s", "wall / CPU s"]
    headers += ["tok. alone MB/s", "ratio wall / CPU"]
    headers += ["floor MB/s", "load 1m"]
    return (
        "# Ingest at scale\n\n`python benchmarks/scale_ingest.py` (see its docstring); ratio = tokenizer alone / "
        f"ingest (1.0: ingest costs nothing beyond tokenizing). Machine: {info['cpu_model']}, "
        f"{info['cpu_count']} CPUs, shared (load average beside each row).\n\n"
        + markdown_table(headers, table)
        + "\n\n"
        + NOTES
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,500")
    parser.add_argument("--bpe", default=None, help="a local Hugging Face tokenizer directory (SmolLM2)")
    parser.add_argument("--bpe-max-mb", type=int, default=50)
    parser.add_argument("--workers", default="1", help="ingest.workers values, e.g. 1,2")
    parser.add_argument("--max-memory-mb", type=int, default=2048)
    parser.add_argument("--context-length", type=int, default=512, help="ingest.context_length")
    parser.add_argument("--name", default="scale_ingest", help="results file name (without .json / .md)")
    parser.add_argument("--work", default="/tmp/amr-scale-ingest")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, workers = [], [int(w) for w in args.workers.split(",")]
    for mb in [int(x) for x in args.sizes.split(",")]:
        rows += run_size(work, mb, args.bpe, args.bpe_max_mb, workers, args.max_memory_mb, args.context_length)
    info = machine_info(("tokenizers", "pylance", "pyarrow")) | {"git": _git()}
    write_results(Path(args.out), args.name, {"machine": info, "rows": rows}, markdown(rows, info))


def _git() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
