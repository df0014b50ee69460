"""Ingest benchmark (not in CI): ingest throughput against the tokenizer alone, then LanceDB random access.

    python benchmarks/ingest.py [--mb 50] [--sizes 1e4,1e5,1e6] [--out benchmarks/results]

1. Throughput. One drop of ~50 MB of real text from this machine (stdlib sources, C headers, man pages, licenses).
   `ingest_source` on it into a fresh memory, against `encode_batch` over the same documents: the ratio is what
   ingest costs beyond tokenizing. A second ingest calls the steps of `ingest_drop` one by one to split the time
   into read / tokenize / pack / cluster / write. Each phase runs in its own process, for its own peak RSS.
2. Random access. The replay sampler fetches sequences by row id, in random order. Memories of 1e4, 1e5 and 1e6
   sequences are grown by tiling the ingested drop's real rows into drops of at most 1e5 rows, written with
   `Memory.commit_drop` (one version per drop, as real ingest does), plus a control memory holding the largest
   size in a single drop. `Memory.take` of 64 ids is timed against the bare LanceDB call at every size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import (
    latency_summary,
    machine_info,
    markdown_table,
    peak_rss_mb,
    real_documents,
    run_isolated,
    timed,
    write_drop,
    write_results,
)

from components.adapters.memory import Memory
from components.adapters.records import DropRecord, sequences_schema
from components.core.config import Settings, load_settings
from components.core.packing import doc_hash, split_and_pack
from components.core.text import load_tokenizer
from components.ingest.clustering import assign_clusters
from components.ingest.drops import open_source, read_drop
from components.ingest.pipeline import ingest_source, memory_meta, tokenize
from components.ingest.rows import record_batches

DROP_ID = "bench-drop"
TILE_ROWS = 100_000  # rows per tiled drop: a memory of 1e6 sequences is eleven drops, as it would be for real
WARMUP = 10
START = float(os.environ.setdefault("BENCH_INGEST_T0", str(time.time())))  # spawned phases inherit the parent's clock


@dataclass
class BenchConfig:
    mb: float = 50.0
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    reps: int = 200
    batch: int = 64
    context_length: int = 128  # the defaults of params.yaml, pinned so the figures do not drift with it
    clusters: int = 4
    seed: int = 0


def say(message: str) -> None:
    print(f"[{time.time() - START:7.1f}s] {message}", flush=True)


def bench_settings(home: str, cfg: BenchConfig) -> Settings:
    """Default settings apart from the two the benchmark pins, with every bit of state under `home`."""
    overrides = {"ingest.context_length": cfg.context_length, "ingest.clusters_per_drop": cfg.clusters}
    settings = load_settings(None, **overrides)
    settings.home = Path(home)
    settings.memory.uri = ""  # never a memory named by params.yaml or AMR_MEMORY__URI
    return settings


@contextmanager
def step(times: dict[str, float], peaks: dict[str, float], name: str):
    """Time a block and note the process's RSS high-water mark after it."""
    with timed(times, name):
        yield
    peaks[name] = round(peak_rss_mb(), 1)


# ---- throughput phases, each run in its own process ------------------------------------------------------------


def tokenizer_phase(drops_root: str, cfg: BenchConfig) -> dict:
    """`encode_batch` alone, in ingest's chunks; the documents are read first, untimed."""
    source = open_source(drops_root)
    texts = [d.text for d in read_drop(source, DROP_ID, bench_settings("", cfg).ingest.max_document_bytes).documents]
    times: dict[str, float] = {}
    with timed(times, "load_tokenizer"):
        tokenizer = load_tokenizer("byte")
    with timed(times, "encode"):
        ids = tokenize(tokenizer, texts, lambda n: None)
    return {"seconds": times["encode"], "load_tokenizer_s": times["load_tokenizer"], "tokens": sum(map(len, ids))}


def ingest_phase(drops_root: str, home: str, cfg: BenchConfig) -> dict:
    """The public entry point, end to end (tokenizer loading included), into a fresh memory."""
    settings = bench_settings(home, cfg)
    times: dict[str, float] = {}
    with timed(times, "ingest"):
        results = ingest_source(settings, drops_root, show_progress=False)
    if [r.status for r in results] != ["ingested"]:
        raise RuntimeError(f"ingest did not succeed: {[r.to_dict() for r in results]}")
    rec = results[0].record
    return {
        "seconds": times["ingest"],
        "sequences": rec.sequences + rec.holdout_sequences,
        "train_sequences": rec.sequences,
        "holdout_sequences": rec.holdout_sequences,
        "tokens": rec.tokens,
        "clusters": rec.clusters,
        "settings": settings.ingest.model_dump(),
    }


def split_phase(drops_root: str, home: str, cfg: BenchConfig) -> dict:
    """The steps of `ingest_drop`, called the same way, each timed (setup = source, memory, tokenizer)."""
    settings = bench_settings(home, cfg)
    ing, t, peaks = settings.ingest, {}, {}
    with step(t, peaks, "setup"):
        source, memory, tokenizer = open_source(drops_root), Memory.open(settings), load_tokenizer(ing.tokenizer)
    with step(t, peaks, "read"):
        contents = read_drop(source, DROP_ID, ing.max_document_bytes)
        texts = [d.text for d in contents.documents]
    with step(t, peaks, "tokenize"):
        tokens = tokenize(tokenizer, texts, lambda n: None)
    with step(t, peaks, "hash+pack"):
        args = (ing.context_length, tokenizer.eos_id, tokenizer.pad_id, ing.holdout_fraction, ing.min_holdout_sequences)
        packed = split_and_pack(tokens, [doc_hash(x) for x in texts], *args)
    with step(t, peaks, "cluster"):
        labels = assign_clusters(packed.train, packed.holdout, ing.clusters_per_drop, ing.seed)
    with step(t, peaks, "write"):
        rec = DropRecord(DROP_ID, "", contents.content_hash, documents=len(texts), source=drops_root)
        rec.sequences, rec.holdout_sequences = len(packed.train), len(packed.holdout)
        rec.tokens = int(packed.train.lengths.sum() + packed.holdout.lengths.sum())
        rec.clusters = int(labels[0].max()) + 1
        meta = memory_meta(settings, tokenizer)
        schema = sequences_schema(meta)
        with memory.writer() as mem:
            batches = record_batches(DROP_ID, packed, labels, schema, lambda n: None)
            mem.commit_drop(pa.RecordBatchReader.from_batches(schema, batches), rec, meta)
    return {"phases_s": t, "peak_rss_after_mb": peaks, "seconds": sum(t.values())}


# ---- random access -------------------------------------------------------------------------------------------


def tile(memory: Memory, src: pa.Table, start: int, n: int, drop_id: str, meta: dict) -> None:
    """Commit rows [start, start + n) of `src` (wrapping) as drop `drop_id`, positions renumbered per split."""
    rows = src.take(pa.array((start + np.arange(n)) % src.num_rows))
    train = np.asarray(rows.column("split").to_numpy(zero_copy_only=False) == "train")
    position = np.where(train, np.cumsum(train) - 1, np.cumsum(~train) - 1).astype(np.int32)
    rows = rows.set_column(rows.schema.get_field_index("drop_id"), "drop_id", pa.array([drop_id] * n, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("position"), "position", pa.array(position))
    rows = rows.cast(sequences_schema(meta))
    rec = DropRecord(drop_id, "", hashlib.sha256(f"tile {start} {n}".encode()).hexdigest(), source="benchmark tile")
    rec.documents = len(set(rows.column("doc_hash").to_pylist()))
    rec.sequences, rec.holdout_sequences = int(train.sum()), int((~train).sum())
    rec.tokens = int(rows.column("length").to_numpy().sum())
    rec.clusters = int(np.max(rows.column("cluster").to_numpy())) + 1
    with memory.writer() as mem:
        mem.commit_drop(rows, rec, meta)


def time_calls(memory: Memory, size: int, cfg: BenchConfig) -> dict:
    """Batches of random row ids (random order, as the sampler draws them), a fresh draw for every call.

    The call order rotates every repetition, so no variant always runs on a cache its predecessor warmed.
    """
    version = memory.version
    table = memory.table(version)
    ids = memory.index(version).column("_rowid").to_numpy()
    tokens, _ = memory.take(ids[: cfg.batch], version)
    if ids.size != size or tokens.shape != (cfg.batch, cfg.context_length):
        raise RuntimeError(f"memory has {ids.size} rows (expected {size}); take gave shape {tokens.shape}")
    cols = ["tokens", "length"]
    calls = {
        "memory_take": lambda b: memory.take(b, version),
        "memory_take_no_version": lambda b: memory.take(b),  # reads the drops log to find the version
        "lancedb_take_row_ids": lambda b: table.take_row_ids(b.tolist()).to_arrow(),
        "lancedb_take_row_ids_tokens_length": lambda b: table.take_row_ids(b.tolist()).select(cols).to_arrow(),
    }
    rng = np.random.default_rng(cfg.seed + size)
    names, seconds = list(calls), {name: [] for name in calls}
    for rep in range(-WARMUP, cfg.reps):
        for j in range(len(names)):
            name = names[(rep + j) % len(names)]
            draw = rng.choice(ids, cfg.batch, replace=False)
            start = time.perf_counter()
            calls[name](draw)
            if rep >= 0:
                seconds[name].append(time.perf_counter() - start)
    out = {name: latency_summary(s, cfg.batch) for name, s in seconds.items()}
    raw = out["lancedb_take_row_ids_tokens_length"]["p50_ms"]
    out["take_over_raw_same_columns"] = round(out["memory_take"]["p50_ms"] / raw, 2)
    return out | {"fragments": len(table.to_lance().get_fragments())}


def access_phase(source_home: str, home: str, cfg: BenchConfig) -> dict:
    """Grow one memory through `cfg.sizes` by tiling real rows, timing random access at each size."""
    src_memory = Memory.open(bench_settings(source_home, cfg))
    src, meta = src_memory.table().to_arrow(), src_memory.meta()
    plans = [(f"{home}-grown", size, TILE_ROWS) for size in cfg.sizes]
    plans.append((f"{home}-one-drop", max(cfg.sizes), max(cfg.sizes)))  # control: rows without more drops
    rows: dict[str, int] = {}
    out = []
    for where, size, per_drop in plans:
        memory, built = Memory.open(bench_settings(where, cfg)), {}
        with timed(built, "s"):
            while (have := rows.get(where, 0)) < size:
                n = min(per_drop, size - have)
                tile(memory, src, have, n, f"tile-{len(memory.ingested()):03d}", meta)
                rows[where] = have + n
        drops = len(memory.ingested())
        say(f"access: {size:,} sequences in {drops} drop(s), built in {built['s']:.1f}s; timing take")
        fresh = Memory.open(bench_settings(where, cfg))  # no table cached by the writes
        out.append({"sequences": size, "drops": drops, "build_s": round(built["s"], 2)} | time_calls(fresh, size, cfg))
    grown = out[:-1]
    ratio = grown[-1]["memory_take"]["p50_ms"] / grown[0]["memory_take"]["p50_ms"]
    return {
        "grown": grown,
        "one_drop_control": out[-1],
        "p50_ratio_largest_over_smallest": round(ratio, 2),
        "flat": bool(ratio <= 2.0),
        "source_rows": src.num_rows,
    }


# ---- orchestration and report --------------------------------------------------------------------------------


def throughput(work: Path, cfg: BenchConfig) -> dict:
    say(f"building a drop of {cfg.mb:g} MB of real text")
    docs, by_kind = real_documents(int(cfg.mb * 1e6))
    drop = write_drop(work / "drops", DROP_ID, docs)
    corpus = {
        "documents": len(docs),
        "text_bytes": sum(by_kind.values()),
        "file_bytes": sum(p.stat().st_size for p in drop.glob("*.jsonl")),
        "bytes_by_kind": by_kind,
    }
    del docs  # every phase reads the drop from disk in its own process
    say(f"drop: {corpus['documents']:,} documents, {corpus['text_bytes'] / 1e6:.1f} MB of text; tokenizer alone")
    tok = run_isolated(tokenizer_phase, str(work / "drops"), cfg)
    say(f"tokenizer alone: {tok['seconds']:.2f}s; ingest_source")
    ingest = run_isolated(ingest_phase, str(work / "drops"), str(work / "home-ingest"), cfg)
    say(f"ingest_source: {ingest['seconds']:.2f}s; phase split")
    split = run_isolated(split_phase, str(work / "drops"), str(work / "home-split"), cfg)
    say("phase split: " + ", ".join(f"{k} {v:.2f}s" for k, v in split["phases_s"].items()))
    mb = corpus["text_bytes"] / 1e6
    for phase in (tok, ingest):
        phase["mb_per_s"] = round(mb / phase["seconds"], 2)
        phase["sequences_per_s"] = round(ingest["sequences"] / phase["seconds"], 1)  # tokenizer: what its ids pack to
        phase["tokens_per_s"] = round(phase["tokens"] / phase["seconds"], 1)
    ratio = round(ingest["seconds"] / tok["seconds"], 2)
    return {
        "corpus": corpus,
        "tokenizer_only": tok,
        "ingest_source": ingest,
        "phase_split": split,
        "ratio_ingest_over_tokenizer": ratio,
    }


ACCESS_HEADERS = "sequences|drops|fragments|take p50|take p95|raw p50, same cols|raw p50, all cols|take p50, no version"
REPORT = """# Ingest benchmark

Drop: {documents:,} documents, {mb:.1f} MB of UTF-8 text ({kinds}) -> {sequences:,} sequences of {context_length}
byte tokens, {clusters} clusters.

{throughput_table}

(The tokenizer's sequences/s counts the sequences its ids pack into.) Ingest takes **{ratio:.0f}x** the time of the
tokenizer alone. Phase split (a second ingest, the steps of
`ingest_drop` timed one by one, {split_s:.2f}s in all; RSS before any work {rss_before:,.0f} MB):

{phase_table}

Random access: {batch} random row ids per call, {reps} calls after {warmup} warm-up calls, latencies in ms.
raw = `table.take_row_ids(ids).to_arrow()` on the same checked-out table, with `.select(["tokens", "length"])` for
the same columns as `Memory.take` ("take / raw" compares those two); "no version" is `Memory.take(ids)` without
its version argument.

{access_table}

Latency flat from {smallest:,} to {largest:,} sequences (p50 within 2x): **{flat}** (ratio {flat_ratio:.2f}).

How it was run: `python benchmarks/ingest.py --mb {mb_arg:g} --sizes {sizes}`, {total_s:.0f}s in all, on
{cpu_count} cores ({cpu_model}; load average {load} at the start), Python {python}, lancedb {lancedb},
pylance {pylance}. The text is this machine's
own (Python stdlib sources, /usr/include headers, man pages, licenses), mixed by bytes, cut at 200 kB per document
and written as one JSONL drop. Tokenizer alone and `ingest_source` ran one after the other, each in a fresh
spawned process reporting its own peak RSS (imports included). The random-access memories hold the ingested
drop's real rows, tiled into drops of at most {tile_rows:,} rows and committed with `Memory.commit_drop`; every
call draws fresh ids. The data were just written and sit in the page cache: this is LanceDB's in-memory path,
not cold reads from disk.
"""


def access_row(label: str, a: dict) -> list:
    take, same, full = a["memory_take"], a["lancedb_take_row_ids_tokens_length"], a["lancedb_take_row_ids"]
    ms = [take["p50_ms"], take["p95_ms"], same["p50_ms"], full["p50_ms"], a["memory_take_no_version"]["p50_ms"]]
    extra = [f"{take['items_per_s_at_p50']:,.0f}", f"{a['take_over_raw_same_columns']:.2f}"]
    return [label, a["drops"], a["fragments"], *(f"{v:.2f}" for v in ms), *extra]


def render(result: dict) -> str:
    t, cfg, m, acc = result["throughput"], result["config"], result["machine"], result["access"]
    tok, ing, split, c = t["tokenizer_only"], t["ingest_source"], t["phase_split"], t["corpus"]
    rows = [
        [
            name,
            f"{p['seconds']:.2f}",
            f"{p['mb_per_s']:.1f}",
            f"{p['sequences_per_s']:,.0f}",
            f"{p['peak_rss_mb']:,.0f}",
        ]
        for name, p in (("tokenizer alone", tok), ("`ingest_source`", ing))
    ]
    peaks = split["peak_rss_after_mb"]
    phases = [[k, f"{v:.2f}", f"{v / split['seconds']:.0%}", f"{peaks[k]:,.0f}"] for k, v in split["phases_s"].items()]
    grown, control = acc["grown"], acc["one_drop_control"]
    access = [access_row(f"{a['sequences']:,}", a) for a in grown]
    access.append(access_row(f"{control['sequences']:,} (one drop)", control))
    return REPORT.format(
        documents=c["documents"],
        mb=c["text_bytes"] / 1e6,
        kinds=", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in c["bytes_by_kind"].items()),
        sequences=ing["sequences"],
        context_length=cfg["context_length"],
        clusters=ing["clusters"],
        throughput_table=markdown_table(["", "seconds", "MB/s", "sequences/s", "peak RSS MB"], rows),
        ratio=t["ratio_ingest_over_tokenizer"],
        split_s=split["seconds"],
        rss_before=split["rss_before_mb"],
        phase_table=markdown_table(["phase", "seconds", "share", "peak RSS after, MB"], phases),
        batch=cfg["batch"],
        reps=cfg["reps"],
        warmup=WARMUP,
        access_table=markdown_table(ACCESS_HEADERS.split("|") + ["take seq/s", "take / raw"], access),
        smallest=grown[0]["sequences"],
        largest=grown[-1]["sequences"],
        flat="yes" if acc["flat"] else "no",
        flat_ratio=acc["p50_ratio_largest_over_smallest"],
        mb_arg=cfg["mb"],
        sizes=",".join(f"{s:.0e}".replace("+0", "") for s in cfg["sizes"]),
        total_s=result["total_s"],
        tile_rows=TILE_ROWS,
        load=" / ".join(map(str, m["load_average_1_5_15"])),
        **{k: m[k] for k in ("cpu_count", "cpu_model", "python")},
        **{k: m["packages"][k] for k in ("lancedb", "pylance")},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=BenchConfig.mb, help="size of the drop, MB of text")
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="memory sizes (sequences) for random access")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--reps", type=int, default=BenchConfig.reps, help="timed calls per size")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default: the system temp dir)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any phase process starts; they inherit it
    cfg = BenchConfig(mb=args.mb, sizes=tuple(sorted({int(float(s)) for s in args.sizes.split(",")})), reps=args.reps)
    result = {
        "config": asdict(cfg),
        "machine": machine_info(("lancedb", "pylance", "pyarrow", "numpy", "scikit-learn")),
    }
    with tempfile.TemporaryDirectory(prefix="amr-bench-ingest-", dir=args.workdir) as tmp:
        result["throughput"] = throughput(Path(tmp), cfg)
        say(f"random access at {', '.join(f'{s:,}' for s in cfg.sizes)} sequences")
        result["access"] = run_isolated(access_phase, f"{tmp}/home-ingest", f"{tmp}/home-access", cfg)
    result["total_s"] = round(time.time() - START, 1)
    paths = write_results(args.out, "ingest", result, render(result))
    print(render(result), flush=True)
    say(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
