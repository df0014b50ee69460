from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import ByT5Tokenizer, PreTrainedTokenizerFast

from components.core.text import ByteTokenizer, load_tokenizer

PYLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
LICENSES = Path("/usr/share/common-licenses")


def real_texts() -> list[str]:
    # shlex.py has Latin-1 letters (2 utf-8 bytes), statistics.py an en dash (3 bytes), getopt.py an Å.
    return [(PYLIB / name).read_text(encoding="utf-8") for name in ("shlex.py", "getopt.py", "statistics.py")]


def test_byte_tokenizer_matches_hf_byt5_on_non_ascii_text():
    hf = ByT5Tokenizer()
    texts = [t[:6000] for t in real_texts()] + ["", "naïve café – Åström"]
    assert any(ord(c) > 127 for t in texts for c in t)
    ours = load_tokenizer("byte").encode_batch(texts)
    for text, ids in zip(texts, ours, strict=True):
        assert ids.dtype == np.int32
        assert ids.tolist() == hf(text, add_special_tokens=False)["input_ids"]


def test_byte_tokenizer_ids_come_from_hf():
    hf = ByT5Tokenizer()
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id, tok.pad_id) == ("byte", len(hf), hf.eos_token_id, hf.pad_token_id)
    ids = np.concatenate(tok.encode_batch(real_texts()))
    assert ids.min() >= 0 and ids.max() < tok.vocab_size


def test_byte_tokenizer_decode_round_trip_skips_specials():
    tok = load_tokenizer("byte")
    text = real_texts()[0][:3000]
    ids = tok.encode_batch([text])[0]
    assert tok.decode(ids) == text
    head = text.encode("utf-8")[:50].decode("utf-8")  # shlex.py starts with ASCII
    assert tok.decode([*ids[:50], tok.eos_id, tok.pad_id]) == head


def test_byte_tokenizer_encodes_special_token_spelling_as_text():
    tok = load_tokenizer("byte")
    ids = tok.encode_batch(["end</s><pad>"])[0]
    assert tok.eos_id not in ids.tolist() and tok.pad_id not in ids.tolist()
    assert tok.decode(ids) == "end</s><pad>"


def save_bpe(directory: Path, pad: bool = False, eos: bool = True) -> PreTrainedTokenizerFast:
    """Train a tiny byte-level BPE on a real license text and save it like any HF tokenizer."""
    lines = (LICENSES / "GPL-3").read_text(encoding="utf-8").splitlines()
    raw = RawTokenizer(models.BPE(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "<|endoftext|>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|endoftext|>" if eos else None,
        pad_token="<pad>" if pad else None,
        unk_token="[UNK]",
    )
    fast.save_pretrained(directory)
    return fast


def test_local_tokenizer_round_trip(tmp_path):
    fast = save_bpe(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.name == str(tmp_path)
    assert tok.vocab_size == len(fast)
    assert tok.eos_id == fast.convert_tokens_to_ids("<|endoftext|>")
    assert tok.pad_id == tok.eos_id  # no pad token: eos stands in
    texts = [t[:2000] for t in real_texts()]
    batch = tok.encode_batch(texts)
    for text, ids in zip(texts, batch, strict=True):
        assert ids.dtype == np.int32
        assert ids.tolist() == fast(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level BPE is lossless
    assert tok.encode_batch([]) == []


def test_local_tokenizer_keeps_its_pad_and_ignores_special_spelling(tmp_path):
    save_bpe(tmp_path, pad=True)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_id != tok.eos_id
    ids = tok.encode_batch(["the end<|endoftext|>"])[0].tolist()
    assert tok.eos_id not in ids


def test_missing_tokenizer_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(ValueError, match="'byte' or a local tokenizer directory") as err:
        load_tokenizer(str(missing))
    assert str(missing) in str(err.value)


def test_tokenizer_without_eos_is_rejected(tmp_path):
    save_bpe(tmp_path, eos=False)
    with pytest.raises(ValueError, match="has no eos token"):
        load_tokenizer(str(tmp_path))


def test_directory_without_tokenizer_files_is_a_value_error(tmp_path):
    (tmp_path / "README").write_text("not a tokenizer", encoding="utf-8")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_tokenizer(str(tmp_path))
