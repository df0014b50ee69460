"""Drops on S3, read through a real moto server (the `s3_env` fixture in conftest.py) and boto3."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.adapters.s3 import s3_client, split_s3_uri
from components.core.config import S3Config
from components.ingest.drops import LocalSource, S3Source, UnsafeNameError, open_source, read_drop

PYLIB = Path(os.__file__).parent
LICENSES = Path("/usr/share/common-licenses")
LIMIT = 100_000


def drop_files() -> dict[str, bytes]:
    modules = [(PYLIB / n).read_text(encoding="utf-8") for n in ("shlex.py", "getopt.py")]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [(LICENSES / "BSD").read_text(encoding="utf-8"), "second row"]}), buf)
    return {
        "modules.jsonl": "".join(json.dumps({"text": t}) + "\n" for t in modules).encode(),
        "licenses.parquet": buf.getvalue(),
        "texts/MPL-2.0": (LICENSES / "MPL-2.0").read_bytes(),
        "_drop.json": b'{"drop_id": "d1", "source": "python stdlib and licenses"}',
    }


@pytest.fixture
def bucket(s3_env):
    """A fresh bucket per test: the moto server lives for the whole session."""
    name = f"drops-{uuid.uuid4().hex[:12]}"
    client = s3_client()
    client.create_bucket(Bucket=name)
    return client, name


def put(client, bucket: str, prefix: str, files: dict[str, bytes], ready: bool = True) -> None:
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=prefix + name, Body=data)
    if ready:
        client.put_object(Bucket=bucket, Key=prefix + "_READY", Body=b"")


@pytest.mark.slow
def test_s3_drop_reads_like_the_same_drop_on_disk(bucket, tmp_path):
    client, name = bucket
    files = drop_files()
    put(client, name, "incoming/d1/", files)
    client.put_object(Bucket=name, Key="incoming/d1/texts/", Body=b"")  # a console "folder" marker: not a file
    put(client, name, "incoming/d2/", files, ready=False)
    put(client, name, "incoming/_staging/", files)

    source = open_source(f"s3://{name}/incoming")
    refs = source.list_drops()
    assert [(r.drop_id, r.ready, r.location) for r in refs] == [
        ("d1", True, f"s3://{name}/incoming/d1"),
        ("d2", False, f"s3://{name}/incoming/d2"),
    ]
    assert source.list_files("d1") == ["_READY", "_drop.json", "licenses.parquet", "modules.jsonl", "texts/MPL-2.0"]

    seen: list[int] = []
    on_s3 = read_drop(source, "d1", LIMIT, progress=seen.append)
    assert on_s3.ok, on_s3.error_message()
    assert on_s3.manifest is not None and on_s3.manifest.source == "python stdlib and licenses"
    assert sum(seen) == on_s3.n_bytes == sum(len(b) for b in files.values())

    for rel, data in files.items():
        (tmp_path / "d1" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d1" / rel).write_bytes(data)
    on_disk = read_drop(LocalSource(tmp_path), "d1", LIMIT)
    assert on_s3.documents == on_disk.documents
    assert on_s3.content_hash == on_disk.content_hash  # the hash names the data, not where it is stored


@pytest.mark.slow
def test_s3_key_with_dotdot_is_flagged_and_never_fetched(bucket):
    client, name = bucket
    put(client, name, "p/d1/", {"ok.txt": (LICENSES / "BSD").read_bytes()})
    client.put_object(Bucket=name, Key="p/d1/../d0/secret.txt", Body=b"another drop's data")
    client.put_object(Bucket=name, Key="p/d1//double.txt", Body=b"ambiguous")

    fetched: list[str] = []
    client.meta.events.register("before-call.s3.GetObject", lambda params, **kw: fetched.append(params["url_path"]))
    source = S3Source(f"s3://{name}/p/", client=client)
    contents = read_drop(source, "d1", LIMIT)

    assert not contents.ok
    assert [(i.file, i.line) for i in contents.issues] == [("../d0/secret.txt", None), ("/double.txt", None)]
    assert "'..' segment" in contents.issues[0].reason
    assert "absolute path" in contents.issues[1].reason
    assert len(fetched) == 1 and fetched[0].endswith("/p/d1/ok.txt")
    with pytest.raises(UnsafeNameError):
        source.opener("d1", "../d0/secret.txt")
    assert len(fetched) == 1


@pytest.mark.slow
def test_s3_missing_prefix_is_an_empty_drop(bucket):
    client, name = bucket
    source = S3Source(f"s3://{name}/nothing-here", client=client)
    assert source.list_drops() == []
    contents = read_drop(source, "d1", LIMIT)
    assert [(i.file, i.reason) for i in contents.issues] == [("", "empty drop: no document files")]


def test_s3_client_takes_endpoint_and_region_from_config_then_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    client = s3_client(S3Config(endpoint_url="http://127.0.0.1:8", region="ap-south-1"))
    assert (client.meta.endpoint_url, client.meta.region_name) == ("http://127.0.0.1:8", "ap-south-1")
    client = s3_client(S3Config())
    assert (client.meta.endpoint_url, client.meta.region_name) == ("http://127.0.0.1:9", "eu-west-3")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert s3_client(None).meta.region_name == "us-east-1"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://b/p", ("b", "p/")), ("s3://b/p/q/", ("b", "p/q/")), ("s3://b", ("b", "")), ("s3://b/", ("b", ""))],
)
def test_split_s3_uri(uri, expected):
    assert split_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "/local/path", "S3://b/p"])
def test_split_s3_uri_rejects_non_s3_locations(uri):
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        split_s3_uri(uri)
