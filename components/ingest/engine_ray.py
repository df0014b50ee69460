"""`ingest.engine: ray`: Ray Data workers read, tokenize, build, label and write a drop's rows; this process (the
driver) decides from metadata and commits once. The same results as the local engine, row for row and digest for
digest (tests/test_ingest_ray.py); README "Scaling ingest with Ray" says when it pays off.

The split of the work:
* Workers (components.ingest.ray_tasks): the content hash (a Ray Data pass of the drop's files, hashed, nothing
  parsed), then the scan (a Ray Data pass of the files, one task per file: each worker opens its file itself, from
  the directory or S3 (credentials from the worker's environment), checks and parses it with the code the local
  engine runs (DropScan.file_documents), hashes each document and tokenizes it). Its tokens stay in the object store.
* Driver: the per-document metadata only (hashes, token counts): deduplication against the memory, the split and
  every row's place (components.ingest.scan.plan_drop, components.core.packing.split_layouts, as local), and the
  k-means centers, fit once on a sample of train rows that a worker builds (components.ingest.clustering.fit_centers).
* Workers: label the train rows by range, then (the unused centers dropped on the driver, as local) the holdout rows;
  under the write lock, write ranges of the write order as uncommitted Lance fragments of the memory's table
  (lance-ray's `write_fragment`) while one task hashes the rows into the row digest (a single sha256 stream, so one
  task: it reads what the writers read, at the same time).
* Driver: one `Append` commit of every fragment, in write order, then the tag, document index and record of a drop
  commit (components.adapters.commits.Commits.commit_fragments, the same half `commit_drop` ends with).

Atomicity and recovery: nothing a worker writes is visible before the driver's commit, and the commit is one Lance
version, recorded after, as for the local engine. A driver killed after the workers wrote their fragments and before
the commit leaves only data files no Lance version references: readers never see them, the next ingest of the drop
starts again from scratch and commits it once (tests/test_ingest_ray.py kills one), and `amr memory cleanup`
removes the files once they are older than Lance's 7-day guard for writes still in flight (the same test). A
killed driver's Ray tasks and objects are freed by Ray with the driver.

Ray itself: `ingest.ray_address` '' starts a local Ray with this machine's CPUs (and it stops with this process);
otherwise it joins that cluster. A Ray already initialized in this process (tests, notebooks) is used as it is.
Workers need this package (the image of infra/k8s/raycluster.yaml); the tokenizer travels from the driver.
A drop's tokens wait in Ray's object store between the scan and the writes (4 bytes a token, spread over the
nodes); past its size Ray spills them to the nodes' local disks. The scan is one task per file: a drop of many
tiny files pays Ray's per-task overhead for each.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from components.adapters.memory import Memory
from components.adapters.records import DropRecord, sequences_schema
from components.core.config import Settings
from components.core.packing import Packed
from components.core.text import Tokenizer
from components.ingest import ray_tasks
from components.ingest.clustering import drop_unused, fit_centers, fit_sample
from components.ingest.drops import DropIssue, DropManifest, DropRef, DropScan, DropSource
from components.ingest.rows import bookkeeping
from components.ingest.scan import Plan, Scanned, plan_drop, unchanged

HOLD_ENV = "AMR_TEST_HOLD_BEFORE_COMMIT"  # tests only: a file to create, then wait to be killed, before the commit
MIN_TASK_ROWS = 1024  # rows per labelling / writing task at least; at most two tasks per CPU of the cluster


def connect(address: str) -> None:
    """Join (or start, for '') the Ray cluster, once per process, quietly."""
    if not ray.is_initialized():
        with warnings.catch_warnings():  # Ray starts its processes with fork + exec, which lancedb warns about
            warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-dataset chatter on the CLI's stderr


class TokenStore:
    """Where each distinct document's tokens are, in the scan's blocks: the driver's stand-in for the local spill
    (plan_drop reads only `lengths()`; rows are built on the workers)."""

    def __init__(self) -> None:
        self.where: list[tuple[int, int, int]] = []  # block, row in the block, token offset in the row's cell
        self.counts: list[int] = []
        self.blocks: list = []

    def lengths(self) -> np.ndarray:
        return np.asarray(self.counts, dtype=np.int64)

    def tokens(self, index: int) -> np.ndarray:
        raise RuntimeError("the Ray engine's driver never reads tokens; rows are built on the workers")


class RayEngine:
    def __init__(self, source: DropSource, ref: DropRef, settings: Settings, tokenizer: Tokenizer, bars) -> None:
        self.source, self.ref, self.settings, self.tokenizer, self.bars = source, ref, settings, tokenizer, bars
        connect(settings.ingest.ray_address)
        self.store = TokenStore()
        self.spec = None  # ObjectRef of the RowsSpec of the latest plan
        self._tokenizer_ref = None

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.store, self.spec, self._tokenizer_ref = TokenStore(), None, None  # Ray frees what nothing references
        if isinstance(exc, ray.exceptions.RayError):  # say what failed on the worker, not where it ran
            raise worker_error(exc) from None

    def _scan_files(self, parse: bool, tokenize: bool) -> tuple[list[dict], list]:
        """The per-file rows (metadata only) in file order, and the scan's blocks (tokens included)."""
        names = self.source.list_files(self.ref.drop_id)
        if not names:
            return [], []
        if self._tokenizer_ref is None:
            self._tokenizer_ref = ray.put(self.tokenizer)
        kwargs = {
            "location": self.source.location,  # the root of the drops: workers open the source themselves
            "s3_json": self.settings.s3.model_dump_json(),
            "drop_id": self.ref.drop_id,
            "limit": self.settings.ingest.max_document_bytes,
            "tokenizer": self._tokenizer_ref if tokenize else None,
            "parse": parse,
        }
        items = [{"index": i, "name": n} for i, n in enumerate(names)]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ray_tasks.scan_files, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs
        )
        blocks = list(ds.to_arrow_refs())
        rows = [
            (b, r, row)
            for b, meta in enumerate(ray.get([ray_tasks.metadata.remote(ref) for ref in blocks]))
            for r, row in enumerate(meta.to_pylist())
        ]
        rows.sort(key=lambda x: x[2]["index"])
        return [dict(row, block=b, row=r) for b, r, row in rows], blocks

    def _merge(self, rows: list[dict]) -> DropScan:
        """The per-file results merged as `DropScan.documents` would have gathered them, file after file."""
        scan = DropScan(self.source, self.ref.drop_id, self.settings.ingest.max_document_bytes)
        for row in rows:
            if row["digest"]:
                scan.digests[row["name"]] = row["digest"]
            scan.n_document_files += row["n_document_files"]
            scan.contents.n_bytes += row["n_bytes"]
            scan.contents.issues += [DropIssue(*issue) for issue in json.loads(row["issues"])]
            if row["manifest"]:
                scan.contents.manifest = DropManifest.model_validate_json(row["manifest"])
        scan.finish()
        return scan

    def content_hash(self) -> str:
        rows, _ = self._scan_files(parse=False, tokenize=False)
        return self._merge(rows).contents.content_hash

    def scan(self, content: str, tokenize: bool = True) -> Scanned:
        rows, blocks = self._scan_files(parse=True, tokenize=tokenize)
        scan = self._merge(rows)
        out = Scanned(scan.contents, tokenized=tokenize)
        seen: set[bytes] = set()
        store = self.store  # filled in place: plan_drop may hold it while a re-scan adds the tokens
        if tokenize:
            store.where, store.counts, store.blocks = [], [], blocks
        for row in rows:
            out.n_documents += row["n_documents"]
            out.hashes += row["hashes"]
            if not tokenize:
                continue
            offset = 0
            for h, n in zip(row["tok_hashes"], row["tok_lengths"], strict=True):
                raw = bytes.fromhex(h)
                if raw not in seen:  # a document repeated across files: its first file's tokens
                    seen.add(raw)
                    store.where.append((row["block"], row["row"], offset))
                    store.counts.append(n)
                offset += n
        return unchanged(out, content, self.ref.drop_id)

    def plan(self, memory: Memory, scanned: Scanned, content: str) -> Plan:
        def rescan() -> Scanned:
            return self.scan(content)

        plan = plan_drop(memory, scanned, self.settings, self.tokenizer, self.store, rescan, cluster=False)
        if plan.packed is None:
            return plan
        cfg, tok = self.settings.ingest, self.tokenizer
        spec = ray_tasks.RowsSpec(
            self.ref.drop_id,
            self.store.lengths()[plan.at],
            scanned.hashes.take(plan.keep),
            (cfg.context_length, tok.eos_id, tok.pad_id, cfg.holdout_fraction, cfg.min_holdout_sequences),
            np.asarray(self.store.where, dtype=np.int64).reshape(-1, 3)[plan.at],
            self.store.blocks,
        )
        self.spec = ray.put(spec)
        plan.clusters = self._clusters(plan)
        return plan

    def _clusters(self, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        """clustering.assign_clusters with the labelling on the workers: same sample, centers and labels."""
        cfg = self.settings.ingest
        n_train, n_holdout = len(plan.packed.train), len(plan.packed.holdout)
        if n_train == 0:
            raise ValueError("cannot cluster a drop with no train sequences")
        sample = fit_sample(n_train, cfg.seed)
        tokens, lengths = ray.get(ray_tasks.sample_rows.remote(self.spec, sample))
        centers = fit_centers(Packed(tokens, lengths, sample), cfg.clusters_per_drop, cfg.seed)
        if centers is None:
            return np.zeros(n_train, np.int32), np.zeros(n_holdout, np.int32)
        centers, train = drop_unused(centers, self._labels("train", n_train, centers))
        holdout = self._labels("holdout", n_holdout, centers)
        return train.astype(np.int32), holdout.astype(np.int32)

    def _labels(self, split: str, n: int, centers: np.ndarray) -> np.ndarray:
        ref = ray.put(centers)
        parts = ray.get([ray_tasks.labels.remote(self.spec, split, a, b, ref) for a, b in task_ranges(n)])
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def write(self, mem: Memory, rec: DropRecord, plan: Plan, meta: dict, documents: pa.Table) -> None:
        """Fragments written by the workers, the digest by one more task, then one commit (under writer())."""
        from lance.fragment import FragmentMetadata

        uri, read_version, file_version = mem.sequences_for_fragments(meta)
        target = {"uri": uri, "data_storage_version": file_version, "storage_options": mem.options}
        clusters, schema = ray.put(plan.clusters), sequences_schema(meta)
        n = rec.sequences + rec.holdout_sequences
        digest = ray_tasks.digest.remote(self.spec, clusters)
        writes = [ray_tasks.write_rows.remote(self.spec, clusters, schema, a, b, target) for a, b in task_ranges(n)]
        advance = self.bars.counter(f"write {rec.drop_id} (ray)", len(writes))
        fragments = []
        for ref in writes:  # in write order: the commit appends them in this order
            fragments += [FragmentMetadata.from_json(f) for f in ray.get(ref)]
            advance(1)
        bookkeeping(rec, plan.packed, plan.clusters, digest=ray.get(digest))
        _hold_for_tests()
        mem.commit_fragments(fragments, read_version, rec, meta, documents)


def task_ranges(n: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering n rows: at least MIN_TASK_ROWS each, at most two tasks per CPU of the cluster."""
    if n == 0:
        return []
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = max(MIN_TASK_ROWS, math.ceil(n / (2 * cpus)))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _hold_for_tests() -> None:
    """Tests kill the driver here: fragments written, nothing committed (tests/test_ingest_ray.py)."""
    path = os.environ.get(HOLD_ENV)
    if path:
        Path(path).write_text(str(os.getpid()))
        time.sleep(600)


def worker_error(exc: BaseException) -> BaseException:
    """The exception a worker raised, unwrapped from Ray's (and Ray Data's) task errors."""
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
