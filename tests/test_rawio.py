"""components.core.rawio's `SizedReader` through both readers built on it: the S3 object reader (a real moto_server
on loopback) and the scan stream (a file on disk). Seeks land where io.BytesIO puts them; a seek before byte 0 is a
ValueError for every `whence` (where BytesIO clamps SEEK_CUR and SEEK_END to 0) and leaves the position as it was."""

from __future__ import annotations

import io
import uuid

import pytest

from components.adapters.s3 import s3_client
from components.adapters.s3stream import S3ObjectReader
from components.ingest.drops.stream import ScanStream, keep_bytes
from tests.conftest import STDLIB

DATA = (STDLIB / "io.py").read_bytes()


@pytest.fixture(params=["s3", "scan"])
def reader(request, tmp_path):
    """(the reader over DATA, the name its errors give)."""
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        client, bucket = s3_client(), f"rawio-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="o/io.py", Body=DATA)
        etag = client.head_object(Bucket=bucket, Key="o/io.py")["ETag"]
        stream, label = S3ObjectReader(client, bucket, "o/io.py", len(DATA), etag), f"s3://{bucket}/o/io.py"
    else:
        (tmp_path / "io.py").write_bytes(DATA)
        stream = ScanStream(lambda: open(tmp_path / "io.py", "rb"), len(DATA), keep_bytes(1024))
        label = "ScanStream"
    with stream:
        yield stream, label


def test_seeks_and_reads_match_bytesio(reader):
    stream, _ = reader
    expected = io.BytesIO(DATA)
    steps = [(100, io.SEEK_SET, 50), (-30, io.SEEK_CUR, 20), (-200, io.SEEK_END, 300), (len(DATA) + 10, 0, 10)]
    steps += [(0, io.SEEK_SET, 10), (5000, io.SEEK_CUR, 64), (-1, io.SEEK_END, 8)]
    for offset, whence, n in steps:
        assert stream.seek(offset, whence) == expected.seek(offset, whence), (offset, whence)
        assert stream.read(n) == expected.read(n), (offset, whence, n)
        assert stream.tell() == expected.tell()
    assert stream.read(8) == b""  # at the end


@pytest.mark.parametrize(("offset", "whence", "target"), [(-1, io.SEEK_SET, -1), (-41, io.SEEK_CUR, -1)])
def test_a_seek_before_byte_0_is_a_value_error_that_moves_nothing(reader, offset, whence, target):
    stream, label = reader
    stream.seek(40)
    with pytest.raises(ValueError, match=f"negative seek position {target} in {label}"):
        stream.seek(offset, whence)
    assert stream.tell() == 40
    assert stream.read(16) == DATA[40:56]


def test_a_seek_from_the_end_past_the_start_is_refused_where_bytesio_clamps(reader):
    stream, label = reader
    assert io.BytesIO(DATA).seek(-len(DATA) - 5, io.SEEK_END) == 0  # BytesIO's clamp, which the readers refuse
    with pytest.raises(ValueError, match=f"negative seek position -5 in {label}"):
        stream.seek(-len(DATA) - 5, io.SEEK_END)
    assert stream.tell() == 0 and stream.read(16) == DATA[:16]


def test_an_unknown_whence_is_a_value_error(reader):
    stream, _ = reader
    with pytest.raises(ValueError, match="invalid whence"):
        stream.seek(0, 3)
