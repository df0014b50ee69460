"""Peak RSS of an ingest before its commit and after it, against drop size (not in CI).

    PYTHONPATH=<checkout> python benchmarks/ingest_rss.py [--sizes 50,200] [--context-length 128] [--workers 1]

Per size, in a fresh process: a drop of real text (benchmarks/scale_ingest.py `write_drop`) ingested by
`ingest_source` into a fresh memory; the process's high-water RSS (ru_maxrss) is read when the rows are about to be
committed (`LocalEngine.write` wrapped: scan, plan, clustering done) and at the end (the row digest, the Lance
write of the rows, the document index). What grows between the two with the drop is the commit's, not the
ingest's metadata. Prints one JSON line per size; appends them to benchmarks/results/ingest_rss.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _max_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(mb: int, context_length: int, workers: int, work: Path) -> dict:
    from scale_ingest import write_drop

    from components.core.config import load_settings
    from components.ingest import engine_local, ingest_source

    shutil.rmtree(work, ignore_errors=True)
    write_drop(work / "drops", mb)
    s = load_settings(None, **{"ingest.tokenizer": "byte", "ingest.context_length": context_length})
    s.ingest.workers = workers
    s.home = work / "home"
    out = {"mb": mb, "context_length": context_length, "workers": workers, "start_max_rss_mb": _max_mb()}
    write = engine_local.LocalEngine.write

    def timed_write(self, *args):
        out["before_commit_max_rss_mb"] = _max_mb()
        return write(self, *args)

    engine_local.LocalEngine.write = timed_write
    t0, c0 = time.time(), time.process_time()
    [result] = ingest_source(s, str(work / "drops"), show_progress=False)
    out |= {"status": result.status, "max_rss_mb": _max_mb(), "wall_s": round(time.time() - t0, 1)}
    out |= {"cpu_s": round(time.process_time() - c0, 1), "load_1m": os.getloadavg()[0]}
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work", default="/tmp/amr-ingest-rss")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_rss.jsonl"))
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # a size, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.context_length, args.workers, Path(args.work))))
        return
    for mb in [int(x) for x in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(mb), "--context-length", str(args.context_length)]
        cmd += ["--workers", str(args.workers), "--work", args.work]
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(line, flush=True)
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
