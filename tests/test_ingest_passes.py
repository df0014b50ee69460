"""An ingest reads each file twice at most: once for the drop's content hash (idempotency), once for the scan,
which hashes, checks and parses in the same pass (components.ingest.drops.stream). Counted on disk (every byte a
file object of the drop returns) and on a real moto_server (every byte the S3 reader takes from a GET's body)."""

from __future__ import annotations

import gzip
import hashlib
import io
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from components.adapters.s3 import s3_client
from components.adapters.s3stream import S3ObjectReader
from components.ingest import ingest_source
from components.ingest.drops import LocalSource, S3Source, content_hash, read_drop
from tests.helpers import jsonl, settings_for
from tests.test_s3_stream import pieces, upload

FOOTER_SLACK = 256 << 10  # parquet's footer, read on a side stream (pyarrow reads up to 64 KiB of the tail)
LIMIT = 2_000_000


def drop_files(tmp_path: Path) -> dict[str, bytes]:
    """Each format over 1 MiB of real text (the stdlib's sources), so S3 objects stream in several buffers."""
    texts = pieces(6_000_000)
    fifth = len(texts) // 5
    part = [texts[i * fifth : (i + 1) * fifth] for i in range(5)]
    table = pa.table({"text": part[4], "origin": [t[::-1] for t in part[4]]})  # a column parquet skips
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=40)
    return {
        "a.jsonl": jsonl(part[0]),
        "b.jsonl.gz": gzip.compress(jsonl(part[1])),
        "c.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl(part[2])),
        "d.txt": "".join(part[3]).encode()[: LIMIT - 1],
        "e.parquet": (tmp_path / "e.parquet").read_bytes(),
    }


class CountingFile(io.FileIO):
    counts: Counter

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.counts[Path(self.name).name] += n or 0
        return n


def assert_at_most_two_passes(files: dict[str, bytes], counts: Counter) -> None:
    for name, data in files.items():
        print(f"{name}: {len(data):,} bytes, read {counts[name] / len(data):.3f}x")  # shown with pytest -s
        slack = FOOTER_SLACK if name.endswith(".parquet") else 0
        assert len(data) <= counts[name] <= 2 * len(data) + slack, (name, counts[name], len(data))


def expected_hash(files: dict[str, bytes]) -> str:
    return content_hash({name: hashlib.sha256(data).hexdigest() for name, data in files.items()})


def test_a_local_ingest_reads_each_file_at_most_twice(tmp_path, monkeypatch):
    files = drop_files(tmp_path)
    upload_local = tmp_path / "drops" / "d1"
    for name, data in files.items():
        (upload_local / name).parent.mkdir(parents=True, exist_ok=True)
        (upload_local / name).write_bytes(data)
    (upload_local / "_READY").write_bytes(b"")
    counts: Counter = Counter()
    monkeypatch.setattr(CountingFile, "counts", counts, raising=False)
    original = LocalSource.opener

    def counted(self, drop_id, name):
        opener, size = original(self, drop_id, name)
        with opener() as file:
            path = file.name
        return (lambda: io.BufferedReader(CountingFile(path))), size

    monkeypatch.setattr(LocalSource, "opener", counted)
    settings = settings_for(tmp_path / "home", **{"ingest.max_document_bytes": LIMIT, "ingest.workers": 1})
    [result] = ingest_source(settings, str(tmp_path / "drops"), show_progress=False)
    assert result.status == "ingested", result.message
    assert result.record.content_hash == expected_hash(files)
    assert_at_most_two_passes(files, counts)
    contents = read_drop(LocalSource(tmp_path / "drops"), "d1", LIMIT)  # the documents, every format parsed
    per_file = Counter(d.file for d in contents.documents)
    assert set(per_file) == set(files) and not contents.issues
    assert (per_file["a.jsonl"], per_file["d.txt"]) == (files["a.jsonl"].count(b"\n"), 1)


def test_an_s3_ingest_reads_each_object_at_most_twice(s3_env, tmp_path, monkeypatch):
    files = drop_files(tmp_path)
    client, bucket = s3_client(), f"passes-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    upload(client, bucket, "drops/d1/", files, local=tmp_path / "local" / "d1")
    monkeypatch.setattr(S3Source, "WHOLE_BELOW", 0)  # every object streamed, none fetched once and held
    counts: Counter = Counter()
    original = S3ObjectReader.readinto

    def counted(self, buffer) -> int:
        n = original(self, buffer)
        counts[self.key.split("/d1/", 1)[1]] += n
        return n

    monkeypatch.setattr(S3ObjectReader, "readinto", counted)
    settings = settings_for(tmp_path / "home-s3", **{"ingest.max_document_bytes": LIMIT})
    [on_s3] = ingest_source(settings, f"s3://{bucket}/drops", show_progress=False)
    monkeypatch.undo()
    settings = settings_for(tmp_path / "home-disk", **{"ingest.max_document_bytes": LIMIT})
    [on_disk] = ingest_source(settings, str(tmp_path / "local"), show_progress=False)
    assert on_s3.status == on_disk.status == "ingested", (on_s3.message, on_disk.message)
    assert on_s3.record.content_hash == on_disk.record.content_hash == expected_hash(files)
    assert on_s3.record.rows_hash == on_disk.record.rows_hash != ""
    assert_at_most_two_passes(files, counts)


@pytest.mark.parametrize("name", ["a.jsonl", "part-00000"])
def test_a_nul_byte_found_in_the_single_pass_is_one_issue_naming_its_line(tmp_path, name):
    """The NUL check runs on the bytes as they are parsed: the one issue, with its line, that a separate scan gave,
    in place of the issues of the lines before it (JSON lines by name, and by content)."""
    good = jsonl(["first", "second"]) + b"not json\n"
    data = good * 40 + b'{"text": "x\0"}\n' + good
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / name).write_bytes(data)
    contents = read_drop(LocalSource(tmp_path), "d1", LIMIT)
    [issue] = contents.issues
    assert (issue.file, issue.line, issue.reason) == (name, 121, "binary data (a NUL byte), not JSON lines text")
    assert contents.content_hash == expected_hash({name: data})


def test_a_text_file_over_the_limit_is_still_scanned_for_nul_bytes(tmp_path):
    data = b"".join(f"line {i}\n".encode() for i in range(500)) + b"\0tail\n"
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "notes.txt").write_bytes(data)
    contents = read_drop(LocalSource(tmp_path), "d1", 100)
    assert [(i.line, i.reason) for i in contents.issues] == [
        (None, f"the file is {len(data):,} bytes, over max_document_bytes=100"),
        (501, "binary data (a NUL byte), not text"),
    ]
    assert contents.content_hash == expected_hash({"notes.txt": data})


def test_a_first_line_past_the_kept_head_opens_the_file_again_with_the_same_result(tmp_path):
    """Format detection by content keeps what it read for the parse; past `keep_bytes` (here 3 MB of blank lines
    before the first JSON line) the file is opened again instead: one more read, the same documents and hash."""
    data = b"\n" * 3_000_000 + jsonl(["after the blank lines", "and one more"])
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "part-00000").write_bytes(data)
    contents = read_drop(LocalSource(tmp_path), "d1", 100)
    assert [(d.text, d.line) for d in contents.documents] == [
        ("after the blank lines", 3_000_001),
        ("and one more", 3_000_002),
    ]
    assert not contents.issues and contents.content_hash == expected_hash({"part-00000": data})
