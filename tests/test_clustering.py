from pathlib import Path

import numpy as np
import pytest
from scipy.sparse.linalg import norm as sparse_norm

from components.core.packing import Packed, pack
from components.core.text import load_tokenizer
from components.ingest import clustering
from components.ingest.clustering import assign_clusters, sequence_features

PYLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
LICENSES = Path("/usr/share/common-licenses")
L = 128


def code_and_prose() -> tuple[Packed, np.ndarray]:
    """Python sources and English license texts packed together; label 1 = the row starts in a license.

    Plain, lightly commented modules: docstring-heavy code (heapq.py) is half English prose, whose rows rightly
    join the licenses, and table-like code (stringprep.py) rightly forms a cluster of its own; either would make
    k=2 measure something other than code versus prose.
    """
    names = ("shlex.py", "pprint.py", "tracemalloc.py", "multiprocessing/queues.py")
    code = [(PYLIB / n).read_text(encoding="utf-8") for n in names]
    prose = [(LICENSES / n).read_text(encoding="utf-8") for n in ("GPL-3", "Apache-2.0")]
    tok = load_tokenizer("byte")
    packed = pack(tok.encode_batch(code + prose), L, tok.eos_id, tok.pad_id)
    return packed, (packed.first_doc >= len(code)).astype(int)


def subset(packed: Packed, rows: np.ndarray) -> Packed:
    return Packed(packed.tokens[rows], packed.lengths[rows], packed.first_doc[rows])


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    return sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / labels.size


def test_features_are_l2_normalized_and_ignore_padding():
    packed, _ = code_and_prose()
    x = sequence_features(packed.tokens, packed.lengths)
    assert x.shape == (len(packed), 2**14) and x.dtype == np.float32
    np.testing.assert_allclose(sparse_norm(x, axis=1), 1.0, rtol=1e-5)
    last = len(packed) - 1
    assert packed.lengths[last] < L
    garbage = packed.tokens.copy()
    garbage[last, packed.lengths[last] :] = packed.tokens[0, : L - packed.lengths[last]]
    np.testing.assert_array_equal(sequence_features(garbage, packed.lengths)[last].toarray(), x[last].toarray())


def test_features_see_bigram_order_and_scale_tf_sublinearly():
    tok = load_tokenizer("byte")
    ab, ba = tok.encode_batch(["import os", "os import"])
    rows = np.stack([ab, ba])
    x = sequence_features(rows, np.array([len(ab), len(ba)]), n_features=2**16)
    assert x[0].nnz == x[1].nnz and (x[0] != x[1]).nnz > 0  # same unigrams, different bigrams
    # "aaaa": unigram a (tf 4) and bigram aa (tf 3) -> weights 1 + log 4 and 1 + log 3 before L2.
    aaaa = tok.encode_batch(["aaaa"])[0][None, :]
    w = np.sort(sequence_features(aaaa, np.array([4]), n_features=2**16).data)
    np.testing.assert_allclose(w / w[1], [(1 + np.log(3)) / (1 + np.log(4)), 1.0], rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_python_and_license_text_fall_into_different_clusters(seed):
    packed, truth = code_and_prose()
    rows = np.arange(len(packed))
    train_rows, holdout_rows = rows[rows % 10 != 0], rows[rows % 10 == 0]
    train, holdout = subset(packed, train_rows), subset(packed, holdout_rows)
    train_labels, holdout_labels = assign_clusters(train, holdout, k=2, seed=seed)
    assert train_labels.dtype == np.uint16 and holdout_labels.dtype == np.uint16  # 2 bytes a row (LABEL)
    assert set(train_labels.tolist()) == {0, 1}
    assert purity(train_labels, truth[train_rows]) > 0.9
    assert purity(holdout_labels, truth[holdout_rows]) > 0.9


def test_clusters_are_deterministic_for_a_seed():
    packed, _ = code_and_prose()
    holdout = subset(packed, np.arange(5))
    first = assign_clusters(packed, holdout, k=4, seed=7)
    second = assign_clusters(packed, holdout, k=4, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[0].max() <= 3


@pytest.mark.parametrize("n_train", [1, 3])
def test_k_larger_than_the_train_set(n_train):
    packed, _ = code_and_prose()
    train, holdout = subset(packed, np.arange(n_train)), subset(packed, np.arange(n_train, n_train + 4))
    train_labels, holdout_labels = assign_clusters(train, holdout, k=8, seed=0)
    assert train_labels.shape == (n_train,) and holdout_labels.shape == (4,)
    assert sorted(set(train_labels.tolist())) == list(range(n_train))  # every distinct sequence its own cluster
    assert ((holdout_labels >= 0) & (holdout_labels < n_train)).all()


def test_identical_sequences_give_one_cluster_and_empty_holdout_works():
    packed, _ = code_and_prose()
    same = subset(packed, np.zeros(6, dtype=int))
    train_labels, holdout_labels = assign_clusters(same, subset(packed, np.arange(0)), k=4, seed=0)
    assert train_labels.tolist() == [0] * 6 and holdout_labels.shape == (0,)


def test_sequences_differing_only_in_padding_count_as_one():
    packed, _ = code_and_prose()
    last = subset(packed, np.array([len(packed) - 1] * 3))
    last.tokens[1, last.lengths[1] :] = 7  # same real tokens, other padding
    train = Packed(np.concatenate([last.tokens, packed.tokens[:1]]), np.append(last.lengths, L), np.zeros(4, np.int64))
    train_labels, _ = assign_clusters(train, subset(packed, np.arange(0)), k=4, seed=0)
    assert sorted(set(train_labels.tolist())) == [0, 1]
    assert len(set(train_labels[:3].tolist())) == 1 and train_labels[3] != train_labels[0]


def test_fit_on_a_sample_in_chunks_still_labels_every_sequence(monkeypatch):
    monkeypatch.setattr(clustering, "FIT_SAMPLE", 200)
    monkeypatch.setattr(clustering, "CHUNK", 64)
    packed, truth = code_and_prose()
    holdout = subset(packed, np.arange(0, len(packed), 7))
    train_labels, holdout_labels = assign_clusters(packed, holdout, k=2, seed=0)
    assert train_labels.shape == (len(packed),) and holdout_labels.shape == (len(holdout),)
    assert purity(train_labels, truth) > 0.9
    np.testing.assert_array_equal(train_labels[::7], holdout_labels)  # same sequence, same nearest center


def test_empty_train_is_an_error():
    packed, _ = code_and_prose()
    with pytest.raises(ValueError, match="no train sequences"):
        assign_clusters(subset(packed, np.arange(0)), packed, k=2, seed=0)
