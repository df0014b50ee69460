"""`ingest.engine: ray`: Ray Data workers read, tokenize, build, label and write a drop's rows; this process (the
driver) decides from metadata and commits once. The same results as the local engine, row for row and digest for
digest (tests/test_ingest_ray.py); README "Scaling ingest with Ray" says when it pays off.

The split of the work:
* Workers (components.ingest.ray_tasks): the content hash (a Ray Data pass of the drop's files, hashed, nothing
  parsed), then the scan (a Ray Data pass of the files, one task per file: each worker opens its file itself, from
  the directory or S3 (credentials from the worker's environment), checks and parses it with the code the local
  engine runs (DropScan.file_documents), hashes each document and tokenizes it). Its tokens stay in the object store.
* Driver: the per-document metadata only (hashes, token counts: numpy arrays): deduplication against the memory,
  the split and every row's place (components.ingest.scan.plan_drop, components.core.packing.split_layouts, as
  local), and the k-means centers, fit once on a sample of train rows that a worker builds
  (components.ingest.clustering.fit_centers).
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

Memory and parallelism: every task (the scan's Ray Data map, the metadata reads, the sample, labelling, digest and
write tasks) asks Ray for 1 CPU and ingest.max_memory_mb of its `memory` resource, so Ray places no more tasks on
a node than its CPUs and memory hold; inside, a task derives its batch sizes from what Ray reserved for it, over
its own process's heap (components.ingest.ray_tasks.task_limits: the local engine's rule, so a bound too small is
refused with the local engine's message). A bound no node can reserve is refused before any task (`check_memory`:
Ray would wait forever). The driver keeps the `limits` the local engine keeps (its plan's metadata check, the
k-means fit's chunks); what it holds per document is numpy only (components.ingest.ray_scan). ingest.workers > 0
caps the tasks running at once (Ray Data's TaskPoolStrategy for the scan, `run_capped` for the rest); 0 leaves it
to Ray. The row digest stays one task: it is one sha256 stream over the rows in order, which must equal the local
engine's `rows_hash` (it runs beside the writes).

Ray itself: `ingest.ray_address` '' starts a local Ray with this machine's CPUs (and it stops with this process);
otherwise it joins that cluster. A Ray already initialized in this process (tests, notebooks) is used as it is.
Workers need this package (the image of infra/k8s/raycluster.yaml); the tokenizer travels from the driver.
A drop's tokens wait in Ray's object store between the scan and the writes (4 bytes a token, spread over the
nodes); past its size Ray spills them to the nodes' local disks. The scan is one task per file: a drop of many
tiny files pays Ray's per-task overhead for each.
"""

from __future__ import annotations

import logging
import math
import os
import re
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
from components.ingest.clustering import LABEL, drop_unused, fit_centers, fit_sample
from components.ingest.drops import DropRef, DropScan, DropSource
from components.ingest.limits import MB, Limits
from components.ingest.ray_scan import TokenStore, fill_scanned, merge_files, scan_metadata, token_store
from components.ingest.rows import bookkeeping
from components.ingest.scan import TOKENIZE_BYTES, Plan, Scanned, plan_drop, unchanged
from components.ingest.spill import TOKEN

HOLD_ENV = "AMR_TEST_HOLD_BEFORE_COMMIT"  # tests only: a file to create, then wait to be killed, before the commit
RETRY_NOTE = re.compile(r"\nFailed to [^\n]* after \d+/\d+ attempts")  # ray.data._internal.util
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


def check_memory(max_memory_mb: int) -> None:
    """Refuse a bound no alive node with a CPU can reserve for a task: Ray would wait for such a node forever. (No
    node with a CPU at all, an autoscaling cluster scaled to zero: left to the autoscaler.)"""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    largest = int(max((n.get("memory", 0) for n in nodes), default=0) // MB)
    if nodes and largest < max_memory_mb:
        raise ValueError(
            f"ingest.max_memory_mb = {max_memory_mb} is more than any Ray node can reserve for a task (the largest "
            f"offers {largest} MB of Ray's `memory` resource): Ray would never schedule the ingest's tasks. "
            f"Fix: set ingest.max_memory_mb to {largest} or less, or add nodes with more memory."
        )


class RayEngine:
    """`limits` (components.ingest.limits, from ingest.max_memory_mb) bound this process, as the local engine's;
    every Ray task reserves ingest.max_memory_mb of Ray's `memory` resource and keeps under it (`task_limits`), and
    ingest.workers > 0 caps the tasks running at once (module docstring)."""

    def __init__(
        self, source: DropSource, ref: DropRef, settings: Settings, tokenizer: Tokenizer, bars, limits: Limits | None
    ) -> None:
        self.source, self.ref, self.settings, self.tokenizer, self.bars = source, ref, settings, tokenizer, bars
        self.limits = limits
        connect(settings.ingest.ray_address)
        check_memory(settings.ingest.max_memory_mb)
        self.options = {"num_cpus": 1, "memory": settings.ingest.max_memory_mb * MB}  # every task's request
        self.workers = settings.ingest.workers  # the most tasks at once; 0: as many as Ray can place
        self.store = TokenStore()
        self.spec = None  # ObjectRef of the RowsSpec of the latest plan
        self._tokenizer_ref = None

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.store, self.spec, self._tokenizer_ref = TokenStore(), None, None  # Ray frees what nothing references
        if isinstance(exc, ray.exceptions.RayError):  # say what failed on the worker, not where it ran
            raise worker_error(exc) from None

    def _scan_files(self, parse: bool, tokenize: bool) -> tuple[pa.Table, list]:
        """The scan's metadata rows (components.ingest.ray_scan.scan_metadata) and its blocks (tokens included)."""
        names = self.source.list_files(self.ref.drop_id)
        if not names:
            return scan_metadata([]), []
        if self._tokenizer_ref is None:
            self._tokenizer_ref = ray.put(self.tokenizer)
        kwargs = {
            "location": self.source.location,  # the root of the drops: workers open the source themselves
            "s3_json": self.settings.s3.model_dump_json(),
            "drop_id": self.ref.drop_id,
            "limit": self.settings.ingest.max_document_bytes,
            "tokenizer": self._tokenizer_ref if tokenize else None,
            "parse": parse,
            "context": self.settings.ingest.context_length,
        }
        items = [{"index": i, "name": n} for i, n in enumerate(names)]
        data = ray.data.DataContext.get_current()
        default = data.target_max_block_size
        batch = self.limits.tokenize_bytes if self.limits else TOKENIZE_BYTES
        data.target_max_block_size = TOKEN.itemsize * batch  # a task's output block: about one batch's tokens
        try:
            ds = ray.data.from_items(items, override_num_blocks=len(items))  # the dataset keeps a copy of `data`
        finally:
            data.target_max_block_size = default
        ds = ds.map_batches(
            ray_tasks.scan_files,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs=kwargs,
            compute=ray.data.TaskPoolStrategy(size=self.workers or None),
            **self.options,
        )
        blocks = list(ds.to_arrow_refs())
        calls = [lambda ref=ref: ray_tasks.metadata.options(**self.options).remote(ref) for ref in blocks]
        return scan_metadata(ray.get(run_capped(calls, self.workers))), blocks

    def content_hash(self) -> str:
        meta, _ = self._scan_files(parse=False, tokenize=False)
        return merge_files(meta, self._drop_scan()).contents.content_hash

    def _drop_scan(self) -> DropScan:
        return DropScan(self.source, self.ref.drop_id, self.settings.ingest.max_document_bytes)

    def scan(self, content: str, tokenize: bool = True) -> Scanned:
        meta, blocks = self._scan_files(parse=True, tokenize=tokenize)
        scan = merge_files(meta, self._drop_scan())
        out = Scanned(scan.contents, tokenized=tokenize)
        files = fill_scanned(meta, out)
        if tokenize and scan.contents.ok:  # filled in place: plan_drop may hold it while a re-scan adds the tokens
            store = token_store(meta, files, out.hashes, blocks)
            self.store.where, self.store.counts, self.store.blocks = store.where, store.counts, store.blocks
        return unchanged(out, content, self.ref.drop_id)

    def plan(self, memory: Memory, scanned: Scanned, content: str) -> Plan:
        def rescan() -> Scanned:
            return self.scan(content)

        args = (memory, scanned, self.settings, self.tokenizer, self.store, rescan)
        plan = plan_drop(*args, cluster=False, limits=self.limits)
        if plan.packed is None:
            return plan
        cfg, tok = self.settings.ingest, self.tokenizer
        spec = ray_tasks.RowsSpec(
            self.ref.drop_id,
            self.store.lengths_at(plan.at),
            scanned.hashes.take(plan.keep),
            (cfg.context_length, tok.eos_id, tok.pad_id, cfg.holdout_fraction, cfg.min_holdout_sequences),
            self.store.where[plan.at],
            self.store.blocks,
            plan.packed.doc_in_holdout,  # the workers need not choose it again
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
        tokens, lengths = ray.get(ray_tasks.sample_rows.options(**self.options).remote(self.spec, sample))
        chunk = {} if self.limits is None else {"chunk_tokens": self.limits.chunk_tokens}
        centers = fit_centers(Packed(tokens, lengths, sample), cfg.clusters_per_drop, cfg.seed, **chunk)
        if centers is None:
            return np.zeros(n_train, LABEL), np.zeros(n_holdout, LABEL)
        centers, train = drop_unused(centers, self._labels("train", n_train, centers))
        holdout = self._labels("holdout", n_holdout, centers)
        return train.astype(LABEL), holdout.astype(LABEL)

    def _labels(self, split: str, n: int, centers: np.ndarray) -> np.ndarray:
        ref, task = ray.put(centers), ray_tasks.labels.options(**self.options)
        calls = [lambda a=a, b=b: task.remote(self.spec, split, a, b, ref) for a, b in self._ranges(n)]
        parts = ray.get(run_capped(calls, self.workers))
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def write(self, mem: Memory, rec: DropRecord, plan: Plan, meta: dict, documents: pa.Table) -> None:
        """Fragments written by the workers, the digest by one more task, then one commit (under writer())."""
        from lance.fragment import FragmentMetadata

        uri, read_version, file_version = mem.sequences_for_fragments(meta)
        target = {"uri": uri, "data_storage_version": file_version, "storage_options": mem.options}
        clusters, schema = ray.put(plan.clusters), sequences_schema(meta)
        n = rec.sequences + rec.holdout_sequences
        write, ranges = ray_tasks.write_rows.options(**self.options), self._ranges(n)
        calls = [lambda: ray_tasks.digest_rows.options(**self.options).remote(self.spec, clusters)]
        calls += [lambda a=a, b=b: write.remote(self.spec, clusters, schema, a, b, target) for a, b in ranges]
        advance = self.bars.counter(f"write {rec.drop_id} (ray)", len(calls))
        digest, *writes = run_capped(calls, self.workers, advance)
        fragments = [FragmentMetadata.from_json(f) for part in ray.get(writes) for f in part]  # in write order
        bookkeeping(rec, plan.packed, plan.clusters, digest=ray.get(digest))
        _hold_for_tests()
        mem.commit_fragments(fragments, read_version, rec, meta, documents)

    def _ranges(self, n: int) -> list[tuple[int, int]]:
        """[start, stop) ranges covering n rows: at least MIN_TASK_ROWS each, at most two tasks per CPU of the
        cluster (or per worker, ingest.workers)."""
        if n == 0:
            return []
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(MIN_TASK_ROWS, math.ceil(n / (2 * min(cpus, self.workers or cpus))))
        return [(a, min(a + size, n)) for a in range(0, n, size)]


def run_capped(calls: list, cap: int, advance=None) -> list:
    """Submit the tasks (`calls` return an ObjectRef) in order with at most `cap` running at once (0: all at once;
    Ray runs as many as the cluster's CPUs and memory can place); their refs, in order, once all are done."""
    refs, running = [], []
    for call in calls:
        while cap and len(running) >= cap:
            done, running = ray.wait(running, num_returns=1)
            if advance:
                advance(len(done))
        refs.append(call())
        running.append(refs[-1])
    while running:
        done, running = ray.wait(running, num_returns=1)
        if advance:
            advance(len(done))
    return refs


def _hold_for_tests() -> None:
    """Tests kill the driver here: fragments written, nothing committed (tests/test_ingest_ray.py)."""
    path = os.environ.get(HOLD_ENV)
    if path:
        Path(path).write_text(str(os.getpid()))
        time.sleep(600)


def worker_error(exc: BaseException) -> BaseException:
    """The exception a worker raised, unwrapped from Ray's (and Ray Data's) task errors, without the retry advice
    Ray Data appends to its message (RETRY_NOTE)."""
    while True:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (RETRY_NOTE.split(exc.args[0], maxsplit=1)[0], *exc.args[1:])
    return exc
