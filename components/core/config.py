"""One configuration model for the CLI, the flows and `dvc.yaml`.

Values come from, highest priority first:
  1. environment variables `AMR_<SECTION>__<KEY>` (e.g. `AMR_INGEST__CONTEXT_LENGTH=256`) and `AMR_HOME`,
  2. the params file (`params.yaml` in the working directory, or `--params FILE`),
  3. the defaults below, which run on one laptop.

Each stage owns one section: its model, keys and defaults are in components.core.sections, re-exported here
(import them from this module). This module puts them together in `Settings` and loads it. A wrong value raises
`ConfigError` naming the key, the value, what is allowed and where the value came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from components.core.sections import (
    BUILT_IN_MODELS,
    EvaluateConfig,
    GateConfig,
    IngestConfig,
    MemoryConfig,
    MlflowConfig,
    ReplayConfig,
    S3Config,
    Section,
    TrainConfig,
)

__all__ = [
    "BUILT_IN_MODELS",
    "DEFAULT_PARAMS",
    "ConfigError",
    "EvaluateConfig",
    "GateConfig",
    "IngestConfig",
    "MemoryConfig",
    "MlflowConfig",
    "ReplayConfig",
    "S3Config",
    "Section",
    "Settings",
    "TrainConfig",
    "load_settings",
    "models_dir",
    "resolve_model_names",
]

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which, where it came from, and what is allowed."""


class Settings(BaseSettings):
    """Everything amr reads. See params.yaml for the annotated defaults."""

    model_config = SettingsConfigDict(env_prefix="AMR_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(Path(".amr"), description="All local state (memory, runs, checkpoints). Env: AMR_HOME.")
    ingest: IngestConfig = IngestConfig()
    memory: MemoryConfig = MemoryConfig()
    s3: S3Config = S3Config()
    replay: ReplayConfig = ReplayConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The params file arrives as init kwargs (see load_settings); the environment overrides it.
        return (env_settings, init_settings)

    @property
    def memory_uri(self) -> str:
        return self.memory.uri or str(self.home / "memory")


def _read_params(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}). Fix the syntax.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (ingest:, train:, ...).")
    return data


def _env_name(loc: tuple) -> str:
    return "AMR_" + "__".join(str(p).upper() for p in loc)


def _describe(exc: ValidationError, params: Path | None) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        env = _env_name(loc)
        source = f"environment {env}" if env in os.environ else (f"{params}" if params else "defaults")
        value = err.get("input")
        allowed = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = "unknown key; see params.yaml for the keys of each section"
        lines.append(f"{key} = {value!r} (from {source}): {allowed}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(params: Path | str | None = None, *, resolve_names: bool = True, **overrides: Any) -> Settings:
    """Load params.yaml (or `params`), apply AMR_* environment variables, then `overrides` (CLI flags).

    `resolve_names=False` leaves model names unresolved: `amr model import` must run before the name exists.
    """
    path = Path(params) if params is not None else DEFAULT_PARAMS
    if params is not None and not path.exists():
        raise ConfigError(f"{path}: params file not found. Pass an existing file to --params.")
    data = _read_params(path) if path.exists() else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path if path.exists() else None)) from exc
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        try:
            setattr(getattr(settings, section), key, value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ConfigError(f"invalid configuration:\n  {dotted} = {value!r} (from the command line): {msg}") from exc
    if resolve_names:
        resolve_model_names(settings)
    return settings


BUILT_IN_NAMES = {"ingest.tokenizer": ("byte",), "train.model": ("gpt2-tiny", "llama-tiny")}


def models_dir(home: Path) -> Path:
    """Where `amr model import` writes: one plain Hugging Face directory per imported model."""
    return Path(home) / "models"


def resolve_model_names(settings: Settings) -> None:
    """`train.model` and `ingest.tokenizer` given as a bare name become `$AMR_HOME/models/NAME`, once, here.

    A value with a path separator (or an existing directory) stays a path; a bare name that names no imported
    model fails with the key, the value and how to import it.
    """
    for dotted, built_in in BUILT_IN_NAMES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(settings, section), key)
        if value in built_in or "/" in value or os.sep in value:
            continue
        imported = models_dir(settings.home) / value
        if imported.is_dir():
            setattr(getattr(settings, section), key, str(imported))
        elif not Path(value).is_dir():
            raise ConfigError(
                f"{dotted} = {value!r}: no model named {value!r} in {models_dir(settings.home)} (and no such "
                f"directory). Import it first: `amr model import SOURCE --name {value}`, or use "
                f"{', '.join(repr(b) for b in built_in)} or a directory path."
            )
