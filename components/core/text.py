"""Tokenizer adapter: one small interface over ByT5 bytes and local Hugging Face tokenizers.

Ingest only needs batches of token ids, the ids of eos and pad, and the vocabulary size (to size the model), so
that is all `Tokenizer` exposes. Special tokens are never added by `encode_batch`: packing appends eos itself.
Text that happens to contain a special token's spelling (say "</s>") is encoded as plain text, so the data of a
drop cannot inject control tokens into the training stream.

Speed: a fast (Rust) tokenizer encodes through `tokenizers`' `encode_batch_fast`, which releases the GIL, runs
the batch on the Rust thread pool and computes no offsets: the same ids as transformers' `tokenizer(texts)`
(tests/test_tokenizer_real.py checks it) at a fraction of the CPU. Slow (Python) tokenizers keep transformers' call.

Identity: `identity` is what decides whether two tokenizers give the same ids: the sha256 of the tokenizer as its
backend serialises it (the `tokenizer.json` contents, canonicalised, so a re-saved or moved copy keeps it; a slow
tokenizer hashes its sorted vocabulary), the vocabulary size, and the eos token and id. The memory records it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

BYTE_IDENTITY_SHA = "byt5-utf8-bytes"  # the byte tokenizer is defined by code, not files


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int
    pad_id: int
    identity: dict

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save_pretrained(self, path: str | Path) -> None: ...


def encode_bytes(texts: list[str], offset: int) -> list[np.ndarray]:
    """ByT5 ids: each UTF-8 byte plus `offset` (ByteTokenizer.encode_batch; ingest workers call it without the HF
    tokenizer, which would cost each of them the import of transformers)."""
    return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + offset for t in texts]


class ByteTokenizer:
    """ByT5's byte-level vocabulary with a vectorized encoder.

    The Hugging Face ByT5 tokenizer is a Python loop over characters, far too slow for a 50 MB drop; its ids are
    just utf-8 bytes shifted by a fixed offset, which numpy computes in one pass. The offset and the special ids
    are read from the HF object so the two can never disagree.
    """

    def __init__(self) -> None:
        from transformers import ByT5Tokenizer

        self._hf = ByT5Tokenizer()
        self.name = "byte"
        self.vocab_size = len(self._hf)  # 256 bytes + 3 specials + 125 extra ids
        self.eos_id = int(self._hf.eos_token_id)
        self.pad_id = int(self._hf.pad_token_id)
        self._offset = int(self._hf.offset)
        self.identity = make_identity(BYTE_IDENTITY_SHA, self.vocab_size, str(self._hf.eos_token), self.eos_id)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return encode_bytes(texts, self._offset)

    @property
    def offset(self) -> int:
        return self._offset

    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(ids, dtype=np.int64)
        data = arr[(arr >= self._offset) & (arr < self._offset + 256)] - self._offset  # drop specials, as HF does
        # A row cut mid-character decodes to U+FFFD rather than silently losing bytes (HF ignores them).
        return data.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def save_pretrained(self, path: str | Path) -> None:
        """ByT5's tokenizer files, which `AutoTokenizer.from_pretrained(path)` loads (same ids as `encode_batch`)."""
        self._hf.save_pretrained(str(path))


class HFTokenizer:
    """A tokenizer saved with `save_pretrained` in a local directory (never downloaded, never remote code)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        try:
            self._hf = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"tokenizer directory {path!r} could not be loaded: {exc}") from exc
        if self._hf.eos_token_id is None:
            raise ValueError(
                f"tokenizer {path!r} has no eos token; packing separates documents with eos, so the tokenizer "
                "needs one (set eos_token and save it again)"
            )
        self.name = path
        self.vocab_size = len(self._hf)  # includes added tokens, unlike `.vocab_size`
        self.eos_id = int(self._hf.eos_token_id)
        pad = self._hf.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id  # pad is masked by `length`, so eos is safe
        self._rust = getattr(self._hf, "backend_tokenizer", None) if self._hf.is_fast else None
        if self._rust is not None:
            self._rust = self._rust.__class__.from_str(self._rust.to_str())  # our own copy: the flag below is ours
            self._rust.encode_special_tokens = True  # a literal "<|endoftext|>" in the data stays text
        self.identity = make_identity(_definition_sha(self._hf), self.vocab_size, str(self._hf.eos_token), self.eos_id)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        if self._rust is not None:
            encodings = self._rust.encode_batch_fast(list(texts), add_special_tokens=False)
            return [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        out = self._hf(
            list(texts),
            add_special_tokens=False,
            split_special_tokens=True,  # a literal "<|endoftext|>" in the data stays text
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "sequence longer than model_max_length" warning: we pack, never truncate
        )["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def save_pretrained(self, path: str | Path) -> None:
        """The tokenizer's files (`tokenizer.json` & co.), for `AutoTokenizer.from_pretrained(path)`."""
        self._hf.save_pretrained(str(path))


def make_identity(sha256: str, vocab_size: int, eos: str, eos_id: int) -> dict:
    return {"sha256": sha256, "vocab_size": int(vocab_size), "eos": eos, "eos_id": int(eos_id)}


def describe_identity(identity: dict | None) -> str:
    """One line for error messages: `sha256 1a2b3c4d5e6f, vocabulary 49152, eos '<|im_end|>' (2)`."""
    if not identity:
        return "no identity recorded"
    sha = identity.get("sha256", "")
    sha = sha if sha == BYTE_IDENTITY_SHA else f"sha256 {sha[:12]}" if sha else "sha256 unknown"
    eos = f", eos {identity['eos']!r} ({identity['eos_id']})" if identity.get("eos") else ""
    return f"{sha}, vocabulary {identity.get('vocab_size')}{eos}"


def _definition_sha(hf) -> str:
    """sha256 of what defines the ids: the canonical tokenizer.json of a fast tokenizer, else the sorted vocabulary."""
    backend = getattr(hf, "backend_tokenizer", None) if hf.is_fast else None
    if backend is not None:
        data = json.loads(backend.to_str())
        for key in ("truncation", "padding"):  # call-time settings, not the mapping from text to ids
            data.pop(key, None)
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    else:
        text = json.dumps(sorted(hf.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_tokenizer(spec: str) -> Tokenizer:
    """'byte' -> ByteTokenizer; anything else must be a local directory holding a saved HF tokenizer."""
    if spec == "byte":
        return ByteTokenizer()
    if not Path(spec).is_dir():
        raise ValueError(
            f"tokenizer {spec!r}: no such directory; it must be 'byte' or a local tokenizer directory "
            "(one written by save_pretrained)"
        )
    return HFTokenizer(spec)


class TokenizerMismatch(ValueError):
    """Two tokenizers would give different ids for the same text; the message shows both identities and the fix."""


def same_tokenizer(recorded: dict, recorded_identity: dict | None, spec: str, identity: dict) -> bool:
    """Whether `identity` (tokenizer `spec`) gives the ids of a memory built with `recorded` (its meta).

    A memory written before identities were recorded is compared by spec, vocabulary size and eos id.
    """
    if recorded_identity:
        keys = ("sha256", "vocab_size", "eos_id")
        return all(recorded_identity.get(k) == identity.get(k) for k in keys)
    old = (str(recorded.get("tokenizer")), int(recorded.get("vocab_size", -1)), int(recorded.get("eos_id", -1)))
    return old == (spec, identity["vocab_size"], identity["eos_id"])
