"""Deterministic train/holdout split by document hash, then packing into fixed-length sequences.

Why by hash: the same document lands in the same split in every drop and every re-run, whatever the file order,
so a held-out document is never trained on (duplicates included: equal hashes share one split).
Why packing: documents of any length become rows of exactly `context_length` tokens, each document followed by
eos, so no compute is spent on padding except in the last row of a split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class DropTooSmall(ValueError):
    """The drop cannot give one training sequence and the minimum number of held-out sequences."""


def doc_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_fractions(hashes: Sequence[str]) -> np.ndarray:
    """Map sha256 hex digests to uniform floats in [0, 1); 52 bits so float64 holds them exactly."""
    return np.array([int(h[:13], 16) for h in hashes], dtype=np.float64) / float(16**13)


def holdout_mask(hashes: Sequence[str], holdout_fraction: float) -> np.ndarray:
    return hash_fractions(hashes) < holdout_fraction


@dataclass
class Packed:
    tokens: np.ndarray  # [N, L] int32, padded with pad_id
    lengths: np.ndarray  # [N] int32 real tokens per row (== L except possibly the last)
    first_doc: np.ndarray  # [N] int64 index of the document owning the row's first token

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
    train_doc_hashes: list[str]  # per sequence: hash of its first_doc
    holdout_doc_hashes: list[str]


def choose_holdout(
    doc_tokens: np.ndarray, hashes: Sequence[str], holdout_fraction: float, needed_tokens: int
) -> np.ndarray:
    """Boolean holdout mask over documents, decided per distinct hash in ascending hash-fraction order.

    The holdout is a prefix of the distinct hashes sorted by fraction: all with fraction < holdout_fraction, grown
    until it holds `needed_tokens` (eos included), but always leaving the last hash for training. Raises
    DropTooSmall when even that prefix is too short. Depends only on the set of documents, not their order.
    """
    uniq, inverse = np.unique(np.asarray(hashes, dtype=str), return_inverse=True)
    if uniq.size < 2:
        raise DropTooSmall(
            f"drop has {int(doc_tokens.sum())} tokens in {uniq.size} distinct document(s); it needs at least two "
            "distinct documents (one for training, one held out)"
        )
    fractions = hash_fractions(uniq)
    order = np.argsort(fractions, kind="stable")  # ties (practically never) fall back to hash order
    group_tokens = np.bincount(inverse, weights=doc_tokens, minlength=uniq.size)[order]
    cum = np.cumsum(group_tokens)
    n_base = int(np.count_nonzero(fractions < holdout_fraction))
    n_enough = int(np.searchsorted(cum, needed_tokens, side="left")) + 1  # smallest prefix with enough tokens
    n_holdout = min(max(n_base, n_enough), uniq.size - 1)  # >= 1: n_enough >= 1 and uniq.size >= 2
    if cum[n_holdout - 1] < needed_tokens:
        raise DropTooSmall(
            f"drop has {int(cum[-1])} tokens (one eos per document included) in {uniq.size} distinct documents; "
            f"it needs at least {needed_tokens} held-out tokens plus one more document for training, and the "
            f"hash-ordered split gives only {int(cum[n_holdout - 1])} held-out tokens"
        )
    in_holdout = np.zeros(uniq.size, dtype=bool)
    in_holdout[order[:n_holdout]] = True
    return in_holdout[inverse]


def split_and_pack(
    token_lists: Sequence[np.ndarray],
    hashes: Sequence[str],
    context_length: int,
    eos_id: int,
    pad_id: int,
    holdout_fraction: float,
    min_holdout_sequences: int,
) -> SplitPacked:
    """Split documents by hash, then pack each split in input order; `first_doc` indexes the input documents."""
    if len(token_lists) != len(hashes):
        raise ValueError(f"{len(token_lists)} token lists but {len(hashes)} hashes")
    doc_tokens = np.array([len(t) + 1 for t in token_lists], dtype=np.int64)  # + eos
    needed = (min_holdout_sequences - 1) * context_length + 1  # packs into >= min_holdout_sequences rows
    mask = choose_holdout(doc_tokens, hashes, holdout_fraction, needed)

    def pack_subset(idx: np.ndarray) -> tuple[Packed, list[str]]:
        packed = pack([token_lists[i] for i in idx], context_length, eos_id, pad_id)
        packed.first_doc = idx[packed.first_doc].astype(np.int64)
        return packed, [hashes[i] for i in packed.first_doc]

    train, train_hashes = pack_subset(np.flatnonzero(~mask))
    holdout, holdout_hashes = pack_subset(np.flatnonzero(mask))
    return SplitPacked(train, holdout, train_hashes, holdout_hashes)
