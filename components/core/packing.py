"""Packing a drop's documents into fixed-length sequences, after the train/holdout split by document hash
(components.core.holdout).

Why packing: documents of any length become rows of exactly `context_length` tokens, each document followed by
eos, so no compute is spent on padding except in the last row of a split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.core.digests import Digests
from components.core.holdout import choose_holdout
from components.core.lazy import LazyArray
from components.core.ondisk import Arrays, DiskArray

SPLIT_BLOCK = 1 << 18  # documents laid out at once when a split's arrays are written to disk


def doc_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Packed:
    tokens: np.ndarray  # [N, L] int32, padded with pad_id (a LazyRows, built on demand, from split_layouts)
    lengths: np.ndarray  # [N] int32 real tokens per row (== L except possibly the last; a LazyArray from split_layouts)
    first_doc: np.ndarray  # [N] int64 index of the document owning the row's first token (a LazyArray there too)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def pack(token_lists: Sequence[np.ndarray], context_length: int, eos_id: int, pad_id: int) -> Packed:
    """Concatenate documents, each followed by eos, and cut the stream into rows of `context_length`.

    The final partial row is kept (padded, `lengths < L`) so that no token of the drop is dropped.
    """
    L = context_length
    doc_lens = np.array([len(t) for t in token_lists], dtype=np.int64)
    if doc_lens.size == 0:
        return Packed(np.empty((0, L), np.int32), np.empty(0, np.int32), np.empty(0, np.int64))
    total = int(doc_lens.sum()) + doc_lens.size  # one eos after each document
    n_rows = -(-total // L)
    tokens = np.full(n_rows * L, pad_id, dtype=np.int32)
    eos = np.array([eos_id], dtype=np.int32)
    # Written straight into the padded output: no full-size temporaries (this runs on drops of gigabytes).
    np.concatenate([part for t in token_lists for part in (np.asarray(t, dtype=np.int32), eos)], out=tokens[:total])
    lengths = np.full(n_rows, L, dtype=np.int32)
    lengths[-1] = total - (n_rows - 1) * L
    # Every document spans >= 1 token (its eos), so starts are strictly increasing and searchsorted is exact.
    starts = np.cumsum(doc_lens + 1) - (doc_lens + 1)
    first_doc = np.searchsorted(starts, np.arange(n_rows, dtype=np.int64) * L, side="right") - 1
    return Packed(tokens.reshape(n_rows, L), lengths, first_doc.astype(np.int64))


@dataclass
class SplitPacked:
    train: Packed
    holdout: Packed
    train_doc_hashes: Digests  # per sequence: hash of its first_doc (taken by first_doc: no per-row array)
    holdout_doc_hashes: Digests
    doc_in_holdout: np.ndarray  # [n_docs] bool: each input document's split


class Layout:
    """One split's rows, decided from its documents' lengths alone; any range of rows is built on demand.

    The documents (`docs`, input indices, in input order) are concatenated, each followed by eos, and cut into rows
    of `context_length`, exactly as `pack` does, but no row exists until `rows(a, b)` builds it from
    `fetch(doc) -> tokens`. Ingest fetches from its token spill (components.ingest.spill), so a drop of any size is
    packed with memory for its metadata (a few ints per document, none per row: a row's length and first document
    are computed when read, `lengths` and `first`) and one range of rows.
    """

    def __init__(self, docs: np.ndarray, doc_lengths: np.ndarray, context_length: int, eos_id: int, pad_id: int, fetch):
        spans = np.asarray(doc_lengths, dtype=np.int64) + 1  # one eos after each document
        self._setup(docs, np.cumsum(spans) - spans, int(spans.sum()), context_length, eos_id, pad_id, fetch)

    @classmethod
    def on_disk(cls, docs: DiskArray, starts: DiskArray, total: int, context_length: int, eos_id, pad_id, fetch):
        """A layout whose per-document arrays (`docs`, and `starts`: each document's first token in the split,
        ascending) are DiskArrays (components.core.ondisk), read a slice at a time; `total`: the split's tokens."""
        layout = cls.__new__(cls)
        layout._setup(docs, starts, total, context_length, eos_id, pad_id, fetch)
        return layout

    def _setup(self, docs, starts, total: int, context_length: int, eos_id: int, pad_id: int, fetch) -> None:
        self.docs, self.L, self.eos, self.pad, self.fetch = docs, context_length, eos_id, pad_id, fetch
        self.starts, self.total = starts, int(total)
        self.n_rows = -(-self.total // context_length)
        # Per row, computed per block (components.core.lazy): no array grows with the rows.
        self.lengths = LazyArray(self.n_rows, self._lengths, np.int32)  # == L except the last row
        self.first = LazyArray(self.n_rows, self._first, np.int64)  # local index of each row's first document
        self._last: tuple[int, np.ndarray | None] = (-1, None)  # the last document fetched (see `_doc`)

    def _lengths(self, rows: np.ndarray) -> np.ndarray:
        last = self.total - (self.n_rows - 1) * self.L
        return np.where(rows == self.n_rows - 1, last, self.L).astype(np.int32)

    def _first(self, rows: np.ndarray) -> np.ndarray:
        # Every document spans >= 1 token (its eos), so starts are strictly increasing and searchsorted is exact.
        return self.starts.searchsorted(rows * self.L, side="right") - 1  # ndarray's, or a DiskArray's

    def _doc(self, d: int, doc: int) -> np.ndarray:
        """Tokens of document d (input index `doc`); the last one is kept, so a long document read by several runs
        of rows in a row (the rows of one cluster, components.ingest.rows) is fetched once."""
        last, tokens = self._last
        if last != d or tokens is None:
            tokens = np.asarray(self.fetch(doc))
            self._last = (d, tokens)
        return tokens

    def spans(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first and last document (local indices) of each row range [a, b), for all of them at once (one
        searchsorted each, the in-memory sample of a DiskArray's starts then a read per place)."""
        lo, hi = a * self.L, np.minimum(b * self.L, self.total)
        first = self.starts.searchsorted(lo, side="right") - 1
        last = self.starts.searchsorted(np.maximum(hi - 1, lo), side="right") - 1
        return first, last

    def rows(self, a: int, b: int, docs: tuple | None = None) -> np.ndarray:
        """Rows [a, b) as an int32 array [b - a, L], padded with pad_id. `docs`: (first, starts, input indices) of
        the documents the rows cover, when the caller read them already (LazyRows, for many ranges at once)."""
        lo, hi = a * self.L, min(b * self.L, self.total)
        out = np.full((b - a) * self.L, self.pad, dtype=np.int32)
        if lo >= hi:
            return out.reshape(b - a, self.L)
        if docs is None:
            first, last = (int(v[0]) for v in self.spans(np.array([a]), np.array([b])))
            docs = (
                first,
                self.starts[first : last + 1].tolist(),
                self.docs[first : last + 1].tolist(),
            )  # one slice each
        first, starts, indices = docs
        for d, start, doc in zip(range(first, first + len(starts)), starts, indices, strict=True):
            tokens = self._doc(d, doc)
            n = len(tokens)
            cut_lo, cut_hi = max(lo - start, 0), min(hi - start, n + 1)  # the part of [tokens, eos] inside the range
            if cut_lo < min(cut_hi, n):
                out[start + cut_lo - lo : start + min(cut_hi, n) - lo] = tokens[cut_lo : min(cut_hi, n)]
            if cut_hi == n + 1:
                out[start + n - lo] = self.eos
        return out.reshape(b - a, self.L)

    def runs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Rows of the ranges [a[i], b[i]) concatenated; the documents they cover are found and read for all the
        ranges at once (one gather of their starts and one of their input indices), then each range is built."""
        first, last = self.spans(a, b)
        counts = np.maximum(last - first + 1, 0)
        ends = np.cumsum(counts)
        flat = np.repeat(first, counts) + np.arange(int(ends[-1])) - np.repeat(ends - counts, counts)
        starts, indices = self.starts[flat].tolist(), self.docs[flat].tolist()
        return np.concatenate(
            [
                self.rows(int(a[i]), int(b[i]), (int(first[i]), starts[e - c : e], indices[e - c : e]))
                for i, (c, e) in enumerate(zip(counts.tolist(), ends.tolist(), strict=True))
            ]
        )


class LazyRows:
    """A Layout's rows behind the array interface `Packed.tokens` needs: `shape`, `len`, and indexing by a slice or
    an array of row numbers (each run of consecutive rows is built with one `Layout.rows` call)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.shape = (layout.n_rows, layout.L)
        self.dtype = np.dtype(np.int32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            a, b, step = index.indices(self.shape[0])
            if step != 1:
                raise IndexError("LazyRows takes slices of step 1 only")
            return self.layout.rows(a, max(a, b))
        idx = np.asarray(index, dtype=np.int64)
        if idx.ndim == 0:
            return self.layout.rows(int(idx), int(idx) + 1)[0]
        if idx.size == 0:
            return np.empty((0, self.shape[1]), dtype=np.int32)
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1  # runs of consecutive rows
        return self.layout.runs(idx[np.concatenate([[0], cuts])], idx[np.concatenate([cuts - 1, [idx.size - 1]])] + 1)


def split_layouts(
    doc_lengths: np.ndarray,
    hashes: Sequence[str],
    context_length: int,
    eos_id: int,
    pad_id: int,
    holdout_fraction: float,
    min_holdout_sequences: int,
    fetch,
    mask: np.ndarray | None = None,
    arrays: Arrays | None = None,
) -> SplitPacked:
    """`split_and_pack` from the documents' token counts: the split and every row's place are decided from
    metadata; the rows' tokens (`Packed.tokens`, a LazyRows) are built from `fetch(doc)` when read. `mask`: the
    split `choose_holdout` gives, if the caller decided it already (ingest does, partitioned on disk:
    components.ingest.dedup). With `arrays` (an ingest's, components.core.ondisk) each split's documents and starts
    are DiskArrays, built SPLIT_BLOCK documents at a time, so a layout holds no per-document array in memory."""
    if len(doc_lengths) != len(hashes):
        raise ValueError(f"{len(doc_lengths)} documents but {len(hashes)} hashes")
    hashes = hashes if isinstance(hashes, Digests) else Digests(hashes)
    doc_tokens = np.asarray(doc_lengths, dtype=np.int64) + 1  # + eos
    needed = (min_holdout_sequences - 1) * context_length + 1  # packs into >= min_holdout_sequences rows
    if mask is None:
        mask = choose_holdout(doc_tokens, hashes, holdout_fraction, needed)

    def layout(held: bool) -> tuple[Packed, Digests]:
        if arrays is None:
            idx = np.flatnonzero(mask == held)
            lay = Layout(idx, doc_tokens[idx] - 1, context_length, eos_id, pad_id, fetch)
        else:
            idx, starts, total = _split_on_disk(doc_tokens, mask, held, arrays)
            lay = Layout.on_disk(idx, starts, total, context_length, eos_id, pad_id, fetch)
        first_doc = lay.first.map(idx)  # input index of each row's first document, per block
        return Packed(LazyRows(lay), lay.lengths, first_doc), hashes.take(first_doc)

    train, train_hashes = layout(False)
    holdout, holdout_hashes = layout(True)
    return SplitPacked(train, holdout, train_hashes, holdout_hashes, mask)


def _split_on_disk(doc_tokens: np.ndarray, mask: np.ndarray, held: bool, arrays: Arrays):
    """One split's documents (input indices) and their starts, as DiskArrays built SPLIT_BLOCK documents at a time;
    and the split's total tokens."""
    docs, starts, total = arrays.new(np.int64), arrays.new(np.int64), 0
    for at in range(0, len(mask), SPLIT_BLOCK):
        idx = np.flatnonzero(mask[at : at + SPLIT_BLOCK] == held) + at
        spans = doc_tokens[idx]
        docs.append(idx)
        starts.append(total + np.cumsum(spans) - spans)
        total += int(spans.sum())
    return docs, starts, total


def split_and_pack(
    token_lists: Sequence[np.ndarray],
    hashes: Sequence[str],
    context_length: int,
    eos_id: int,
    pad_id: int,
    holdout_fraction: float,
    min_holdout_sequences: int,
) -> SplitPacked:
    """Split documents by hash, then pack each split in input order; `first_doc` indexes the input documents.

    The in-memory form of `split_layouts` (same code), with every row and per-row value built as plain arrays."""
    if len(token_lists) != len(hashes):
        raise ValueError(f"{len(token_lists)} token lists but {len(hashes)} hashes")
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    args = (context_length, eos_id, pad_id, holdout_fraction, min_holdout_sequences)
    packed = split_layouts(lengths, hashes, *args, fetch=token_lists.__getitem__)
    for part in (packed.train, packed.holdout):
        part.tokens = part.tokens[0 : len(part.lengths)]
        part.lengths, part.first_doc = np.asarray(part.lengths), np.asarray(part.first_doc)
    packed.train_doc_hashes = packed.train_doc_hashes.take(np.arange(len(packed.train_doc_hashes)))
    packed.holdout_doc_hashes = packed.holdout_doc_hashes.take(np.arange(len(packed.holdout_doc_hashes)))
    return packed
