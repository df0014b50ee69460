"""A drop's deduplication and holdout choice, partitioned on disk by the digests' leading bits.

Issue 11 wants an ingest's memory flat in the drop's size. Deciding which documents to store (the first occurrence
of each hash no live drop stored) and which of them to hold out needs the drop's digests grouped by value and, for
the holdout, walked in hash order; np.unique over the whole drop (~115 bytes a document at its peak) would grow
with the drop. Instead the digests go, with what the step needs of each document (its index; for the holdout its
token count too), into 2^k bucket files by their leading k bits (`Buckets`), k chosen so one bucket holds at most
`bucket_bytes` of records (the scan's tokenize batch size, components.ingest.limits). A bucket holds every
occurrence of its digests, so it is decided alone, and the buckets in order visit the digests in ascending order:
  * `new_documents`: per bucket, np.unique gives each digest's first occurrence (records are written in drop
    order), the memory is asked about those (components.adapters.documents, KNOWN_CHUNK at a time), and the new
    ones' indices are kept; the result, sorted, is exactly the in-memory `new_documents_in_memory`.
  * `choose_holdout`: components.core.holdout.choose_holdout walks the distinct hashes in ascending hash-fraction
    order, and the fraction is a digest's leading 52 bits, so the buckets in order, each sorted, give that order.
    The walk carries `held` from bucket to bucket (the total, hence the target, is known from the token counts
    first) and stops reading buckets once the target is met; the hash-last document, in the last non-empty bucket,
    always trains. The result is exactly holdout.choose_holdout's. Only if the walk leaves fewer than the
    `min_holdout_sequences` floor (tiny drops, holdout_fraction ~0) does `_meet_floor` run, and then on every
    bucket read back at once: the in-memory code, with the drop's distinct documents in memory.
What stays in memory per document is what the caller passes and gets back (the kept indices, 8 bytes a kept
document; the holdout mask, 1 byte). A drop that repeats one document millions of times puts them all in one
bucket: the bound then holds for its distinct documents, not its repeats.

Where: `$AMR_HOME/tmp/ingest-<drop_id>-<step><b>-<pid>` (the driver's pid), beside the token spill, removed when
the step ends (`with Buckets(...)`); after a SIGKILL the next ingest's components.ingest.spill.remove_leftovers
removes them, as it does the spill's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from components.adapters.memory import Memory
from components.core.digests import Digests
from components.core.holdout import meet_floor, too_small, walk_holdout
from components.ingest.spill import PREFIX, remove_leftovers

KNOWN_CHUNK = 1 << 17  # distinct hashes per memory lookup: bounds the hex strings a lookup holds (~20 MB)
BLOCK = 1 << 16  # documents bucketed at a time
MAX_BITS = 12  # at most 4,096 bucket files
FIRST = np.dtype([("digest", "S32"), ("index", "<i8")])
SIZED = np.dtype([("digest", "S32"), ("index", "<i8"), ("tokens", "<i8")])


def bucket_bits(n: int, itemsize: int, bucket_bytes: int) -> int:
    """The k of 2^k buckets holding n records of `itemsize` bytes, at most `bucket_bytes` each on average."""
    need = n * itemsize / max(1, bucket_bytes)
    return min(MAX_BITS, max(0, int(np.ceil(np.log2(need))) if need > 1 else 0))


class Buckets:
    """Records of a drop's documents in 2^bits files by their digest's leading bits, each file in drop order."""

    def __init__(self, root: Path, tag: str, dtype: np.dtype, n: int, bucket_bytes: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)
        self.dtype, self.bits = dtype, bucket_bits(n, dtype.itemsize, bucket_bytes)
        self.paths = [root / f"{PREFIX}{tag}{b}-{os.getpid()}" for b in range(1 << self.bits)]
        self.counts = np.zeros(1 << self.bits, np.int64)

    def __enter__(self) -> Buckets:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for b in np.flatnonzero(self.counts).tolist():  # counted before written: a failed write is removed too
            self.paths[b].unlink(missing_ok=True)

    def add(self, records: np.ndarray) -> None:
        """Append records (in drop order) to their buckets."""
        if not len(records):
            return
        top = (
            np.ascontiguousarray(records["digest"]).view(np.uint8).reshape(-1, 32)[:, :8].copy().view(">u8").reshape(-1)
        )
        bucket = (top >> np.uint64(64 - self.bits)).astype(np.int64) if self.bits else np.zeros(len(records), np.int64)
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=len(self.paths))
        ends = np.cumsum(counts)
        self.counts += counts
        for b in np.flatnonzero(counts):
            with open(self.paths[b], "ab") as out:
                out.write(records[order[ends[b] - counts[b] : ends[b]]].tobytes())

    def read(self, b: int) -> np.ndarray:
        if not self.counts[b]:
            return np.empty(0, self.dtype)
        return np.fromfile(self.paths[b], dtype=self.dtype)

    def filled(self, hashes: Digests, extra: np.ndarray | None = None) -> Buckets:
        """Every document of `hashes` (index i: hashes[i]; `extra` its token count), BLOCK at a time."""
        for start in range(0, len(hashes), BLOCK):
            raw = hashes.raw_block(start, start + BLOCK)
            records = np.empty(len(raw), self.dtype)
            records["digest"], records["index"] = raw, np.arange(start, start + len(raw))
            if extra is not None:
                records["tokens"] = extra[start : start + len(raw)]
            self.add(records)
        return self


def new_documents(memory: Memory, hashes: Digests, root: Path, tag: str, bucket_bytes: int) -> np.ndarray:
    """Indices of the documents to store, ascending: the first of each hash that no live drop stored yet (module
    docstring; equal to new_documents_in_memory)."""
    kept = []
    with Buckets(root, f"{tag}-dedup", FIRST, len(hashes), bucket_bytes).filled(hashes) as buckets:
        for b in range(len(buckets.paths)):
            records = buckets.read(b)
            if not len(records):
                continue
            raw, first = np.unique(records["digest"], return_index=True)  # records are in drop order
            new = unknown(memory, Digests(base=raw))
            kept.append(records["index"][first[new]])
    return np.sort(np.concatenate(kept)) if kept else np.empty(0, np.int64)


def new_documents_in_memory(memory: Memory, hashes: Digests) -> np.ndarray:
    """`new_documents` with np.unique over the whole drop: the reference the partitioned one equals."""
    raw, first = np.unique(hashes.raw, return_index=True)
    return np.sort(first[unknown(memory, Digests(base=raw))]).astype(np.int64)


def unknown(memory: Memory, unique: Digests) -> np.ndarray:
    """Which of the distinct `unique` hashes no live drop stored, asked KNOWN_CHUNK at a time, so the hex strings
    a lookup needs are bounded whatever the drop's size."""
    new = np.ones(len(unique), dtype=bool)
    for start in range(0, len(unique), KNOWN_CHUNK):
        wanted = [v.decode() for v in unique.hex(start, start + KNOWN_CHUNK)]
        known = memory.known_documents(wanted)
        new[start : start + len(wanted)] = [h not in known for h in wanted]
    return new


def choose_holdout(
    doc_tokens: np.ndarray, hashes: Digests, holdout_fraction: float, needed: int, root: Path, tag: str, size: int
) -> np.ndarray:
    """components.core.holdout.choose_holdout, bucket by bucket (module docstring): the same mask, exactly."""
    doc_tokens = np.asarray(doc_tokens, dtype=np.int64)
    total = int(doc_tokens.sum())
    target = holdout_fraction * total
    mask = np.zeros(len(doc_tokens), dtype=bool)
    with Buckets(root, f"{tag}-holdout", SIZED, len(doc_tokens), size).filled(hashes, doc_tokens) as buckets:
        filled = np.flatnonzero(buckets.counts)
        if len(filled) < 2 and _distinct(buckets, filled) < 2:
            raise too_small(total, _distinct(buckets, filled), None)
        held = 0
        for b in filled.tolist():
            if held >= target:
                break
            groups, inverse, sizes = _groups(buckets.read(b))
            last = b == filled[-1]  # the hash-last document always trains
            in_holdout, held = walk_holdout(sizes[:-1] if last else sizes, held, target)
            in_holdout = np.append(in_holdout, False) if last else in_holdout
            mask[groups["index"][in_holdout[inverse]]] = True
        if held < needed:  # the floor: every bucket at once (module docstring)
            held = _floor(buckets, filled, mask, held, needed, total)
    return mask


def _groups(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bucket's records grouped by digest, ascending (as holdout.choose_holdout's np.unique): each group's
    records, each record's group, each group's tokens."""
    raw, inverse = np.unique(records["digest"], return_inverse=True)
    sizes = np.bincount(inverse, weights=records["tokens"], minlength=len(raw)).astype(np.int64)
    return records, inverse.reshape(-1), sizes


def _distinct(buckets: Buckets, filled: np.ndarray) -> int:
    return sum(len(np.unique(buckets.read(b)["digest"])) for b in filled.tolist())


def _floor(buckets: Buckets, filled: np.ndarray, mask: np.ndarray, held: int, needed: int, total: int) -> int:
    parts = [buckets.read(b) for b in filled.tolist()]
    records = np.concatenate(parts)
    raw, first, inverse = np.unique(records["digest"], return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, weights=records["tokens"], minlength=len(raw)).astype(np.int64)
    in_holdout = mask[records["index"][first]]
    held = meet_floor(sizes, Digests(base=raw).fractions(), in_holdout, held, needed)
    if held < needed:
        raise too_small(total, len(raw), (needed, held))
    mask[records["index"]] = in_holdout[inverse]
    return held
