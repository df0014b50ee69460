"""Bytes of per-document and per-row metadata an ingest holds, measured with tracemalloc (not in CI).

    PYTHONPATH=<checkout> python benchmarks/ingest_metadata.py [--mb 50] [--context-length 128] [--label after]
                                                               [--engine ray]

Writes a drop of real text (benchmarks/scale_ingest.py `write_drop`: distinct 2-16 kB documents), then runs the
local engine's steps one by one, under tracemalloc (numpy's buffers are traced too), in a fresh memory:
  scan    `LocalEngine.scan` (tokenize into the spill): what it keeps per document, and its peak above that;
  plan    `plan_drop` without clustering (labels: uint16 zeros, as `assign_clusters` returns), so the k-means fit,
          a fixed cost, is left out: what the plan keeps per row, and its peak (the memory lookup, the split);
  digest  `packed_digest`, and `commit` (every `record_batches` batch built and dropped, nothing written): their
          peak above what is kept, per row (a batch of rows is a fixed cost; the rest grows with the drop);
  cluster `assign_clusters` (k-means fit on the sample, every row labelled): the labels it keeps per row, and
          its peak (the fit, a fixed cost, and any per-row temporaries).
With `--engine ray` the Ray engine's driver is measured (scan and plan, on a local Ray with this machine's CPUs):
the workers scan, hash and write, so digest and commit are left out; `arrow_scan_peak_mb` is the Arrow pool's peak
(the workers' metadata tables as the driver merges them: Arrow's buffers are not traced).
Run it with PYTHONPATH at two checkouts (before and after a change): it uses only interfaces both share.
Appends one JSON line to benchmarks/results/ingest_metadata.jsonl.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from common import append_result  # noqa: E402
from scale_ingest import DROP, write_drop  # noqa: E402

from components.adapters.memory import Memory  # noqa: E402
from components.adapters.records import sequences_schema  # noqa: E402
from components.core.config import load_settings  # noqa: E402
from components.core.text import load_tokenizer  # noqa: E402
from components.ingest.clustering import assign_clusters  # noqa: E402
from components.ingest.drops import open_source  # noqa: E402
from components.ingest.engine_local import LocalEngine  # noqa: E402
from components.ingest.pipeline import Bars, memory_meta  # noqa: E402
from components.ingest.rows import packed_digest, record_batches  # noqa: E402
from components.ingest.scan import plan_drop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--label", default="")
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--work", default="/tmp/amr-ingest-metadata")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_metadata.jsonl"))
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    write_drop(work / "drops", args.mb)
    s = load_settings(None, **{"ingest.tokenizer": "byte", "ingest.context_length": args.context_length})
    s.home = work / "home"
    memory, tok = Memory.open(s), load_tokenizer("byte")
    source = open_source(str(work / "drops"), s.s3)
    ref = next(r for r in source.list_drops() if r.drop_id == DROP)
    out: dict = {"label": args.label, "engine": args.engine, "mb": args.mb, "context_length": args.context_length}
    t0 = time.process_time()
    with Bars(False) as bars, _engine(args.engine, source, ref, s, tok, bars) as engine:
        content = engine.content_hash()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        scanned = engine.scan(content)
        kept, peak = tracemalloc.get_traced_memory()
        n_docs = len(scanned.hashes)
        out |= {"documents": n_docs, "scan_kept_per_doc": (kept - base) / n_docs, "scan_peak_mb": (peak - base) / 2**20}
        tracemalloc.reset_peak()
        if args.engine == "ray":
            out["arrow_scan_peak_mb"] = pa.default_memory_pool().max_memory() / 2**20
            out["scan_kept_bytes"] = kept - base  # per document: the slope between two sizes (Ray's fixed objects)
        store = engine.store if args.engine == "ray" else engine.spill
        plan = plan_drop(memory, scanned, s, tok, store, lambda: engine.scan(content), cluster=False)
        packed = plan.packed
        arrays = getattr(store, "arrays", None)  # labels on disk (components.core.ondisk) where the checkout has them
        clusters = (_zeros(arrays, len(packed.train.lengths)), _zeros(arrays, len(packed.holdout.lengths)))
        after, peak = tracemalloc.get_traced_memory()
        n_rows = len(packed.train.lengths) + len(packed.holdout.lengths)
        out |= {"rows": n_rows, "plan_kept_per_row": (after - kept) / n_rows, "plan_peak_mb": (peak - kept) / 2**20}
        if args.engine == "ray":  # the workers hash and write
            return _finish(out, args, work, t0)
        tracemalloc.reset_peak()
        out["rows_hash"] = packed_digest(DROP, packed, clusters)
        out["digest_peak_mb"] = (tracemalloc.get_traced_memory()[1] - after) / 2**20
        tracemalloc.reset_peak()
        schema = sequences_schema(memory_meta(s, tok, {}))
        for _ in record_batches(DROP, packed, clusters, schema, lambda n: None):
            pass
        out["commit_peak_mb"] = (tracemalloc.get_traced_memory()[1] - after) / 2**20
        tracemalloc.reset_peak()
        on_disk = {"arrays": arrays} if arrays is not None else {}
        labels = assign_clusters(packed.train, packed.holdout, s.ingest.clusters_per_drop, s.ingest.seed, **on_disk)
        kept, peak = tracemalloc.get_traced_memory()
        out |= {"cluster_kept_per_row": (kept - after) / n_rows, "cluster_peak_mb": (peak - after) / 2**20}
        out["label_dtype"] = f"{labels[0].dtype} ({type(labels[0]).__name__})"
    _finish(out, args, work, t0)


def _zeros(arrays, n: int):
    """uint16 zero labels, as `assign_clusters` returns for one cluster: in memory, or on disk with `arrays`."""
    if arrays is None:
        return np.zeros(n, np.uint16)
    out = arrays.new(np.uint16)
    for start in range(0, n, 1 << 16):
        out.append(np.zeros(min(1 << 16, n - start), np.uint16))
    return out


def _engine(engine: str, source, ref, s, tok, bars):
    if engine == "local":
        return LocalEngine(source, ref, s, tok, bars, None)
    import ray

    from components.ingest.engine_ray import RayEngine

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    limits = [None] if "limits" in inspect.signature(RayEngine).parameters else []  # an older checkout: none
    return RayEngine(source, ref, s, tok, bars, *limits)


def _finish(out: dict, args, work: Path, t0: float) -> None:
    tracemalloc.stop()
    out["cpu_s"] = round(time.process_time() - t0, 1)
    out["load_1m"] = os.getloadavg()[0]
    append_result(args.out, out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
