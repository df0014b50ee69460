"""`SizedReader`: the position bookkeeping of a seekable raw binary stream of known size, shared by the readers that
fetch their own bytes (components.adapters.s3stream's `S3ObjectReader`, components.ingest.drops.stream's
`ScanStream`). A subclass sets `size`, implements `readinto` (or `read`) from `self._pos`, and may override
`_moving(pos)` to act before a seek changes the position (the S3 reader drops its open body there).

Choices:
- A seek whose target is before byte 0 raises ValueError naming the stream and the target, for every `whence`,
  and leaves the position where it was. `io.BytesIO` raises for a negative SEEK_SET but clamps a SEEK_CUR or
  SEEK_END that lands before 0 to 0; `io.FileIO` (lseek) refuses all three (OSError EINVAL). Refusing all three,
  as files do, with the ValueError that io's own argument checks raise: a seek before the start is the caller's
  mistake, and clamping it would silently hand back bytes from the start that were never asked for. (The two
  readers used to differ: the S3 reader raised, ScanStream clamped; no caller relied on the clamp.)
- A seek past the end is allowed, as in every io class; a read there returns b"".
- An unknown `whence` is a ValueError, as in io (it used to be a KeyError).
"""

from __future__ import annotations

import io

WHENCE = (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END)


class SizedReader(io.RawIOBase):
    """A readable, seekable raw stream of `size` bytes whose next read starts at `_pos` (see the module docstring)."""

    size: int
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in WHENCE:
            raise ValueError(f"invalid whence ({whence}, should be {io.SEEK_SET}, {io.SEEK_CUR} or {io.SEEK_END})")
        target = (0, self._pos, self.size)[whence] + offset
        if target < 0:
            raise ValueError(f"negative seek position {target} in {self._label()}: a seek cannot go before byte 0")
        if target != self._pos:
            self._moving(target)
            self._pos = target
        return self._pos

    def _moving(self, target: int) -> None:
        """Called before a seek moves the position to `target`; nothing by default."""

    def _label(self) -> str:
        """What the stream is, for error messages."""
        return type(self).__name__
