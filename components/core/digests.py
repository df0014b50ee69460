"""Document hashes as one numpy array of raw sha256 digests (32 bytes each), hex-encoded only where a value is used.

A drop's per-document and per-row metadata grows with the drop (components.ingest.limits). As Python objects a hash
costs ~190 bytes (a 64-character str, its list slot, a dict entry); here it costs 32 bytes in a numpy 'S32' array,
and a row's "hash of its first document" costs the 8 bytes of an index into that array. Values are hex-encoded a
block at a time (`hex`, `to_arrow`, iteration), so writing a column or a digest never copies the whole drop as
strings. Sorting the raw digests orders them as their lowercase hex strings do, so `np.unique` on the array gives
the same order (and the same first occurrences) as sorting the hex strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from components.core.lazy import LazyArray

_HEX = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")
BLOCK = 4096  # values hex-encoded at a time while iterating
CHUNK = 1 << 16  # values appended per part at most (2 MB): see `Digests._base`


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _index(idx) -> np.ndarray | LazyArray:
    return idx if isinstance(idx, LazyArray) else np.asarray(idx, dtype=np.int64)


def hex_array(raw: np.ndarray) -> np.ndarray:
    """'S32' digests -> 'S64' lowercase hex, vectorized (no Python object per value)."""
    raw = np.ascontiguousarray(raw, dtype="S32")
    return _HEX[raw.view(np.uint8).reshape(-1, 32)].view("S64").reshape(-1)


class Digests:
    """A growable sequence of sha256 digests that reads as hex strings: `d[i]` is a str, `d[array]` a Digests.

    `raw` is the 'S32' array (appended values wait in parts of CHUNK values until it is read: `_base`); a Digests
    taken by an index array (`take`) shares its base and holds only the int64 indices; taken by a LazyArray
    (components.core.lazy: a packed row's first document, computed per block) it holds no per-row array at all.
    """

    def __init__(self, values: Iterable[str | bytes] = (), base: np.ndarray | None = None, idx=None) -> None:
        self._store = np.empty(0, dtype="S32") if base is None else base  # the values gathered in one array
        self._n = len(self._store) if base is not None and idx is None else 0
        self._idx = None if idx is None else _index(idx)
        self._parts: list[np.ndarray] = []  # full parts appended since, then the one being filled
        self._fill = 0  # values in the last part
        self.extend(values)

    @staticmethod
    def _raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else bytes.fromhex(value)

    def append(self, value: str | bytes) -> None:
        if self._idx is not None:
            raise TypeError("a Digests taken by index is read-only")
        if not self._parts or self._fill == len(self._parts[-1]):
            self._parts.append(np.empty(min(CHUNK, max(1024, self._n)), dtype="S32"))  # ~doubling while small
            self._fill = 0
        self._parts[-1][self._fill] = self._raw(value)
        self._fill += 1
        self._n += 1

    @property
    def _base(self) -> np.ndarray:
        """The values in one array: the parts appended since the last call are gathered into it here, each part
        freed once copied, so growing never holds two copies of the whole (doubling an array would)."""
        if self._parts:
            out = np.empty(self._n, dtype="S32")  # pages are touched as they are filled
            at = len(self._store)
            out[:at] = self._store
            self._store = out
            while self._parts:
                part = self._parts.pop(0)
                n = self._fill if not self._parts else len(part)
                out[at : at + n] = part[:n]
                at += n
            self._fill = 0
        return self._store

    def extend(self, values: Iterable[str | bytes]) -> None:
        if isinstance(values, Digests):
            values = values.raw
        for value in values:
            self.append(value)

    def __iadd__(self, values: Iterable[str | bytes]) -> Digests:
        self.extend(values)
        return self

    @property
    def raw(self) -> np.ndarray:
        """The digests as an 'S32' array (a view for a growable Digests, a gathered copy for a taken one)."""
        return self._base[: self._n] if self._idx is None else self._base[np.asarray(self._idx)]

    def raw_block(self, start: int, stop: int) -> np.ndarray:
        """Values [start, stop) as 'S32' (a view for a growable Digests, a gather of that block for a taken one)."""
        stop = min(stop, len(self))
        return self._base[start:stop] if self._idx is None else self._base[np.asarray(self._idx[start:stop])]

    def __len__(self) -> int:
        return self._n if self._idx is None else len(self._idx)

    def take(self, idx) -> Digests:
        idx = _index(idx)
        if self._idx is None:
            return Digests(base=self._base, idx=idx)
        return Digests(base=self._base, idx=idx.map(self._idx) if isinstance(idx, LazyArray) else self._idx[idx])

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            j = i if self._idx is None else int(self._idx[i])
            return hex_array(self._base[j : j + 1])[0].decode()  # numpy drops an 'S32' item's trailing zero bytes
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.take(index)

    def hex(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Values [start, stop) as an 'S64' hex array."""
        stop = len(self) if stop is None else min(stop, len(self))
        part = self._base[start:stop] if self._idx is None else self._base[self._idx[start:stop]]
        return hex_array(part)

    def to_arrow(self) -> pa.Array:
        """The values as an Arrow string array (built from the hex bytes, no Python str per value)."""
        return pa.array(self.hex(), pa.binary(64)).cast(pa.string())

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), BLOCK):
            yield from (v.decode() for v in self.hex(start, start + BLOCK))

    def __eq__(self, other) -> bool:
        if isinstance(other, Digests):
            return bool(np.array_equal(self.raw, other.raw))
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def fractions(self) -> np.ndarray:
        """The first 52 bits of each digest as a float in [0, 1): `int(hex[:13], 16) / 16**13`, vectorized."""
        top = self.raw.view(np.uint8).reshape(-1, 32)[:, :8].copy().view(">u8").reshape(-1)
        return (top >> np.uint64(12)).astype(np.float64) / float(16**13)
