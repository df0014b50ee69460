"""Build, save and load the causal language model.

Two tiny architectures are built from a config (for laptops, CI and benchmarks); anything else is a
local Hugging Face model directory. Weights only ever travel as safetensors: no pickle is read or
written, and no remote code is run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from components.adapters.modelfiles import load_causal_lm
from components.core.config import TrainConfig

# One bar per save_pretrained/from_pretrained is noise next to amr's own progress bars.
hf_logging.disable_progress_bar()

FIX_WEIGHTS = (
    "copy the model directory again from where it came from (the MLflow registry, or the checkpoint it was saved "
    "from), or delete it and train again"
)
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class WeightsError(ValueError):
    """A model's safetensors file is missing, truncated or damaged; the message names the file and the fix."""


def build_model(cfg: TrainConfig, vocab_size: int, context_length: int, eos_id: int, pad_id: int) -> PreTrainedModel:
    """The model named by `cfg.model`, initialised from `cfg.seed` so two builds are bitwise equal."""
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"train.n_embd ({cfg.n_embd}) must be divisible by train.n_head ({cfg.n_head})")
    torch.manual_seed(cfg.seed)
    if cfg.model == "gpt2-tiny":
        config = GPT2Config(
            n_layer=cfg.n_layer,
            n_embd=cfg.n_embd,
            n_head=cfg.n_head,
            n_positions=context_length,
            vocab_size=vocab_size,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        return GPT2LMHeadModel(config)
    if cfg.model == "llama-tiny":
        config = LlamaConfig(
            hidden_size=cfg.n_embd,
            intermediate_size=4 * cfg.n_embd,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_head,
            max_position_embeddings=context_length,
            vocab_size=vocab_size,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        return LlamaForCausalLM(config)
    model = _load_local(Path(cfg.model), what=f"train.model = {cfg.model!r}")
    _check_fits(model, vocab_size, context_length, cfg.model)
    return model


def save_model(model: PreTrainedModel, out_dir: Path) -> None:
    """Write `config.json` (+ `generation_config.json`) and safetensors weights to `out_dir`.

    transformers 5 always serialises to safetensors (its `safe_serialization` switch is gone); the
    check below keeps that promise even if a future version changes its mind.
    """
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    unsafe = [p.name for p in out_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if unsafe:
        raise RuntimeError(f"save_pretrained wrote pickle-based weight files {unsafe} into {out_dir}")


def load_model(model_dir: Path) -> PreTrainedModel:
    """Load a model saved by `save_model` (or any local safetensors causal LM), without remote code."""
    return _load_local(Path(model_dir), what=str(model_dir))


def _load_local(model_dir: Path, what: str) -> PreTrainedModel:
    if not (model_dir / "config.json").is_file():
        raise ValueError(
            f"{what}: not 'gpt2-tiny', 'llama-tiny' or a local model directory with a config.json "
            "(hub names cannot be downloaded here; save the model to a directory first)"
        )
    check_weights(model_dir)
    return load_causal_lm(model_dir, dtype=torch.float32)  # fp32 master weights; refuses missing tensors


def check_weights(model_dir: Path) -> None:
    """Raise `WeightsError` naming the first `*.safetensors` file of `model_dir` that is truncated or damaged.

    `safe_open` reads only the header, and checks that it is complete and that its tensors cover the file
    exactly, so a truncated copy is found in milliseconds, before transformers' `invalid header length`
    (which names no file) and without reading the weights twice.
    """
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{model_dir}: no *.safetensors weights next to config.json. Fix: {FIX_WEIGHTS}")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            detail = str(exc).removeprefix("Error while deserializing header: ")
            raise WeightsError(f"{file}: not a complete safetensors file ({detail}). Fix: {FIX_WEIGHTS}") from None


def _check_fits(model: PreTrainedModel, vocab_size: int, context_length: int, name: str) -> None:
    """A pretrained model must embed every token id the memory holds and see a whole packed sequence."""
    n_vocab = model.get_input_embeddings().num_embeddings
    if n_vocab < vocab_size:
        raise ValueError(
            f"train.model = {name!r} embeds {n_vocab} token ids but the tokenizer has {vocab_size}; "
            "use the model's own tokenizer (ingest.tokenizer) or a model with a larger vocabulary"
        )
    n_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if n_pos is not None and n_pos < context_length:
        raise ValueError(
            f"train.model = {name!r} handles {n_pos} positions but ingest.context_length is {context_length}"
        )
