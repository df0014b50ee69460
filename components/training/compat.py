"""Does a model fit the memory it is about to train on? Checked from config.json, before weights load.

The memory holds token ids, not text: a model trained on them must embed every id (its vocabulary covers the
memory's tokenizer) and, if it ships a tokenizer of its own, that tokenizer must be the memory's, or the model
would learn other text than it was pretrained on. Both are read from small files (config.json, tokenizer.json), so
a mismatch fails in a second, before the weights load and before any MLflow run opens (the refresh plan and
`amr train` call `check_model` first).
"""

from __future__ import annotations

import json
from pathlib import Path

from components.core.config import Settings
from components.core.text import TokenizerMismatch, describe_identity, load_tokenizer, same_tokenizer

BUILT_IN = ("gpt2-tiny", "llama-tiny")  # built to the memory's vocabulary: always fit
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model(settings: Settings, meta: dict | None, identity: dict | None, model_dir: Path | None = None) -> None:
    """Raise `TokenizerMismatch` if the starting model (`model_dir`, else `train.model`) does not fit the memory."""
    if meta is None:
        return
    if model_dir is None:
        if settings.train.model in BUILT_IN:
            return
        model_dir, key = Path(settings.train.model), f"train.model = {settings.train.model!r}"
    else:
        key = f"the line's model {str(model_dir)!r}"
    memory = describe_identity(identity) if identity else f"{meta['tokenizer']!r}, vocabulary {meta['vocab_size']}"
    fix = (
        "Fix: train the model whose tokenizer built the memory (train.model), or ingest into a new memory.uri "
        "with this model's tokenizer (ingest.tokenizer = the model's name or directory)."
    )
    n_vocab = _config_vocab(model_dir, key)
    if n_vocab is not None and n_vocab < meta["vocab_size"]:
        raise TokenizerMismatch(
            f"{key} embeds {n_vocab} token ids but the memory's tokenizer ({memory}) has {meta['vocab_size']}. {fix}"
        )
    if any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        own = load_tokenizer(str(model_dir))
        if not same_tokenizer(meta, identity, str(model_dir), own.identity) and not _old_memory_same(
            meta, identity, own.identity
        ):
            raise TokenizerMismatch(
                f"{key} has its own tokenizer ({describe_identity(own.identity)}), not the memory's ({memory}). {fix}"
            )


def _old_memory_same(meta: dict, identity: dict | None, own: dict) -> bool:
    """A memory without a recorded identity: the model's tokenizer matches if vocabulary and eos agree."""
    return identity is None and (meta["vocab_size"], meta["eos_id"]) == (own["vocab_size"], own["eos_id"])


def _config_vocab(model_dir: Path, key: str) -> int | None:
    path = model_dir / "config.json"
    if not path.is_file():
        return None  # the loader names the missing config.json
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}). Fix: {key} needs the model's config.json.") from exc
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = text.get("vocab_size")
    return int(value) if isinstance(value, int) else None
