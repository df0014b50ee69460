"""A drop's per-document and per-row metadata is what components/ingest/limits.py counts: document hashes as one
numpy array of 32-byte digests, per-row hashes as indices into it, hex only where a column is written; and the
refusal threshold moved with the costs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from components.adapters import documents as doc_index
from components.core.digests import Digests, hex_array
from components.core.holdout import hash_fractions
from components.core.packing import split_layouts
from components.core.text import load_tokenizer
from components.ingest.drops import LocalSource
from components.ingest.limits import MB, check_metadata, derive_limits, fit_mb
from components.ingest.pipeline import Bars
from components.ingest.scan import scan_drop
from components.ingest.spill import Spill
from tests.helpers import jsonl, make_drop, python_docs, settings_for


def test_digests_read_as_the_hex_strings_they_replace():
    texts = python_docs(30)
    hexes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    d = Digests(hexes)
    assert d.raw.dtype == np.dtype("S32") and d.raw.nbytes == 32 * len(texts)
    assert list(d) == hexes and d[3] == hexes[3] and d[-1] == hexes[-1]
    assert d.to_arrow().to_pylist() == hexes
    assert [v.decode() for v in hex_array(d.raw)] == hexes
    # the split's hash fractions and np.unique's order are those of the hex strings
    assert np.array_equal(hash_fractions(d), hash_fractions(hexes))
    assert [v.hex() for v in np.unique(d.raw)] == sorted(set(hexes))
    taken = d.take(np.array([5, 5, 0]))
    assert list(taken) == [hexes[5], hexes[5], hexes[0]] and taken.raw.tolist() == d.raw[[5, 5, 0]].tolist()


def test_a_scanned_drop_holds_raw_digests_and_every_document_at_its_index(tmp_path: Path):
    texts = python_docs(20)
    drop_texts = texts[:12] + texts[3:5] + texts[12:]  # two repeats inside the drop
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(drop_texts)})
    cfg = settings_for(tmp_path / "home")
    tok = load_tokenizer("byte")
    source = LocalSource(tmp_path / "drops")
    [ref] = source.list_drops()
    with Spill(cfg.home, "d1") as spill, Bars(False) as bars:
        scanned = scan_drop(source, ref, cfg, tok, bars, spill)
        assert isinstance(scanned.hashes, Digests) and not hasattr(scanned, "seen")  # no set of digests
        assert scanned.hashes.raw.tolist() == [hashlib.sha256(t.encode()).digest() for t in drop_texts]
        firsts = np.array([i for i, t in enumerate(drop_texts) if drop_texts.index(t) == i])
        assert len(spill) == len(drop_texts)  # repeats tokenized too: spill index == index in the drop
        for i, text in enumerate(drop_texts):
            assert spill.tokens(i).tolist() == tok.encode_batch([text])[0].tolist()
        at = firsts
        keep = scanned.hashes.take(firsts)
        packed = split_layouts(spill.lengths()[at], keep, 128, tok.eos_id, tok.pad_id, 0.2, 1, fetch=spill.tokens)
    for part, per_row in ((packed.train, packed.train_doc_hashes), (packed.holdout, packed.holdout_doc_hashes)):
        assert isinstance(per_row, Digests) and len(per_row) == len(part.lengths)
        assert list(per_row) == [keep[int(i)] for i in part.first_doc]
    index = doc_index.rows("d1", keep, packed.doc_in_holdout)
    assert index.column("doc_hash").to_pylist() == list(keep)
    assert index.column("split").to_pylist() == ["holdout" if h else "train" for h in packed.doc_in_holdout]


def test_the_refusal_threshold_moved_with_the_measured_costs():
    """A 3 GB drop of 8 kB documents at context_length 128: refused under a 2,048 MB bound with the costs of hashes
    as Python strs (250 B a document, 80 B a row), admitted since; a 6 GB drop, refused with ~40 B a row of numpy
    arrays, is admitted now that a row holds only its label; a 30 GB drop, refused with the label in memory (2 B a
    row), is admitted now that the labels are on disk; a 150 GB drop is still refused (its documents' metadata:
    ~100 B each)."""
    limits = derive_limits(2048, 1, 128, base_mb=285)
    docs, rows = 3072 * 128, 3072 * MB // 128
    old_need = (docs * 250 + rows * 80) / MB + fit_mb(128, rows)
    assert old_need > limits.room_mb
    check_metadata(limits, "d1", docs, rows)
    assert (2 * docs * 200 + 2 * rows * 40) / MB + fit_mb(128, rows) > limits.room_mb
    check_metadata(limits, "d1", 2 * docs, 2 * rows)
    assert (10 * docs * 200 + 10 * rows * 4) / MB + fit_mb(128, rows) > limits.room_mb
    check_metadata(limits, "d1", 10 * docs, 10 * rows)
    with pytest.raises(ValueError, match="ingest.max_memory_mb"):
        check_metadata(limits, "d1", 50 * docs, 50 * rows)


def test_a_digest_ending_in_zero_bytes_keeps_all_32_of_them():
    """numpy returns an 'S32' item without its trailing zero bytes: every read must still give 64 hex digits."""
    value = "ab" * 30 + "0000"
    d = Digests([value, "00" * 32])
    assert d[0] == value and d[-1] == "00" * 32 and d.take([1, 0])[1] == value
    assert list(d) == [value, "00" * 32] and d.to_arrow().to_pylist() == [value, "00" * 32]
    assert Digests(d) == d and Digests(d)[0] == value
