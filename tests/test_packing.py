import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from components.core.holdout import DropTooSmall, hash_fractions, holdout_mask
from components.core.packing import doc_hash, pack, split_and_pack
from components.core.text import load_tokenizer
from tests.conftest import real_texts

PYLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
EOS, PAD = 1, 0


def real_docs(n: int = 60) -> list[str]:
    """Paragraphs of real Python sources: many documents of very different lengths."""
    docs: list[str] = []
    for name in ("shlex.py", "getopt.py", "heapq.py", "fractions.py"):
        docs += [p for p in (PYLIB / name).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return docs[:n]


def tokenize(docs: list[str]) -> list[np.ndarray]:
    return load_tokenizer("byte").encode_batch(docs)


def real_tokens(packed) -> np.ndarray:
    return np.concatenate([row[:n] for row, n in zip(packed.tokens, packed.lengths, strict=True)])


def test_pack_keeps_every_token_once_in_order_with_eos_after_each_doc():
    ids = tokenize(real_docs())
    L = 64
    packed = pack(ids, L, EOS, PAD)
    expected = np.concatenate([np.append(t, EOS) for t in ids])
    n = -(-expected.size // L)
    assert packed.tokens.shape == (n, L) and packed.tokens.dtype == np.int32
    assert packed.lengths.dtype == np.int32 and packed.first_doc.dtype == np.int64
    assert (packed.lengths[:-1] == L).all() and 0 < packed.lengths[-1] <= L
    np.testing.assert_array_equal(real_tokens(packed), expected)
    assert (packed.tokens[-1, packed.lengths[-1] :] == PAD).all()
    # first_doc owns the row's first token: recompute from document start offsets.
    starts = np.cumsum([0] + [len(t) + 1 for t in ids])
    for r, d in enumerate(packed.first_doc):
        assert starts[d] <= r * L < starts[d + 1]


def test_pack_exact_multiple_has_no_empty_row_and_empty_input_gives_no_rows():
    ids = [np.arange(3, 10, dtype=np.int32), np.arange(20, 27, dtype=np.int32)]  # 2 x (7 + eos) = 16 tokens
    packed = pack(ids, 8, EOS, PAD)
    assert packed.tokens.shape == (2, 8) and packed.lengths.tolist() == [8, 8]
    assert packed.tokens[0, -1] == EOS and packed.first_doc.tolist() == [0, 1]
    empty = pack([], 8, EOS, PAD)
    assert empty.tokens.shape == (0, 8) and len(empty) == 0


def test_doc_hash_is_sha256_of_utf8():
    text = "naïve – café"
    assert doc_hash(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_holdout_mask_is_deterministic_and_close_to_the_fraction():
    lines = (PYLIB / "statistics.py").read_text(encoding="utf-8").splitlines()
    hashes = [doc_hash(f"{i}:{line}") for i, line in enumerate(lines)]
    fractions = hash_fractions(hashes)
    assert ((fractions >= 0) & (fractions < 1)).all()
    mask = holdout_mask(hashes, 0.2)
    np.testing.assert_array_equal(mask, holdout_mask(hashes, 0.2))
    assert abs(mask.mean() - 0.2) < 0.05


def split(docs: list[str], L: int = 64, fraction: float = 0.1, min_holdout: int = 2):
    return split_and_pack(tokenize(docs), [doc_hash(d) for d in docs], L, EOS, PAD, fraction, min_holdout)


def members(part) -> list[str]:
    """The documents packed into a split, read back from its tokens: byte ids never equal eos, so eos splits them."""
    stream = real_tokens(part)
    assert stream.size and stream[-1] == EOS
    tok = load_tokenizer("byte")
    return [tok.decode(chunk) for chunk in np.split(stream, np.flatnonzero(stream == EOS) + 1)[:-1]]


def test_split_is_deterministic_and_independent_of_input_order():
    docs = real_docs()
    first, second = split(docs), split(docs)
    np.testing.assert_array_equal(first.train.tokens, second.train.tokens)
    np.testing.assert_array_equal(first.holdout.tokens, second.holdout.tokens)
    holdout, train = members(first.holdout), members(first.train)
    assert holdout == [d for d in docs if d in set(holdout)]  # input order kept
    assert sorted(holdout + train) == sorted(docs) and holdout and train
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    assert set(members(split(shuffled).holdout)) == set(holdout)


def test_split_keeps_input_order_and_hashes_match_first_doc():
    docs = real_docs()
    result = split(docs)
    for part, hashes in ((result.train, result.train_doc_hashes), (result.holdout, result.holdout_doc_hashes)):
        assert (np.diff(part.first_doc) >= 0).all()
        assert hashes == [doc_hash(docs[i]) for i in part.first_doc]
    assert not set(result.train_doc_hashes) & set(result.holdout_doc_hashes)


def test_duplicate_documents_share_one_split():
    docs = real_docs(30)
    result = split(docs + docs[:10], fraction=0.3)
    holdout, train = members(result.holdout), members(result.train)
    assert holdout and not set(holdout) & set(train)
    assert len(holdout) + len(train) == 40


def test_min_holdout_floor_takes_the_smallest_document_that_meets_it():
    docs = real_docs()
    base = split(docs, L=32, fraction=0.0001, min_holdout=1)  # the target is < 1 token: only the floor holds out
    assert len(members(base.holdout)) == 1
    result = split(docs, L=32, fraction=0.0001, min_holdout=3)  # needs 2 * 32 + 1 tokens, eos included
    sizes = {d: len(d.encode("utf-8")) + 1 for d in docs}
    fits = sorted((size, hash_fractions([doc_hash(d)])[0], d) for d, size in sizes.items() if size >= 65)
    assert members(result.holdout) == [fits[0][2]] and len(result.holdout) >= 3


def test_floor_is_met_by_the_larger_document_when_only_it_can():
    small, large = "import os", stdlib_paragraph(200)  # 10 and 201 tokens with eos; 129 needed
    for fraction in (0.0001, 0.04):  # a target the small one meets, and one closer to the small one
        result = split([small, large], L=64, fraction=fraction, min_holdout=3)
        assert members(result.holdout) == [large] and members(result.train) == [small]


def stdlib_paragraph(n_bytes: int) -> str:
    text = (PYLIB / "heapq.py").read_text(encoding="utf-8")
    return text[:n_bytes]


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.3, 0.45])
def test_holdout_sequences_follow_the_fraction_for_few_large_and_many_small_documents(fraction):
    """Target: a share of the tokens, met with whole documents in hash order (it was a share of the documents)."""
    modules = real_texts("*.py", 30)[20:30]  # 10 whole modules, 3 KB to 100 KB
    paragraphs = real_docs(200)
    for docs, tolerance in ((modules, 0.03), (paragraphs, 0.01)):
        result = split(docs, fraction=fraction)
        share = len(result.holdout) / (len(result.holdout) + len(result.train))
        assert abs(share - fraction) <= tolerance, (len(docs), share)
        assert not set(members(result.holdout)) & set(members(result.train))


def test_train_keeps_a_document_even_when_every_hash_is_below_the_fraction():
    docs = real_docs(5)
    result = split(docs, fraction=0.999999, min_holdout=1)
    assert len(result.train) >= 1 and len(result.holdout) >= 1


def test_drop_too_small_says_how_many_tokens():
    docs = ["import os", "print(os.sep)"]  # 9 + 1 and 13 + 1 tokens
    with pytest.raises(DropTooSmall, match=r"has 24 tokens .* at least 129 held-out tokens"):
        split(docs, L=64, min_holdout=3)
    with pytest.raises(DropTooSmall, match="two distinct documents"):
        split(["import os", "import os"])
    with pytest.raises(DropTooSmall):
        split([])
    assert issubclass(DropTooSmall, ValueError)
