"""Drops on S3 read as streams (a real moto_server on loopback, the `s3_env` fixture): the same digests as on disk,
memory far below the object's size, and a connection cut mid-object resumed at its offset."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from components.adapters.memory import Memory
from components.adapters.s3 import s3_client
from components.adapters.s3stream import S3ObjectChanged, S3ObjectReader
from components.core.config import S3Config
from components.core.packing import doc_hash
from components.ingest import ingest_source
from components.ingest.drops import DropScan, LocalSource, S3Source, hash_drop, read_drop
from tests.conftest import free_port, real_texts
from tests.helpers import jsonl, python_docs, settings_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bucket(s3_env):
    name = f"stream-{uuid.uuid4().hex[:12]}"
    client = s3_client()
    client.create_bucket(Bucket=name)
    return client, name


def pieces(n_bytes: int) -> list[str]:
    """Distinct documents of real text (the stdlib's sources cut into 2-8 kB pieces) totalling about `n_bytes`."""
    texts, out, size, i = real_texts("*.py", 300), [], 0, 0
    while size < n_bytes:
        text = texts[i % len(texts)]
        start = (i * 977) % max(1, len(text) - 8192)
        out.append(f"# piece {i}\n" + text[start : start + 2048 + (i * 131) % 6144])
        size += len(out[-1])
        i += 1
    return out


def parquet_bytes(texts: list[str], path: Path, row_group_size: int, compression: str = "snappy") -> bytes:
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size, compression=compression)
    return path.read_bytes()


def upload(client, bucket: str, prefix: str, files: dict[str, bytes], local: Path | None = None) -> None:
    """The files, then _READY, under `prefix`; the same drop on disk under `local` when given."""
    for name, data in {**files, "_READY": b""}.items():
        client.put_object(Bucket=bucket, Key=prefix + name, Body=data)
        if local is not None:
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).write_bytes(data)


class GetLog:
    """Every GetObject (key, Range) boto3 clients made while it is active: clients of the default session too."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, params, **kwargs) -> None:
        self.calls.append((params["Key"], params.get("Range")))

    def starts(self, key: str) -> list[int]:
        return [int(r.removeprefix("bytes=").split("-")[0]) for k, r in self.calls if k == key and r]


def test_s3_drop_ingests_to_the_same_digests_as_on_disk(bucket, tmp_path, monkeypatch):
    """gzip and zstd JSON lines and a parquet file of four row groups, every object streamed (the whole-object
    shortcut for small objects is off): the same drop record digests and rows as the same drop ingested from disk."""
    client, name = bucket
    monkeypatch.setattr(S3Source, "WHOLE_BELOW", 0)
    texts = python_docs(30)
    files = {
        "a.jsonl.gz": gzip.compress(jsonl(texts[:10])),
        "sub/b.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl(texts[10:20] + texts[:2])),
        "c.parquet": parquet_bytes(texts[20:30], tmp_path / "c.parquet", row_group_size=3),
    }
    upload(client, name, "drops/d1/", files, local=tmp_path / "local" / "d1")
    gets = GetLog()
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", boto3.session.Session())  # s3_client() builds on it, hook included
    boto3.DEFAULT_SESSION.events.register("before-parameter-build.s3.GetObject", gets)
    [on_s3] = ingest_source(settings_for(tmp_path / "home-s3"), f"s3://{name}/drops", show_progress=False)
    [on_disk] = ingest_source(settings_for(tmp_path / "home-disk"), str(tmp_path / "local"), show_progress=False)

    assert on_s3.status == on_disk.status == "ingested", (on_s3.message, on_disk.message)
    a, b = on_s3.record, on_disk.record
    assert (a.content_hash, a.rows_hash, a.documents, a.duplicates) == (b.content_hash, b.rows_hash, 32, 2)
    assert (a.sequences, a.holdout_sequences) == (b.sequences, b.holdout_sequences)
    stored = [Memory.open(settings_for(tmp_path / home)).record("d1") for home in ("home-s3", "home-disk")]
    assert stored[0].rows_hash == stored[1].rows_hash == b.rows_hash != ""
    keys = {key for key, _ in gets.calls}
    assert keys == {f"drops/d1/{n}" for n in files}
    assert all(r is not None for _, r in gets.calls)  # every GET ranged: no whole-object read
    assert max(gets.starts("drops/d1/c.parquet")) > 0  # the parquet footer and column chunks, read in place


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_an_object_larger_than_the_read_buffer_streams(bucket, tmp_path, kind):
    """A 24 MB object (parquet uncompressed) is hashed and parsed while Python holds under 8 MB (tracemalloc counts
    every Python allocation, the bytes botocore and urllib3 read included: a few copies of one 1 MiB read buffer),
    read a buffer at a time, parquet a row group (~1.3 MB here) at a time, through ranged GETs."""
    client, name = bucket
    texts = pieces(24 << 20)
    key = "big.jsonl" if kind == "jsonl" else "big.parquet"
    data = jsonl(texts) if kind == "jsonl" else parquet_bytes(texts, tmp_path / "big.parquet", 256, "none")
    upload(client, name, "p/d1/", {key: data})
    source = S3Source(f"s3://{name}/p", client=client)
    tracemalloc.start()
    try:
        scan = DropScan(source, "d1", 1 << 20)
        count, hashes = 0, set()
        for doc in scan.documents():
            count += 1
            hashes.add(doc_hash(doc.text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.contents.ok, scan.contents.error_message()
    assert count == len(texts) and hashes == {doc_hash(t) for t in texts}
    assert len(data) > 24 << 20 and peak < 8 << 20, f"peak {peak / 2**20:.1f} MB of a {len(data) / 2**20:.1f} MB object"
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / key).write_bytes(data)
    assert scan.contents.content_hash == hash_drop(LocalSource(tmp_path), "d1")


def start_proxy(port: int, target: int, die_after: int | None = None) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "tests" / "tcp_proxy.py"), str(port), str(target)]
    proc = subprocess.Popen(args + ([str(die_after)] if die_after else []), stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


class Endpoint:
    """A proxy in front of the session's moto_server that dies once, after `die_after` bytes of responses, and
    is back on the same port `down_s` seconds later: a real endpoint restart, cut at a known point mid-object."""

    def __init__(self, moto_url: str, die_after: int, down_s: float = 1.0) -> None:
        self.port, moto_port = free_port(), int(moto_url.rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start_proxy(self.port, moto_port, die_after)
        self.restarted = threading.Event()

        def restart() -> None:
            self.proc.wait()
            time.sleep(down_s)
            self.proc = start_proxy(self.port, moto_port)
            self.restarted.set()

        self.thread = threading.Thread(target=restart, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.proc.kill()
        self.thread.join(timeout=30)
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def flaky(s3_env):
    endpoints: list[Endpoint] = []
    yield lambda die_after: endpoints.append(Endpoint(s3_env, die_after)) or endpoints[-1]
    for endpoint in endpoints:
        endpoint.close()


def test_a_read_cut_mid_object_resumes_at_its_offset(bucket, flaky):
    """The endpoint dies 4 MB into a 12 MB object: the reader resumes with a GET from the offset it had reached,
    and the bytes are exactly the object's."""
    client, name = bucket
    data = jsonl(pieces(12 << 20))
    client.put_object(Bucket=name, Key="o/big.jsonl", Body=data)
    endpoint = flaky(4 << 20)
    via_proxy = s3_client(S3Config(endpoint_url=endpoint.url))
    gets = GetLog()
    via_proxy.meta.events.register("before-parameter-build.s3.GetObject", gets)
    etag = client.head_object(Bucket=name, Key="o/big.jsonl")["ETag"]
    reader = S3ObjectReader(via_proxy, name, "o/big.jsonl", len(data), etag)
    chunks = []
    while chunk := reader.read(1 << 20):
        chunks.append(chunk)
    assert endpoint.restarted.is_set() and reader.resumes == 1
    assert b"".join(chunks) == data
    [first, resumed] = gets.starts("o/big.jsonl")
    assert first == 0 and 0 < resumed < len(data)  # resumed where it broke, not from the start


def test_a_drop_read_through_a_restart_has_the_digest_of_the_drop_on_disk(bucket, flaky, tmp_path):
    """hash_drop and the parse of a drop (a 12 MB JSON-lines file, a zstd file, a parquet file) through an endpoint
    that dies mid-object: the same content hash and documents as the drop on disk."""
    client, name = bucket
    texts = pieces(14 << 20)
    files = {
        "big.jsonl": jsonl(texts[:2400]),
        "more.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl(texts[2400:2600])),
        "rows.parquet": parquet_bytes(texts[2600:], tmp_path / "rows.parquet", row_group_size=64),
    }
    upload(client, name, "p/d1/", files, local=tmp_path / "d1")
    assert len(files["big.jsonl"]) > 8 << 20
    endpoint = flaky(4 << 20)
    gets = GetLog()
    via_proxy = s3_client(S3Config(endpoint_url=endpoint.url))
    via_proxy.meta.events.register("before-parameter-build.s3.GetObject", gets)
    source = S3Source(f"s3://{name}/p", client=via_proxy)
    on_s3 = read_drop(source, "d1", 1 << 20)
    assert endpoint.restarted.is_set()
    assert max(gets.starts("p/d1/big.jsonl")) > 0  # a plain JSON-lines file is only read from 0: that is a resume
    on_disk = read_drop(LocalSource(tmp_path), "d1", 1 << 20)
    assert on_s3.ok, on_s3.error_message()
    assert on_s3.content_hash == on_disk.content_hash == hash_drop(source, "d1")
    assert on_s3.documents == on_disk.documents


def test_an_object_replaced_while_read_is_an_error_naming_it(bucket):
    """Every GET is pinned to the listed ETag: a producer rewriting the object mid-read is caught, not spliced."""
    client, name = bucket
    client.put_object(Bucket=name, Key="p/d1/a.txt", Body=(Path("/usr/share/common-licenses") / "GPL-3").read_bytes())
    source = S3Source(f"s3://{name}/p", client=client)
    assert source.list_files("d1") == ["a.txt"]
    client.put_object(Bucket=name, Key="p/d1/a.txt", Body=(Path("/usr/share/common-licenses") / "BSD").read_bytes())
    opener, _ = source.opener("d1", "a.txt")
    with pytest.raises(S3ObjectChanged, match=r"s3://stream-\w+/p/d1/a.txt changed while it was read"):
        opener()
