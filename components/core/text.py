"""Tokenizer adapter: one small interface over ByT5 bytes and local Hugging Face tokenizers.

Ingest only needs batches of token ids, the ids of eos and pad, and the vocabulary size (to size the model), so
that is all `Tokenizer` exposes. Special tokens are never added by `encode_batch`: packing appends eos itself.
Text that happens to contain a special token's spelling (say "</s>") is encoded as plain text, so the data of a
drop cannot inject control tokens into the training stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save_pretrained(self, path: str | Path) -> None: ...


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

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + self._offset for t in texts]

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

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
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
