"""Model files: import a local Hugging Face directory or a GGUF file as a plain, checked HF directory.

`amr model import SOURCE [--name NAME]` writes `$AMR_HOME/models/NAME/` (model.safetensors, config.json, the
tokenizer files and `amr-import.json`, where it came from), atomically (`core.files.atomic_dir`): a killed import
leaves no directory that `train.model: NAME` could pick up half-written.

Choices:
- Weights are read from safetensors only. A directory holding only pickle weights (`pytorch_model.bin`, ...) is
  refused, naming the file: unpickling runs code. trust_remote_code stays off and nothing downloads.
- A GGUF file is read by transformers (`from_pretrained(dir, gguf_file=...)`, the optional extra `[gguf]`) and
  dequantized to float32. transformers marks that model as quantized and `save_pretrained` refuses it, so its state
  dict is loaded *strictly* into a fresh model built from the same config without `quantization_config`.
- A model whose safetensors lack a tensor its config needs is refused (`load_causal_lm`), here and when training
  loads it: transformers would initialise the tensor at random and only warn, so a pretrained model could be
  silently re-initialised in part.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.core.config import models_dir
from components.core.files import atomic_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FIX_NAME = "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (--name)"
GGUF_EXTRA = "pip install -e .[gguf]"


class ModelFilesError(ValueError):
    """A model cannot be imported or loaded; the message names the file or key and the fix."""


@dataclass(frozen=True)
class Imported:
    name: str
    path: Path
    kind: str  # "hf" or "gguf"
    parameters: int
    vocab_size: int


def load_causal_lm(model_dir: Path, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` from safetensors, refusing a model with tensors missing from its files."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        output_loading_info=True,
        **kwargs,
    )
    missing = sorted(map(str, info.get("missing_keys") or [])) + [
        f"{k} (shape mismatch)" for k in sorted(map(str, info.get("mismatched_keys") or []))
    ]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelFilesError(
            f"{model_dir}: its safetensors lack {len(missing)} tensor(s) its config.json needs ({shown}); "
            "transformers would initialise them at random. Fix: use the complete weights for this config "
            "(re-save the model with save_pretrained), or the config that matches these weights."
        )
    return model


def import_model(source: Path, home: Path, name: str | None = None, replace: bool = False) -> Imported:
    """Import `source` (a HF directory or a .gguf file) to `$AMR_HOME/models/NAME`; see the module docstring."""
    source = Path(source)
    if not source.exists():
        raise ModelFilesError(f"{source}: no such file or directory. Give a model directory or a .gguf file.")
    name = name or _default_name(source)
    if not NAME.fullmatch(name):
        raise ModelFilesError(f"model name {name!r} is not allowed: {FIX_NAME}.")
    target = models_dir(home) / name
    if target.exists() and not replace:
        raise ModelFilesError(f"{target} already exists. Pick another --name, or pass --replace to overwrite it.")
    if source.is_dir():
        model, tokenizer, kind = _read_hf_dir(source), _read_tokenizer(source), "hf"
    elif source.suffix == ".gguf":
        (model, tokenizer), kind = _read_gguf(source), "gguf"
    else:
        raise ModelFilesError(f"{source}: not a model directory or a .gguf file. Give one of those.")
    if replace and target.exists():
        shutil.rmtree(target)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {"source": str(source.resolve()), "kind": kind, "name": name}
        (tmp / "amr-import.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    return Imported(name, target, kind, n_params, model.get_input_embeddings().num_embeddings)


def _default_name(source: Path) -> str:
    stem = source.name.removesuffix(".gguf").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:64] or "model"


def _read_hf_dir(source: Path):
    if not (source / "config.json").is_file():
        raise ModelFilesError(f"{source}: no config.json. Give a directory written by save_pretrained, or a .gguf.")
    if not list(source.glob("*.safetensors")):
        pickled = sorted(p.name for p in source.iterdir() if p.suffix in PICKLE_SUFFIXES)
        what = f"only pickle weights ({pickled[0]})" if pickled else "no *.safetensors weights"
        raise ModelFilesError(
            f"{source / (pickled[0] if pickled else '')}: {what}; pickle files are never loaded (unpickling runs "
            "code). Fix: where you trust the file, load it with transformers and save_pretrained it (safetensors), "
            "then import that directory."
        )
    return load_causal_lm(source, dtype="auto")


def _read_tokenizer(source: Path, **kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelFilesError(
            f"{source}: no tokenizer could be loaded ({str(exc).splitlines()[0]}). Fix: save the model's tokenizer "
            "(tokenizer.save_pretrained) into the same directory."
        ) from exc


def _read_gguf(source: Path):
    """The GGUF model dequantized to float32, re-homed into a fresh model without `quantization_config`."""
    try:
        import accelerate  # noqa: F401  (transformers needs both to read GGUF)
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelFilesError(f"{source}: reading GGUF needs the {exc.name} package. Fix: `{GGUF_EXTRA}`.") from None
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": source.name, "local_files_only": True, "trust_remote_code": False}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFilesError(f"{source}: not a GGUF model transformers can read ({exc}).") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)  # every tensor from the file, none initialised
    fresh.tie_weights()
    return fresh.eval(), _read_tokenizer(source.parent, gguf_file=source.name)
