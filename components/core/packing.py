"""Deterministic train/holdout split by document hash, then packing into fixed-length sequences.

Why by hash: the split depends only on the drop's set of documents, never on the file order, so a re-run gives the
same rows, and equal documents share one split. Across drops the ingest stores a document only once (a document
already in the memory is dropped from a new drop before this split, components.ingest.pipeline), so a held-out
document is never trained on later.
Why packing: documents of any length become rows of exactly `context_length` tokens, each document followed by
eos, so no compute is spent on padding except in the last row of a split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.core.digests import Digests
from components.core.lazy import LazyArray
from components.core.ondisk import Arrays, DiskArray

SPLIT_BLOCK = 1 << 18  # documents laid out at once when a split's arrays are written to disk


class DropTooSmall(ValueError):
    """The drop cannot give one training sequence and the minimum number of held-out sequences."""


def doc_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_fractions(hashes: Sequence[str]) -> np.ndarray:
    """Map sha256 hex digests to uniform floats in [0, 1); 52 bits so float64 holds them exactly."""
    if isinstance(hashes, Digests):
        return hashes.fractions()
    return np.array([int(h[:13], 16) for h in hashes], dtype=np.float64) / float(16**13)


def holdout_mask(hashes: Sequence[str], holdout_fraction: float) -> np.ndarray:
    return hash_fractions(hashes) < holdout_fraction


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


def choose_holdout(
    doc_tokens: np.ndarray, hashes: Sequence[str], holdout_fraction: float, needed_tokens: int
) -> np.ndarray:
    """Boolean holdout mask over documents, decided per distinct hash; a document is never split.

    Target: `holdout_fraction` of the drop's tokens (eos included), so the held-out *sequences* follow the fraction
    whatever the document sizes. Walk the distinct hashes in ascending hash-fraction order and hold a document out
    when that brings the held-out tokens closer to the target (a document that would overshoot by more than the
    remaining gap stays in train, and a smaller one later in the order may fill the gap); stop once the target is
    met. With many small documents this is the hash prefix below `holdout_fraction`; with a few large ones the
    share is as close as whole documents allow (within half a document of the target). If that leaves fewer than
    `needed_tokens` (the `min_holdout_sequences` floor), the smallest remaining documents are added, ties by hash.
    The last distinct document always stays in train. Depends only on the set of documents, not their order;
    raises DropTooSmall when the floor cannot be met.

    Why whole documents: the tail of a document is easy to predict from its head, so a document split across
    train and holdout would make the held-out loss measure memorisation; the ingest stores each document once
    (components.ingest.pipeline), so the whole-document rule also keeps it in one split across drops.
    """
    digests = hashes if isinstance(hashes, Digests) else Digests(hashes)
    raw, inverse = np.unique(digests.raw, return_inverse=True)  # raw digests sort as their hex strings do
    uniq = Digests(base=raw)
    if len(uniq) < 2:
        raise too_small(int(doc_tokens.sum()), len(uniq), None)
    # Walked in ascending hash fraction: the digests' leading 52 bits, so np.unique's order already is (ties,
    # practically never, in digest order). components.ingest.dedup walks the same order bucket by bucket.
    group_tokens = np.bincount(inverse, weights=doc_tokens, minlength=len(uniq)).astype(np.int64)
    total = int(group_tokens.sum())
    in_holdout, held = walk_holdout(group_tokens[:-1], 0, holdout_fraction * total)  # the hash-last one trains
    in_holdout = np.append(in_holdout, False)
    held = meet_floor(group_tokens, hash_fractions(uniq), in_holdout, held, needed_tokens)
    if held < needed_tokens:
        raise too_small(total, len(uniq), (needed_tokens, held))
    return in_holdout[inverse.reshape(-1)]


def walk_holdout(sizes: np.ndarray, held: int, target: float) -> tuple[np.ndarray, int]:
    """The walk of `choose_holdout` over documents of `sizes` tokens, in walk order, from `held` tokens held out:
    each one is held out when that brings the held-out tokens closer to `target`; it stops once the target is met.
    Returns which were held out and the new total (a caller walking in parts carries it to the next part)."""
    in_holdout = np.zeros(len(sizes), dtype=bool)
    for g, size in enumerate(np.asarray(sizes, dtype=np.int64).tolist()):
        if held >= target:
            break
        if held + size - target < target - held:  # closer to the target with it than without
            in_holdout[g], held = True, held + size
    return in_holdout, held


def too_small(total: int, distinct: int, floor: tuple[int, int] | None) -> DropTooSmall:
    """The error of a drop with fewer than two distinct documents, or (`floor`: needed and largest held-out tokens)
    too few tokens for the min_holdout_sequences floor."""
    if floor is None:
        return DropTooSmall(
            f"drop has {total} tokens in {distinct} distinct document(s); it needs at least two "
            "distinct documents (one for training, one held out)"
        )
    needed, held = floor
    return DropTooSmall(
        f"drop has {total} tokens (one eos per document included) in {distinct} distinct documents; "
        f"it needs at least {needed} held-out tokens plus one more document for training, and the "
        f"largest possible holdout gives only {held} held-out tokens"
    )


def meet_floor(sizes: np.ndarray, fractions: np.ndarray, in_holdout: np.ndarray, held: int, needed: int) -> int:
    """Add train documents to the holdout until it has `needed` tokens, leaving one in train; returns the total.

    Smallest first, but as soon as one document alone closes the gap the smallest such is taken and the loop ends,
    so the larger documents stay available to close it: the floor is met whenever the documents still in train can
    meet it with one of them left over.
    """
    rest = np.flatnonzero(~in_holdout)
    rest = rest[np.lexsort((fractions[rest], sizes[rest]))]  # ascending size, ties by hash
    rest_sizes = sizes[rest]
    k = 0
    while held < needed and rest.size - k > 1:
        j = k + int(np.searchsorted(rest_sizes[k:], needed - held, side="left"))  # smallest that closes the gap
        if j >= rest.size:  # none does alone: take the smallest and look again
            j, k = k, k + 1
        in_holdout[rest[j]], held = True, held + int(rest_sizes[j])
    return held


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
