"""The Ray engine's scan, as the driver sees it: the workers' metadata rows (components.ingest.ray_tasks.scan_file)
merged into what the local scan gives (components.ingest.scan.Scanned), with numpy arrays only.

The driver never turns a per-document value into a Python object: the documents' hashes come out of the Arrow
metadata as one 'S32' array (components.core.digests.Digests), and the place of each document's tokens in
the scan's blocks (`TokenStore`) is computed with numpy over the flattened lists. What the driver keeps per
document is then what the local engine keeps: 32 bytes of hash, and 24 + 8 bytes of token place and count (the
local engine's spill index: 20 bytes). Per file it reads its name, digest, issues and manifest as Python values.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.core.digests import Digests
from components.ingest.drops import DropIssue, DropManifest, DropScan
from components.ingest.scan import Scanned

FILE_COLUMNS = ["index", "name", "digest", "n_bytes", "n_document_files", "issues", "manifest"]


class TokenStore:
    """Where each document's tokens are, in the scan's blocks: the driver's stand-in for the local spill
    (plan_drop reads only `lengths_at()`; rows are built on the workers). Index: the document's index in the drop
    (`Scanned.hashes`), as the spill's."""

    def __init__(self) -> None:
        self.where = np.empty((0, 3), np.int64)  # block, row in the block, token offset in the row's cell
        self.counts = np.empty(0, np.int64)
        self.blocks: list = []

    def lengths_at(self, indices: np.ndarray) -> np.ndarray:
        return self.counts[np.asarray(indices, dtype=np.int64)]

    def tokens(self, index: int) -> np.ndarray:
        raise RuntimeError("the Ray engine's driver never reads tokens; rows are built on the workers")


def scan_metadata(metas: list[pa.Table]) -> pa.Table:
    """Every block's metadata rows, with their block and row in it, in drop order (file, then part)."""
    tables = [
        m.append_column("block", pa.array(np.full(len(m), b, np.int64))).append_column(
            "row", pa.array(np.arange(len(m), dtype=np.int64))
        )
        for b, m in enumerate(metas)
    ]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables).sort_by([("index", "ascending"), ("part", "ascending")])


def merge_files(meta: pa.Table, scan: DropScan) -> DropScan:
    """The per-file results merged into `scan` as `DropScan.documents` would have gathered them, file after file."""
    if meta.num_columns:
        for row in meta.filter(pc.field("is_file")).select(FILE_COLUMNS).to_pylist():
            if row["digest"]:
                scan.digests[row["name"]] = row["digest"]
            scan.n_document_files += row["n_document_files"]
            scan.contents.n_bytes += row["n_bytes"]
            scan.contents.issues += [DropIssue(*issue) for issue in json.loads(row["issues"])]
            if row["manifest"]:
                scan.contents.manifest = DropManifest.model_validate_json(row["manifest"])
    scan.finish()
    return scan


def fill_scanned(meta: pa.Table, out: Scanned) -> pa.Table:
    """Documents read and their hashes, in drop order, into `out`; returns the file rows."""
    if not meta.num_columns:
        return meta
    files = meta.filter(pc.field("is_file"))
    out.n_documents = int(pc.sum(files["n_documents"]).as_py() or 0)
    out.hashes = Digests(base=_digests(files["hashes"]))
    return files


def token_store(meta: pa.Table, files: pa.Table, hashes: Digests, blocks: list) -> TokenStore:
    """The place of each document's tokens: every file tokenized each of its non-empty documents into its token
    rows, in order, so the flattened rows follow the drop's documents (index i: `hashes[i]`)."""
    store = TokenStore()
    store.blocks = blocks
    if not meta.num_columns:
        return store
    rows = meta.filter(~pc.field("is_file"))
    lists = rows["tok_lengths"].combine_chunks()
    counts = lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if len(counts) != len(hashes):
        raise RuntimeError(f"the scan's workers returned {len(counts)} documents' tokens for {len(hashes)}")
    row_of = _parents(lists)
    per_row = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    before = np.cumsum(counts) - counts  # tokens before each document, over all rows
    row_first = np.concatenate([[0], np.cumsum(per_row)[:-1]])  # each row's first document
    offset = before - before[row_first][row_of] if len(counts) else before
    store.where = np.stack([rows["block"].to_numpy()[row_of], rows["row"].to_numpy()[row_of], offset], axis=1)
    store.counts = counts
    return store


def _parents(lists: pa.ListArray) -> np.ndarray:
    """The row of each flattened value."""
    return pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)


def _digests(column: pa.ChunkedArray) -> np.ndarray:
    """A list<binary(32)> column's values, flattened, as a contiguous 'S32' array (byte for byte)."""
    flat = column.combine_chunks().flatten()
    if not len(flat):
        return np.empty(0, "S32")
    data = flat.buffers()[1]
    return np.frombuffer(data, dtype="S32", count=len(flat), offset=flat.offset * 32).copy()
