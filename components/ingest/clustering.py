"""Per-drop k-means over cheap hashed n-gram features: the clusters become the arms of the replay bandit.

Arms should group sequences of a similar kind of text (code, legal prose, tables, ...) so that forgetting, which
differs by kind, is tracked per arm. Token unigrams and bigrams capture that kind well enough, cost one numpy pass,
and need no vocabulary: ids are hashed into a fixed number of buckets whatever the tokenizer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.preprocessing import normalize

from components.core.ondisk import Arrays, DiskArray
from components.core.packing import Packed
from components.ingest.write_order import label_counts

FIT_SAMPLE = 20_000  # k-means is fit on at most this many train sequences, then every sequence is assigned
CHUNK = 8_192  # sequences featurized at once when assigning, which bounds memory on large drops ...
CHUNK_TOKENS = 1 << 20  # ... and at most this many tokens (~40 bytes of temporaries each): 2,048 rows of 512
N_FEATURES = 2**14  # hashed n-gram buckets
TABLE_VOCAB = 1024  # token ids below this: buckets looked up in tables (1 M bigrams), not hashed per token
N_INIT = 1  # 3 cost 3x the fit (the largest part of an ingest's time) for no arm quality the tests could see
LABEL = np.uint16  # a row's cluster: 2 bytes a row (clusters_per_drop <= 1024), cast per record batch when written

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads structured keys (small ids, id pairs) evenly over the buckets (in place)."""
    x = keys if keys.dtype == np.uint64 else keys.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= _MIX1  # uint64 arrays wrap on overflow, which is what we want
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _buckets(tokens: np.ndarray, n_features: int) -> np.ndarray:
    """Each row's unigram then bigram keys, mixed and reduced to a bucket: [N, 2L - 1] uint64."""
    n, width = tokens.shape
    ids = tokens.astype(np.uint64)
    keys = np.empty((n, 2 * width - 1), dtype=np.uint64)
    keys[:, :width] = ids
    # Distinct 64-bit keys: a unigram is its id (< 2^32); a bigram (a, b) puts a + 1 in the high half.
    np.bitwise_or((ids[:, :-1] + np.uint64(1)) << np.uint64(32), ids[:, 1:], out=keys[:, width:])
    mixed = _mix(keys)
    if n_features & (n_features - 1) == 0:  # a power of two: the same buckets as % without a 64-bit division
        mixed &= np.uint64(n_features - 1)
    else:
        mixed %= np.uint64(n_features)
    return mixed


@functools.lru_cache(maxsize=4)
def _bucket_tables(size: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The bucket of every unigram id < size and of every bigram (a, b) at a * size + b, as `_buckets` gives them."""
    dtype = np.int16 if n_features < 2**15 else np.int32
    ids = np.arange(size, dtype=np.int32)
    uni = _buckets(ids[:, None], n_features)[:, 0].astype(dtype)  # one-token rows: their unigram
    pairs = np.stack([np.repeat(ids, size), np.tile(ids, size)], axis=1)  # two-token rows: (a, b)
    bi = _buckets(pairs, n_features)[:, 2].astype(dtype)
    return uni, bi


def sequence_features(tokens: np.ndarray, lengths: np.ndarray, n_features: int = N_FEATURES) -> sp.csr_matrix:
    """Hashed unigram + bigram counts of each row's real tokens, sublinear tf (1 + log), L2-normalized.

    Returns a float32 CSR matrix [N, n_features] with sorted indices. Padding (positions >= length) never
    contributes. Built row-wise: each row's bucket ids are sorted in place (numpy's sort of short rows) and counted
    as runs, which gives the canonical CSR directly; a COO matrix summed by scipy (`tocsr`, then sorting every
    row's indices) built the same matrix bit for bit at 3-4x the cost, the largest part of a byte-tokenizer ingest.
    """
    tokens = np.asarray(tokens)
    n, width = tokens.shape
    span = 2 * width - 1  # L unigrams + L - 1 bigrams per row
    lengths = np.asarray(lengths, dtype=np.int64)
    dtype = np.int16 if n_features < 2**15 else np.int32
    top = int(tokens.max()) + 1 if tokens.size else 1
    if top <= TABLE_VOCAB:  # a small vocabulary (the byte tokenizer's 384): every bucket is looked up in a table
        size = 1 << max(0, (top - 1).bit_length())
        uni, bi = _bucket_tables(size, n_features)
        ids = tokens.astype(np.int64)
        buckets = np.empty((n, span), dtype=dtype)
        np.take(uni, ids, out=buckets[:, :width])
        np.take(bi, ids[:, :-1] * size + ids[:, 1:], out=buckets[:, width:])
        del ids
    else:
        buckets = _buckets(tokens, n_features).astype(dtype)
    cols = np.arange(width)
    buckets[:, :width][cols[None, :] >= lengths[:, None]] = n_features  # padding: sorts last, never counted
    buckets[:, width:][cols[None, :-1] + 1 >= lengths[:, None]] = n_features
    buckets.sort(axis=1)
    first = np.ones(buckets.shape, dtype=bool)  # the first key of each run of equal buckets
    np.not_equal(buckets[:, 1:], buckets[:, :-1], out=first[:, 1:])
    first &= buckets < n_features
    starts = np.flatnonzero(first.ravel())
    row = starts // span
    row_end = row * span + np.clip(np.minimum(2 * lengths - 1, span), 0, None)[row]  # past the row's real keys
    counts = np.minimum(np.append(starts[1:], n * span), row_end) - starts
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
    data = 1.0 + np.log(counts.astype(np.float32))
    x = sp.csr_matrix((data, buckets.ravel()[starts].astype(np.int32), indptr), shape=(n, n_features))
    return normalize(x, norm="l2", copy=False)


def _chunks(packed: Packed, rows: np.ndarray | None, chunk_tokens: int) -> Iterator[tuple[slice, object]]:
    """(where in the output, which rows) for CHUNK rows at a time: slices of the part when `rows` is None (no array
    of every row number), else pieces of `rows`."""
    n = len(packed) if rows is None else len(rows)
    step = max(1, min(CHUNK, chunk_tokens // max(1, packed.tokens.shape[1])))
    for i in range(0, n, step):
        out = slice(i, min(i + step, n))
        yield out, (out if rows is None else rows[out])


def _features_in_chunks(packed: Packed, rows: np.ndarray | None = None, chunk_tokens: int = CHUNK_TOKENS):
    """Features of CHUNK rows at a time, built as consumed: a drop's rows (and their tokens, which may be built
    from the ingest's token spill) are never all in memory at once."""
    for _, idx in _chunks(packed, rows, chunk_tokens):
        yield sequence_features(packed.tokens[idx], packed.lengths[idx])


def _nearest(x: sp.csr_matrix, c64: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Nearest center of each row: argmin of ||c||^2 - 2 x.c in float64 (||x||^2 is the same for every center).

    This is the expansion scikit-learn's `pairwise_distances_argmin` computes too (its Euclidean ArgKmin: GEMM in
    float64), as one sparse-dense product: 0.11 s against 2.5 s on the 41 k rows of a 20 MB drop, with not one
    label different there and the same row digests in benchmarks/scale_ingest.py. Ties go to the lower center.
    """
    return np.argmin(norms[None, :] - 2.0 * np.asarray(x @ c64.T), axis=1)


def fit_sample(n_train: int, seed: int) -> np.ndarray:
    """The train rows (sorted positions) k-means is fit on: a seeded sample of at most FIT_SAMPLE."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=min(n_train, FIT_SAMPLE), replace=False))


def fit_centers(sample: Packed, k: int, seed: int, chunk_tokens: int = CHUNK_TOKENS) -> np.ndarray | None:
    """k-means centers fit on the sample rows (`fit_sample`, built into a Packed); None when k_eff == 1.

    k_eff = min(k, distinct sequences in the sample). Both ingest engines fit here, once, on the driver.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tokens = np.asarray(sample.tokens)
    real = np.where(np.arange(tokens.shape[1]) < sample.lengths[:, None], tokens, -1)
    n_distinct = np.unique(real, axis=0).shape[0]  # padding content must not make equal sequences distinct
    k_eff = min(k, n_distinct)
    if k_eff == 1:
        return None
    x_fit = sp.vstack(list(_features_in_chunks(sample, None, chunk_tokens)), format="csr")
    return KMeans(n_clusters=k_eff, n_init=N_INIT, random_state=seed).fit(x_fit).cluster_centers_


def label_rows(
    part: Packed,
    centers: np.ndarray,
    rows: np.ndarray | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    arrays: Arrays | None = None,
) -> np.ndarray | DiskArray:
    """Nearest center (LABEL) of each of `rows` (default: all) of `part`, featurized CHUNK rows at a time; with
    `arrays` (the ingest's, components.core.ondisk) each chunk's labels are appended to a DiskArray on disk, so the
    labels hold no memory that grows with the drop; without, a plain ndarray (tests, split_and_pack callers)."""
    c64 = np.asarray(centers, dtype=np.float64)
    norms = (c64**2).sum(axis=1)
    n = len(part) if rows is None else len(rows)
    out = np.empty(n, dtype=LABEL) if arrays is None else arrays.new(LABEL)
    for where, idx in _chunks(part, rows, chunk_tokens):
        labels = _nearest(sequence_features(part.tokens[idx], part.lengths[idx]), c64, norms)
        if arrays is None:
            out[where] = labels
        else:
            out.append(labels)
    return out


def drop_unused(
    centers: np.ndarray, train_labels: np.ndarray | DiskArray, arrays: Arrays | None = None
) -> tuple[np.ndarray, np.ndarray | DiskArray]:
    """Hash collisions or a sample unlike the rest can leave a center without train sequences: drop it, so every
    arm can be sampled from; the train labels are renumbered 0..k_used-1 by a table, a block at a time (a DiskArray
    into a new one, `arrays` owning it; the old one is removed), with no per-row temporary wider than the labels."""
    used = np.flatnonzero(label_counts(train_labels, minlength=len(centers)))
    if used.size == len(centers):
        return centers, train_labels
    renumber = np.zeros(len(centers), dtype=train_labels.dtype)
    renumber[used] = np.arange(used.size)
    if not isinstance(train_labels, DiskArray):
        return centers[used], renumber[train_labels]
    if arrays is None:
        raise ValueError("drop_unused: labels on disk are renumbered into a new DiskArray; pass the `arrays` owning it")
    out = arrays.new(train_labels.dtype)
    for block in train_labels.blocks():
        out.append(renumber[block])
    arrays.release(train_labels)
    return centers[used], out


def assign_clusters(
    train: Packed,
    holdout: Packed,
    k: int,
    seed: int,
    chunk_tokens: int = CHUNK_TOKENS,
    arrays: Arrays | None = None,
) -> tuple[np.ndarray | DiskArray, np.ndarray | DiskArray]:
    """Fit k-means on (a seeded sample of) the train sequences; label train and holdout by nearest center.

    Cluster ids are LABEL (uint16) in 0..k_used-1, where k_used <= k_eff counts the clusters that own at least one train
    sequence: every arm can always be sampled from. Deterministic for the same input and seed. With `arrays` the
    labels are DiskArrays (label_rows). The Ray engine runs the same steps with the labelling on its workers
    (components.ingest.engine_ray).
    """
    n_train = len(train)
    if n_train == 0:
        raise ValueError("cannot cluster a drop with no train sequences")
    sample = fit_sample(n_train, seed)
    centers = fit_centers(Packed(train.tokens[sample], train.lengths[sample], sample), k, seed, chunk_tokens)
    if centers is None:
        if arrays is None:
            return np.zeros(n_train, LABEL), np.zeros(len(holdout), LABEL)
        return _zeros(arrays, n_train), _zeros(arrays, len(holdout))
    train_labels = label_rows(train, centers, None, chunk_tokens, arrays)
    centers, train_labels = drop_unused(centers, train_labels, arrays)
    return train_labels, label_rows(holdout, centers, None, chunk_tokens, arrays)


def _zeros(arrays: Arrays, n: int) -> DiskArray:
    out = arrays.new(LABEL)
    for start in range(0, n, CHUNK):
        out.append(np.zeros(min(CHUNK, n - start), LABEL))
    return out
