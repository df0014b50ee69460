"""Per-drop k-means over cheap hashed n-gram features: the clusters become the arms of the replay bandit.

Arms should group sequences of a similar kind of text (code, legal prose, tables, ...) so that forgetting, which
differs by kind, is tracked per arm. Token unigrams and bigrams capture that kind well enough, cost one numpy pass,
and need no vocabulary: ids are hashed into a fixed number of buckets whatever the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin
from sklearn.preprocessing import normalize

from components.core.packing import Packed

FIT_SAMPLE = 20_000  # k-means is fit on at most this many train sequences, then every sequence is assigned
CHUNK = 8_192  # sequences featurized at once when assigning, which bounds memory on large drops ...
CHUNK_TOKENS = 1 << 20  # ... and at most this many tokens (~40 bytes of temporaries each): 2,048 rows of 512
N_INIT = 1  # 3 cost 3x the fit (the largest part of an ingest's time) for no arm quality the tests could see

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads structured keys (small ids, id pairs) evenly over the buckets."""
    x = keys.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _MIX1  # uint64 arrays wrap on overflow, which is what we want
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def sequence_features(tokens: np.ndarray, lengths: np.ndarray, n_features: int = 2**14) -> sp.csr_matrix:
    """Hashed unigram + bigram counts of each row's real tokens, sublinear tf (1 + log), L2-normalized.

    Returns a float32 CSR matrix [N, n_features]. Padding (positions >= length) never contributes.
    """
    tokens = np.asarray(tokens)
    n, width = tokens.shape
    cols = np.arange(width)
    lengths = np.asarray(lengths)[:, None]
    uni = cols[None, :] < lengths
    bi = cols[None, :-1] + 1 < lengths
    ids = tokens.astype(np.uint64)
    # Distinct 64-bit keys: a unigram is its id (< 2^32); a bigram (a, b) puts a + 1 in the high half.
    uni_keys = ids[uni]
    bi_keys = ((ids[:, :-1] + np.uint64(1)) << np.uint64(32)) | ids[:, 1:]
    keys = np.concatenate([uni_keys, bi_keys[bi]])
    rows = np.concatenate([np.nonzero(uni)[0], np.nonzero(bi)[0]])
    buckets = (_mix(keys) % np.uint64(n_features)).astype(np.int64)
    data = np.ones(keys.size, dtype=np.float32)
    x = sp.coo_matrix((data, (rows, buckets)), shape=(n, n_features)).tocsr()  # sums duplicate (row, bucket)
    x.data = 1.0 + np.log(x.data)
    return normalize(x, norm="l2", copy=False)


def _features_in_chunks(packed: Packed, rows: np.ndarray | None = None) -> Iterator[sp.csr_matrix]:
    """Features of CHUNK rows at a time, built as consumed: a drop's rows (and their tokens, which may be built
    from the ingest's token spill) are never all in memory at once."""
    idx = np.arange(len(packed)) if rows is None else rows
    step = max(1, min(CHUNK, CHUNK_TOKENS // max(1, packed.tokens.shape[1])))
    for i in range(0, idx.size, step):
        yield sequence_features(packed.tokens[idx[i : i + step]], packed.lengths[idx[i : i + step]])


def _argmin_chunks(chunks: Iterator[sp.csr_matrix], centers: np.ndarray) -> np.ndarray:
    labels = [pairwise_distances_argmin(c, centers) for c in chunks]
    return np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)


def fit_sample(n_train: int, seed: int) -> np.ndarray:
    """The train rows (sorted positions) k-means is fit on: a seeded sample of at most FIT_SAMPLE."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=min(n_train, FIT_SAMPLE), replace=False))


def fit_centers(sample: Packed, k: int, seed: int) -> np.ndarray | None:
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
    x_fit = sp.vstack(list(_features_in_chunks(sample)), format="csr")
    return KMeans(n_clusters=k_eff, n_init=N_INIT, random_state=seed).fit(x_fit).cluster_centers_


def label_rows(part: Packed, centers: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Nearest center of each of `rows` (default: all) of `part`, featurized CHUNK rows at a time."""
    return _argmin_chunks(_features_in_chunks(part, rows), centers)


def drop_unused(centers: np.ndarray, train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash collisions or a sample unlike the rest can leave a center without train sequences: drop it, so every
    arm can be sampled from; the train labels are renumbered 0..k_used-1."""
    used = np.unique(train_labels)
    if used.size < len(centers):
        return centers[used], np.searchsorted(used, train_labels)
    return centers, train_labels


def assign_clusters(train: Packed, holdout: Packed, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit k-means on (a seeded sample of) the train sequences; label train and holdout by nearest center.

    Cluster ids are int32 in 0..k_used-1, where k_used <= k_eff counts the clusters that own at least one train
    sequence: every arm can always be sampled from. Deterministic for the same input and seed. The Ray engine runs
    the same steps with the labelling on its workers (components.ingest.engine_ray).
    """
    n_train = len(train)
    if n_train == 0:
        raise ValueError("cannot cluster a drop with no train sequences")
    sample = fit_sample(n_train, seed)
    centers = fit_centers(Packed(train.tokens[sample], train.lengths[sample], sample), k, seed)
    if centers is None:
        return np.zeros(n_train, np.int32), np.zeros(len(holdout), np.int32)
    centers, train_labels = drop_unused(centers, label_rows(train, centers))
    holdout_labels = label_rows(holdout, centers)
    return train_labels.astype(np.int32), holdout_labels.astype(np.int32)
