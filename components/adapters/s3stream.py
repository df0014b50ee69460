"""One S3 object read as a stream: `S3ObjectReader`, a seekable raw file over ranged GETs that resumes where a
dropped connection left off.

Choices:
- A GET asks for `bytes=<offset>-` and is read as botocore's StreamingBody, a buffer at a time, so memory holds one
  read buffer whatever the object's size. A connection that breaks mid-body (the endpoint restarts, a proxy drops
  it, the body ends short) is resumed by a new ranged GET at the byte offset already read: the bytes already
  consumed are neither fetched again nor duplicated. Up to `attempts` breaks in a row without a byte of progress
  (with a short growing pause between them), then the last error is raised. Connecting again after a break is the
  client's own job: its retries (`s3.max_attempts`, `s3.retry_mode`) ride out an endpoint that is down for seconds.
- Every GET carries `IfMatch=<ETag>` from the listing (or a HEAD), so an object replaced while it is read (or between
  a resumed read's two halves) fails with `S3ObjectChanged` instead of splicing two versions into one file.
- `seek` only moves the offset (the open body is dropped; the next read starts a GET there), so random access costs
  one ranged GET per jump: what parquet needs for its footer and column chunks, nothing spilled to disk. Seeking
  is components.core.rawio's `SizedReader`: a seek before byte 0 is a ValueError naming the object.
- Wrap it in `io.BufferedReader` (as `open_object` does) for `readline`, small reads and seeks inside the buffer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from components.core.rawio import SizedReader

log = logging.getLogger(__name__)

BUFFER = 1 << 20
# What a body that breaks mid-read raises: a reset or short body (ResponseStreamingError, IncompleteReadError), a
# read timeout, a connection closed or refused while the endpoint restarts (after the client's own retries).
BROKEN = (HTTPClientError, IncompleteReadError, BotoConnectionError, ConnectionError, TimeoutError)


class S3ObjectChanged(RuntimeError):
    """The object's ETag changed while it was read: the data is no longer the object that was listed."""


class S3ObjectReader(SizedReader):
    """The object `s3://bucket/key` (`size` bytes, `etag` when known) as a seekable, resuming raw stream."""

    def __init__(self, client: Any, bucket: str, key: str, size: int, etag: str | None, attempts: int = 10) -> None:
        super().__init__()
        self.client, self.bucket, self.key, self.size, self.etag = client, bucket, key, size, etag
        self.attempts = max(1, attempts)
        self.resumes = 0  # bodies that broke and were resumed at their offset
        self._pos, self._body = 0, None

    def _moving(self, target: int) -> None:
        self._drop_body()  # the next read starts a GET at the new position

    def _label(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def readinto(self, buffer) -> int:
        if self._pos >= self.size or len(buffer) == 0:
            return 0
        breaks = 0
        while True:
            try:
                if self._body is None:
                    self._body = self._get()
                n = self._body.readinto(buffer)
                if n == 0:  # the body ended before the object did, and said nothing
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self.size)
            except BROKEN as exc:
                self._drop_body()
                breaks += 1
                if breaks >= self.attempts:
                    raise
                log.warning("s3://%s/%s: read broke at byte %d (%s); resuming there", self.bucket, self.key,
                            self._pos, type(exc).__name__)  # fmt: skip
                self.resumes += 1
                time.sleep(min(0.05 * 2**breaks, 2.0))
                continue
            self._pos += n
            return n

    def _get(self) -> Any:
        args = {"Bucket": self.bucket, "Key": self.key, "Range": f"bytes={self._pos}-{self.size - 1}"}
        if self.etag:
            args["IfMatch"] = self.etag
        try:
            return self.client.get_object(**args)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise S3ObjectChanged(
                    f"s3://{self.bucket}/{self.key} changed while it was read (ETag {self.etag} is gone). Fix: a "
                    "producer must write a drop's files, then _READY, and never change them after."
                ) from None
            raise

    def _drop_body(self) -> None:
        if self._body is not None:
            body, self._body = self._body, None
            with contextlib.suppress(Exception):  # the connection is being dropped anyway
                body.close()  # an unfinished body's connection is closed, not returned to the pool

    def close(self) -> None:
        self._drop_body()
        super().close()


def open_object(
    client: Any, bucket: str, key: str, size: int, etag: str | None, attempts: int = 10
) -> io.BufferedReader:
    """A buffered, seekable stream of one object (see the module docstring)."""
    return io.BufferedReader(S3ObjectReader(client, bucket, key, size, etag, attempts), BUFFER)


def read_object(client: Any, bucket: str, key: str, size: int, etag: str | None, attempts: int = 10) -> bytes:
    """A small object's bytes, through the same resuming reader."""
    with open_object(client, bucket, key, size, etag, attempts) as stream:
        return stream.read()
