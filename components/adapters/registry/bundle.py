"""What a registered model carries besides its weights, and how it leaves MLflow as a plain HF directory.

A version bundles its tokenizer (the files `save_pretrained` writes: ByT5's for the byte tokenizer, `tokenizer.json`
and its config for a BPE one) as a second artifact beside the safetensors weights, so the served model takes text
and an export is complete. `export_version` copies the weights and the tokenizer of `models:/NAME@ALIAS` (or
`/N`) into one directory that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load;
it is written in a temporary sibling directory and renamed into place, so DIR is either absent or complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import Model

from components.adapters.registry import serving
from components.adapters.registry.tracking import RegistryError, configure
from components.core.config import Settings
from components.core.text import load_tokenizer

WEIGHT_FILES = ("config.json", "generation_config.json")  # with every *.safetensors (+ its index)


@contextmanager
def staged_tokenizer(spec: str) -> Iterator[Path]:
    """A temporary directory holding the tokenizer `spec` ('byte' or a local directory) as saved files."""
    try:
        tokenizer = load_tokenizer(spec)
    except ValueError as exc:
        raise RegistryError(f"cannot bundle the tokenizer: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="amr-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        yield Path(tmp)


def log_pyfunc(model_dir: Path, tokenizer: str, meta: Mapping[str, Any]) -> Any:
    """Log `serving.py` as the model's code with the weights and the tokenizer as artifacts on the active run;
    returns MLflow's ModelInfo. Requirements are pinned so that MLflow never infers them (importing the model)."""
    with staged_tokenizer(tokenizer) as tokenizer_dir, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=serving.__file__,
            artifacts={serving.WEIGHTS: str(model_dir), serving.TOKENIZER: str(tokenizer_dir)},
            signature=serving.SIGNATURE,
            pip_requirements=serving.requirements(),
            metadata=json.loads(json.dumps(dict(meta), default=str)),
            model_config={"device": "auto"},
        )


def model_uri(name: str, alias: str | None, version: int | None) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/N`; exactly one of the two must be given."""
    if (alias is None) == (version is None):
        raise RegistryError("name exactly one of --alias A or --version N")
    return f"models:/{name}@{alias}" if alias is not None else f"models:/{name}/{version}"


def export_version(
    settings: Settings, dst: Path, alias: str | None = None, version: int | None = None, name: str | None = None
) -> Path:
    """Write a version of the registered model `name` (default `mlflow.registered_model`) as a plain Hugging Face
    directory `dst`: weights, config and tokenizer."""
    dst = Path(dst).absolute()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise RegistryError(f"{dst} exists and is not an empty directory; name a new DIR or remove {dst} first")
    uri = model_uri(name or settings.mlflow.registered_model, alias, version)
    configure(settings)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))  # same filesystem: the rename is atomic
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp / "download")))
        except mlflow.exceptions.MlflowException as exc:
            raise RegistryError(f"{uri}: {exc.message.splitlines()[0]}") from exc
        weights, tokenizer = (_artifact_dir(local, uri, key) for key in (serving.WEIGHTS, serving.TOKENIZER))
        out = tmp / "out"
        out.mkdir()
        for f in sorted(weights.iterdir()):
            if f.name in WEIGHT_FILES or f.name.endswith((".safetensors", ".safetensors.index.json")):
                shutil.copy2(f, out / f.name)
        for f in sorted(tokenizer.iterdir()):
            if f.is_file() and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
        if dst.exists():
            dst.rmdir()  # empty (checked above); rename cannot replace a directory on every platform
        out.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _artifact_dir(local: Path, uri: str, key: str) -> Path:
    flavor = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    rel = flavor.get("artifacts", {}).get(key, {}).get("path")
    if not rel:
        hint = " (logged before tokenizers were bundled: register it again)" if key == serving.TOKENIZER else ""
        raise RegistryError(f"{uri} has no '{key}' artifact{hint}")
    path = (local / rel).resolve()
    if not path.is_relative_to(local.resolve()) or not path.is_dir():
        raise RegistryError(f"{uri}: artifact path {rel!r} is not a directory inside the model")
    return path
