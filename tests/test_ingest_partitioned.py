"""Issue 11: deduplication and the holdout choice partitioned on disk (components.ingest.dedup) equal the in-memory
code exactly, on real drops, and leave no bucket file behind, even after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from components.adapters.memory import Memory
from components.core.digests import Digests, digest
from components.core.holdout import DropTooSmall, choose_holdout
from components.core.text import load_tokenizer
from components.ingest import dedup, ingest_source
from components.ingest.drops import LocalSource
from components.ingest.pipeline import Bars
from components.ingest.scan import scan_drop
from components.ingest.spill import Spill
from tests.helpers import jsonl, make_drop, python_docs, settings_for

BUCKET_SIZES = (1, 200, 8 << 20)  # 2^k buckets: k = 12 (the cap: most of them empty), 4 or 5, and 0 (one)


def scanned_drop(cfg, root: Path, drop_id: str):
    """A drop scanned with the byte tokenizer: its hashes and its documents' token counts."""
    source = LocalSource(root)
    ref = next(r for r in source.list_drops() if r.drop_id == drop_id)
    with Spill(cfg.home, drop_id) as spill, Bars(False) as bars:
        scanned = scan_drop(source, ref, cfg, load_tokenizer("byte"), bars, spill)
        return scanned.hashes, spill.lengths()


def test_kept_documents_and_splits_equal_the_in_memory_code(tmp_path):
    """Drop a is ingested; drop b repeats some of a's files and, inside itself, files of its own. For every bucket
    size, the kept indices equal np.unique's, and each kept document's split equals holdout.choose_holdout's, at
    holdout fractions from 0 (the floor alone) to 0.5 and at floors that need `_meet_floor` or cannot be met."""
    cfg = settings_for(tmp_path / "home")
    root = tmp_path / "drops"
    a, b = python_docs(30), python_docs(60, offset=30)
    make_drop(tmp_path / "first", "a", {"a.jsonl": jsonl(a)})
    make_drop(root, "b", {"1.jsonl": jsonl(b[:40] + a[5:15] + b[3:9]), "2.jsonl": jsonl(b[40:] + b[:4] + a[:2])})
    assert [r.status for r in ingest_source(cfg, str(tmp_path / "first"), show_progress=False)] == ["ingested"]
    hashes, lengths = scanned_drop(cfg, root, "b")
    memory = Memory.open(cfg)
    reference = dedup.new_documents_in_memory(memory, hashes)
    assert len(reference) == 60 and len(hashes) == 60 + 10 + 6 + 4 + 2  # a's documents and b's repeats left out
    tmp = cfg.home / "tmp"
    for size in BUCKET_SIZES:
        assert np.array_equal(dedup.new_documents(memory, hashes, tmp, "b", size), reference)
    kept, tokens = hashes.take(reference), lengths[reference] + 1
    for fraction in (0.0, 0.01, 0.1, 0.25, 0.5):
        for needed in (1, 2_000, 60_000, int(tokens.sum())):
            try:
                expected = choose_holdout(tokens, kept, fraction, needed)
            except DropTooSmall as exc:
                for size in BUCKET_SIZES:
                    with pytest.raises(DropTooSmall) as got:
                        dedup.choose_holdout(tokens, kept, fraction, needed, tmp, "b", size)
                    assert str(got.value) == str(exc)
                continue
            for size in BUCKET_SIZES:
                got = dedup.choose_holdout(tokens, kept, fraction, needed, tmp, "b", size)
                assert np.array_equal(got, expected), (fraction, needed, size)
    assert not list(tmp.iterdir())  # every bucket file removed


def test_a_drop_of_few_large_documents_and_repeats_splits_as_in_memory(tmp_path):
    """Few large documents (the stdlib's biggest sources, whole), repeated inside the drop: the walk takes whole
    documents, and a repeated hash is one group, as in memory."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    big = sorted(lib.glob("*.py"), key=lambda p: -p.stat().st_size)[:5]
    texts = [p.read_text(encoding="utf-8") for p in big]
    docs = texts + texts[1:3]  # two repeats: groups of two
    hashes = Digests([digest(t) for t in docs])
    tok = load_tokenizer("byte")
    tokens = np.array([len(t) + 1 for t in tok.encode_batch(docs)], dtype=np.int64)
    for fraction in (0.05, 0.2, 0.4):
        for needed in (1, int(tokens.max())):
            expected = choose_holdout(tokens, hashes, fraction, needed)
            for size in (64, 1 << 20):
                got = dedup.choose_holdout(tokens, hashes, fraction, needed, tmp_path, "few", size)
                assert np.array_equal(got, expected), (fraction, needed, size)
    with pytest.raises(DropTooSmall, match="1 distinct document"):
        dedup.choose_holdout(tokens[:1].repeat(3), hashes.take([0, 0, 0]), 0.1, 1, tmp_path, "one", 64)
    assert not list(tmp_path.glob("ingest-*"))


def test_an_ingest_leaves_no_bucket_file_and_stores_the_same_rows_for_any_bucket_size(tmp_path, monkeypatch):
    """The whole ingest with tiny buckets (thousands of files) stores what it stores with one bucket."""
    docs = python_docs(40)
    results = {}
    for name, size in (("one", 1 << 30), ("many", 100)):
        monkeypatch.setattr("components.ingest.scan.bucket_bytes", lambda limits, size=size: size)
        cfg = settings_for(tmp_path / name / "home")
        make_drop(tmp_path / name / "drops", "d1", {"a.jsonl": jsonl(docs + docs[:7]), "b.jsonl": jsonl(docs[3:9])})
        [res] = ingest_source(cfg, str(tmp_path / name / "drops"), show_progress=False)
        assert res.status == "ingested" and res.record.duplicates == 13
        assert not list((cfg.home / "tmp").iterdir())
        results[name] = (res.record.rows_hash, res.record.sequences, res.record.holdout_sequences)
    assert results["one"] == results["many"]


HOLD = """
import sys, time
from pathlib import Path
from components.core.digests import Digests, digest
from components.ingest.dedup import FIRST, Buckets
from tests.helpers import python_docs
hashes = Digests([digest(t) for t in python_docs(50)])
buckets = Buckets(Path(sys.argv[1]), "d1-dedup", FIRST, len(hashes), 100).filled(hashes)
Path(sys.argv[2]).write_text(str(len(buckets.paths)))
time.sleep(600)
"""


def test_bucket_files_of_a_killed_ingest_are_removed_by_the_next(tmp_path):
    """A process SIGKILLed while its bucket files exist leaves them; the next ingest's spill removes them."""
    cfg = settings_for(tmp_path / "home")
    tmp, ready = cfg.home / "tmp", tmp_path / "ready"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    }
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp), str(ready)], env=env, cwd=Path(__file__).parents[1])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the holding process did not write its buckets"
        left = sorted(p.name for p in tmp.iterdir())
        assert len(left) > 8 and all(n.startswith("ingest-d1-dedup") and n.endswith(f"-{proc.pid}") for n in left)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    make_drop(tmp_path / "drops", "d2", {"a.jsonl": jsonl(python_docs(6))})
    [res] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert res.status == "ingested"
    assert not list(tmp.iterdir())


def test_digests_grow_in_parts_and_read_as_one_array(monkeypatch):
    """Appended digests wait in parts of CHUNK values (no doubling copy of the whole) and read back, whole, taken
    or by block, as the values appended, also when appended to after a read."""
    from components.core import digests as digests_module

    monkeypatch.setattr(digests_module, "CHUNK", 1500)
    values = [digest(str(i)) for i in range(6000)]
    d = Digests()
    for v in values[:3000]:
        d.append(v)
    assert [len(p) for p in d._parts] == [1024, 1024, 1500]  # 1,024 while small, then up to CHUNK
    assert same(d.raw, values[:3000]) and not d._parts  # gathered when read
    taken = d.take([3, 2999])
    d += values[3000:]
    assert len(d) == 6000 and [len(p) for p in d._parts] == [1500, 1500]
    assert same(d.raw_block(5990, 6100), values[5990:]) and same(d.raw, values)
    assert same(taken.raw, [values[3], values[2999]]) and list(taken) == [values[3].hex(), values[2999].hex()]


def same(raw: np.ndarray, values: list[bytes]) -> bool:
    """Byte for byte (`tolist` would strip a digest's trailing zero bytes)."""
    return raw.tobytes() == b"".join(values)


INGEST = """
import sys
from pathlib import Path
import components.ingest.scan as scan
from components.ingest import ingest_source
from tests.helpers import settings_for
scan.bucket_bytes = lambda limits: 1  # 4,096 buckets: the deduplication takes seconds
ingest_source(settings_for(Path(sys.argv[1])), sys.argv[2], False)
"""


def test_an_ingest_killed_while_deduplicating_leaves_buckets_the_next_removes(tmp_path):
    """A real ingest, SIGKILLed once its bucket files exist; the next ingest removes them and ingests the drop."""
    cfg = settings_for(tmp_path / "home")
    tmp = cfg.home / "tmp"
    docs = [line for text in python_docs(40) for line in text.splitlines() if line.strip()][:6000]
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(docs)})
    repo = Path(__file__).parents[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", INGEST, str(cfg.home), str(tmp_path / "drops")]
    proc = subprocess.Popen(args, env=env, cwd=repo)
    try:
        buckets: list[Path] = []
        for _ in range(3000):
            buckets = list(tmp.glob("ingest-d1-dedup*")) if tmp.exists() else []
            if len(buckets) > 100 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert len(buckets) > 100, "the ingest ended before its buckets were seen"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(tmp.glob(f"ingest-d1-dedup*-{proc.pid}"))  # left by the killed ingest
    [res] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
    assert res.status == "ingested" and res.record.duplicates == len(docs) - len(set(docs))
    assert not list(tmp.iterdir())
