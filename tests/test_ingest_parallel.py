"""`ingest.workers` and `ingest.max_memory_mb`: files scanned by worker processes give exactly what one process
gives; the memory bound is refused when too small and holds, measured on a real subprocess's peak RSS."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from components.adapters.memory import Memory
from components.core.text import load_tokenizer
from components.ingest import ingest_source, parallel
from components.ingest.drops import LocalSource
from components.ingest.limits import HEADROOM_MB, check_metadata, derive_limits, fit_mb, rss_mb
from components.ingest.pipeline import Bars
from components.ingest.scan import scan_drop
from components.ingest.spill import Spill
from tests.helpers import jsonl, make_drop, python_docs, settings_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_drops_in_parallel(monkeypatch):
    """Workers start for any drop of two files or more (by default only from 16 MB: a pool costs seconds)."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)


def several_files(root: Path) -> Path:
    """Real text in five files and four formats; texts[2] repeats in the second file, texts[4] inside the first."""
    texts = python_docs(40)
    files = {
        "a.jsonl": jsonl(texts[:10] + texts[4:5]),
        "b.jsonl.gz": gzip.compress(jsonl(texts[10:20] + texts[2:3])),
        "c.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl(texts[20:30])),
        "sub/e.txt": texts[39],
    }
    drop = make_drop(root, "d1", files)
    pq.write_table(pa.table({"text": texts[30:39]}), drop / "d.parquet", row_group_size=3)
    return drop


def rows_of(cfg, drop_id: str) -> list[tuple]:
    table = Memory.open(cfg).table().to_lance().to_table(filter=f"drop_id = '{drop_id}'").to_pylist()
    return sorted((r["split"], r["position"], r["length"], r["cluster"], r["doc_hash"], r["tokens"]) for r in table)


def test_scan_with_two_workers_equals_the_scan_in_process(tmp_path, small_drops_in_parallel):
    """Same documents in the same order, same content hash, and every spill index (a document's index in the drop)
    reads back the same tokens, though two processes wrote them into part files of their own."""
    several_files(tmp_path / "drops")
    cfg = settings_for(tmp_path / "home")
    tok = load_tokenizer("byte")
    source = LocalSource(tmp_path / "drops")
    [ref] = source.list_drops()
    scans = {}
    for workers in (1, 2):
        limits = derive_limits(cfg.ingest.max_memory_mb, workers, cfg.ingest.context_length)
        with Spill(cfg.home, "d1") as spill, Bars(False) as bars:
            scanned = scan_drop(source, ref, cfg, tok, bars, spill, limits)
            tokens = [spill.tokens(i).tolist() for i in range(len(spill))]
            scans[workers] = (scanned, tokens, spill.n_parts)
    (one, tokens_one, parts_one), (two, tokens_two, parts_two) = scans[1], scans[2]
    assert parts_one == 1 and parts_two == 1 + 5  # the pool ran: its own file and one part per document file
    assert one.contents.ok and two.contents.ok
    assert two.hashes == one.hashes and two.tokenized == one.tokenized and two.n_documents == one.n_documents == 42
    assert two.contents.content_hash == one.contents.content_hash
    assert tokens_two == tokens_one and len(tokens_one) == len(one.hashes) == 42  # the two repeats tokenized too
    assert not list((cfg.home / "tmp").iterdir())  # part files removed with the spill


def test_two_workers_store_the_same_rows_and_record(tmp_path, small_drops_in_parallel):
    several_files(tmp_path / "drops")
    records, rows = {}, {}
    for workers in (1, 2):
        cfg = settings_for(tmp_path / f"home{workers}", **{"ingest.workers": workers})
        [result] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
        assert result.status == "ingested", result.message
        rec = result.record
        records[workers] = (rec.documents, rec.duplicates, rec.sequences, rec.holdout_sequences, rec.tokens)
        records[workers] += (rec.clusters, rec.content_hash, rec.rows_hash)
        rows[workers] = rows_of(cfg, "d1")
    assert records[2] == records[1] and records[1][1] == 2  # both repeats left out, as duplicates
    assert rows[2] == rows[1] and len(rows[1]) == records[1][2] + records[1][3]


def test_a_bad_line_in_the_second_file_is_the_same_rejection(tmp_path, small_drops_in_parallel):
    texts = python_docs(12)
    bad = jsonl(texts[6:8]) + b'{"text": "fine"}\n{"txt": "no text field"}\n' + jsonl(texts[8:12])
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(texts[:6]), "b.jsonl": bad, "c.txt": texts[0]})
    messages = {}
    for workers in (1, 2):
        cfg = settings_for(tmp_path / f"home{workers}", **{"ingest.workers": workers})
        [result] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
        assert result.status == "rejected"
        messages[workers] = result.message
    assert messages[2] == messages[1]
    assert messages[1].startswith("d1/b.jsonl:4: ") and "Fix:" in messages[1] and "\n" not in messages[1]


def test_a_too_small_memory_bound_is_refused_with_the_key_and_the_fix(tmp_path):
    """`amr ingest` with ingest.max_memory_mb below what even the smallest batches need: one line naming the key,
    the value and the value that works; that value then ingests."""
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(8))})
    env = os.environ | {"PYTHONPATH": str(ROOT), "AMR_HOME": str(tmp_path / "home"), "AMR_INGEST__CONTEXT_LENGTH": "64"}
    env["COLUMNS"] = "1000"  # rich would wrap the one-line message at the terminal width
    cli = [sys.executable, "-m", "components.cli", "ingest", str(tmp_path / "drops")]
    proc = subprocess.run(cli, capture_output=True, text=True, env=env | {"AMR_INGEST__MAX_MEMORY_MB": "200"})
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "ingest.max_memory_mb = 200 is below the" in line and "Fix: set ingest.max_memory_mb to" in line
    need = int(line.split("Fix: set ingest.max_memory_mb to ")[1].split()[0])
    assert 250 < need < 2048  # the default passes; the fix it names is enough:
    proc = subprocess.run(cli, capture_output=True, text=True, env=env | {"AMR_INGEST__MAX_MEMORY_MB": str(need)})
    assert proc.returncode == 0, proc.stderr


def big_drop(root: Path, n_bytes: int) -> Path:
    """Distinct documents of real text (stdlib sources cut into 2-8 kB pieces) in four JSON-lines files."""
    texts = python_docs(400)
    drop = root / "big"
    drop.mkdir(parents=True)
    size, i, files = 0, 0, [open(drop / f"part-{k}.jsonl", "w") for k in range(4)]  # noqa: SIM115
    while size < n_bytes:
        text = texts[i % len(texts)]
        start = (i * 977) % max(1, len(text) - 8192)
        piece = f"# piece {i}\n" + text[start : start + 2048 + (i * 131) % 6144]
        files[i % 4].write(json.dumps({"text": piece}) + "\n")
        size, i = size + len(piece), i + 1
    for f in files:
        f.close()
    (drop / "_READY").write_text("")
    return drop


def test_a_drop_larger_than_the_room_under_the_bound_ingests_under_it(tmp_path):
    """A real subprocess ingests 48 MB of text under an ingest.max_memory_mb that leaves 40 MB beyond its loaded
    libraries, the k-means fit's fixed share and the headroom (components.ingest.limits): its peak RSS (the
    kernel's high-water mark, VmHWM; getrusage's ru_maxrss would carry over the pytest process's own peak through
    fork and exec) stays under the bound. One process: with workers the bound covers their sum, which no
    high-water mark reports; benchmarks/scale_ingest.py samples that case."""
    n_bytes, ROOM = 48 << 20, 40
    big_drop(tmp_path / "drops", n_bytes)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from components.core.config import load_settings
        from components.ingest import ingest_source
        from components.ingest.limits import HEADROOM_MB, fit_mb, rss_mb
        from components.core.text import load_tokenizer
        load_tokenizer("byte")
        base = rss_mb()
        bound = int(base + fit_mb(512) + HEADROOM_MB) + {ROOM}
        s = load_settings(None, **{{"ingest.workers": 1, "ingest.max_memory_mb": bound, "ingest.context_length": 512}})
        s.home = Path({str(tmp_path / "home")!r})
        [r] = ingest_source(s, {str(tmp_path / "drops")!r}, show_progress=False)
        status = Path("/proc/self/status").read_text()  # VmHWM: this process's high-water RSS, from its exec on
        peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
        out = {{"status": r.status, "message": r.message, "bound": bound, "peak_mb": peak}}
        print(json.dumps(out | {{"text_mb": {n_bytes / 2**20}}}))
    """)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "ingested", out["message"]
    assert out["text_mb"] > ROOM  # more text than the room the bound leaves for data
    assert out["peak_mb"] < out["bound"], f"peak RSS {out['peak_mb']:.0f} MB over ingest.max_memory_mb"


def test_the_bound_sets_batches_and_workers_but_never_the_result(tmp_path):
    """A bound just over the minimum gives the smallest batches and one worker, a large one the full sizes and a
    worker per requested process; the same drop ingested under either stores the same rows (same row digest)."""
    base = rss_mb()
    tight = derive_limits(int(base + fit_mb(64) + HEADROOM_MB) + 40, 4, 64)
    roomy = derive_limits(16384, 4, 64)
    assert tight.workers == 1 and roomy.workers == 4
    assert tight.tokenize_bytes < roomy.tokenize_bytes and tight.chunk_tokens < roomy.chunk_tokens
    make_drop(tmp_path / "drops", "d1", {"a.jsonl": jsonl(python_docs(30)), "b.txt": python_docs(31)[30]})
    digests = set()
    for bound in (tight.max_memory_mb, roomy.max_memory_mb):
        cfg = settings_for(tmp_path / f"home{bound}", **{"ingest.max_memory_mb": bound})
        [result] = ingest_source(cfg, str(tmp_path / "drops"), show_progress=False)
        assert result.status == "ingested", result.message
        digests.add(result.record.rows_hash)
    assert len(digests) == 1


def test_a_drop_whose_metadata_alone_passes_the_bound_is_refused_before_planning():
    """The per-document and per-row metadata grows with the drop: past what the bound leaves, one line with the
    drop, the key and the value to set (or split the drop); under it, nothing is said."""
    limits = derive_limits(2048, 1, 128, base_mb=300)
    check_metadata(limits, "d1", 200_000, 2_000_000)  # ~2 GB of text at context_length 128: fits
    with pytest.raises(ValueError) as exc:
        check_metadata(limits, "d1", 20_000_000, 200_000_000)  # ~25 GB of text at context_length 128
    message = str(exc.value)
    assert message.startswith("drop d1: ") and "\n" not in message
    need = int(message.split("raise ingest.max_memory_mb to ")[1].split()[0])
    assert need > 2048
    check_metadata(derive_limits(need, 1, 128, base_mb=300), "d1", 20_000_000, 200_000_000)  # the fix it names works
