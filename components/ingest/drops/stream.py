"""`ScanStream`: one open file read once for everything the scan needs from its bytes.

The scan used to open each file three or four times (hash, magic bytes and first line, a NUL check of plain JSON
lines, the parse); on S3 each open is a download. A ScanStream wraps one open file and, as its bytes go by in
file order, hashes them (sha256, the digest `content_hash` is made of) and finds the first NUL byte and its line
(binary detection). After the parse, `finish()` reads whatever the parser left unread (a text file over the size
limit, the rest after a parser stopped early, the bytes parquet skips) so the digest always covers the whole file.

Choices:
- The bytes read while the format is detected (magic bytes, the first line) are kept and replayed by `rewound()`,
  so detection costs no second read; past `keep` bytes (a first line over the size limit) they are no longer kept
  and `rewound()` opens the file afresh instead (one more read, the same results).
- Seeks are logical: a read ahead of the bytes hashed so far first reads (and hashes) the gap; a read behind them
  (parquet jumping back) reads from the underlying file directly and changes neither the digest nor the NUL scan.
  A seek before byte 0 is a ValueError (components.core.rawio's `SizedReader`; it used to be clamped to 0).
  Parquet's footer is read on a side stream (`side()`), so its column chunks, in file order, stream through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from typing import BinaryIO

from components.core.rawio import SizedReader

CHUNK = 1 << 20


def keep_bytes(limit: int) -> int:
    """How much of a file's head a ScanStream keeps for format detection: a first line at the size limit."""
    return limit + 2 * CHUNK


def in_memory(data: bytes, limit: int) -> ScanStream:
    """A ScanStream over bytes already in memory (the `parse_*(name, data, ...)` functions)."""
    return ScanStream(lambda: io.BytesIO(data), len(data), keep_bytes(limit))


class ScanStream(SizedReader):
    """A file read in order once: hashed, NUL-scanned, its detected head replayable (see the module docstring)."""

    def __init__(self, opener: Callable[[], BinaryIO], size: int, keep: int) -> None:
        super().__init__()
        self._opener, self.size, self._keep = opener, size, keep
        self._raw = opener()
        self._digest = hashlib.sha256()
        self._done = 0  # bytes of the file read in order: hashed and NUL-scanned
        self._pos = 0  # where the next read starts
        self._head: bytearray | None = bytearray()  # the first bytes, while they are kept for `rewound`
        self._newlines = 0
        self.nul_line: int | None = None  # 1-based line of the first NUL byte among the bytes read in order

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        out = b""
        head = self._head
        if head is not None and self._pos < len(head):  # the kept head first, then the file
            out = bytes(head[self._pos : self._pos + n])
            self._pos += len(out)
            n -= len(out)
            if n == 0:
                return out
        if self._pos < self._done:  # behind the hashed bytes: read the underlying file directly
            self._raw.seek(self._pos)
            data = self._raw.read(n)
            self._raw.seek(self._done)
        else:
            while self._done < self._pos and self._take(min(CHUNK, self._pos - self._done)):
                pass  # a gap (parquet skips columns): read and hash it
            data = self._take(n)
        self._pos += len(data)
        return out + data

    def readline(self, limit: int = -1) -> bytes:
        limit = -1 if limit is None else limit
        out = b""
        head = self._head
        if head is not None and self._pos < len(head):  # the kept head first, then the file
            end = head.find(b"\n", self._pos) + 1 or len(head)
            if limit >= 0:
                end = min(end, self._pos + limit)
            out = bytes(head[self._pos : end])
            self._pos = end
            if out.endswith(b"\n") or len(out) == limit:
                return out
        elif self._pos != self._done:
            return super().readline(limit)  # after a seek: never in a scan
        data = self._raw.readline(limit - len(out) if limit >= 0 else -1)
        self._seen(data)
        self._pos += len(data)
        return out + data

    def _take(self, n: int) -> bytes:
        data = self._raw.read(n)
        self._seen(data)
        return data

    def _seen(self, data: bytes) -> None:
        """Bytes read in file order: hashed, NUL-scanned, kept while the head is."""
        self._digest.update(data)
        self._done += len(data)
        if self.nul_line is None:
            if (at := data.find(b"\0")) >= 0:
                self.nul_line = self._newlines + data.count(b"\n", 0, at) + 1
            else:
                self._newlines += data.count(b"\n")
        if self._head is not None:
            if len(self._head) + len(data) <= self._keep:
                self._head += data
            else:
                self._head = None

    def rewound(self) -> contextlib.AbstractContextManager[BinaryIO]:
        """The file again from its first byte: this stream, or a fresh one if the head was not kept whole."""
        if self._head is not None and self._done == len(self._head):
            self._pos = 0
            return contextlib.nullcontext(self)
        return ScanStream(self._opener, self.size, 0)

    def stop_keeping(self) -> None:
        """Detection is over: the kept head is replayed once more at most, then dropped."""
        self._keep = len(self._head) if self._head is not None else 0

    def side(self) -> BinaryIO:
        """The file opened separately (parquet's footer), outside the digest."""
        return self._opener()

    def finish(self) -> str:
        """Read what the parse left unread; the sha256 of the whole file."""
        while self._take(CHUNK):
            pass
        self._pos = self._done
        return self._digest.hexdigest()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
