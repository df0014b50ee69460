"""Memory and CPU of a drop's deduplication and holdout choice, in memory against partitioned on disk (not in CI).

    PYTHONPATH=<checkout> python benchmarks/dedup_memory.py plan [--docs 1000000] [--bucket-mb 8]
    PYTHONPATH=<checkout> python benchmarks/dedup_memory.py scan [--files 3000] [--repeat 0.3] [--tokenizer DIR]

`plan` (this checkout only: it needs components.ingest.dedup): the documents are the lines of the stdlib's
sources (real text, with the repeats real code has: blank-ish lines, `return`, `else:`), their sha256 digests in
one Digests array; a memory holds a first drop of 2,000 of them. Under tracemalloc (numpy's buffers traced), the
peak above the digests of `new_documents_in_memory` + holdout.choose_holdout, then of components.ingest.dedup's
`new_documents` + `choose_holdout` with buckets of --bucket-mb, per document, with their CPU seconds; the kept
indices and splits are checked equal.
`scan` (any checkout): a drop of --files stdlib sources, --repeat of them written twice (inside the drop), scanned
by the local engine in one process; its CPU seconds (a checkout that tokenizes each distinct document once against
one that tokenizes every document). Appends one JSON line to benchmarks/results/dedup_memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sysconfig
import time
import tracemalloc
from pathlib import Path

import numpy as np
from common import append_result

from components.adapters.memory import Memory
from components.core.config import load_settings
from components.core.digests import Digests, digest
from components.core.text import load_tokenizer
from components.ingest.drops import open_source
from components.ingest.engine_local import LocalEngine
from components.ingest.pipeline import Bars, ingest_source

LIB = Path(sysconfig.get_paths()["stdlib"])


def sources(n: int) -> list[str]:
    out = []
    for path in sorted(LIB.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and len(text) < 256 << 10:  # under ingest.max_document_bytes
            out.append(text)
        if len(out) == n:
            break
    return out


def lines(n: int) -> list[str]:
    out: list[str] = []
    for text in sources(100_000):
        out += [line for line in text.splitlines() if line.strip()]
        if len(out) >= n:
            return out[:n]
    return out


def write_drop(root: Path, drop_id: str, texts: list[str]) -> None:
    drop = root / drop_id
    drop.mkdir(parents=True)
    with open(drop / "part-0.jsonl", "w") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
    (drop / "_READY").write_text("")


def settings(home: Path, tokenizer: str = "byte"):
    s = load_settings(None, **{"ingest.tokenizer": tokenizer, "ingest.context_length": 128})
    s.home = home
    return s


def plan(args, work: Path) -> dict:
    from components.core.holdout import choose_holdout
    from components.ingest import dedup

    docs = lines(args.docs)
    s = settings(work / "home")
    write_drop(work / "first", "a", docs[:2000:2] + sources(1000)[:1000])
    [res] = ingest_source(s, str(work / "first"), show_progress=False)
    assert res.status == "ingested", res.message
    memory = Memory.open(s)
    hashes = Digests(base=np.array([digest(t) for t in docs], dtype="S32"))
    tokens_all = np.array([len(t.encode()) + 1 for t in docs], dtype=np.int64)
    needed, fraction, size = 127 * 16 + 1, s.ingest.holdout_fraction, args.bucket_mb << 20
    out = {"mode": "plan", "documents": len(docs), "bucket_mb": args.bucket_mb}
    results = {}
    for name in ("in_memory", "partitioned"):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.process_time()
        if name == "in_memory":
            keep = dedup.new_documents_in_memory(memory, hashes)
            mask = choose_holdout(tokens_all[keep], hashes.take(keep), fraction, needed)
        else:
            keep = dedup.new_documents(memory, hashes, work / "tmp", "bench", size)
            mask = dedup.choose_holdout(tokens_all[keep], hashes.take(keep), fraction, needed, work / "tmp", "b", size)
        cpu = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        kept_bytes = keep.nbytes + mask.nbytes  # what the caller keeps (the plan's keep and the split)
        out[f"{name}_peak_per_doc"] = round(peak / len(docs), 1)
        out[f"{name}_peak_above_result_per_doc"] = round((peak - kept_bytes) / len(docs), 1)
        out[f"{name}_cpu_s"] = round(cpu, 2)
        results[name] = (keep, mask)
    assert all(np.array_equal(a, b) for a, b in zip(*results.values(), strict=True)), "partitioned != in memory"
    out["kept"], out["held_out"] = len(results["in_memory"][0]), int(results["in_memory"][1].sum())
    return out


def scan(args, work: Path) -> dict:
    texts = sources(args.files)
    repeats = texts[: int(len(texts) * args.repeat)]
    write_drop(work / "drops", "d1", texts + repeats)
    s = settings(work / "home", args.tokenizer)
    source = open_source(str(work / "drops"), s.s3)
    [ref] = source.list_drops()
    with Bars(False) as bars, LocalEngine(source, ref, s, load_tokenizer(args.tokenizer), bars, None) as engine:
        content = engine.content_hash()
        t0, w0 = time.process_time(), time.perf_counter()
        scanned = engine.scan(content)
        assert scanned.contents.ok, scanned.contents.error_message()
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        spilled = len(engine.spill)
    return {
        "mode": "scan",
        "tokenizer": "byte" if args.tokenizer == "byte" else Path(args.tokenizer).name,
        "documents": len(scanned.hashes),
        "repeats": len(repeats),
        "tokenized": spilled,
        "mb": round(sum(len(t) for t in texts + repeats) / 2**20, 1),
        "scan_cpu_s": round(cpu, 2),
        "scan_wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["plan", "scan"])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--bucket-mb", type=int, default=8)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--repeat", type=float, default=0.3)
    parser.add_argument("--tokenizer", default="byte", help="scan: byte, or a Hugging Face tokenizer directory")
    parser.add_argument("--label", default="")
    parser.add_argument("--work", default="/tmp/amr-dedup-memory")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dedup_memory.jsonl"))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    out = {"label": args.label} | (plan(args, work) if args.mode == "plan" else scan(args, work))
    out["load_1m"] = round(os.getloadavg()[0], 2)
    append_result(args.out, out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
