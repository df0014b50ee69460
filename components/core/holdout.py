"""Which documents of a drop are held out: by document hash, whole documents, a share of the tokens.

Why by hash: the split depends only on the drop's set of documents, never on the file order, so a re-run gives the
same split, and equal documents share one. Across drops the ingest stores a document only once (a document already
in the memory is dropped from a new drop before this split, components.ingest.pipeline), so a held-out document is
never trained on later. components.ingest.dedup walks the same order bucket by bucket on disk (`walk_holdout`,
`meet_floor`, `too_small` are shared with it); components.core.packing lays the two splits out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.core.digests import Digests


class DropTooSmall(ValueError):
    """The drop cannot give one training sequence and the minimum number of held-out sequences."""


def hash_fractions(hashes: Sequence[str]) -> np.ndarray:
    """Map sha256 hex digests to uniform floats in [0, 1); 52 bits so float64 holds them exactly."""
    if isinstance(hashes, Digests):
        return hashes.fractions()
    return np.array([int(h[:13], 16) for h in hashes], dtype=np.float64) / float(16**13)


def holdout_mask(hashes: Sequence[str], holdout_fraction: float) -> np.ndarray:
    return hash_fractions(hashes) < holdout_fraction


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
